// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Element-wise bijections of reference §1.5/§3.1: Identity, Affine, Tanh, Expit, Logit.
///
/// Maths. Each transform maps one real x to y = f(x) with log_jac = log|f'(x)|; reverse maps y back
/// with log|(f^{-1})'(y)| = -log|f'(x)|. The adjoints use L with dL/dy = gy, dL/dlog_jac = gl:
///   backward:         gx = gy f'(x) + gl (log f')'(x),            gp += gy df/dp + gl dlog f'/dp
///   reverse_backward: gy = gx (f^{-1})'(y) + gl dlog(f^{-1})'/dy,
///                     gp likewise for x(y) and its log_jac.
///
/// Identity: y = x, log_jac = 0.
/// Affine  (params (w_s, w_b)): a = softplus(w_s),
///   a' = da/dw_s = sigmoid(ln2 w_s) (1 when ln2 w_s > 20),
///   y = a x + w_b,            log_jac = log a,
///   x = (y - w_b) / a,        log_jac_inv = -log a,
///   dy/dx = a, dy/dw_s = x a', dy/dw_b = 1, dlog_jac/dw_s = a'/a;
///   dx/dy = 1/a, dx/dw_b = -1/a, dx/da = -x/a, dlog_jac_inv/da = -1/a.
///   Zero weights: a = 1, the identity.
/// Tanh: y = tanh x,           log_jac = -2 log cosh x = -2|x| - 2 log1p(e^{-2|x|}) + 2 ln 2,
///   dy/dx = 1 - y^2, dlog_jac/dx = -2 tanh x = -2y;
///   x = atanh y,              log_jac_inv = -log(1 - y^2) = -log1p(-y) - log1p(y),
///   dx/dy = 1/(1 - y^2), dlog_jac_inv/dy = 2y/(1 - y^2).
/// Expit: y = 1/(1 + e^{-x}),  log_jac = -x + 2 log y = log(y (1-y)) = -|x| - 2 log1p(e^{-|x|}),
///   dy/dx = y (1-y), dlog_jac/dx = 1 - 2y;
///   x = log y - log1p(-y),    log_jac_inv = -log y - log1p(-y),
///   dx/dy = 1/(y (1-y)), dlog_jac_inv/dy = -(1 - 2y)/(y (1-y)).
/// Logit: the inverse of Expit (forward = Expit::reverse, reverse = Expit::forward).
///
/// The log-Jacobians are the reference's, rewritten so that no intermediate overflows (|x| up to
/// the float range): the |x| forms above equal the reference's -2 ln cosh x and -x + 2 ln y.
/// Domains: Tanh::reverse and Expit::reverse need |y| < 1 and 0 < y < 1; outside them NaN or inf
/// flows through (no exceptions inside element functions).

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/transform/math.hpp>
#include <normflow/transform/result.hpp>

namespace normflow {

/// y = x, log_jac = 0. No parameters.
struct Identity {
  static constexpr index_t num_params = 0;

  template <class V>
  NORMFLOW_HOST_DEVICE static ForwardResult<V> forward(const V& x, const V* = nullptr) noexcept {
    return {x, math::constant<V>(0)};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static ReverseResult<V> reverse(const V& y, const V* = nullptr) noexcept {
    return {y, math::constant<V>(0)};
  }
  /// Adjoint of forward: dL/dx = gy.
  template <class V>
  NORMFLOW_HOST_DEVICE static V backward(const V&, const V*, const V& gy, const V&, V*) noexcept {
    return gy;
  }
  /// Adjoint of reverse: dL/dy = gx.
  template <class V>
  NORMFLOW_HOST_DEVICE static V reverse_backward(const V&, const V*, const V& gx, const V&,
                                                 V*) noexcept {
    return gx;
  }
};

/// The reference's `Affine_`: y = softplus(w_s) x + w_b, log_jac = log softplus(w_s).
/// Parameters per element: p = (w_s, w_b); zeros give the identity.
struct Affine {
  static constexpr index_t num_params = 2;

  template <class V>
  NORMFLOW_HOST_DEVICE static ForwardResult<V> forward(const V& x, const V* p) noexcept {
    const V a = math::softplus(p[0]);
    return {a * x + p[1], math::log(a)};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static ReverseResult<V> reverse(const V& y, const V* p) noexcept {
    const V a = math::softplus(p[0]);
    return {(y - p[1]) / a, -math::log(a)};
  }
  /// Adjoint of forward: returns dL/dx = gy a; adds dL/dw_s = (gy x + gl/a) a' and dL/dw_b = gy.
  template <class V>
  NORMFLOW_HOST_DEVICE static V backward(const V& x, const V* p, const V& gy, const V& gl,
                                         V* gp) noexcept {
    const V a = math::softplus(p[0]);
    gp[0] += (gy * x + gl / a) * math::softplus_grad(p[0]);
    gp[1] += gy;
    return gy * a;
  }
  /// Adjoint of reverse: returns dL/dy = gx / a; adds dL/dw_s = -(gx x + gl)/a a' and
  /// dL/dw_b = -gx / a, where x = (y - w_b)/a.
  template <class V>
  NORMFLOW_HOST_DEVICE static V reverse_backward(const V& y, const V* p, const V& gx, const V& gl,
                                                 V* gp) noexcept {
    const V a = math::softplus(p[0]);
    const V x = (y - p[1]) / a;
    const V gy = gx / a;
    gp[0] -= (gx * x + gl) / a * math::softplus_grad(p[0]);
    gp[1] -= gy;
    return gy;
  }
};

/// The reference's `Tanh_` (reverse = `ArcTanh_`): y = tanh x, log_jac = -2 log cosh x.
struct Tanh {
  static constexpr index_t num_params = 0;

  template <class V>
  NORMFLOW_HOST_DEVICE static ForwardResult<V> forward(const V& x, const V* = nullptr) noexcept {
    const V two = math::constant<V>(2);
    const V ax = math::abs(x);
    // -2 log cosh x without overflow: log cosh x = |x| + log1p(e^{-2|x|}) - ln 2.
    const V log_jac = two * (math::constant<V>(math::ln2) - ax - math::log1p(math::exp(-two * ax)));
    return {math::tanh(x), log_jac};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static ReverseResult<V> reverse(const V& y, const V* = nullptr) noexcept {
    // log_jac_inv = +2 log cosh(atanh y) = -log((1 - y)(1 + y)).
    return {math::atanh(y), -(math::log1p(-y) + math::log1p(y))};
  }
  /// Adjoint of forward: dL/dx = gy (1 - y^2) - 2 gl y with y = tanh x.
  template <class V>
  NORMFLOW_HOST_DEVICE static V backward(const V& x, const V*, const V& gy, const V& gl,
                                         V*) noexcept {
    const V t = math::tanh(x);
    return gy * (math::constant<V>(1) - t * t) - math::constant<V>(2) * gl * t;
  }
  /// Adjoint of reverse: dL/dy = (gx + 2 gl y) / (1 - y^2).
  template <class V>
  NORMFLOW_HOST_DEVICE static V reverse_backward(const V& y, const V*, const V& gx, const V& gl,
                                                 V*) noexcept {
    const V one = math::constant<V>(1);
    return (gx + math::constant<V>(2) * gl * y) / ((one - y) * (one + y));
  }
};

/// The reference's `Expit_` (reverse = `Logit_`): y = 1/(1 + e^{-x}), log_jac = log(y (1 - y)).
struct Expit {
  static constexpr index_t num_params = 0;

  template <class V>
  NORMFLOW_HOST_DEVICE static ForwardResult<V> forward(const V& x, const V* = nullptr) noexcept {
    return {math::sigmoid(x), log_jac(x)};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static ReverseResult<V> reverse(const V& y, const V* = nullptr) noexcept {
    const V ly = math::log(y), l1y = math::log1p(-y);
    return {ly - l1y, -(ly + l1y)};
  }
  /// Adjoint of forward: dL/dx = gy y (1 - y) + gl (1 - 2y).
  template <class V>
  NORMFLOW_HOST_DEVICE static V backward(const V& x, const V*, const V& gy, const V& gl,
                                         V*) noexcept {
    const V one = math::constant<V>(1);
    const V y = math::sigmoid(x);
    return gy * y * (one - y) + gl * (one - math::constant<V>(2) * y);
  }
  /// Adjoint of reverse: dL/dy = (gx - gl (1 - 2y)) / (y (1 - y)).
  template <class V>
  NORMFLOW_HOST_DEVICE static V reverse_backward(const V& y, const V*, const V& gx, const V& gl,
                                                 V*) noexcept {
    const V one = math::constant<V>(1);
    return (gx - gl * (one - math::constant<V>(2) * y)) / (y * (one - y));
  }
  /// log sigma'(x) = -x + 2 log sigma(x), evaluated as -|x| - 2 log1p(e^{-|x|}) (no overflow).
  template <class V>
  NORMFLOW_HOST_DEVICE static V log_jac(const V& x) noexcept {
    const V ax = math::abs(x);
    return -ax - math::constant<V>(2) * math::log1p(math::exp(-ax));
  }
};

/// The reference's `Logit_` (reverse = `Expit_`): y = log(x / (1 - x)) on (0, 1),
/// log_jac = -log(x (1 - x)).
struct Logit {
  static constexpr index_t num_params = 0;

  template <class V>
  NORMFLOW_HOST_DEVICE static ForwardResult<V> forward(const V& x, const V* = nullptr) noexcept {
    const auto r = Expit::reverse(x);
    return {r.x, r.log_jac};
  }
  template <class V>
  NORMFLOW_HOST_DEVICE static ReverseResult<V> reverse(const V& y, const V* = nullptr) noexcept {
    const auto r = Expit::forward(y);
    return {r.y, r.log_jac};
  }
  /// Adjoint of forward: dL/dx = (gy - gl (1 - 2x)) / (x (1 - x)).
  template <class V>
  NORMFLOW_HOST_DEVICE static V backward(const V& x, const V* p, const V& gy, const V& gl,
                                         V* gp) noexcept {
    return Expit::reverse_backward(x, p, gy, gl, gp);
  }
  /// Adjoint of reverse: dL/dy = gx x (1 - x) + gl (1 - 2x) with x = sigma(y).
  template <class V>
  NORMFLOW_HOST_DEVICE static V reverse_backward(const V& y, const V* p, const V& gx, const V& gl,
                                                 V* gp) noexcept {
    return Expit::backward(y, p, gx, gl, gp);
  }
};

}  // namespace normflow
