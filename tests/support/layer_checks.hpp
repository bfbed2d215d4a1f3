// SPDX-License-Identifier: MIT
#pragma once
// Generic checks of the layer contract (Module_), in double:
//  - reverse(forward(x)) = x and log_det_forward + log_det_reverse = 0;
//  - backward: the directional derivative of L = <gy, y> + <gl, log_det> along random (vx, vp)
//    matches a central difference;
//  - reverse_backward: the same for L = <gx, x(y)> + <gl, log_det_reverse>;
//  - log_det equals log|det| of the finite-difference Jacobian (small lattices).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include <Eigen/Dense>

#include <normflow/field/field.hpp>
#include <normflow/layer/module.hpp>

namespace normflow::test {

/// Relative tolerance of a finite-difference directional derivative in double (see richardson).
inline constexpr double fd_rel_tol = 1e-6;

template <class F>
double dot(const F& a, const F& b) {
  double s = 0;
  for (index_t site = 0; site < F::volume; ++site)
    for (index_t c = 0; c < F::components; ++c)
      for (index_t bb = 0; bb < a.batch(); ++bb) s += double(a(site, c, bb)) * double(b(site, c, bb));
  return s;
}

template <class F>
double max_abs_diff(const F& a, const F& b) {
  double m = 0;
  for (index_t site = 0; site < F::volume; ++site)
    for (index_t bb = 0; bb < a.batch(); ++bb) m = std::max(m, std::abs(double(a(site, 0, bb)) - double(b(site, 0, bb))));
  return m;
}

/// d/dh f(h) at 0 by central differences with Richardson extrapolation: error O(h^4) + O(eps/h),
/// with h = 1e-5 (strongly curved maps, such as atanh near +-1, need the O(h^4)).
template <class Fn>
double richardson(const Fn& f, double h = 1e-5) {
  const double d1 = (f(h) - f(-h)) / (2 * h);
  const double d2 = (f(h / 2) - f(-h / 2)) / h;
  return (4 * d2 - d1) / 3;
}

/// Options of check_layer.
struct LayerCheckOptions {
  index_t batch = 3;                    // odd: exercises padding lanes
  std::uint64_t seed = 1234;
  double param_jitter = 0.3;            // parameters = init + jitter * N(0, 1), so layers are not the identity
  double round_trip_tol = 1e-12;        // relative to max(1, |x|)
  bool brute_force_log_det = true;      // volume <= 64 only
  std::function<double(std::mt19937_64&)> draw_x;  // input sampler (default N(0, 1))
};

template <class Layer>
void check_layer(const Layer& layer, LayerCheckOptions o = {}) {
  using F = typename Layer::field_type;
  using T = typename Layer::value_type;
  static_assert(std::is_same_v<T, double>, "check_layer runs in double");
  static_assert(Module_<Layer>);
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<double> normal;
  auto draw = [&] { return o.draw_x ? o.draw_x(rng) : normal(rng); };
  const index_t B = o.batch;
  const std::size_t P = layer.num_params();

  std::vector<double> p(P);
  layer.init_params(std::span<double>(p), o.seed);
  for (double& v : p) v += o.param_jitter * normal(rng);
  F x(B);
  for (index_t s = 0; s < F::volume; ++s)
    for (index_t b = 0; b < B; ++b) x(s, b) = draw();

  typename Layer::tape_type tape;
  auto run_forward = [&](const F& xin, std::span<const double> pin, F& y, std::vector<double>& ld) {
    ld.assign(std::size_t(B), 0.0);
    typename Layer::tape_type t;
    layer.forward(pin, xin, y, std::span<double>(ld), t);
  };
  auto run_reverse = [&](const F& yin, std::span<const double> pin, F& xo, std::vector<double>& ld) {
    ld.assign(std::size_t(B), 0.0);
    typename Layer::tape_type t;
    layer.reverse(pin, yin, xo, std::span<double>(ld), t);
  };

  // --- round trip --------------------------------------------------------------------------
  F y(B), x2(B);
  std::vector<double> ld_f, ld_r;
  run_forward(x, p, y, ld_f);
  run_reverse(y, p, x2, ld_r);
  double xscale = 1;
  for (index_t s = 0; s < F::volume; ++s)
    for (index_t b = 0; b < B; ++b) xscale = std::max(xscale, std::abs(x(s, b)));
  CHECK(max_abs_diff(x, x2) <= o.round_trip_tol * xscale);
  for (index_t b = 0; b < B; ++b)
    CHECK(std::abs(ld_f[b] + ld_r[b]) <= o.round_trip_tol * std::max(1.0, std::abs(ld_f[b])));

  // --- backward vs central differences ----------------------------------------------------
  F gy(B), vx(B);
  std::vector<double> gl(static_cast<std::size_t>(B)), vp(P);
  for (index_t s = 0; s < F::volume; ++s)
    for (index_t b = 0; b < B; ++b) gy(s, b) = normal(rng), vx(s, b) = normal(rng);
  for (double& v : gl) v = normal(rng);
  for (double& v : vp) v = normal(rng);

  // directions: x (or y) only, parameters only, both at once
  const std::pair<double, double> directions[] = {{1.0, 0.0}, {0.0, 1.0}, {1.0, 1.0}};
  double cx = 1, cp = 1;
  auto loss_forward = [&](double h) {
    F xh = x;
    for (index_t s = 0; s < F::volume; ++s)
      for (index_t b = 0; b < B; ++b) xh(s, b) += h * cx * vx(s, b);
    std::vector<double> ph = p;
    for (std::size_t k = 0; k < P; ++k) ph[k] += h * cp * vp[k];
    F yh(B);
    std::vector<double> ld;
    run_forward(xh, ph, yh, ld);
    double loss = dot(gy, yh);
    for (index_t b = 0; b < B; ++b) loss += gl[b] * ld[b];
    return loss;
  };
  for (const auto& [dx, dp] : directions) {
    if (P == 0 && dp != 0) continue;
    cx = dx, cp = dp;
    CAPTURE(cx);
    CAPTURE(cp);
    F y1(B), gx(B);
    std::vector<double> ld(std::size_t(B), 0.0), gp(P, 0.0);
    layer.forward(std::span<const double>(p), x, y1, std::span<double>(ld), tape);
    layer.backward(std::span<const double>(p), tape, gy, std::span<const double>(gl), gx, std::span<double>(gp));
    double analytic = cx * dot(gx, vx);
    for (std::size_t k = 0; k < P; ++k) analytic += cp * gp[k] * vp[k];
    const double numeric = richardson(loss_forward);
    CAPTURE(analytic);
    CAPTURE(numeric);
    CAPTURE((analytic - numeric) / std::max(std::abs(numeric), 1e-300));
    CHECK(analytic == doctest::Approx(numeric).epsilon(fd_rel_tol));
  }

  // --- reverse_backward vs central differences -----------------------------------------------
  F gxr(B), vy(B);
  for (index_t s = 0; s < F::volume; ++s)
    for (index_t b = 0; b < B; ++b) gxr(s, b) = normal(rng), vy(s, b) = normal(rng);
  auto loss_reverse = [&](double h) {
    F yh = y;
    for (index_t s = 0; s < F::volume; ++s)
      for (index_t b = 0; b < B; ++b) yh(s, b) += h * cx * vy(s, b);
    std::vector<double> ph = p;
    for (std::size_t k = 0; k < P; ++k) ph[k] += h * cp * vp[k];
    F xh(B);
    std::vector<double> ld;
    run_reverse(yh, ph, xh, ld);
    double loss = dot(gxr, xh);
    for (index_t b = 0; b < B; ++b) loss += gl[b] * ld[b];
    return loss;
  };
  for (bool tape_from_forward : {true, false})
  for (const auto& [dx, dp] : directions) {
    if (P == 0 && dp != 0) continue;
    cx = dx, cp = dp;
    CAPTURE(cx);
    CAPTURE(cp);
    CAPTURE(tape_from_forward);
    typename Layer::tape_type t;
    F tmp(B), gyr(B);
    std::vector<double> ld(std::size_t(B), 0.0), gp(P, 0.0);
    if (tape_from_forward)
      layer.forward(std::span<const double>(p), x, tmp, std::span<double>(ld), t);
    else
      layer.reverse(std::span<const double>(p), y, tmp, std::span<double>(ld), t);
    layer.reverse_backward(std::span<const double>(p), t, gxr, std::span<const double>(gl), gyr,
                           std::span<double>(gp));
    double analytic = cx * dot(gyr, vy);
    for (std::size_t k = 0; k < P; ++k) analytic += cp * gp[k] * vp[k];
    const double numeric = richardson(loss_reverse);
    CAPTURE(analytic);
    CAPTURE(numeric);
    CAPTURE((analytic - numeric) / std::max(std::abs(numeric), 1e-300));
    CHECK(analytic == doctest::Approx(numeric).epsilon(fd_rel_tol));
    // without a parameter gradient the input adjoint is the same
    F gyr2(B);
    layer.reverse_backward(std::span<const double>(p), t, gxr, std::span<const double>(gl), gyr2, std::span<double>{});
    CHECK(max_abs_diff(gyr, gyr2) == 0.0);
  }

  // --- brute-force log-det -----------------------------------------------------------------
  if (o.brute_force_log_det && F::volume <= 64) {
    constexpr index_t V = F::volume;
    for (index_t b = 0; b < B; ++b) {
      Eigen::MatrixXd J(V, V);
      for (index_t j = 0; j < V; ++j) {
        const double h = 1e-6 * std::max(1.0, std::abs(x(j, b)));
        F xp = x, xm = x, yp(B), ym(B);
        xp(j, b) += h;
        xm(j, b) -= h;
        std::vector<double> ld;
        run_forward(xp, p, yp, ld);
        run_forward(xm, p, ym, ld);
        for (index_t i = 0; i < V; ++i) J(i, j) = (yp(i, b) - ym(i, b)) / (2 * h);
      }
      const double log_abs_det = Eigen::PartialPivLU<Eigen::MatrixXd>(J).matrixLU().diagonal().array().abs().log().sum();
      CAPTURE(b);
      CHECK(ld_f[b] == doctest::Approx(log_abs_det).epsilon(1e-7).scale(1.0));
    }
  }
}

}  // namespace normflow::test
