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
/// are found by argument-dependent lookup next to the pack type, so this header does not include
/// the SIMD library.

#include <cmath>
#include <type_traits>

#include <normflow/config.hpp>

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

/// One activation as a type: f(z) and f'(z) given (z, h = f(z)). See the file comment.
struct TanhActivation {
  template <class V>
  NORMFLOW_ALWAYS_INLINE static V f(const V& z) noexcept {
    using std::tanh;
    return tanh(z);
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
