// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file SIMD packs: the only includer of xsimd. A kernel is written once over `V`, which is either
/// a plain scalar (Kokkos, device and scalar paths) or an xsimd::batch (host paths); every
/// operation here is lane-wise, so both give the same bits for +, -, *, / (the project builds with
/// -ffp-contract=off: no implicit FMA contraction that would differ between the two).

#include <cmath>
#include <type_traits>

// GCC 12 reports -W(maybe-)uninitialized false positives inside its own AVX-512 intrinsics when
// xsimd's exp/log/tanh are inlined; silence them for xsimd only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>

namespace normflow::simd {

/// The host's widest SIMD pack of T for the compile flags (SSE2 without -march).
template <class T>
using native_pack = xsimd::batch<T>;

template <class V>
struct pack_traits {
  using value_type = V;
  static constexpr index_t size = 1;
};
template <class T, class A>
struct pack_traits<xsimd::batch<T, A>> {
  using value_type = T;
  static constexpr index_t size = index_t(xsimd::batch<T, A>::size);
};

/// Lanes in V (1 for a scalar).
template <class V>
inline constexpr index_t pack_size = pack_traits<V>::size;
/// The scalar type of V.
template <class V>
using scalar_t = typename pack_traits<V>::value_type;

/// Loads pack_size<V> consecutive values from an aligned address.
template <class V>
NORMFLOW_ALWAYS_INLINE V load(const scalar_t<V>* p) noexcept {
  if constexpr (pack_size<V> == 1 && std::is_arithmetic_v<V>)
    return *p;
  else
    return V::load_aligned(p);
}

/// Stores v to an aligned address.
template <class V>
NORMFLOW_ALWAYS_INLINE void store(scalar_t<V>* p, const V& v) noexcept {
  if constexpr (pack_size<V> == 1 && std::is_arithmetic_v<V>)
    *p = v;
  else
    v.store_aligned(p);
}

/// Lane i of v.
template <class V>
NORMFLOW_ALWAYS_INLINE scalar_t<V> lane(const V& v, index_t i) noexcept {
  if constexpr (pack_size<V> == 1 && std::is_arithmetic_v<V>)
    return v;
  else
    return v.get(std::size_t(i));
}

/// a * b + c with one rounding, lane-wise: std::fma for a scalar, the FMA instruction for a pack.
/// (xsimd 8.1 has no AVX-512 fma kernel: its xsimd::fma falls back to a * b + c there, two
/// roundings and half the FMA units' throughput; the intrinsic is used for AVX-512 packs.)
/// Scalar and pack paths give the same bits where the pack's instruction set has FMA (AVX2 with
/// FMA3, AVX-512); on packs without it (a plain SSE2 build) xsimd::fma rounds twice, so kernels
/// that must agree bit for bit with a scalar path on every host use no fma (the prior's sampler:
/// random/philox.hpp).
template <class V>
NORMFLOW_ALWAYS_INLINE V fma(const V& a, const V& b, const V& c) noexcept {
  if constexpr (std::is_arithmetic_v<V>) {
    return std::fma(a, b, c);
  } else {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, typename V::arch_type>) {
      if constexpr (std::is_same_v<scalar_t<V>, float>)
        return V(_mm512_fmadd_ps(a, b, c));
      else if constexpr (std::is_same_v<scalar_t<V>, double>)
        return V(_mm512_fmadd_pd(a, b, c));
      else
        return xsimd::fma(a, b, c);
    } else {
      return xsimd::fma(a, b, c);
    }
#else
    return xsimd::fma(a, b, c);
#endif
  }
}

/// Calls f(std::integral_constant<index_t, R>{}, b) for b = b_begin, b_begin + R W, ... while R
/// packs of W = pack_size<V> lanes fit before b_end, then f(integral_constant<1>, b) for the
/// remaining packs: kernels keep R accumulators per lane block in registers.
template <class V, index_t R, class F>
NORMFLOW_ALWAYS_INLINE void for_register_blocks(index_t b_begin, index_t b_end, F&& f) {
  constexpr index_t W = pack_size<V>;
  index_t b = b_begin;
  for (; b + R * W <= b_end; b += R * W) f(std::integral_constant<index_t, R>{}, b);
  for (; b < b_end; b += W) f(std::integral_constant<index_t, 1>{}, b);
}

/// The name of the host SIMD instruction set compiled in (e.g. "avx512bw"), for benchmarks.
inline const char* arch_name() noexcept { return xsimd::default_arch::name(); }

}  // namespace normflow::simd
