// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file The maths of the reference's `DistConvertor_` (§1.5, §3.2) for one element: a learnable
/// monotone map of the real line, Logit o S o Expit (then a softplus scale if final_scale), with
/// knots shared by every element it is applied to.
///
/// Maths. u = sigma(x), v = S(u), z = logit(v) = log v - log1p(-v), y = a z with
///   a = softplus_{ln2}(w_a) if final_scale, else a = 1;
///   log_jac = log sigma'(x) + log S'(u) - log(v (1 - v)) + log a, where
///   log sigma'(x) = -x + 2 log sigma(x) (the reference's form), evaluated as
///   -|x| - 2 log1p(e^{-|x|}) (no overflow).
/// S is the RQ spline of rq_spline.hpp on xlim = ylim = (0, 1) with no extrapolation; symmetric:
///   xlim = ylim = (0.5, 1) with left 'anti' extrapolation, so S(1 - u) = 1 - S(u) (2 Knots - 1
///   effective knots) and the whole map is odd: f(-x) = -f(x), log_jac even.
/// Inverse: z = y/a, v = sigma(z), u = S^{-1}(v), x = logit(u);
///   log_jac_inv = -log a + log sigma'(z) + log|dS^{-1}/dv| - log(u (1 - u)).
/// Adjoint of forward (cotangents gy, gl; every log term gets gl):
///   gz = gy a,  dL/da = gy z,  dL/dlog a = gl,
///   gv = (gz - gl (1 - 2v))/(v (1 - v))           (Logit's adjoint),
///   gu = rq_backward(u; gv, gl)                    (spline's adjoint; adds the knot gradient),
///   gx = gu u (1 - u) + gl (1 - 2u)                (Expit's adjoint).
/// Adjoint of reverse (cotangents gx on x, gl):
///   gu = (gx - gl (1 - 2u))/(u (1 - u)),  gv = rq_reverse_backward(v; gu, gl),
///   gz = gv v (1 - v) + gl (1 - 2v),  gy = gz/a,  dL/da = -gz z/a,  dL/dlog a = -gl.
/// Raw weights: (w_x[K-1], w_y[K-1], w_d[K], w_a) = 3K - 1 per convertor; dL/dw_a =
///   (dL/da + dL/dlog a / a) softplus'(w_a) when final_scale (else w_a is unused, zero gradient).
/// Domain: |x| up to about 36 in double (sigma(x) < 1); beyond, u rounds to 1 and y to +-inf, as in
/// the reference. Oddness holds to rounding (sigma(-x) = 1 - sigma(x) is not exact in floating
/// point).

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/transform/elementwise.hpp>
#include <normflow/transform/math.hpp>
#include <normflow/transform/result.hpp>
#include <normflow/transform/rq_spline.hpp>

namespace normflow {

/// Logit o S o Expit (o softplus scale): the maths of the reference's `DistConvertor_(Knots,
/// symmetric, final_scale)`. Runtime options; trivially copyable; element functions are const
/// members. Two ways to call: with the raw weights p (convenience, rebuilds the knots each call),
/// or with `Prepared` knots built once by prepare() and shared by many elements (then the knot
/// gradients accumulate in a `Prepared<V>` and prepare_backward() maps them to the weights once).
/// \tparam Knots number of user knots of the spline, at least 2
template <index_t Knots>
struct DistConvertor {
  static_assert(Knots >= 2,
                "DistConvertor<Knots>: the spline needs at least 2 knots, e.g. DistConvertor<5>");

  using spline_type = RQSpline<Knots>;
  /// Raw spline weights (w_x, w_y, w_d) first, then the final-scale weight w_a.
  static constexpr index_t spline_params = spline_type::num_params;
  static constexpr index_t num_params = spline_params + 1;

  bool symmetric = false;    ///< knots on [0.5, 1] plus 'anti' reflection: an odd map
  bool final_scale = false;  ///< multiply by softplus(w_a) (reference: Affine_(w_bias=0))
  bool smooth = false;       ///< spline derivatives from the knots' slopes (w_d unused)

  /// Knots and scale, built once from the weights; also the gradient holder for them.
  template <class V>
  struct Prepared {
    typename spline_type::template knots_type<V> knots;
    V scale;      ///< a
    V log_scale;  ///< log a
  };

  /// The spline the options describe.
  NORMFLOW_HOST_DEVICE constexpr spline_type spline() const noexcept {
    spline_type s{};
    s.xlim[0] = s.ylim[0] = symmetric ? 0.5 : 0.0;
    s.xlim[1] = s.ylim[1] = 1.0;
    s.left = symmetric ? Extrapolation::anti : Extrapolation::none;
    s.right = Extrapolation::none;
    s.smooth = smooth;
    return s;
  }

  /// Host-side check of the options (all combinations are valid; kept for a uniform interface).
  void validate() const { spline().validate(); }

  /// Knots and scale from the raw weights p.
  template <class V>
  NORMFLOW_HOST_DEVICE Prepared<V> prepare(const V* p) const noexcept {
    Prepared<V> pr;
    pr.knots = spline().build_knots(p);
    if (final_scale) {
      pr.scale = math::softplus(p[spline_params]);
      pr.log_scale = math::log(pr.scale);
    } else {
      pr.scale = math::constant<V>(1);
      pr.log_scale = math::constant<V>(0);
    }
    return pr;
  }

  /// A zeroed gradient holder matching prepare()'s knot count.
  template <class V>
  NORMFLOW_HOST_DEVICE Prepared<V> zero_gradient() const noexcept {
    Prepared<V> g;
    g.knots.set_zero(spline().layout().count);
    g.scale = g.log_scale = math::constant<V>(0);
    return g;
  }

  /// Adjoint of prepare(): adds dL/dp into gp given the gradient g of the knots and scale.
  template <class V>
  NORMFLOW_HOST_DEVICE void prepare_backward(const V* p, const Prepared<V>& g,
                                             V* gp) const noexcept {
    spline().build_knots_backward(p, g.knots, gp);
    if (final_scale) {
      const V a = math::softplus(p[spline_params]);
      gp[spline_params] += (g.scale + g.log_scale / a) * math::softplus_grad(p[spline_params]);
    }
  }

  /// y = f(x) and log|f'(x)| with prepared knots (KV: V, or V's scalar type for shared knots).
  template <class V, class KV>
  NORMFLOW_HOST_DEVICE ForwardResult<V> forward(const V& x, const Prepared<KV>& pr) const noexcept {
    const V u = math::sigmoid(x);
    const auto s = rq_forward(u, pr.knots);
    const V lv = math::log(s.y), l1v = math::log1p(-s.y);
    return {V(pr.scale) * (lv - l1v), Expit::log_jac(x) + s.log_jac - (lv + l1v) + V(pr.log_scale)};
  }

  /// x = f^{-1}(y) and log|df^{-1}/dy|.
  template <class V, class KV>
  NORMFLOW_HOST_DEVICE ReverseResult<V> reverse(const V& y, const Prepared<KV>& pr) const noexcept {
    const V z = y / V(pr.scale);
    const V v = math::sigmoid(z);
    const auto s = rq_reverse(v, pr.knots);
    const V lu = math::log(s.x), l1u = math::log1p(-s.x);
    return {lu - l1u, Expit::log_jac(z) + s.log_jac - (lu + l1u) - V(pr.log_scale)};
  }

  /// Adjoint of forward: returns dL/dx; adds the knot and scale gradients into g.
  template <class V, class KV>
  NORMFLOW_HOST_DEVICE V backward(const V& x, const Prepared<KV>& pr, const V& gy, const V& gl,
                                  Prepared<V>& g) const noexcept {
    const V one = math::constant<V>(1), two = math::constant<V>(2);
    const V u = math::sigmoid(x);
    const V v = rq_forward(u, pr.knots).y;
    const V z = math::log(v) - math::log1p(-v);
    const V gz = gy * V(pr.scale);
    g.scale += gy * z;
    g.log_scale += gl;
    const V gv = (gz - gl * (one - two * v)) / (v * (one - v));
    const V gu = rq_backward(u, pr.knots, gv, gl, g.knots);
    return gu * u * (one - u) + gl * (one - two * u);
  }

  /// Adjoint of reverse (cotangent gx on x, gl on its log_jac): returns dL/dy; adds into g.
  template <class V, class KV>
  NORMFLOW_HOST_DEVICE V reverse_backward(const V& y, const Prepared<KV>& pr, const V& gx,
                                          const V& gl, Prepared<V>& g) const noexcept {
    const V one = math::constant<V>(1), two = math::constant<V>(2);
    const V a = V(pr.scale);
    const V z = y / a;
    const V v = math::sigmoid(z);
    const V u = rq_reverse(v, pr.knots).x;
    const V gu = (gx - gl * (one - two * u)) / (u * (one - u));
    const V gv = rq_reverse_backward(v, pr.knots, gu, gl, g.knots);
    const V gz = gv * v * (one - v) + gl * (one - two * v);
    g.scale -= gz * z / a;
    g.log_scale -= gl;
    return gz / a;
  }

  /// forward from the raw weights p (rebuilds the knots).
  template <class V>
  NORMFLOW_HOST_DEVICE ForwardResult<V> forward(const V& x, const V* p) const noexcept {
    return forward(x, prepare(p));
  }
  /// reverse from the raw weights p.
  template <class V>
  NORMFLOW_HOST_DEVICE ReverseResult<V> reverse(const V& y, const V* p) const noexcept {
    return reverse(y, prepare(p));
  }
  /// Adjoint of forward: returns dL/dx and adds dL/dp into gp.
  template <class V>
  NORMFLOW_HOST_DEVICE V backward(const V& x, const V* p, const V& gy, const V& gl,
                                  V* gp) const noexcept {
    Prepared<V> g = zero_gradient<V>();
    const V gx = backward(x, prepare(p), gy, gl, g);
    prepare_backward(p, g, gp);
    return gx;
  }
  /// Adjoint of reverse: returns dL/dy and adds dL/dp into gp.
  template <class V>
  NORMFLOW_HOST_DEVICE V reverse_backward(const V& y, const V* p, const V& gx, const V& gl,
                                          V* gp) const noexcept {
    Prepared<V> g = zero_gradient<V>();
    const V gy = reverse_backward(y, prepare(p), gx, gl, g);
    prepare_backward(p, g, gp);
    return gy;
  }
};

}  // namespace normflow
