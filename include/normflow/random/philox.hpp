// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as
/// easy as 1, 2, 3", SC11) from Random123.
///
/// A draw is a pure function of (seed, stream, sample b, lexicographic site, pair index j):
///   key     = (seed mod 2^32, seed / 2^32)
///   counter = (b, site, j, stream)
/// so sample b at site x gets the same numbers whatever the thread count, batch chunking, site
/// order or backend. One Philox call gives 128 bits: two 52-bit uniforms in (0, 1), or, by
/// Box-Muller in double precision, two standard normals. float fields take the same double
/// values rounded to float, so float and double samples correspond.

#include <cmath>
#include <cstdint>

#include <Random123/philox.h>

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>

namespace normflow {

/// Pair of doubles returned by CounterRng.
struct DoublePair {
  double first;
  double second;
};

/// Stateless, trivially copyable Philox4x32-10 generator for one (seed, stream): device-safe.
struct CounterRng {
  std::uint64_t seed = 0;
  std::uint32_t stream = 0;

  using philox = r123::Philox4x32_R<10>;

  /// The raw 4 x 32 bits for counter (b, site, j, stream).
  NORMFLOW_HOST_DEVICE philox::ctr_type bits(std::uint32_t b, std::uint32_t site, std::uint32_t j) const noexcept {
    const philox::ctr_type ctr = {{b, site, j, stream}};
    const philox::key_type key = {{std::uint32_t(seed), std::uint32_t(seed >> 32)}};
    return philox{}(ctr, key);
  }

  /// 52 random bits k -> (k + 1/2) / 2^52, a double in (0, 1) that is exact (no rounding), so
  /// never 0 or 1: the largest is 1 - 2^-53.
  NORMFLOW_HOST_DEVICE static double to_open_unit(std::uint32_t hi, std::uint32_t lo) noexcept {
    const std::uint64_t k = (std::uint64_t(hi) << 20) ^ (std::uint64_t(lo) >> 12);
    return (double(k) + 0.5) * 0x1.0p-52;
  }

  /// Two independent uniforms in (0, 1).
  NORMFLOW_HOST_DEVICE DoublePair uniform_pair(std::uint32_t b, std::uint32_t site, std::uint32_t j) const noexcept {
    const auto r = bits(b, site, j);
    return {to_open_unit(r[0], r[1]), to_open_unit(r[2], r[3])};
  }

  /// Two independent standard normals (Box-Muller in double precision).
  NORMFLOW_HOST_DEVICE DoublePair normal_pair(std::uint32_t b, std::uint32_t site, std::uint32_t j) const noexcept {
    const DoublePair u = uniform_pair(b, site, j);
    const double r = std::sqrt(-2.0 * std::log(u.first));
    const double phi = 6.283185307179586476925286766559 * u.second;
    return {r * std::cos(phi), r * std::sin(phi)};
  }
};

/// Host-side generator state: a seed and the next stream. Each call that draws a batch takes a
/// fresh stream, so consecutive batches are independent and a run replays exactly from its seed.
class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0) noexcept : m_seed(seed) {}

  /// A CounterRng for the next stream (advances the state).
  CounterRng next() noexcept { return {m_seed, m_stream++}; }

  std::uint64_t seed() const noexcept { return m_seed; }
  std::uint32_t stream() const noexcept { return m_stream; }
  /// Restores a position (e.g. from a checkpoint).
  void set_state(std::uint64_t seed, std::uint32_t stream) noexcept {
    m_seed = seed;
    m_stream = stream;
  }

 private:
  std::uint64_t m_seed;
  std::uint32_t m_stream = 0;
};

}  // namespace normflow
