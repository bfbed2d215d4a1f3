// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
// IWYU pragma: private, include <normflow/random/philox.hpp>
/// \file CounterRng on host SIMD packs: Philox4x32-10 and Box-Muller for a pack of consecutive
/// samples b0, b0 + 1, ... at one site, bit for bit the values of CounterRng::bits and
/// CounterRng::normal_pair for each lane.
///
/// The 32-bit Philox words live in the low halves of 64-bit lanes (a 32 x 32 -> 64-bit product
/// per lane gives both halves of mulhilo), so a pack of W doubles' worth of counters runs
/// through the ten rounds together. The elementary functions repeat detail::log_open_unit and
/// detail::sincos_turn of philox.hpp operation for operation (same constants, the same correctly
/// rounded +, -, *, /, sqrt and no fma, so any SIMD width, with or without FMA instructions;
/// branches become lane selects that pick the same values), so the results equal the scalar ones
/// exactly; tests/unit/test_sampler_lanes.cpp checks that lane by lane (also built without -march).
/// Speed (one core, AVX-512): about 37 ns per normal with libm and the scalar generator, about 8
/// ns with this one (bench_flow's PriorSample; benchmarks/README.md).

#include <cstdint>
#include <type_traits>

#include <normflow/random/philox.hpp>
#include <normflow/simd/pack.hpp>

namespace normflow::detail {

/// Packs of the SIMD sampler: VD holds doubles, VU and VI the same lanes as 64-bit integers.
template <class VD>
struct RngPacks {
  using arch = typename VD::arch_type;
  using VU = xsimd::batch<std::uint64_t, arch>;
  using VI = xsimd::batch<std::int64_t, arch>;
};

/// a * b for 64-bit lanes that hold values below 2^32 (the full 64-bit product): one
/// vpmuludq on AVX-512 (xsimd's 64-bit multiply is vpmullq, three times the latency).
template <class VU>
NORMFLOW_ALWAYS_INLINE VU mul_u32_lanes(const VU& a, const VU& b) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, typename VU::arch_type>) return VU(_mm512_mul_epu32(a, b));
#endif
  return a * b;
}

/// CounterRng::bits for the samples b0 + n W + lane of N packs (W lanes each; each word in the
/// low 32 bits of its lane). The N packs run through the rounds interleaved: one pack's ten
/// rounds are a chain of dependent multiplies, N of them keep the multiplier busy.
template <class VD, int N>
NORMFLOW_ALWAYS_INLINE void philox_lanes(const CounterRng& rng, std::uint32_t b0, std::uint32_t site,
                                         std::uint32_t j, typename RngPacks<VD>::VU (&out)[4][N]) noexcept {
  using VU = typename RngPacks<VD>::VU;
  constexpr std::size_t W = VU::size;
  alignas(64) std::uint64_t lane_b[W];
  const VU low(0xffffffffull);
  const VU m0 = VU(std::uint64_t(0xD2511F53u)), m1 = VU(std::uint64_t(0xCD9E8D57u));
  VU c0[N], c1[N], c2[N], c3[N];
  for (int n = 0; n < N; ++n) {
    for (std::size_t l = 0; l < W; ++l) lane_b[l] = std::uint32_t(b0 + std::uint32_t(n * W + l));
    c0[n] = VU::load_aligned(lane_b);
    c1[n] = VU(std::uint64_t(site)), c2[n] = VU(std::uint64_t(j)), c3[n] = VU(std::uint64_t(rng.stream));
  }
  std::uint32_t k0 = std::uint32_t(rng.seed), k1 = std::uint32_t(rng.seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;  // Random123's bump between rounds
    const VU key0 = VU(std::uint64_t(k0)), key1 = VU(std::uint64_t(k1));
    for (int n = 0; n < N; ++n) {
      const VU p0 = mul_u32_lanes(c0[n], m0), p1 = mul_u32_lanes(c2[n], m1);  // exact: factors < 2^32
      c0[n] = (p1 >> 32) ^ c1[n] ^ key0;
      c2[n] = (p0 >> 32) ^ c3[n] ^ key1;
      c1[n] = p1 & low;
      c3[n] = p0 & low;
    }
  }
  for (int n = 0; n < N; ++n) out[0][n] = c0[n], out[1][n] = c1[n], out[2][n] = c2[n], out[3][n] = c3[n];
}

/// CounterRng::to_open_unit lane-wise.
template <class VD>
NORMFLOW_ALWAYS_INLINE VD to_open_unit_lanes(const typename RngPacks<VD>::VU& hi,
                                             const typename RngPacks<VD>::VU& lo) noexcept {
  using VI = typename RngPacks<VD>::VI;
  const auto k = xsimd::bitwise_cast<VI>((hi << 20) ^ (lo >> 12));  // < 2^52: exact in double
  return (xsimd::to_float(k) + VD(0.5)) * VD(0x1.0p-52);
}

/// detail::log_open_unit lane-wise (the same operations).
template <class VD>
NORMFLOW_ALWAYS_INLINE VD log_open_unit_lanes(const VD& x) noexcept {
  using M = RngMath;
  using VI = typename RngPacks<VD>::VI;
  const VI bits = xsimd::bitwise_cast<VI>(x);
  VD k = xsimd::to_float((bits >> 52) - VI(1023));
  VD m = xsimd::bitwise_cast<VD>((bits & VI(0x000fffffffffffffLL)) | VI(0x3ff0000000000000LL));
  const auto big = m > VD(M::sqrt2);
  m = xsimd::select(big, m * VD(0.5), m);
  k = xsimd::select(big, k + VD(1.0), k);
  const VD f = m - VD(1.0);
  const VD s = f / (VD(2.0) + f);
  const VD z = s * s, w = z * z;
  const VD t1 = w * (VD(M::Lg2) + w * (VD(M::Lg4) + w * VD(M::Lg6)));
  const VD t2 = z * (VD(M::Lg1) + w * (VD(M::Lg3) + w * (VD(M::Lg5) + w * VD(M::Lg7))));
  const VD r = t2 + t1;
  const VD hfsq = VD(0.5) * f * f;
  return k * VD(M::ln2_hi) - ((hfsq - (s * (hfsq + r) + k * VD(M::ln2_lo))) - f);
}

/// detail::sincos_turn lane-wise (the same operations; the quadrant's cases as selects).
template <class VD>
NORMFLOW_ALWAYS_INLINE void sincos_turn_lanes(const VD& u, VD& sin_out, VD& cos_out) noexcept {
  using M = RngMath;
  const VD q = xsimd::nearbyint(VD(4.0) * u);
  const VD r = u - VD(0.25) * q;
  const VD x = r * VD(M::twopi_hi) + r * VD(M::twopi_lo);
  const VD z = x * x;
  const VD ps = VD(M::S2) + z * (VD(M::S3) + z * (VD(M::S4) + z * (VD(M::S5) + z * VD(M::S6))));
  const VD sn = x + (z * x) * (VD(M::S1) + z * ps);
  const VD pc = z * (VD(M::C1) + z * (VD(M::C2) + z * (VD(M::C3) + z * (VD(M::C4) + z * (VD(M::C5) + z * VD(M::C6))))));
  const VD hz = VD(0.5) * z, w = VD(1.0) - hz;
  const VD cs = w + (((VD(1.0) - w) - hz) + z * pc);
  // quadrant q mod 4 (q = 4 is quadrant 0): 1: (cs, -sn), 2: (-sn, -cs), 3: (-cs, sn)
  const auto q1 = q == VD(1.0), q2 = q == VD(2.0), q3 = q == VD(3.0);
  const VD s0 = xsimd::select(q1 | q3, cs, sn), c0 = xsimd::select(q1 | q3, sn, cs);
  sin_out = xsimd::select(q2 | q3, -s0, s0);
  cos_out = xsimd::select(q1 | q2, -c0, c0);
}

/// CounterRng::normal_pair(b0 + n W + lane, site, j) for the lanes of N packs of VD: z1 in
/// first[n], z2 in second[n].
template <class VD, int N>
NORMFLOW_ALWAYS_INLINE void normal_pair_lanes(const CounterRng& rng, std::uint32_t b0, std::uint32_t site,
                                              std::uint32_t j, VD (&first)[N], VD (&second)[N]) noexcept {
  typename RngPacks<VD>::VU w[4][N];
  philox_lanes<VD, N>(rng, b0, site, j, w);
  for (int n = 0; n < N; ++n) {
    const VD u1 = to_open_unit_lanes<VD>(w[0][n], w[1][n]), u2 = to_open_unit_lanes<VD>(w[2][n], w[3][n]);
    const VD r = xsimd::sqrt(VD(-2.0) * log_open_unit_lanes(u1));
    VD sn, cs;
    sincos_turn_lanes(u2, sn, cs);
    first[n] = r * cs;
    second[n] = r * sn;
  }
}

}  // namespace normflow::detail
