// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Rational-quadratic spline (reference §3.2; Durkan et al. 2019, arXiv:1906.04032), on two
/// levels: evaluation given effective knots (`RQKnots`, `rq_forward`, `rq_reverse`, `rq_backward`,
/// `rq_reverse_backward`) and `RQSpline<Knots>`, which builds the knots from raw weights.
///
/// Maths.
/// Segment (knots (x0, y0, d0), (x1, y1, d1)): h = x1 - x0, dy = y1 - y0, m = dy/h,
///   theta = (x - x0)/h, s = d1 + d0 - 2m, q = theta (1 - theta), den = m + s q,
///   y      = y0 + dy theta (m theta + d0 (1 - theta)) / den  =  y0 + dy R,
///   N      = d0 + 2 (m - d0) theta + s theta^2  =  d1 theta^2 + 2 m q + d0 (1 - theta)^2,
///   dy/dx  = g' = m^2 N / den^2,      log_jac = log g'.
/// Inverse (knots looked up in y): eta = (y - y0)/dy, a2 = (2m - d1 - d0) eta + d0 - m,
///   a1 = -a2 - m, a0 = m eta, delta = sqrt(a1^2 - 4 a0 a2), theta = 2 a0/(delta - a1)
///   (the root (-a1 - delta)/(2 a2) multiplied by its conjugate: no 0/0 at a2 = 0),
///   x = x0 + h theta, log_jac_inv = -log g'(theta).
/// Segment lookup: i = #{knots strictly below v}, seg = clamp(i, 1, n - 1) - 1; for
///   non-decreasing knots seg = #{j in [1, n-2] : k_j < v}. Outside the knots the boundary
///   segment's formula is used as it stands (theta outside [0, 1]).
/// Partial derivatives at fixed x, all used by the adjoints
///   (numy = theta (m theta + d0 (1 - theta)), so R = numy/den):
///   dR/dtheta = m N/den^2,  dR/dm = (theta^2 den - numy (1 - 2q))/den^2,
///   dR/dd0 = q (den - numy)/den^2,  dR/dd1 = -numy q/den^2,
///   dlog_jac/dtheta = (2 (m - d0) + 2 s theta)/N - 2 s (1 - 2 theta)/den,
///   dlog_jac/dm = 2/m + 2q/N - 2 (1 - 2q)/den,
///   dlog_jac/dd0 = (1 - theta)^2/N - 2q/den,  dlog_jac/dd1 = theta^2/N - 2q/den;
///   with G_t = gy dy dR/dtheta + gl dlog_jac/dtheta, G_m = gy dy dR/dm + gl dlog_jac/dm,
///   dtheta/dx = 1/h, dtheta/dx0 = (theta - 1)/h, dtheta/dx1 = -theta/h,
///   dm/dy1 = -dm/dy0 = 1/h, dm/dx0 = -dm/dx1 = m/h:
///   dL/dx = G_t/h (this includes gl dlog_jac/dx, which is non-zero for the spline),
///   dL/dx0 = (G_t (theta - 1) + G_m m)/h,  dL/dx1 = -(G_t theta + G_m m)/h,
///   dL/dy0 = gy - gy R - G_m/h,  dL/dy1 = gy R + G_m/h,
///   dL/dd0 = gy dy dR/dd0 + gl dlog_jac/dd0,  dL/dd1 likewise.
/// Adjoint of the inverse by the implicit-function theorem (x = f^{-1}(y), f' = g'):
///   with gxt = gx - gl dlog_jac/dx at x,   dL/dy = gxt/g',
///   dL/dk = -(gxt/g') df/dk - gl dlog_jac/dk, i.e. the forward adjoint at x with cotangents
///   (-gxt/g', -gl), evaluated on the segment found in y.
/// Knots from raw weights (m = Knots user knots; layout (w_x[m-1], w_y[m-1], w_d[m])):
///   s = softmax(w_x) (max subtracted), c_0 = 0, c_j = s_0 + ... + s_{j-1},
///   knots_x_j = xlim0 + (xlim1 - xlim0) c_j (same for y with ylim), knots_d = softplus_{ln2}(w_d);
///   smooth: m_k = (y_{k+1} - y_k)/(x_{k+1} - x_k), d_0 = m_0, d_k = (m_{k-1} + m_k)/2,
///   d_{m-1} = m_{m-2} (w_d unused, zero gradient).
///   Adjoints: dL/dc_j = (xlim1 - xlim0) dL/dx_j, dL/ds_i = sum_{j > i} dL/dc_j,
///   dL/dw_i = s_i (dL/ds_i - sum_k s_k dL/ds_k); dL/dw_d = dL/dd softplus'(w_d);
///   smooth: dm_k/dy_{k+1} = -dm_k/dy_k = 1/h_k, dm_k/dx_k = -dm_k/dx_{k+1} = m_k/h_k.
/// Augmentation (reference `AugmentKnots`, in its order: 'linear' knots first, then 'anti' on the
///   augmented knots): linear left adds (x_0 - 1, y_0 - d_0, d_0), right (x_l + 1, y_l + d_l, d_l)
///   (adjoint: dy_f feeds y and +-d); anti left prepends (2 x_0 - x_j, 2 y_0 - y_j, d_j) for
///   j = n-1 ... 1, anti right appends (2 x_l - x_j, 2 y_l - y_j, d_j) for j = n-2 ... 0
///   (adjoint: -1 to knot j, +2 to the centre; d copied).
/// Counts: none m; one linear m+1; both linear m+2; one anti 2m-1; anti + linear 2m+1;
///   both anti 3m-2.
/// Invariants: increasing knots and d > 0 give a strictly increasing map on the knots' range;
///   'linear' tails are linear (up to rounding of the fiducial slope); 'anti' makes the map
///   point-symmetric about the boundary knot; all-zero weights give the identity on xlim = ylim.

#include <normflow/config.hpp>
#include <normflow/errors.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/transform/math.hpp>
#include <normflow/transform/result.hpp>

namespace normflow {

/// How the spline continues beyond its first or last user knot (reference `extrap`).
enum class Extrapolation {
  none,    ///< the boundary segment's formula continues (the reference default; may reach a pole)
  linear,  ///< a fiducial knot one unit out with the boundary slope: linear tails
  anti,    ///< point reflection of the other knots through the boundary knot
};

/// Effective knots of a rational-quadratic spline: positions x, values y, derivatives d.
/// Also used as the gradient holder (dL/dx_k, dL/dy_k, dL/dd_k) by the adjoints.
/// \tparam V        scalar or xsimd::batch (one spline per lane)
/// \tparam MaxKnots capacity; `count` knots (2 <= count <= MaxKnots) are in use
template <class V, index_t MaxKnots>
struct RQKnots {
  static_assert(MaxKnots >= 2, "RQKnots<V, MaxKnots>: a spline needs room for at least 2 knots");
  static constexpr index_t max_knots = MaxKnots;
  V x[MaxKnots];  ///< non-decreasing positions
  V y[MaxKnots];  ///< non-decreasing values
  V d[MaxKnots];  ///< derivatives dy/dx at the knots (> 0)
  index_t count;  ///< knots in use

  /// Sets count = n and the first n knots to zero (the start of a gradient accumulation).
  NORMFLOW_HOST_DEVICE void set_zero(index_t n) noexcept {
    count = n;
    for (index_t j = 0; j < n; ++j) x[j] = y[j] = d[j] = math::constant<V>(0);
  }
};

namespace detail {

/// The knots of one segment, gathered lane by lane; `index` is the segment number held as V.
template <class V>
struct RQSegment {
  V x0, x1, y0, y1, d0, d1, index;
};

/// Segment of v among `key` (the knots' x for forward, y for reverse): the left knot is the last
/// of key[1 .. n-2] strictly below v, else knot 0 (reference: searchsorted, then clamp).
template <class V, class KV, index_t N>
NORMFLOW_HOST_DEVICE RQSegment<V> rq_lookup(const V& v, const KV* key,
                                            const RQKnots<KV, N>& k) noexcept {
  const index_t n_seg = k.count - 1;
  if constexpr (math::is_scalar_v<V>) {
    index_t s = 0;
    while (s + 1 < n_seg && key[s + 1] < v) ++s;  // key non-decreasing: stops at the first miss
    return {V(k.x[s]), V(k.x[s + 1]), V(k.y[s]), V(k.y[s + 1]), V(k.d[s]), V(k.d[s + 1]), V(s)};
  } else {
    // Lanes may sit in different segments: a branch-free select chain over the knots.
    RQSegment<V> g;
    g.x0 = V(k.x[0]);
    g.x1 = V(k.x[1]);
    g.y0 = V(k.y[0]);
    g.y1 = V(k.y[1]);
    g.d0 = V(k.d[0]);
    g.d1 = V(k.d[1]);
    g.index = math::constant<V>(0);
    for (index_t j = 1; j < n_seg; ++j) {
      const auto c = V(key[j]) < v;
      g.x0 = math::select(c, V(k.x[j]), g.x0);
      g.x1 = math::select(c, V(k.x[j + 1]), g.x1);
      g.y0 = math::select(c, V(k.y[j]), g.y0);
      g.y1 = math::select(c, V(k.y[j + 1]), g.y1);
      g.d0 = math::select(c, V(k.d[j]), g.d0);
      g.d1 = math::select(c, V(k.d[j + 1]), g.d1);
      g.index = math::select(c, math::constant<V>(j), g.index);
    }
    return g;
  }
}

/// Adds the segment gradient `g` into the knots of segment `seg.index` (lane-wise).
template <class V, index_t N>
NORMFLOW_HOST_DEVICE void rq_scatter(const RQSegment<V>& seg, const RQSegment<V>& g, index_t count,
                                     RQKnots<V, N>& gk) noexcept {
  if constexpr (math::is_scalar_v<V>) {
    const index_t s = index_t(seg.index);
    gk.x[s] += g.x0;
    gk.x[s + 1] += g.x1;
    gk.y[s] += g.y0;
    gk.y[s + 1] += g.y1;
    gk.d[s] += g.d0;
    gk.d[s + 1] += g.d1;
  } else {
    const V zero = math::constant<V>(0);
    for (index_t j = 0; j + 1 < count; ++j) {
      const auto c = seg.index == math::constant<V>(j);
      gk.x[j] += math::select(c, g.x0, zero);
      gk.x[j + 1] += math::select(c, g.x1, zero);
      gk.y[j] += math::select(c, g.y0, zero);
      gk.y[j + 1] += math::select(c, g.y1, zero);
      gk.d[j] += math::select(c, g.d0, zero);
      gk.d[j + 1] += math::select(c, g.d1, zero);
    }
  }
}

/// Segment quantities at theta (names as in the Maths block).
template <class V>
struct RQLocal {
  V h, dy, m, s, theta, q, den, numy, num, y, grad;
};

/// Evaluates the segment at theta; the operation order follows the reference.
template <class V>
NORMFLOW_HOST_DEVICE RQLocal<V> rq_local(const RQSegment<V>& g, const V& theta) noexcept {
  const V one = math::constant<V>(1), two = math::constant<V>(2);
  RQLocal<V> l;
  l.h = g.x1 - g.x0;
  l.dy = g.y1 - g.y0;
  l.m = l.dy / l.h;
  l.s = g.d1 + g.d0 - two * l.m;
  l.theta = theta;
  l.q = theta * (one - theta);
  l.den = l.m + l.s * theta * (one - theta);
  l.numy = theta * (l.m * theta + g.d0 * (one - theta));
  l.num = g.d0 + two * (l.m - g.d0) * theta + l.s * (theta * theta);
  l.y = g.y0 + l.dy * theta * (l.m * theta + g.d0 * (one - theta)) / l.den;
  l.grad = l.m * l.m * l.num / (l.den * l.den);
  return l;
}

/// dlog_jac/dtheta at fixed knots.
template <class V>
NORMFLOW_HOST_DEVICE V rq_dlogjac_dtheta(const RQLocal<V>& l, const V& d0) noexcept {
  const V one = math::constant<V>(1), two = math::constant<V>(2);
  return two * ((l.m - d0) + l.s * l.theta) / l.num - two * l.s * (one - two * l.theta) / l.den;
}

/// theta of the inverse: the closed-form quadratic root 2 a0/(delta - a1).
template <class V>
NORMFLOW_HOST_DEVICE V rq_inverse_theta(const RQSegment<V>& g, const V& y) noexcept {
  const V two = math::constant<V>(2), four = math::constant<V>(4);
  const V dy = g.y1 - g.y0;
  const V m = dy / (g.x1 - g.x0);
  const V eta = (y - g.y0) / dy;
  const V a2 = (two * m - g.d1 - g.d0) * eta + g.d0 - m;
  const V a1 = -a2 - m;
  const V a0 = m * eta;
  const V delta = math::sqrt(a1 * a1 - four * a0 * a2);
  return two * a0 / (delta - a1);
}

/// Adjoint of one segment at fixed x for L = gy y + gl log_jac: fills gg with dL/d(segment
/// knots) and returns dL/dx (formulas in the Maths block).
template <class V>
NORMFLOW_HOST_DEVICE V rq_segment_adjoint(const RQSegment<V>& g, const RQLocal<V>& l, const V& gy,
                                          const V& gl, RQSegment<V>& gg) noexcept {
  const V one = math::constant<V>(1), two = math::constant<V>(2);
  const V t = l.theta, q = l.q, m = l.m;
  const V inv_den = one / l.den;
  const V inv_den2 = inv_den * inv_den;
  const V inv_num = one / l.num;
  const V one_m_2q = one - two * q;

  const V r = l.numy * inv_den;
  const V r_t = m * l.num * inv_den2;
  const V r_m = (t * t * l.den - l.numy * one_m_2q) * inv_den2;
  const V r_d0 = q * (l.den - l.numy) * inv_den2;
  const V r_d1 = -l.numy * q * inv_den2;

  const V lj_t = rq_dlogjac_dtheta(l, g.d0);
  const V lj_m = two / m + two * q * inv_num - two * one_m_2q * inv_den;
  const V lj_d0 = (one - t) * (one - t) * inv_num - two * q * inv_den;
  const V lj_d1 = t * t * inv_num - two * q * inv_den;

  const V gdy = gy * l.dy;
  const V g_t = gdy * r_t + gl * lj_t;
  const V g_m = gdy * r_m + gl * lj_m;
  const V g_r = gy * r;
  const V inv_h = one / l.h;

  gg.d0 = gdy * r_d0 + gl * lj_d0;
  gg.d1 = gdy * r_d1 + gl * lj_d1;
  gg.x0 = (g_t * (t - one) + g_m * m) * inv_h;
  gg.x1 = -(g_t * t + g_m * m) * inv_h;
  gg.y0 = gy - g_r - g_m * inv_h;
  gg.y1 = g_r + g_m * inv_h;
  gg.index = g.index;
  return g_t * inv_h;
}

}  // namespace detail

/// y = S(x) and log S'(x) for effective knots k (one spline per lane when KV is a batch; shared
/// knots when KV is the scalar type of a batch V).
template <class V, class KV, index_t N>
NORMFLOW_HOST_DEVICE ForwardResult<V> rq_forward(const V& x, const RQKnots<KV, N>& k) noexcept {
  const auto g = detail::rq_lookup(x, k.x, k);
  const auto l = detail::rq_local(g, (x - g.x0) / (g.x1 - g.x0));
  return {l.y, math::log(l.grad)};
}

/// x = S^{-1}(y) (segment looked up in the knots' y) and log|dx/dy| = -log S'(x).
template <class V, class KV, index_t N>
NORMFLOW_HOST_DEVICE ReverseResult<V> rq_reverse(const V& y, const RQKnots<KV, N>& k) noexcept {
  const auto g = detail::rq_lookup(y, k.y, k);
  const V theta = detail::rq_inverse_theta(g, y);
  const auto l = detail::rq_local(g, theta);
  return {g.x0 + (g.x1 - g.x0) * theta, -math::log(l.grad)};
}

/// Adjoint of rq_forward: returns dL/dx for L = gy y + gl log_jac and adds dL/d(knots) of the
/// segment used into gk (gk.count must equal k.count).
template <class V, class KV, index_t N>
NORMFLOW_HOST_DEVICE V rq_backward(const V& x, const RQKnots<KV, N>& k, const V& gy, const V& gl,
                                   RQKnots<V, N>& gk) noexcept {
  const auto g = detail::rq_lookup(x, k.x, k);
  const auto l = detail::rq_local(g, (x - g.x0) / (g.x1 - g.x0));
  detail::RQSegment<V> gg;
  const V gx = detail::rq_segment_adjoint(g, l, gy, gl, gg);
  detail::rq_scatter(g, gg, k.count, gk);
  return gx;
}

/// Adjoint of rq_reverse: cotangents gx on x and gl on its log_jac; returns dL/dy and adds
/// dL/d(knots) into gk (gk.count must equal k.count).
template <class V, class KV, index_t N>
NORMFLOW_HOST_DEVICE V rq_reverse_backward(const V& y, const RQKnots<KV, N>& k, const V& gx,
                                           const V& gl, RQKnots<V, N>& gk) noexcept {
  const auto g = detail::rq_lookup(y, k.y, k);
  const auto l = detail::rq_local(g, detail::rq_inverse_theta(g, y));
  // x depends on y and the knots; the inverse's log_jac = -log_jac(x(y), knots).
  const V gxt = gx - gl * detail::rq_dlogjac_dtheta(l, g.d0) / l.h;
  const V gy = gxt / l.grad;
  detail::RQSegment<V> gg;
  detail::rq_segment_adjoint(g, l, -gy, -gl, gg);
  detail::rq_scatter(g, gg, k.count, gk);
  return gy;
}

/// The reference's learnable spline (`SplineNet` / the per-site spline of `RQSplineCoupling_`):
/// `Knots` user knots built from 3*Knots - 2 raw weights per element, laid out (w_x[Knots-1],
/// w_y[Knots-1], w_d[Knots]) as the reference's feature-map split (m-1, m-1, m). Options are
/// runtime values (host-validated by validate()); the object is trivially copyable and its
/// element functions are const members (call them through an instance, as for static ones).
/// With `smooth`, w_d is ignored (its gradient is zero) and the derivatives come from the knots.
/// \tparam Knots number of user knots, at least 2
template <index_t Knots>
struct RQSpline {
  static_assert(Knots >= 2,
                "RQSpline<Knots>: a spline needs at least 2 knots (one segment), e.g. RQSpline<5>");

  static constexpr index_t knots = Knots;
  static constexpr index_t num_params = 3 * Knots - 2;
  /// Capacity for the effective knots of every extrapolation choice (both 'anti': 3 Knots - 2;
  /// 'anti' with 'linear': 2 Knots + 1; both 'linear': Knots + 2).
  static constexpr index_t max_knots = [] {
    index_t n = 3 * Knots - 2;
    if (2 * Knots + 1 > n) n = 2 * Knots + 1;
    if (Knots + 2 > n) n = Knots + 2;
    return n;
  }();
  template <class V>
  using knots_type = RQKnots<V, max_knots>;

  double xlim[2] = {0, 1};  ///< first and last user knot positions (reference `xlim`)
  double ylim[2] = {0, 1};  ///< first and last user knot values (reference `ylim`)
  Extrapolation left = Extrapolation::none;
  Extrapolation right = Extrapolation::none;
  bool smooth = false;  ///< derivatives from the knots' slopes instead of w_d
  /// Minimum bin width and height as a fraction of xlim/ylim (Durkan et al.'s min_bin_width):
  /// s_i = min_bin + (1 - min_bin (Knots - 1)) softmax(w)_i. 0 (the reference) allows bins to
  /// collapse, which makes the inverse ill-conditioned; 1e-3 is a common safeguard.
  double min_bin = 0;
  /// Minimum knot derivative: d = min_derivative + softplus(w_d) (0 in the reference).
  double min_derivative = 0;

  /// Host-side check of the options; throws ParameterError naming the offending option.
  void validate() const {
    constexpr const char* where = "RQSpline";
    require_finite(xlim[0], where, "xlim[0]");
    require_finite(xlim[1], where, "xlim[1]");
    require_finite(ylim[0], where, "ylim[0]");
    require_finite(ylim[1], where, "ylim[1]");
    if (!(xlim[0] < xlim[1]))
      throw ParameterError(
          detail::concat(where, ": xlim[0] = ", xlim[0], " must be below xlim[1] = ", xlim[1]));
    if (!(ylim[0] < ylim[1]))
      throw ParameterError(
          detail::concat(where, ": ylim[0] = ", ylim[0], " must be below ylim[1] = ", ylim[1]));
    if (!(min_bin >= 0 && min_bin * double(Knots - 1) < 1))
      throw ParameterError(detail::concat(where, ": min_bin = ", min_bin, " is outside the valid range [0, 1/",
                                          Knots - 1, ")"));
    if (!(min_derivative >= 0) || !(min_derivative < 1e6))
      throw ParameterError(detail::concat(where, ": min_derivative = ", min_derivative, " must be in [0, 1e6)"));
    check_extrapolation(left, "left");
    check_extrapolation(right, "right");
  }

  /// Where the blocks of the effective knots sit (see the Maths block, "Augmentation").
  struct Layout {
    index_t lin_left, lin_right;  ///< 1 where a linear fiducial knot is added
    bool anti_left, anti_right;
    index_t n1;     ///< knots after the linear step
    index_t off;    ///< index of the linear-step block's first knot among the effective knots
    index_t count;  ///< effective knots
  };
  NORMFLOW_HOST_DEVICE constexpr Layout layout() const noexcept {
    Layout l{};
    l.lin_left = left == Extrapolation::linear ? 1 : 0;
    l.lin_right = right == Extrapolation::linear ? 1 : 0;
    l.anti_left = left == Extrapolation::anti;
    l.anti_right = right == Extrapolation::anti;
    l.n1 = Knots + l.lin_left + l.lin_right;
    l.off = l.anti_left ? l.n1 - 1 : 0;
    l.count = l.n1 + (l.anti_left ? l.n1 - 1 : 0) + (l.anti_right ? l.n1 - 1 : 0);
    return l;
  }

  /// The user knots (before augmentation) and the softmax values they came from.
  template <class V>
  struct UserKnots {
    V x[Knots], y[Knots], d[Knots];
    V sx[Knots - 1], sy[Knots - 1];
  };

  /// User knots from the raw weights p = (w_x, w_y, w_d).
  template <class V>
  NORMFLOW_HOST_DEVICE UserKnots<V> user_knots(const V* p) const noexcept {
    UserKnots<V> u;
    cumsum_softmax(p, xlim[0], xlim[1], min_bin, u.sx, u.x);
    cumsum_softmax(p + (Knots - 1), ylim[0], ylim[1], min_bin, u.sy, u.y);
    if (smooth) {
      const V half = math::constant<V>(0.5);
      V m_prev = (u.y[1] - u.y[0]) / (u.x[1] - u.x[0]);
      u.d[0] = m_prev;
      for (index_t k = 1; k + 1 < Knots; ++k) {
        const V m = (u.y[k + 1] - u.y[k]) / (u.x[k + 1] - u.x[k]);
        u.d[k] = half * (m_prev + m);
        m_prev = m;
      }
      u.d[Knots - 1] = m_prev;
    } else {
      const V* wd = p + 2 * (Knots - 1);
      const V dmin = math::constant<V>(min_derivative);
      for (index_t k = 0; k < Knots; ++k) u.d[k] = dmin + math::softplus(wd[k]);
    }
    return u;
  }

  /// Effective knots from the raw weights: user knots, then the extrapolation augmentation.
  template <class V>
  NORMFLOW_HOST_DEVICE knots_type<V> build_knots(const V* p) const noexcept {
    const UserKnots<V> u = user_knots(p);
    const Layout L = layout();
    const V one = math::constant<V>(1), two = math::constant<V>(2);
    knots_type<V> k;
    k.count = L.count;
    const index_t base = L.off + L.lin_left;
    for (index_t j = 0; j < Knots; ++j) {
      k.x[base + j] = u.x[j];
      k.y[base + j] = u.y[j];
      k.d[base + j] = u.d[j];
    }
    if (L.lin_left) {
      k.x[L.off] = u.x[0] - one;
      k.y[L.off] = u.y[0] - u.d[0];
      k.d[L.off] = u.d[0];
    }
    if (L.lin_right) {
      const index_t r = L.off + L.n1 - 1;
      k.x[r] = u.x[Knots - 1] + one;
      k.y[r] = u.y[Knots - 1] + u.d[Knots - 1];
      k.d[r] = u.d[Knots - 1];
    }
    if (L.anti_left) {  // entry i mirrors block knot n1-1-i through block knot 0
      const V xc = k.x[L.off], yc = k.y[L.off];
      for (index_t i = 0; i + 1 < L.n1; ++i) {
        const index_t j = L.off + L.n1 - 1 - i;
        k.x[i] = two * xc - k.x[j];
        k.y[i] = two * yc - k.y[j];
        k.d[i] = k.d[j];
      }
    }
    if (L.anti_right) {  // entry n1+i mirrors block knot n1-2-i through the block's last knot
      const index_t last = L.off + L.n1 - 1;
      const V xc = k.x[last], yc = k.y[last];
      for (index_t i = 0; i + 1 < L.n1; ++i) {
        const index_t j = L.off + L.n1 - 2 - i;
        k.x[last + 1 + i] = two * xc - k.x[j];
        k.y[last + 1 + i] = two * yc - k.y[j];
        k.d[last + 1 + i] = k.d[j];
      }
    }
    return k;
  }

  /// Adjoint of build_knots: given gk = dL/d(effective knots), adds dL/d(raw weights) into gp.
  template <class V>
  NORMFLOW_HOST_DEVICE void build_knots_backward(const V* p, const knots_type<V>& gk,
                                                 V* gp) const noexcept {
    const UserKnots<V> u = user_knots(p);
    const Layout L = layout();
    const V two = math::constant<V>(2);
    constexpr index_t block_cap = Knots + 2;
    V bx[block_cap], by[block_cap], bd[block_cap];  // gradient of the linear-step block
    for (index_t i = 0; i < L.n1; ++i) {
      bx[i] = gk.x[L.off + i];
      by[i] = gk.y[L.off + i];
      bd[i] = gk.d[L.off + i];
    }
    if (L.anti_right) {
      const index_t last = L.off + L.n1 - 1;
      for (index_t i = 0; i + 1 < L.n1; ++i) {
        const index_t j = L.n1 - 2 - i, src = last + 1 + i;
        bx[j] -= gk.x[src];
        bx[L.n1 - 1] += two * gk.x[src];
        by[j] -= gk.y[src];
        by[L.n1 - 1] += two * gk.y[src];
        bd[j] += gk.d[src];
      }
    }
    if (L.anti_left) {
      for (index_t i = 0; i + 1 < L.n1; ++i) {
        const index_t j = L.n1 - 1 - i;
        bx[j] -= gk.x[i];
        bx[0] += two * gk.x[i];
        by[j] -= gk.y[i];
        by[0] += two * gk.y[i];
        bd[j] += gk.d[i];
      }
    }
    V gx[Knots], gy[Knots], gd[Knots];
    for (index_t j = 0; j < Knots; ++j) {
      gx[j] = bx[L.lin_left + j];
      gy[j] = by[L.lin_left + j];
      gd[j] = bd[L.lin_left + j];
    }
    if (L.lin_left) {  // (x_0 - 1, y_0 - d_0, d_0)
      gx[0] += bx[0];
      gy[0] += by[0];
      gd[0] += bd[0] - by[0];
    }
    if (L.lin_right) {  // (x_l + 1, y_l + d_l, d_l)
      const index_t r = L.n1 - 1;
      gx[Knots - 1] += bx[r];
      gy[Knots - 1] += by[r];
      gd[Knots - 1] += bd[r] + by[r];
    }
    if (smooth) {
      const V half = math::constant<V>(0.5);
      V gm[Knots - 1];
      for (index_t k = 0; k + 1 < Knots; ++k) gm[k] = math::constant<V>(0);
      gm[0] += gd[0];
      gm[Knots - 2] += gd[Knots - 1];
      for (index_t k = 1; k + 1 < Knots; ++k) {
        gm[k - 1] += half * gd[k];
        gm[k] += half * gd[k];
      }
      for (index_t k = 0; k + 1 < Knots; ++k) {
        const V h = u.x[k + 1] - u.x[k];
        const V m = (u.y[k + 1] - u.y[k]) / h;
        const V gmh = gm[k] / h;
        gy[k + 1] += gmh;
        gy[k] -= gmh;
        gx[k + 1] -= gmh * m;
        gx[k] += gmh * m;
      }
    } else {
      const V* wd = p + 2 * (Knots - 1);
      V* gwd = gp + 2 * (Knots - 1);
      for (index_t k = 0; k < Knots; ++k) gwd[k] += gd[k] * math::softplus_grad(wd[k]);
    }
    cumsum_softmax_backward(u.sx, xlim[0], xlim[1], min_bin, gx, gp);
    cumsum_softmax_backward(u.sy, ylim[0], ylim[1], min_bin, gy, gp + (Knots - 1));
  }

  /// y = S(x), log_jac = log S'(x), from raw weights p.
  template <class V>
  NORMFLOW_HOST_DEVICE ForwardResult<V> forward(const V& x, const V* p) const noexcept {
    return rq_forward(x, build_knots(p));
  }
  /// x = S^{-1}(y), log_jac = -log S'(x).
  template <class V>
  NORMFLOW_HOST_DEVICE ReverseResult<V> reverse(const V& y, const V* p) const noexcept {
    return rq_reverse(y, build_knots(p));
  }
  /// Adjoint of forward: returns dL/dx and adds dL/dp into gp.
  template <class V>
  NORMFLOW_HOST_DEVICE V backward(const V& x, const V* p, const V& gy, const V& gl,
                                  V* gp) const noexcept {
    const knots_type<V> k = build_knots(p);
    knots_type<V> gk;
    gk.set_zero(k.count);
    const V gx = rq_backward(x, k, gy, gl, gk);
    build_knots_backward(p, gk, gp);
    return gx;
  }
  /// Adjoint of reverse (cotangent gx on x, gl on its log_jac): returns dL/dy, adds dL/dp into gp.
  template <class V>
  NORMFLOW_HOST_DEVICE V reverse_backward(const V& y, const V* p, const V& gx, const V& gl,
                                          V* gp) const noexcept {
    const knots_type<V> k = build_knots(p);
    knots_type<V> gk;
    gk.set_zero(k.count);
    const V gy = rq_reverse_backward(y, k, gx, gl, gk);
    build_knots_backward(p, gk, gp);
    return gy;
  }

 private:
  static void check_extrapolation(Extrapolation e, const char* side) {
    if (e != Extrapolation::none && e != Extrapolation::linear && e != Extrapolation::anti)
      throw ParameterError(detail::concat("RQSpline: ", side, " = ", static_cast<int>(e),
                                          " is not an Extrapolation (none, linear or anti)"));
  }

  /// s = softmax(w[0 .. Knots-2]), e_i = mb + (1 - mb (Knots - 1)) s_i;
  /// u_0 = lo, u_j = (e_0 + ... + e_{j-1}) (hi - lo) + lo. Returns the plain softmax s.
  template <class V>
  NORMFLOW_HOST_DEVICE static void cumsum_softmax(const V* w, double lo, double hi, double mb, V* s,
                                                  V* u) noexcept {
    V mx = w[0];
    for (index_t i = 1; i + 1 < Knots; ++i) mx = math::max(mx, w[i]);
    V sum = math::constant<V>(0);
    for (index_t i = 0; i + 1 < Knots; ++i) {
      s[i] = math::exp(w[i] - mx);
      sum += s[i];
    }
    for (index_t i = 0; i + 1 < Knots; ++i) s[i] = s[i] / sum;
    const V width = math::constant<V>(hi - lo), lo_v = math::constant<V>(lo);
    const V mb_v = math::constant<V>(mb), scale = math::constant<V>(1 - mb * double(Knots - 1));
    V c = math::constant<V>(0);
    u[0] = lo_v;
    for (index_t j = 1; j < Knots; ++j) {
      c += mb > 0 ? mb_v + scale * s[j - 1] : s[j - 1];
      u[j] = c * width + lo_v;
    }
  }

  /// Adjoint of cumsum_softmax: gu = dL/du (u_0 is constant), adds dL/dw into gw.
  template <class V>
  NORMFLOW_HOST_DEVICE static void cumsum_softmax_backward(const V* s, double lo, double hi, double mb,
                                                           const V* gu, V* gw) noexcept {
    const V width = math::constant<V>((hi - lo) * (1 - mb * double(Knots - 1)));
    V gs[Knots - 1];
    V suffix = math::constant<V>(0);  // dL/ds_i = width * sum_{j > i} dL/du_j
    for (index_t i = Knots - 2; i >= 0; --i) {
      suffix += gu[i + 1];
      gs[i] = width * suffix;
    }
    V dot = math::constant<V>(0);
    for (index_t i = 0; i + 1 < Knots; ++i) dot += s[i] * gs[i];
    for (index_t i = 0; i + 1 < Knots; ++i) gw[i] += s[i] * (gs[i] - dot);
  }
};

}  // namespace normflow
