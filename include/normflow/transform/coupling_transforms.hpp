// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Per-site maps of the coupling layers, with parameters from the conditioner (reference 3.3).
///
/// AffineContraction (AffineCoupling_), parameters (t, s) = conditioner channels (0, 1):
///   y = t + x e^{-|s|},                     log_jac = -|s|
///   x = (y - t) e^{|s|},                    log_jac_inv = +|s|
///   adjoint of forward:  gx = gy e^{-|s|},  gt += gy,   gs += (-gy x e^{-|s|} - gl) sgn(s)
///   adjoint of reverse:  gy = gx e^{|s|},   gt += -gx e^{|s|},  gs += (gx x + gl) sgn(s)
///   (sgn(0) = +1: the one-sided derivative; |s| is not differentiable there)
/// Additive (AdditiveCoupling_), parameter t:  y = x + t,  log_jac = 0.

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/transform/math.hpp>
#include <normflow/transform/result.hpp>

namespace normflow {

/// y = t + x e^{-|s|}: the reference AffineCoupling_'s contraction-only affine map.
struct AffineContraction {
  static constexpr index_t num_params = 2;

  template <class V>
  NORMFLOW_HOST_DEVICE static ForwardResult<V> forward(const V& x, const V* p) noexcept {
    const V a = math::abs(p[1]);
    return {p[0] + x * math::exp(V(0) - a), V(0) - a};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static ReverseResult<V> reverse(const V& y, const V* p) noexcept {
    const V a = math::abs(p[1]);
    return {(y - p[0]) * math::exp(a), a};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static V backward(const V& x, const V* p, const V& gy, const V& gl, V* gp) noexcept {
    const V e = math::exp(V(0) - math::abs(p[1]));
    gp[0] += gy;
    gp[1] += (V(0) - gy * x * e - gl) * sign(p[1]);
    return gy * e;
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static V reverse_backward(const V& y, const V* p, const V& gx, const V& gl, V* gp) noexcept {
    const V e = math::exp(math::abs(p[1]));
    const V x = (y - p[0]) * e;
    gp[0] += V(0) - gx * e;
    gp[1] += (gx * x + gl) * sign(p[1]);
    return gx * e;
  }

 private:
  template <class V>
  NORMFLOW_HOST_DEVICE static V sign(const V& s) noexcept {
    return math::select(s < V(0), V(-1), V(1));
  }
};

/// y = x + t: the reference AdditiveCoupling_'s shift (volume preserving).
struct Additive {
  static constexpr index_t num_params = 1;

  template <class V>
  NORMFLOW_HOST_DEVICE static ForwardResult<V> forward(const V& x, const V* p) noexcept {
    return {x + p[0], V(0)};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static ReverseResult<V> reverse(const V& y, const V* p) noexcept {
    return {y - p[0], V(0)};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static V backward(const V&, const V*, const V& gy, const V&, V* gp) noexcept {
    gp[0] += gy;
    return gy;
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static V reverse_backward(const V&, const V*, const V& gx, const V&, V* gp) noexcept {
    gp[0] += V(0) - gx;
    return gx;
  }
};

}  // namespace normflow
