// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Lane-wise maths over `V`, a plain scalar (float, double) or an xsimd::batch. Each function
/// dispatches with `if constexpr`: arithmetic types go to `std::` (to `Kokkos::Experimental::`,
/// which is device-callable, when the Kokkos backend is compiled in), batches to `xsimd::`.
/// The transforms in this folder are written once against these functions.
///
/// Conventions (reference §0.2): softplus(w) = (1/beta) log(1 + exp(beta w)) with beta = ln 2, so
/// softplus(0) = 1; like the reference (torch.nn.Softplus, threshold 20) it returns w itself when
/// beta w > 20. Its derivative is sigmoid(beta w), and exactly 1 on the linear branch.

#include <cmath>
#include <type_traits>

#if NORMFLOW_HAS_KOKKOS
#include <Kokkos_MathematicalFunctions.hpp>
#endif

#include <normflow/config.hpp>
#include <normflow/simd/pack.hpp>

// GCC 12's AVX-512 headers make `_mm512_undefined_pd` self-initialise, and inlining xsimd's
// exp/log into these wrappers reports it as -Wuninitialized (GCC PR 105593, a false positive).
// The diagnostic state at the wrappers' definitions applies wherever they are inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace normflow::math {

namespace detail {
// The scalar back end: std:: on the host, Kokkos::Experimental:: (device-callable) with Kokkos.
namespace scalar {
#if NORMFLOW_HAS_KOKKOS
using Kokkos::Experimental::atanh;
using Kokkos::Experimental::exp;
using Kokkos::Experimental::fabs;
using Kokkos::Experimental::log;
using Kokkos::Experimental::log1p;
using Kokkos::Experimental::sqrt;
using Kokkos::Experimental::tanh;
#else
using std::atanh;
using std::exp;
using std::fabs;
using std::log;
using std::log1p;
using std::sqrt;
using std::tanh;
#endif
}  // namespace scalar
}  // namespace detail

/// True for plain arithmetic types (one lane), false for SIMD batches.
template <class V>
inline constexpr bool is_scalar_v = std::is_arithmetic_v<V>;

/// ln 2, the softplus beta of the reference (§0.2).
inline constexpr double ln2 = 0.693147180559945309417232121458176568;

/// `c` converted to the scalar type of V and broadcast to every lane.
template <class V>
NORMFLOW_HOST_DEVICE constexpr V constant(double c) noexcept {
  return V(static_cast<simd::scalar_t<V>>(c));
}

/// e^x, lane-wise.
template <class V>
NORMFLOW_HOST_DEVICE V exp(const V& x) noexcept {
  if constexpr (is_scalar_v<V>)
    return detail::scalar::exp(x);
  else
    return xsimd::exp(x);
}

/// Natural logarithm, lane-wise.
template <class V>
NORMFLOW_HOST_DEVICE V log(const V& x) noexcept {
  if constexpr (is_scalar_v<V>)
    return detail::scalar::log(x);
  else
    return xsimd::log(x);
}

/// log(1 + x), accurate for small |x|.
template <class V>
NORMFLOW_HOST_DEVICE V log1p(const V& x) noexcept {
  if constexpr (is_scalar_v<V>)
    return detail::scalar::log1p(x);
  else
    return xsimd::log1p(x);
}

/// Hyperbolic tangent.
template <class V>
NORMFLOW_HOST_DEVICE V tanh(const V& x) noexcept {
  if constexpr (is_scalar_v<V>)
    return detail::scalar::tanh(x);
  else
    return xsimd::tanh(x);
}

/// Inverse hyperbolic tangent, defined on (-1, 1).
template <class V>
NORMFLOW_HOST_DEVICE V atanh(const V& x) noexcept {
  if constexpr (is_scalar_v<V>)
    return detail::scalar::atanh(x);
  else
    return xsimd::atanh(x);
}

/// |x|.
template <class V>
NORMFLOW_HOST_DEVICE V abs(const V& x) noexcept {
  if constexpr (is_scalar_v<V>)
    return detail::scalar::fabs(x);
  else
    return xsimd::abs(x);
}

/// Square root.
template <class V>
NORMFLOW_HOST_DEVICE V sqrt(const V& x) noexcept {
  if constexpr (is_scalar_v<V>)
    return detail::scalar::sqrt(x);
  else
    return xsimd::sqrt(x);
}

/// Lane-wise `cond ? a : b`; `cond` is a bool for scalars and an xsimd::batch_bool for batches
/// (what a comparison of two V returns).
template <class M, class V>
NORMFLOW_HOST_DEVICE V select(const M& cond, const V& a, const V& b) noexcept {
  if constexpr (std::is_same_v<M, bool>)
    return cond ? a : b;
  else
    return xsimd::select(cond, a, b);
}

/// Alias of select (numpy's name).
template <class M, class V>
NORMFLOW_HOST_DEVICE V where(const M& cond, const V& a, const V& b) noexcept {
  return math::select(cond, a, b);
}

/// Lane-wise minimum (either operand when equal).
template <class V>
NORMFLOW_HOST_DEVICE V min(const V& a, const V& b) noexcept {
  return math::select(b < a, b, a);
}

/// Lane-wise maximum (either operand when equal).
template <class V>
NORMFLOW_HOST_DEVICE V max(const V& a, const V& b) noexcept {
  return math::select(a < b, b, a);
}

/// Logistic sigmoid 1 / (1 + e^{-x}); 0 and 1 in the far tails, never NaN for finite x.
template <class V>
NORMFLOW_HOST_DEVICE V sigmoid(const V& x) noexcept {
  const V one = constant<V>(1);
  return one / (one + math::exp(-x));
}

/// softplus_beta(w) = (1/beta) log(1 + exp(beta w)), beta = ln 2, and w itself when beta w > 20
/// (reference §0.2). softplus(0) = 1.
template <class V>
NORMFLOW_HOST_DEVICE V softplus(const V& w) noexcept {
  const V beta = constant<V>(ln2);
  const V threshold = constant<V>(20);
  const V bw = beta * w;
  // exp's argument is clamped so that the discarded branch stays finite.
  const V smooth = math::log1p(math::exp(math::min(bw, threshold))) / beta;
  return math::select(threshold < bw, w, smooth);
}

/// d softplus(w)/dw = sigmoid(beta w) (exactly 1 on the linear branch beta w > 20).
template <class V>
NORMFLOW_HOST_DEVICE V softplus_grad(const V& w) noexcept {
  const V bw = constant<V>(ln2) * w;
  const V threshold = constant<V>(20);
  return math::select(threshold < bw, constant<V>(1), math::sigmoid(bw));
}

}  // namespace normflow::math

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
