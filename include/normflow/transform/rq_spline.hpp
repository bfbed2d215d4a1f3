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
///   c_{m-1} = 1, so the first and last knots are set to xlim0 and xlim1 exactly (constants).
///   smooth: m_k = (y_{k+1} - y_k)/(x_{k+1} - x_k), d_0 = m_0, d_k = (m_{k-1} + m_k)/2,
///   d_{m-1} = m_{m-2} (w_d unused, zero gradient).
///   Adjoints: dL/dc_j = (xlim1 - xlim0) dL/dx_j, dL/ds_i = sum_{i < j < m-1} dL/dc_j,
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
///   'linear' tails are linear (up to rounding of the fiducial slope through the effective knots;
///   exactly in RQSpline's element functions); 'anti' makes the map point-symmetric about the
///   boundary knot; all-zero weights give the identity on xlim = ylim.
/// RQSpline's element functions (forward, reverse, backward, reverse_backward) compute the same
///   maps and gradients as rq_* on build_knots (up to rounding) without building or scattering
///   the effective knots: a lookup among the m user knots (their mirror images on 'anti' sides),
///   the linear tails in closed form, two softplus per element; see "Element evaluation" in the
///   class. Their cost per element is about that of 10 exp, 2 log1p, 1 log (forward, reverse)
///   and 4 to 9 divisions.

#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include <normflow/config.hpp>
#include <normflow/errors.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/simd/pack.hpp>
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

/// e^x for the spline: math::exp, except on batches of double. There xsimd's exp (a division
/// and a double -> int64 conversion split into halves per call) made the spline's element
/// functions divider-bound; this one has no division: Cody-Waite reduction x = k ln2 + r,
/// |r| <= ln2/2, the degree-13 Taylor polynomial of e^r (truncation < 5e-18) in Estrin's scheme,
/// and 2^k applied as two exact power-of-two factors (so subnormal results come out right).
/// Within 1.02 ulp of the exact e^x on [-745, 709.7] (measured against expl); 0 below -745.2,
/// inf above 709.79, NaN for NaN.
template <class V>
NORMFLOW_HOST_DEVICE V rq_exp(const V& x) noexcept {
  if constexpr (math::is_scalar_v<V>) {
    return math::exp(x);
  } else if constexpr (!std::is_same_v<simd::scalar_t<V>, double>) {
    return math::exp(x);
  } else {
    using I = xsimd::batch<std::int64_t, typename V::arch_type>;
    // 1.5 2^52: in t = x log2(e) + shifter, k = round(x log2(e)) lands in the low mantissa bits
    const V shifter(6755399441055744.0);
    const V lo(-746.0), hi(709.79);
    const V xc = xsimd::select(x < lo, lo, xsimd::select(hi < x, hi, x));
    const V t = xc * V(1.4426950408889634074) + shifter;
    const V k = t - shifter;
    const V r = (xc - k * V(6.93147180369123816490e-01)) - k * V(1.90821492927058770002e-10);
    // e^r = 1 + (r + r^2 Q(r)), Q(r) = 1/2! + r/3! + ... + r^11/13!, in Estrin's scheme
    const V r2 = r * r, r4 = r2 * r2;
    const V p23 = r * V(1.0 / 6.0) + V(0.5);
    const V p45 = r * V(1.0 / 120.0) + V(1.0 / 24.0);
    const V p67 = r * V(1.0 / 5040.0) + V(1.0 / 720.0);
    const V p89 = r * V(1.0 / 362880.0) + V(1.0 / 40320.0);
    const V p1011 = r * V(1.0 / 39916800.0) + V(1.0 / 3628800.0);
    const V p1213 = r * V(1.0 / 6227020800.0) + V(1.0 / 479001600.0);
    const V q25 = p45 * r2 + p23, q69 = p89 * r2 + p67, q1013 = p1213 * r2 + p1011;
    const V q = (q1013 * r4 + q69) * r4 + q25;
    const V poly = V(1.0) + (r + r2 * q);
    const I ki = xsimd::bitwise_cast<I>(t) - xsimd::bitwise_cast<I>(shifter);  // k, exactly
    const I k1 = ki >> 1, k2 = ki - k1;
    const V s1 = xsimd::bitwise_cast<V>((k1 + I(1023)) << 52);
    const V s2 = xsimd::bitwise_cast<V>((k2 + I(1023)) << 52);
    const V e = (poly * s1) * s2;
    return xsimd::select(hi < x, V(std::numeric_limits<double>::infinity()),
                         xsimd::select(x < V(-745.2), V(0.0), e));
  }
}

/// log(1 + f) + k ln 2 for f in [sqrt(1/2) - 1, sqrt 2 - 1] and s = f/(2 + f), as fdlibm's log:
/// f - hfsq + s (hfsq + R(s^2)), hfsq = f^2/2, R fdlibm's minimax polynomial (double; FreeBSD's
/// logf for float). s only enters the O(f^3) correction: a few ulp of error in s do not show.
template <class V>
NORMFLOW_HOST_DEVICE V rq_log_core(const V& f, const V& k, const V& s) noexcept {
  const V z = s * s, w = z * z;
  V r;
  if constexpr (std::is_same_v<simd::scalar_t<V>, float>) {
    const V t1 = w * (math::constant<V>(0xccce13.0p-25) + w * math::constant<V>(0xf89e26.0p-26));
    const V t2 = z * (math::constant<V>(0xaaaaaa.0p-24) + w * math::constant<V>(0x91e9ee.0p-25));
    r = t2 + t1;
  } else {
    const V lg1 = math::constant<V>(6.666666666666735130e-01);
    const V lg2 = math::constant<V>(3.999999999940941908e-01);
    const V lg3 = math::constant<V>(2.857142874366239149e-01);
    const V lg4 = math::constant<V>(2.222219843214978396e-01);
    const V lg5 = math::constant<V>(1.818357216161805012e-01);
    const V lg6 = math::constant<V>(1.531383769920937332e-01);
    const V lg7 = math::constant<V>(1.479819860511658591e-01);
    const V t1 = w * (lg2 + w * (lg4 + w * lg6));
    const V t2 = z * (lg1 + w * (lg3 + w * (lg5 + w * lg7)));
    r = t2 + t1;
  }
  const V hfsq = math::constant<V>(0.5) * f * f;
  return k * math::constant<V>(6.93147180369123816490e-01) -
         ((hfsq - (s * (hfsq + r) + k * math::constant<V>(1.90821492927058770002e-10))) - f);
}

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
    knot_positions(p, u);
    if (smooth) {
      smooth_derivatives(u);
    } else {
      const V* wd = p + 2 * (Knots - 1);
      const V dmin = math::constant<V>(min_derivative);
      for (index_t k = 0; k < Knots; ++k) u.d[k] = dmin + softplus(wd[k]);
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
    UserKnots<V> u;
    knot_positions(p, u);
    if (smooth) smooth_derivatives(u);
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
      smooth_derivatives_backward(u, gd, gx, gy);
    } else {
      const V* wd = p + 2 * (Knots - 1);
      V* gwd = gp + 2 * (Knots - 1);
      for (index_t k = 0; k < Knots; ++k) gwd[k] += gd[k] * math::softplus_grad(wd[k]);
    }
    cumsum_softmax_backward(u.sx, xlim[0], xlim[1], min_bin, gx, gp);
    cumsum_softmax_backward(u.sy, ylim[0], ylim[1], min_bin, gy, gp + (Knots - 1));
  }

  // The element functions below give the same maps and gradients as rq_forward etc. on
  // build_knots(p) (up to rounding), without building the effective knots (see "Element
  // evaluation" in the private part).

  /// y = S(x), log_jac = log S'(x), from raw weights p.
  template <class V>
  NORMFLOW_HOST_DEVICE ForwardResult<V> forward(const V& x, const V* p) const noexcept {
    UserKnots<V> u;
    knot_positions(p, u);
    if (smooth) smooth_derivatives(u);
    const Piece<V> g = locate<false>(x, u.x, u, p);
    Local<V> l;
    local_forward(g, x, l);
    return {l.v, math::log(l.grad)};
  }
  /// x = S^{-1}(y), log_jac = -log S'(x).
  template <class V>
  NORMFLOW_HOST_DEVICE ReverseResult<V> reverse(const V& y, const V* p) const noexcept {
    UserKnots<V> u;
    knot_positions(p, u);
    if (smooth) smooth_derivatives(u);
    const Piece<V> g = locate<false>(y, u.y, u, p);
    Local<V> l;
    local_reverse(g, y, l);
    return {l.v, -math::log(l.grad)};
  }
  /// Adjoint of forward: returns dL/dx and adds dL/dp into gp.
  template <class V>
  NORMFLOW_HOST_DEVICE V backward(const V& x, const V* p, const V& gy, const V& gl,
                                  V* gp) const noexcept {
    UserKnots<V> u;
    knot_positions(p, u);
    if (smooth) smooth_derivatives(u);
    const Piece<V> g = locate<true>(x, u.x, u, p);
    Local<V> l;
    local_forward(g, x, l);
    const Inverses<V> iv = inverses<false>(g, l);
    Piece<V> gg;
    const V gx = piece_adjoint(g, l, iv, gy, gl, gg);
    finish_backward(u, g, gg, gp);
    return gx;
  }
  /// Adjoint of reverse (cotangent gx on x, gl on its log_jac): returns dL/dy, adds dL/dp into gp.
  template <class V>
  NORMFLOW_HOST_DEVICE V reverse_backward(const V& y, const V* p, const V& gx, const V& gl,
                                          V* gp) const noexcept {
    UserKnots<V> u;
    knot_positions(p, u);
    if (smooth) smooth_derivatives(u);
    const Piece<V> g = locate<true>(y, u.y, u, p);
    Local<V> l;
    local_reverse(g, y, l);
    const Inverses<V> iv = inverses<true>(g, l);
    // x depends on y and the knots; the inverse's log_jac = -log_jac(x(y), knots):
    // gxt = gx - gl dlog_jac/dx, dL/dy = gxt/g'; the knots: the forward adjoint at x with
    // cotangents (-dL/dy, -gl).
    const V zero = math::constant<V>(0);
    const V lj_x = math::select(g.tail, zero, dlogjac_dtheta(g, l, iv) * l.inv_h);
    const V gy = (gx - gl * lj_x) * iv.inv_grad;
    Piece<V> gg;
    piece_adjoint(g, l, iv, -gy, -gl, gg);
    finish_backward(u, g, gg, gp);
    return gy;
  }

 private:
  static void check_extrapolation(Extrapolation e, const char* side) {
    if (e != Extrapolation::none && e != Extrapolation::linear && e != Extrapolation::anti)
      throw ParameterError(detail::concat("RQSpline: ", side, " = ", static_cast<int>(e),
                                          " is not an Extrapolation (none, linear or anti)"));
  }

  /// What a lane-wise comparison of two V gives: bool, or an xsimd::batch_bool.
  template <class V>
  using mask_t = decltype(std::declval<const V&>() < std::declval<const V&>());

  /// The all-false mask (from a zero register: batch_bool(false) goes through a generic path).
  template <class V>
  NORMFLOW_HOST_DEVICE static mask_t<V> no_lanes() noexcept {
    if constexpr (math::is_scalar_v<V>)
      return false;
    else
      return mask_t<V>(typename mask_t<V>::register_type{});
  }

  /// u.x, u.y and the softmax values u.sx, u.sy (cumsum_softmax for both coordinates; the two
  /// softmax normalisations share one division: both sums lie in [1, Knots - 1]).
  template <class V>
  NORMFLOW_HOST_DEVICE void knot_positions(const V* p, UserKnots<V>& u) const noexcept {
    const V sum_x = softmax_numerators(p, u.sx), sum_y = softmax_numerators(p + (Knots - 1), u.sy);
    const V r = math::constant<V>(1) / (sum_x * sum_y);
    cumsum_knots(sum_y * r, xlim[0], xlim[1], min_bin, u.sx, u.x);
    cumsum_knots(sum_x * r, ylim[0], ylim[1], min_bin, u.sy, u.y);
  }

  /// smooth: d_0 = m_0, d_k = (m_{k-1} + m_k)/2, d_{m-1} = m_{m-2} from u.x, u.y.
  template <class V>
  NORMFLOW_HOST_DEVICE static void smooth_derivatives(UserKnots<V>& u) noexcept {
    const V half = math::constant<V>(0.5);
    V m_prev = (u.y[1] - u.y[0]) / (u.x[1] - u.x[0]);
    u.d[0] = m_prev;
    for (index_t k = 1; k + 1 < Knots; ++k) {
      const V m = (u.y[k + 1] - u.y[k]) / (u.x[k + 1] - u.x[k]);
      u.d[k] = half * (m_prev + m);
      m_prev = m;
    }
    u.d[Knots - 1] = m_prev;
  }

  /// Adjoint of smooth_derivatives: gd = dL/dd, adds into gx, gy.
  template <class V>
  NORMFLOW_HOST_DEVICE static void smooth_derivatives_backward(const UserKnots<V>& u, const V* gd,
                                                               V* gx, V* gy) noexcept {
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
  }

  /// s_i = exp(w_i - max w) (unnormalised) for i < Knots - 1; returns their sum (in [1, Knots-1]).
  template <class V>
  NORMFLOW_HOST_DEVICE static V softmax_numerators(const V* w, V* s) noexcept {
    V mx = w[0];
    for (index_t i = 1; i + 1 < Knots; ++i) mx = math::max(mx, w[i]);
    V sum = math::constant<V>(0);
    for (index_t i = 0; i + 1 < Knots; ++i) {
      s[i] = detail::rq_exp(w[i] - mx);
      sum += s[i];
    }
    return sum;
  }

  /// Normalises s (s_i *= inv_sum), then e_i = mb + (1 - mb (Knots - 1)) s_i;
  /// u_0 = lo, u_j = (e_0 + ... + e_{j-1}) (hi - lo) + lo.
  template <class V>
  NORMFLOW_HOST_DEVICE static void cumsum_knots(const V& inv_sum, double lo, double hi, double mb,
                                                V* s, V* u) noexcept {
    for (index_t i = 0; i + 1 < Knots; ++i) s[i] = s[i] * inv_sum;
    const V width = math::constant<V>(hi - lo), lo_v = math::constant<V>(lo);
    const V mb_v = math::constant<V>(mb), scale = math::constant<V>(1 - mb * double(Knots - 1));
    V c = math::constant<V>(0);
    u[0] = lo_v;
    for (index_t j = 1; j + 1 < Knots; ++j) {
      c += mb > 0 ? mb_v + scale * s[j - 1] : s[j - 1];
      u[j] = c * width + lo_v;
    }
    u[Knots - 1] = math::constant<V>(hi);  // the sum of all e_i is 1: exactly hi, not rounded
  }

  /// Adjoint of the knot positions: gu = dL/du (u_0 and u_{Knots-1} are constant), adds dL/dw
  /// into gw.
  template <class V>
  NORMFLOW_HOST_DEVICE static void cumsum_softmax_backward(const V* s, double lo, double hi, double mb,
                                                           const V* gu, V* gw) noexcept {
    const V width = math::constant<V>((hi - lo) * (1 - mb * double(Knots - 1)));
    V gs[Knots - 1];
    V suffix = math::constant<V>(0);  // dL/ds_i = width * sum_{i < j < Knots-1} dL/du_j
    gs[Knots - 2] = suffix;
    for (index_t i = Knots - 3; i >= 0; --i) {
      suffix += gu[i + 1];
      gs[i] = width * suffix;
    }
    V dot = math::constant<V>(0);
    for (index_t i = 0; i + 1 < Knots; ++i) dot += s[i] * gs[i];
    for (index_t i = 0; i + 1 < Knots; ++i) gw[i] += s[i] * (gs[i] - dot);
  }

  // ---- Element evaluation ------------------------------------------------------------------
  // The effective knots are the "block" (the user knots and the linear fiducial knots) and its
  // point reflections through the block's end knots ('anti'). Instead of a select chain over all
  // of them, a point is first classified as left of the first user knot with 'anti' on the left
  // (mirrored), right of the last with 'anti' on the right (mirrored), or in the block; the
  // segment is then found by a select chain over the Knots - 2 interior user knots (compared
  // with their mirror images 2 c - k_j, as build_knots computes them, on mirrored lanes), and a
  // mirrored lane uses the mirror image of its block segment: the same knot positions, bit for
  // bit, as build_knots (the derivatives agree to rounding). Beyond a 'linear' end (of the block or of a mirror image) the
  // map is the line through the end knot with its derivative: the fiducial segment is that line
  // exactly, so it is evaluated as such. Only the two derivatives of the segment are computed
  // (two softplus, not Knots).

  /// The effective segment at a point: knots (x0, y0, d0), (x1, y1, d1); also the gradient
  /// holder of the adjoints (x0 .. d1 as dL/d(segment knots)).
  template <class V>
  struct Piece {
    V x0, x1, y0, y1, d0, d1;
    V sg0, sg1;                   ///< softplus'(w_d) at both ends (non-smooth, Grad only)
    V seg;                        ///< the block segment number in [0, Knots - 2]
    mask_t<V> mirror_l, mirror_r, mirror;  ///< mirror image through the first / last user knot
    mask_t<V> tl, tr, tail;       ///< on the line through knot 0 (left) / knot 1 (right), either
  };

  template <bool Grad, class V>
  NORMFLOW_HOST_DEVICE Piece<V> locate(const V& v, const V* key, const UserKnots<V>& u,
                                       const V* p) const noexcept {
    using M = mask_t<V>;
    const V two = math::constant<V>(2);
    const V* wd = p + 2 * (Knots - 1);
    const bool anti_l = left == Extrapolation::anti, anti_r = right == Extrapolation::anti;
    const bool lin_l = left == Extrapolation::linear, lin_r = right == Extrapolation::linear;
    constexpr index_t last = Knots - 1;
    Piece<V> g;
    g.mirror_l = anti_l ? M(v < key[0]) : no_lanes<V>();
    g.mirror_r = anti_r ? M(key[last] < v) : no_lanes<V>();
    g.mirror = g.mirror_l || g.mirror_r;
    // mirror centre in key coordinates (only read on mirrored lanes)
    const V ck = anti_l && anti_r ? math::select(g.mirror_l, key[0], key[last])
                 : anti_l         ? key[0]
                                  : key[last];
    V x0 = u.x[0], x1 = u.x[1], y0 = u.y[0], y1 = u.y[1];
    V w0 = smooth ? u.d[0] : wd[0], w1 = smooth ? u.d[1] : wd[1];
    g.seg = math::constant<V>(0);
    // block lanes: key_j < v; mirrored lanes: v < 2 c - key_j (the mirror images decrease in j),
    // as -(2 c - key_j) < -v (xsimd 8's mask xor and != are unreliable, so no mask arithmetic)
    const V sv = (anti_l || anti_r) ? math::select(g.mirror, -v, v) : v;
    const V two_ck = two * ck;
    for (index_t j = 1; j < last; ++j) {
      const M c = (anti_l || anti_r) ? M(math::select(g.mirror, key[j] - two_ck, key[j]) < sv)
                                     : M(key[j] < v);
      x0 = math::select(c, u.x[j], x0);
      x1 = math::select(c, u.x[j + 1], x1);
      y0 = math::select(c, u.y[j], y0);
      y1 = math::select(c, u.y[j + 1], y1);
      w0 = math::select(c, smooth ? u.d[j] : wd[j], w0);
      w1 = math::select(c, smooth ? u.d[j + 1] : wd[j + 1], w1);
      g.seg = math::select(c, math::constant<V>(j), g.seg);
    }
    V d0 = w0, d1 = w1, sg0 = math::constant<V>(1), sg1 = sg0;
    if (!smooth) {
      const V dmin = math::constant<V>(min_derivative);
      softplus_pair<Grad>(w0, w1, d0, d1, sg0, sg1);
      d0 = dmin + d0;
      d1 = dmin + d1;
    }
    if (anti_l || anti_r) {  // mirror image of the block segment (as build_knots)
      const V cx = anti_l && anti_r ? math::select(g.mirror_l, u.x[0], u.x[last])
                   : anti_l         ? u.x[0]
                                    : u.x[last];
      const V cy = anti_l && anti_r ? math::select(g.mirror_l, u.y[0], u.y[last])
                   : anti_l         ? u.y[0]
                                    : u.y[last];
      g.x0 = math::select(g.mirror, two * cx - x1, x0);
      g.x1 = math::select(g.mirror, two * cx - x0, x1);
      g.y0 = math::select(g.mirror, two * cy - y1, y0);
      g.y1 = math::select(g.mirror, two * cy - y0, y1);
      g.d0 = math::select(g.mirror, d1, d0);
      g.d1 = math::select(g.mirror, d0, d1);
      g.sg0 = math::select(g.mirror, sg1, sg0);
      g.sg1 = math::select(g.mirror, sg0, sg1);
    } else {
      g.x0 = x0, g.x1 = x1, g.y0 = y0, g.y1 = y1, g.d0 = d0, g.d1 = d1, g.sg0 = sg0, g.sg1 = sg1;
    }
    // linear tails: below the block's first knot (or above its mirror image through the last
    // knot), above the block's last knot (or below its mirror image through the first knot)
    g.tl = lin_l ? M(v < key[0]) : no_lanes<V>();
    if (lin_r && anti_l) g.tl = g.tl || M(v < two * key[0] - key[last]);
    g.tr = lin_r ? M(key[last] < v) : no_lanes<V>();
    if (lin_l && anti_r) g.tr = g.tr || M(two * key[last] - key[0] < v);
    g.tail = g.tl || g.tr;
    return g;
  }

  // softplus_beta(w) = log1p(e^{beta w})/beta (beta = ln 2; w itself when beta w > 20, as
  // math::softplus) is evaluated as max(w, 0) + log1p(t)/beta with t = e^{-beta |w|} in (0, 1],
  // and log1p(t) as in fdlibm's log: 1 + t = 2^k (1 + f) with f = t (k = 0) or (t - 1)/2
  // (k = 1, for t > sqrt 2 - 1), so f in (sqrt(1/2) - 1, sqrt 2 - 1] without rounding 1 + t;
  // s = f/(2 + f), log(1 + f) = f - hfsq + s (hfsq + R(s^2)), hfsq = f^2/2, R the minimax
  // polynomial of fdlibm (double) or FreeBSD's logf (float). s only enters the O(f^3)
  // correction, so it may come from a division shared between two values (below).

  /// The reduction of log1p(t), t in [0, 1]: f and k (as V).
  template <class V>
  NORMFLOW_HOST_DEVICE static void log1p_reduce(const V& t, V& f, V& k) noexcept {
    const auto up = math::constant<V>(0.41421356237309504880) < t;
    f = math::select(up, (t - math::constant<V>(1)) * math::constant<V>(0.5), t);
    k = math::select(up, math::constant<V>(1), math::constant<V>(0));
  }

  /// d = softplus_beta(w) for one value (build_knots).
  template <class V>
  NORMFLOW_HOST_DEVICE static V softplus(const V& w) noexcept {
    const V zero = math::constant<V>(0), two = math::constant<V>(2);
    const V bw = math::constant<V>(math::ln2) * w;
    const V t = detail::rq_exp(-math::abs(bw));
    V f, k;
    log1p_reduce(t, f, k);
    const V lp = detail::rq_log_core(f, k, f / (two + f));
    return math::select(math::constant<V>(20) < bw, w,
                        math::max(w, zero) + lp * math::constant<V>(1 / math::ln2));
  }

  /// d0, d1 = softplus_beta(w0, w1) with one division; with Grad also g = softplus' =
  /// sigmoid(beta w) = (1 or t)/(1 + t) (1 on the linear branch), still one division: the
  /// product (2 + f0)(2 + f1)(1 + t0)(1 + t1) lies in [2.9, 24].
  template <bool Grad, class V>
  NORMFLOW_HOST_DEVICE static void softplus_pair(const V& w0, const V& w1, V& d0, V& d1, V& g0,
                                                 V& g1) noexcept {
    const V zero = math::constant<V>(0), one = math::constant<V>(1), two = math::constant<V>(2);
    const V beta = math::constant<V>(math::ln2), threshold = math::constant<V>(20);
    const V bw0 = beta * w0, bw1 = beta * w1;
    const V t0 = detail::rq_exp(-math::abs(bw0)), t1 = detail::rq_exp(-math::abs(bw1));
    V f0, k0, f1, k1;
    log1p_reduce(t0, f0, k0);
    log1p_reduce(t1, f1, k1);
    const V a0 = two + f0, a1 = two + f1, aa = a0 * a1;
    V inv_aa;
    if constexpr (Grad) {
      const V b0 = one + t0, b1 = one + t1, bb = b0 * b1;
      const V r = one / (aa * bb);
      inv_aa = bb * r;
      const V inv_bb = aa * r;
      g0 = math::select(threshold < bw0, one, math::select(zero <= bw0, one, t0) * (b1 * inv_bb));
      g1 = math::select(threshold < bw1, one, math::select(zero <= bw1, one, t1) * (b0 * inv_bb));
    } else {
      inv_aa = one / aa;
    }
    const V inv_beta = math::constant<V>(1 / math::ln2);
    const V lp0 = detail::rq_log_core(f0, k0, f0 * a1 * inv_aa);
    const V lp1 = detail::rq_log_core(f1, k1, f1 * a0 * inv_aa);
    d0 = math::select(threshold < bw0, w0, math::max(w0, zero) + lp0 * inv_beta);
    d1 = math::select(threshold < bw1, w1, math::max(w1, zero) + lp1 * inv_beta);
  }

  /// The segment at a point (names as in the Maths block), and the block's value there (y' for
  /// forward, x' for reverse) and slope g', linear tails included (then xk, yk, dk is the end
  /// knot and off = x' - xk).
  template <class V>
  struct Local {
    V h, inv_h, dy, m, theta, s, q, den, inv_den, numy, num;
    V xk, yk, dk, off;
    V inv_dk;  ///< 1/dk (set by local_reverse, or by inverses)
    V v, grad;
  };

  template <class V>
  NORMFLOW_HOST_DEVICE static void local_at_theta(const Piece<V>& g, Local<V>& l) noexcept {
    const V one = math::constant<V>(1), two = math::constant<V>(2);
    const V t = l.theta;
    l.s = g.d1 + g.d0 - two * l.m;
    l.q = t * (one - t);
    l.den = l.m + l.s * l.q;
    l.inv_den = one / l.den;
    l.numy = t * (l.m * t + g.d0 * (one - t));
    l.num = g.d0 + two * (l.m - g.d0) * t + l.s * (t * t);
    const V grad = l.m * l.m * l.num * (l.inv_den * l.inv_den);
    l.xk = math::select(g.tl, g.x0, g.x1);
    l.yk = math::select(g.tl, g.y0, g.y1);
    l.dk = math::select(g.tl, g.d0, g.d1);
    l.grad = math::select(g.tail, l.dk, grad);
  }

  template <class V>
  NORMFLOW_HOST_DEVICE static void local_forward(const Piece<V>& g, const V& x,
                                                 Local<V>& l) noexcept {
    const V one = math::constant<V>(1);
    l.h = g.x1 - g.x0;
    l.inv_h = one / l.h;
    l.dy = g.y1 - g.y0;
    l.m = l.dy * l.inv_h;
    l.theta = (x - g.x0) * l.inv_h;
    local_at_theta(g, l);
    l.off = x - l.xk;
    l.v = math::select(g.tail, l.yk + l.dk * l.off, g.y0 + l.dy * l.numy * l.inv_den);
  }

  /// The inverse: theta = 2 a0/(delta - a1) with the a's of the Maths block multiplied by dy
  /// (theta is homogeneous of degree 0 in them; no division for eta).
  template <class V>
  NORMFLOW_HOST_DEVICE static void local_reverse(const Piece<V>& g, const V& y,
                                                 Local<V>& l) noexcept {
    const V one = math::constant<V>(1), two = math::constant<V>(2), four = math::constant<V>(4);
    l.h = g.x1 - g.x0;
    l.inv_h = one / l.h;
    l.dy = g.y1 - g.y0;
    l.m = l.dy * l.inv_h;
    const V ey = y - g.y0;
    const V a2 = (two * l.m - g.d1 - g.d0) * ey + (g.d0 - l.m) * l.dy;
    const V a1 = -a2 - l.m * l.dy;
    const V a0 = l.m * ey;
    const V delta = math::sqrt(a1 * a1 - four * a0 * a2);
    l.theta = two * a0 / (delta - a1);
    local_at_theta(g, l);
    l.inv_dk = one / l.dk;
    l.off = (y - l.yk) * l.inv_dk;
    l.v = math::select(g.tail, l.xk + l.off, g.x0 + l.h * l.theta);
  }

  /// Reciprocals shared by the adjoints (and l.inv_dk when local_forward computed l).
  template <class V>
  struct Inverses {
    V inv_num, inv_m, inv_grad;
  };

  template <bool Reverse, class V>
  NORMFLOW_HOST_DEVICE static Inverses<V> inverses(const Piece<V>& g, Local<V>& l) noexcept {
    const V one = math::constant<V>(1);
    Inverses<V> iv;
    iv.inv_num = one / l.num;
    iv.inv_m = one / l.m;
    if constexpr (!Reverse) l.inv_dk = one / l.dk;
    // 1/g' = den^2/(m^2 num) on the segment, 1/dk on a tail
    iv.inv_grad =
        math::select(g.tail, l.inv_dk, (l.den * l.den) * (iv.inv_m * iv.inv_m) * iv.inv_num);
    return iv;
  }

  /// dlog_jac/dtheta at fixed knots.
  template <class V>
  NORMFLOW_HOST_DEVICE static V dlogjac_dtheta(const Piece<V>& g, const Local<V>& l,
                                               const Inverses<V>& iv) noexcept {
    const V one = math::constant<V>(1), two = math::constant<V>(2);
    return two * ((l.m - g.d0) + l.s * l.theta) * iv.inv_num -
           two * l.s * (one - two * l.theta) * l.inv_den;
  }

  /// Adjoint of the block map at fixed x' for L = gy y' + gl log g' (segment or linear tail):
  /// fills gg.x0 .. gg.d1 with dL/d(segment knots) and returns dL/dx' (formulas in the Maths
  /// block; on a tail y' = yk + dk (x' - xk), log g' = log dk).
  template <class V>
  NORMFLOW_HOST_DEVICE static V piece_adjoint(const Piece<V>& g, const Local<V>& l,
                                              const Inverses<V>& iv, const V& gy, const V& gl,
                                              Piece<V>& gg) noexcept {
    const V zero = math::constant<V>(0), one = math::constant<V>(1), two = math::constant<V>(2);
    const V t = l.theta, q = l.q, m = l.m;
    const V inv_den2 = l.inv_den * l.inv_den;
    const V one_m_2q = one - two * q;

    const V r = l.numy * l.inv_den;
    const V r_t = m * l.num * inv_den2;
    const V r_m = (t * t * l.den - l.numy * one_m_2q) * inv_den2;
    const V r_d0 = q * (l.den - l.numy) * inv_den2;
    const V r_d1 = -l.numy * q * inv_den2;

    const V two_q_den = two * q * l.inv_den;
    const V lj_t = dlogjac_dtheta(g, l, iv);
    const V lj_m = two * iv.inv_m + two * q * iv.inv_num - two * one_m_2q * l.inv_den;
    const V lj_d0 = (one - t) * (one - t) * iv.inv_num - two_q_den;
    const V lj_d1 = t * t * iv.inv_num - two_q_den;

    const V gdy = gy * l.dy;
    const V g_t = gdy * r_t + gl * lj_t;
    const V g_m = gdy * r_m + gl * lj_m;
    const V g_r = gy * r;

    const V lin_x = -gy * l.dk, lin_d = gy * l.off + gl * l.inv_dk;
    gg.d0 = math::select(g.tr, zero, math::select(g.tl, lin_d, gdy * r_d0 + gl * lj_d0));
    gg.d1 = math::select(g.tl, zero, math::select(g.tr, lin_d, gdy * r_d1 + gl * lj_d1));
    gg.x0 =
        math::select(g.tr, zero, math::select(g.tl, lin_x, (g_t * (t - one) + g_m * m) * l.inv_h));
    gg.x1 = math::select(g.tl, zero, math::select(g.tr, lin_x, -(g_t * t + g_m * m) * l.inv_h));
    gg.y0 = math::select(g.tr, zero, math::select(g.tl, gy, gy - g_r - g_m * l.inv_h));
    gg.y1 = math::select(g.tl, zero, math::select(g.tr, gy, g_r + g_m * l.inv_h));
    return math::select(g.tail, gy * l.dk, g_t * l.inv_h);
  }

  /// Maps the segment gradient gg to the block segment (mirrored lanes: through the mirror
  /// image, as build_knots_backward), scatters it into the user knots (segment g.seg) and maps
  /// that to the raw weights (gp +=).
  template <class V>
  NORMFLOW_HOST_DEVICE void finish_backward(const UserKnots<V>& u, const Piece<V>& g,
                                            const Piece<V>& gg, V* gp) const noexcept {
    const V zero = math::constant<V>(0);
    constexpr index_t last = Knots - 1;
    const bool anti = left == Extrapolation::anti || right == Extrapolation::anti;
    V bx0 = gg.x0, bx1 = gg.x1, by0 = gg.y0, by1 = gg.y1;
    V bd0 = smooth ? gg.d0 : gg.d0 * g.sg0, bd1 = smooth ? gg.d1 : gg.d1 * g.sg1;
    V gx[Knots], gy[Knots], gd[Knots];
    for (index_t j = 0; j < Knots; ++j) gx[j] = gy[j] = gd[j] = zero;
    if (anti) {  // x0' = 2 c - x1, x1' = 2 c - x0 (y likewise), d swapped
      bx0 = math::select(g.mirror, -gg.x1, gg.x0);
      bx1 = math::select(g.mirror, -gg.x0, gg.x1);
      by0 = math::select(g.mirror, -gg.y1, gg.y0);
      by1 = math::select(g.mirror, -gg.y0, gg.y1);
      const V t0 = bd0;
      bd0 = math::select(g.mirror, bd1, bd0);
      bd1 = math::select(g.mirror, t0, bd1);
      // the centres, the first and last user knots, are constants (xlim, ylim): no gradient
    }
    for (index_t j = 0; j < last; ++j) {
      const auto c = g.seg == math::constant<V>(j);
      gx[j] += math::select(c, bx0, zero);
      gx[j + 1] += math::select(c, bx1, zero);
      gy[j] += math::select(c, by0, zero);
      gy[j + 1] += math::select(c, by1, zero);
      gd[j] += math::select(c, bd0, zero);
      gd[j + 1] += math::select(c, bd1, zero);
    }
    if (smooth) {
      smooth_derivatives_backward(u, gd, gx, gy);
    } else {
      V* gwd = gp + 2 * (Knots - 1);
      for (index_t k = 0; k < Knots; ++k) gwd[k] += gd[k];
    }
    cumsum_softmax_backward(u.sx, xlim[0], xlim[1], min_bin, gx, gp);
    cumsum_softmax_backward(u.sy, ylim[0], ylim[1], min_bin, gy, gp + (Knots - 1));
  }
};

}  // namespace normflow
