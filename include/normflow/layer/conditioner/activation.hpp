// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Activation: the element-wise nonlinearities of the conditioner networks (reference 3.4),
/// with derivatives written in terms of the pre-activation z and the output h = f(z), both of
/// which the forward pass keeps.
///
/// Maths (sigma(z) = 1 / (1 + e^-z)):
///   tanh        h = tanh z                          f'(z) = 1 - h^2
///   leaky_relu  h = z (z > 0),  0.01 z (z <= 0)     f'(z) = 1 (z > 0),  0.01 (z <= 0)
///   silu        h = z sigma(z)                      f'(z) = sigma(z) (1 + z (1 - sigma(z)))
///   none        h = z                               f'(z) = 1
/// leaky_relu uses PyTorch's default slope 0.01 and PyTorch's choice f'(0) = 0.01.
/// Invariants: every f and f' maps finite z to finite values (silu: e^-z = inf gives sigma = 0,
/// h = -0, f' = 0), so padding lanes stay finite. tanh and silu are smooth; leaky_relu has a kink
/// at 0 (finite-difference tests keep |z| away from it with high probability only).
///
/// The functions take V, a scalar or a host SIMD pack: pack overloads (tanh, exp, select)
/// are found by argument-dependent lookup next to the pack type.
/// tanh of float packs is a rational minimax approximation (fast_tanh: at most 4.4 ulp from the
/// correctly rounded value, odd exactly, half the cost of the library's tanh); scalars and double
/// packs use the library's tanh.

#include <cmath>
#include <type_traits>

#include <normflow/config.hpp>
#include <normflow/simd/pack.hpp>

namespace normflow {

/// The nonlinearity applied after every convolution of a ConvStack but the last.
enum class Activation { tanh, leaky_relu, silu, none };

/// Slope of leaky_relu for z <= 0 (PyTorch's default negative_slope).
inline constexpr double leaky_relu_slope = 0.01;

/// The name of an activation ("tanh", "leaky_relu", "silu", "none"), or nullptr if invalid.
constexpr const char* activation_name(Activation a) noexcept {
  switch (a) {
    case Activation::tanh: return "tanh";
    case Activation::leaky_relu: return "leaky_relu";
    case Activation::silu: return "silu";
    case Activation::none: return "none";
  }
  return nullptr;
}

namespace detail {

/// The scalar type of V (V itself for a scalar, V::value_type for a pack).
template <class V>
struct lane_scalar {
  using type = typename V::value_type;
};
template <class V>
  requires std::is_arithmetic_v<V>
struct lane_scalar<V> {
  using type = V;
};
template <class V>
using lane_scalar_t = typename lane_scalar<V>::type;

/// A pack (or scalar) with every lane equal to c.
template <class V>
NORMFLOW_ALWAYS_INLINE V splat(double c) noexcept {
  return V(lane_scalar_t<V>(c));
}

/// m ? a : b lane-wise.
template <class V, class M>
NORMFLOW_ALWAYS_INLINE V select_lanes(const M& m, const V& a, const V& b) noexcept {
  if constexpr (std::is_arithmetic_v<V>)
    return m ? a : b;
  else
    return select(m, a, b);
}

/// p / q for a float pack whose q is positive and normal (q >= 4.8e-3 in fast_tanh_float). On
/// AVX-512: the reciprocal estimate r (relative error < 2^-14), y0 = p r, then one residual
/// correction y = y0 + r (p - q y0) (relative error ~2^-28 before the final rounding: within one
/// ulp of the rounded quotient). vdivps on zmm issues one result per 8-10 cycles; this is four
/// 1-cycle-throughput operations. Elsewhere p / q.
template <class V>
NORMFLOW_ALWAYS_INLINE V quotient_positive(const V& p, const V& q) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, typename V::arch_type> &&
                std::is_same_v<simd::scalar_t<V>, float>) {
    const V r(_mm512_rcp14_ps(q));
    const V y0 = p * r;
    return simd::fma(r, simd::fma(-q, y0, p), y0);
  } else {
    return p / q;
  }
#else
  return p / q;
#endif
}

/// tanh of a float pack: the [13/6] rational minimax approximation of Eigen's
/// generic_fast_tanh_float (x clamped to +-7.9988, where tanh rounds to +-1 in float; tiny |x|
/// returns x). Measured against the double tanh on 2^20 points of [-12, 12]: at most 4.4 ulp
/// (4.3 with a correctly rounded division; see quotient_positive).
/// Odd: p(x) is odd, q(x) even, the clamp symmetric.
template <class V>
NORMFLOW_ALWAYS_INLINE V fast_tanh_float(const V& a) noexcept {
  const V c(7.99881172180175781f);
  const V x = xsimd::max(xsimd::min(a, c), -c);
  const V x2 = x * x;
  V p = simd::fma(x2, V(-2.76076847742355e-16f), V(2.00018790482477e-13f));
  p = simd::fma(x2, p, V(-8.60467152213735e-11f));
  p = simd::fma(x2, p, V(5.12229709037114e-08f));
  p = simd::fma(x2, p, V(1.48572235717979e-05f));
  p = simd::fma(x2, p, V(6.37261928875436e-04f));
  p = simd::fma(x2, p, V(4.89352455891786e-03f));
  p = x * p;
  V q = simd::fma(x2, V(1.19825839466702e-06f), V(1.18534705686654e-04f));
  q = simd::fma(x2, q, V(2.26843463243900e-03f));
  q = simd::fma(x2, q, V(4.89352518554385e-03f));
  return xsimd::select(xsimd::abs(a) < V(0.0004f), a, quotient_positive(p, q));
}

/// One activation as a type: f(z) and f'(z) given (z, h = f(z)). See the file comment.
struct TanhActivation {
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V f(const V& z) noexcept {
    if constexpr (!std::is_arithmetic_v<V> && std::is_same_v<simd::scalar_t<V>, float>) {
      return fast_tanh_float(z);
    } else {
      using std::tanh;
      return tanh(z);
    }
  }
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V df(const V&, const V& h) noexcept {
    return splat<V>(1) - h * h;
  }
};

struct LeakyReluActivation {
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V f(const V& z) noexcept {
    return select_lanes(z > splat<V>(0), z, splat<V>(leaky_relu_slope) * z);
  }
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V df(const V& z, const V&) noexcept {
    return select_lanes(z > splat<V>(0), splat<V>(1), splat<V>(leaky_relu_slope));
  }
};

struct SiluActivation {
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V sigmoid(const V& z) noexcept {
    using std::exp;
    return splat<V>(1) / (splat<V>(1) + exp(-z));
  }
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V f(const V& z) noexcept {
    return z * sigmoid(z);
  }
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V df(const V& z, const V&) noexcept {
    const V s = sigmoid(z);
    return s * (splat<V>(1) + z * (splat<V>(1) - s));
  }
};

struct IdentityActivation {
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V f(const V& z) noexcept {
    return z;
  }
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V df(const V&, const V&) noexcept {
    return splat<V>(1);
  }
};

/// True when f'(z) is a function of h = f(z) alone (tanh: 1 - h^2; leaky_relu: h > 0 iff z > 0;
/// none): the conditioner then keeps h only, computing it in place over the pre-activation.
constexpr bool derivative_from_output(Activation a) noexcept { return a != Activation::silu; }

/// Calls f(Op{}) with the activation type of a (the switch stays outside the lane loops).
template <class F>
NORMFLOW_ALWAYS_INLINE void with_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::tanh: f(TanhActivation{}); return;
    case Activation::leaky_relu: f(LeakyReluActivation{}); return;
    case Activation::silu: f(SiluActivation{}); return;
    case Activation::none: f(IdentityActivation{}); return;
  }
}

}  // namespace detail
}  // namespace normflow
