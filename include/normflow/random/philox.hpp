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
///
/// Box-Muller: z1 = sqrt(-2 ln u1) cos(2 pi u2), z2 = sqrt(-2 ln u1) sin(2 pi u2), with the
/// logarithm and sine/cosine of detail::log_open_unit and detail::sincos_turn (fdlibm's
/// algorithms, within about 1 ulp of the exact values). The host's SIMD sampler
/// (random/philox_simd.hpp) evaluates the same operations on packs, so scalar (device) and SIMD
/// (host) draws agree bit for bit; the library's own functions, not libm's, make that possible
/// (and take the host sampler from 37 ns to about 8 ns per normal: bench_flow's PriorSample).

#include <cmath>
#include <cstdint>
#include <cstring>

#include <Random123/philox.h>

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>

namespace normflow {

namespace detail {
/// The bits of a double and back.
NORMFLOW_HOST_DEVICE std::int64_t double_bits(double x) noexcept {
  std::int64_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
NORMFLOW_HOST_DEVICE double bits_double(std::int64_t i) noexcept {
  double x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}

/// Constants of the sampler's elementary functions, from fdlibm 5.3: e_log.c (Lg1..Lg7, ln2_hi,
/// ln2_lo) and k_sin.c, k_cos.c (S1..S6, C1..C6). fdlibm's notice: "Copyright (C) 1993 by Sun
/// Microsystems, Inc. All rights reserved. Developed at SunSoft, a Sun Microsystems, Inc.
/// business. Permission to use, copy, modify, and distribute this software is freely granted,
/// provided that this notice is preserved."
struct RngMath {
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  static constexpr double sqrt2 = 1.41421356237309514547e+00;
  static constexpr double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                          Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                          Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                          Lg7 = 1.479819860511658591e-01;
  static constexpr double S1 = -1.66666666666666324348e-01, S2 = 8.33333333332248946124e-03,
                          S3 = -1.98412698298579493134e-04, S4 = 2.75573137070700676789e-06,
                          S5 = -2.50507602534068634195e-08, S6 = 1.58969099521155010221e-10;
  static constexpr double C1 = 4.16666666666666019037e-02, C2 = -1.38888888888741095749e-03,
                          C3 = 2.48015872894767294178e-05, C4 = -2.75573143513906633035e-07,
                          C5 = 2.08757232129817482790e-09, C6 = -1.13596475577881948265e-11;
  /// 2 pi = twopi_hi + twopi_lo (twopi_hi the nearest double).
  static constexpr double twopi_hi = 6.28318530717958623200e+00, twopi_lo = 2.44929359829470635445e-16;
};

/// ln x for a normal double x in (0, 1] (the uniforms of CounterRng::to_open_unit): fdlibm's
/// e_log.c, x = 2^k m with m in [sqrt(1/2), sqrt(2)), f = m - 1, s = f / (2 + f),
///   ln x = k ln2_hi - ((f^2/2 - (s (f^2/2 + R) + k ln2_lo)) - f),  R = fdlibm's minimax in s^2
/// (|error| < 1 ulp). Only correctly rounded +, -, *, / (no fma, no contraction: the library
/// builds with -ffp-contract=off), so every host and backend gives the same bits; philox_simd.hpp's
/// pack version performs the same operations in the same order.
NORMFLOW_HOST_DEVICE double log_open_unit(double x) noexcept {
  using M = RngMath;
  const std::int64_t bits = double_bits(x);
  double k = double((bits >> 52) - 1023);
  double m = bits_double((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
  if (m > M::sqrt2) {
    m = m * 0.5;
    k = k + 1.0;
  }
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s, w = z * z;
  const double t1 = w * (M::Lg2 + w * (M::Lg4 + w * M::Lg6));
  const double t2 = z * (M::Lg1 + w * (M::Lg3 + w * (M::Lg5 + w * M::Lg7)));
  const double r = t2 + t1;
  const double hfsq = 0.5 * f * f;
  return k * M::ln2_hi - ((hfsq - (s * (hfsq + r) + k * M::ln2_lo)) - f);
}

/// sin(2 pi u) and cos(2 pi u) for u in (0, 1) with u 2^53 an integer (CounterRng's uniforms).
/// The reduction is exact in units of turns: q = round(4 u) (4 u is never a half-integer here),
/// r = u - q / 4 exactly, |r| <= 1/8; x = 2 pi r (two-term 2 pi), |x| <= pi / 4; fdlibm's kernels
/// sin x = x + x^3 (S1 + ... + S6 x^10), cos x = w + ((1 - w) - x^2/2 + x^2 r(x)), w = 1 - x^2/2;
/// then the quadrant q. As log_open_unit: +, -, * only, the same operations in
/// philox_simd.hpp's pack version.
NORMFLOW_HOST_DEVICE void sincos_turn(double u, double& sin_out, double& cos_out) noexcept {
  using M = RngMath;
  const double q = std::nearbyint(4.0 * u);
  const double r = u - 0.25 * q;
  const double x = r * M::twopi_hi + r * M::twopi_lo;
  const double z = x * x;
  const double ps = M::S2 + z * (M::S3 + z * (M::S4 + z * (M::S5 + z * M::S6)));
  const double sn = x + (z * x) * (M::S1 + z * ps);
  const double pc = z * (M::C1 + z * (M::C2 + z * (M::C3 + z * (M::C4 + z * (M::C5 + z * M::C6)))));
  const double hz = 0.5 * z, w = 1.0 - hz;
  const double cs = w + (((1.0 - w) - hz) + z * pc);
  switch (int(q) & 3) {
    case 0: sin_out = sn, cos_out = cs; break;
    case 1: sin_out = cs, cos_out = -sn; break;
    case 2: sin_out = -sn, cos_out = -cs; break;
    default: sin_out = -cs, cos_out = sn; break;
  }
}
}  // namespace detail

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

  /// Two independent standard normals (Box-Muller in double precision; see the file comment).
  NORMFLOW_HOST_DEVICE DoublePair normal_pair(std::uint32_t b, std::uint32_t site, std::uint32_t j) const noexcept {
    const DoublePair u = uniform_pair(b, site, j);
    const double r = std::sqrt(-2.0 * detail::log_open_unit(u.first));
    double sn, cs;
    detail::sincos_turn(u.second, sn, cs);
    return {r * cs, r * sn};
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
