// SPDX-License-Identifier: MIT
// Rational-quadratic spline (RQKnots / rq_* / RQSpline) and DistConvertor: adjoints of forward and
// reverse against central differences (input, knots and raw weights), the knots against an
// independent transcription of the reference's AugmentKnots, values and derivatives at the knots,
// tails, symmetry, monotonicity, float against double, xsimd batches against scalars, validation.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include <normflow/errors.hpp>
#include <normflow/simd/pack.hpp>
#include <normflow/transform/dist_convertor.hpp>
#include <normflow/transform/rq_spline.hpp>

using namespace normflow;

namespace {

constexpr double eps = std::numeric_limits<double>::epsilon();
// Derivatives are estimated by fourth-order central differences (5-point stencil) at steps
// h_i = 1e-2 max(1,|v|) / 4^i, i = 0..8, keeping the estimate whose change from the previous step
// is smallest (Ridders' idea: that change estimates the error). A fixed step cannot serve every
// point: the spline's local length scale ranges from O(1) down to ~1e-4 (narrow or flat segments,
// more so for the inverse), while the rounding noise of L, amplified by ill-conditioned inverses,
// reaches ~1e-12, i.e. ~1e-8/h in the estimate. The selected estimate is good to ~1e-9 relative
// at the points used, so 1e-7 leaves two orders of headroom.
constexpr double grad_rel_tol = 1e-7;
// Round trips and forward + reverse log-Jacobians: a few hundred roundings of O(1) values.
constexpr double roundtrip_tol = 4096 * eps;  // ~9e-13
// log of a central-difference derivative: its relative error (< 1e-8) plus headroom.
constexpr double fd_log_tol = 1e-7;
// Exact-arithmetic identities (values at knots, linear tails, point symmetry) up to rounding.
constexpr double identity_tol = 256 * eps;  // ~6e-14
// float against double: about 80 float epsilons. Knot differences x1 - x0 cancel, so float's
// relative error grows like eps_f |x|/h_min; the float tests use moderate weights (sd 0.5), which
// keep the narrowest segment h_min above ~w/20, where 1e-5 holds.
constexpr double float_rel_tol = 1e-5;
constexpr double float_weight_sd = 0.5;
// xsimd's exp/log differ from libm by a few ulp (~1e-15 relative); through the knots the spline
// amplifies that by up to |x|/h_min, and the inverse by 1/(smallest slope): up to ~1e4 for the
// random weights here.
constexpr double simd_rel_tol = 1e-11;

/// Tolerance for identities through Logit o S o Expit at x: logit amplifies an absolute error of
/// a few eps in v = S(sigma(x)) by 1/(v (1 - v)) ~ e^|x|.
double logit_tol(double x) { return roundtrip_tol * (1 + std::exp(std::abs(x))); }
// Test points closer than this to a knot are not used for finite differences (log_jac is only
// C0 across a knot: the spline's second derivative jumps there).
constexpr double knot_gap = 1e-4;

/// df/dv at v: fourth-order central differences [8 (f(v+h) - f(v-h)) - (f(v+2h) - f(v-2h))]/(12h)
/// over a decreasing sequence of steps; returns the estimate that changed least (see grad_rel_tol).
template <class F>
double fd_derivative(const F& f, double v) {
  auto stencil = [&](double h) {
    volatile double t = v + h;
    h = t - v;  // exactly representable at v
    return (8 * (f(v + h) - f(v - h)) - (f(v + 2 * h) - f(v - 2 * h))) / (12 * h);
  };
  double h = 1e-2 * std::max(1.0, std::abs(v));
  double prev = stencil(h), best = prev, best_change = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 8; ++i) {
    h /= 4;
    const double cur = stencil(h);
    const double change = std::abs(cur - prev);
    if (change < best_change) {
      best_change = change;
      best = cur;
    }
    prev = cur;
  }
  return best;
}

/// d loss(p)/dp_k by the same stencil.
template <class F>
double fd_partial(const F& loss, const std::vector<double>& p, std::size_t k) {
  return fd_derivative(
      [&](double v) {
        auto q = p;
        q[k] = v;
        return loss(q);
      },
      p[k]);
}

double distance_to_knots(const double* k, index_t count, double v) {
  double d = std::numeric_limits<double>::infinity();
  for (index_t j = 0; j < count; ++j) d = std::min(d, std::abs(k[j] - v));
  return d;
}

/// Whether x (forward) and y = f(x) (reverse) are far enough from the knots for finite differences.
template <index_t K>
std::array<bool, 2> fd_usable(const RQSpline<K>& tr, const std::vector<double>& p, double x,
                              double y) {
  const auto k = tr.build_knots(p.data());
  return {distance_to_knots(k.x, k.count, x) > knot_gap,
          distance_to_knots(k.y, k.count, y) > knot_gap};
}
template <index_t K>
std::array<bool, 2> fd_usable(const DistConvertor<K>& tr, const std::vector<double>& p, double x,
                              double y) {
  const auto pr = tr.prepare(p.data());
  const double u = 1 / (1 + std::exp(-x)), v = 1 / (1 + std::exp(-y / pr.scale));
  return {distance_to_knots(pr.knots.x, pr.knots.count, u) > knot_gap,
          distance_to_knots(pr.knots.y, pr.knots.count, v) > knot_gap};
}

struct CheckCount {
  int forward = 0, reverse = 0;
};

/// Central-difference checks of backward (L = gy y + gl log_jac, w.r.t. x and every weight) and
/// of reverse_backward (L = gy x + gl log_jac_inv at y = f(x)).
template <class Tr>
void check_adjoints(const Tr& tr, const std::vector<double>& p, double x, double gy, double gl,
                    CheckCount& count) {
  CAPTURE(x);
  CAPTURE(gy);
  CAPTURE(gl);
  const double y = tr.forward(x, p.data()).y;
  CAPTURE(y);
  const auto usable = fd_usable(tr, p, x, y);
  if (usable[0]) {
    ++count.forward;
    std::vector<double> gp(p.size(), 0.0);
    const double gx = tr.backward(x, p.data(), gy, gl, gp.data());
    auto loss = [&](double xv, const std::vector<double>& pv) {
      const auto r = tr.forward(xv, pv.data());
      return gy * r.y + gl * r.log_jac;
    };
    CHECK(gx == doctest::Approx(fd_derivative([&](double v) { return loss(v, p); }, x))
                    .epsilon(grad_rel_tol));
    for (std::size_t k = 0; k < p.size(); ++k) {
      CAPTURE(k);
      CHECK(gp[k] == doctest::Approx(fd_partial([&](const auto& q) { return loss(x, q); }, p, k))
                         .epsilon(grad_rel_tol));
    }
  }
  if (usable[1]) {
    ++count.reverse;
    std::vector<double> gp(p.size(), 0.0);
    const double gyr = tr.reverse_backward(y, p.data(), gy, gl, gp.data());
    auto loss = [&](double yv, const std::vector<double>& pv) {
      const auto r = tr.reverse(yv, pv.data());
      return gy * r.x + gl * r.log_jac;
    };
    CHECK(gyr == doctest::Approx(fd_derivative([&](double v) { return loss(v, p); }, y))
                     .epsilon(grad_rel_tol));
    for (std::size_t k = 0; k < p.size(); ++k) {
      CAPTURE(k);
      CHECK(gp[k] == doctest::Approx(fd_partial([&](const auto& q) { return loss(y, q); }, p, k))
                         .epsilon(grad_rel_tol));
    }
  }
}

/// Round trip, log-Jacobians cancel, log_jac = log of the central-difference dy/dx.
template <class Tr>
void check_round_trip(const Tr& tr, const std::vector<double>& p, double x) {
  CAPTURE(x);
  const auto f = tr.forward(x, p.data());
  const auto r = tr.reverse(f.y, p.data());
  CHECK(r.x == doctest::Approx(x).epsilon(roundtrip_tol));
  CHECK(f.log_jac + r.log_jac == doctest::Approx(0).epsilon(roundtrip_tol));
  if (fd_usable(tr, p, x, f.y)[0]) {
    const double dydx = fd_derivative([&](double v) { return tr.forward(v, p.data()).y; }, x);
    CHECK(f.log_jac == doctest::Approx(std::log(dydx)).epsilon(fd_log_tol));
  }
}

template <index_t K>
std::vector<double> random_weights(std::mt19937_64& rng, double sd = 1.0) {
  std::normal_distribution<double> normal(0.0, sd);
  std::vector<double> p(RQSpline<K>::num_params);
  for (double& v : p) v = normal(rng);
  return p;
}

/// Test points for a spline: inside, near every knot, near both ends, and in the tails that the
/// extrapolation defines (linear tails, 'anti' reflections of the inside).
template <index_t K>
std::vector<double> spline_points(const RQSpline<K>& tr, const std::vector<double>& p,
                                  std::mt19937_64& rng) {
  const double x0 = tr.xlim[0], x1 = tr.xlim[1], w = x1 - x0;
  std::uniform_real_distribution<double> inside(x0, x1);
  std::vector<double> pts;
  for (int i = 0; i < 6; ++i) pts.push_back(inside(rng));
  const auto k = tr.build_knots(p.data());
  for (index_t j = 0; j < k.count; ++j)
    if (k.x[j] >= x0 - 2 * w - 1 && k.x[j] <= x1 + 2 * w + 1) {
      pts.push_back(k.x[j] - 2e-3 * w);
      pts.push_back(k.x[j] + 2e-3 * w);
    }
  pts.push_back(x0 + 1e-3 * w);
  pts.push_back(x1 - 1e-3 * w);
  // Just outside only where an extrapolation is defined: with 'none' the boundary segment's
  // formula can turn non-monotone right past the end (the reference's caveat).
  if (tr.left != Extrapolation::none) pts.push_back(x0 - 1e-3 * w);
  if (tr.right != Extrapolation::none) pts.push_back(x1 + 1e-3 * w);
  const bool lin_l = tr.left == Extrapolation::linear, lin_r = tr.right == Extrapolation::linear;
  if (lin_l) {
    pts.push_back(x0 - 0.5);
    pts.push_back(x0 - 2.5);
  }
  if (lin_r) {
    pts.push_back(x1 + 0.5);
    pts.push_back(x1 + 2.5);
  }
  if (tr.left == Extrapolation::anti) {
    for (int i = 0; i < 3; ++i) pts.push_back(2 * x0 - inside(rng));
    if (lin_r) pts.push_back(2 * x0 - (x1 + 2.5));
  }
  if (tr.right == Extrapolation::anti) {
    for (int i = 0; i < 3; ++i) pts.push_back(2 * x1 - inside(rng));
    if (lin_l) pts.push_back(2 * x1 - (x0 - 2.5));
  }
  std::erase_if(pts, [&](double x) {
    return (tr.left == Extrapolation::none && x < x0) ||
           (tr.right == Extrapolation::none && x > x1);
  });
  return pts;
}

/// The option sets exercised everywhere (every extrapolation pairing, smooth or not).
template <index_t K>
std::vector<RQSpline<K>> spline_configs() {
  using E = Extrapolation;
  return {
      RQSpline<K>{},
      RQSpline<K>{.xlim = {-2, 3}, .ylim = {-1, 4}, .left = E::linear, .right = E::linear},
      RQSpline<K>{.left = E::anti, .right = E::linear},
      RQSpline<K>{.xlim = {0.5, 1.5}, .ylim = {-1, 2}, .left = E::linear, .right = E::anti},
      RQSpline<K>{.xlim = {0.5, 1.5}, .ylim = {0.5, 1.5}, .left = E::anti, .right = E::anti},
      RQSpline<K>{.xlim = {-1, 1}, .ylim = {-3, 0}, .left = E::none, .right = E::linear},
      RQSpline<K>{.xlim = {-1, 1}, .ylim = {-1, 1}, .left = E::linear, .right = E::none},
      RQSpline<K>{.left = E::linear, .right = E::linear, .smooth = true},
      RQSpline<K>{.xlim = {0.5, 1}, .ylim = {0.5, 1}, .left = E::anti, .smooth = true},
  };
}

/// The reference's knot construction and AugmentKnots, transcribed independently with vectors.
template <index_t K>
void reference_knots(const RQSpline<K>& tr, const std::vector<double>& p, std::vector<double>& x,
                     std::vector<double>& y, std::vector<double>& d) {
  auto to_coord = [](const double* w, double lo, double hi) {
    double mx = w[0];
    for (index_t i = 1; i < K - 1; ++i) mx = std::max(mx, w[i]);
    std::vector<double> s(K - 1);
    double sum = 0;
    for (index_t i = 0; i < K - 1; ++i) sum += (s[i] = std::exp(w[i] - mx));
    std::vector<double> c{0.0};
    double acc = 0;
    for (index_t i = 0; i < K - 1; ++i) c.push_back(acc += s[i] / sum);
    for (double& v : c) v = v * (hi - lo) + lo;
    return c;
  };
  x = to_coord(p.data(), tr.xlim[0], tr.xlim[1]);
  y = to_coord(p.data() + K - 1, tr.ylim[0], tr.ylim[1]);
  d.clear();
  if (tr.smooth) {
    std::vector<double> m;
    for (index_t k = 0; k + 1 < K; ++k) m.push_back((y[k + 1] - y[k]) / (x[k + 1] - x[k]));
    d.push_back(m.front());
    for (index_t k = 0; k + 2 < K; ++k) d.push_back(0.5 * (m[k + 1] + m[k]));
    d.push_back(m.back());
  } else {
    for (index_t k = 0; k < K; ++k) {
      const double w = p[2 * (K - 1) + k];
      d.push_back(std::log(2.0) * w > 20 ? w
                                         : std::log1p(std::exp(std::log(2.0) * w)) / std::log(2.0));
    }
  }
  using E = Extrapolation;
  const E left = tr.left, right = tr.right;
  if (left == E::none && right == E::none) return;
  if (left == E::linear || right == E::linear) {  // takecare_linear
    if (left == E::linear) {
      x.insert(x.begin(), x.front() - 1);
      y.insert(y.begin(), y.front() - d.front());
      d.insert(d.begin(), d.front());
    }
    if (right == E::linear) {
      x.push_back(x.back() + 1);
      y.push_back(y.back() + d.back());
      d.push_back(d.back());
    }
    if (left == E::none || right == E::none) return;
  }
  // takecare_rest: both reflections read the same knots
  const auto X = x, Y = y, D = d;
  const std::size_t n = X.size();
  std::vector<double> lx, ly, ld, rx, ry, rd;
  if (left == E::anti)
    for (std::size_t j = n - 1; j >= 1; --j) {
      lx.push_back(2 * X[0] - X[j]);
      ly.push_back(2 * Y[0] - Y[j]);
      ld.push_back(D[j]);
    }
  if (right == E::anti)
    for (std::size_t jj = n - 1; jj-- > 0;) {
      rx.push_back(2 * X[n - 1] - X[jj]);
      ry.push_back(2 * Y[n - 1] - Y[jj]);
      rd.push_back(D[jj]);
    }
  x = lx;
  x.insert(x.end(), X.begin(), X.end());
  x.insert(x.end(), rx.begin(), rx.end());
  y = ly;
  y.insert(y.end(), Y.begin(), Y.end());
  y.insert(y.end(), ry.begin(), ry.end());
  d = ld;
  d.insert(d.end(), D.begin(), D.end());
  d.insert(d.end(), rd.begin(), rd.end());
}

template <index_t K>
void run_spline_gradchecks(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  CheckCount count;
  for (const auto& tr : spline_configs<K>()) {
    CAPTURE(static_cast<int>(tr.left));
    CAPTURE(static_cast<int>(tr.right));
    CAPTURE(tr.smooth);
    for (int trial = 0; trial < 3; ++trial) {
      const auto p = random_weights<K>(rng);
      for (double x : spline_points(tr, p, rng))
        check_adjoints(tr, p, x, normal(rng), normal(rng), count);
    }
  }
  // Most points are usable (few fall within knot_gap of a knot).
  CHECK(count.forward > 100);
  CHECK(count.reverse > 100);
}

}  // namespace

static_assert(RQSpline<5>::num_params == 13);
static_assert(RQSpline<2>::num_params == 4);
static_assert(RQSpline<2>::max_knots == 5 && RQSpline<5>::max_knots == 13);
static_assert(DistConvertor<5>::num_params == 14);
static_assert(std::is_trivially_copyable_v<RQSpline<5>> &&
              std::is_trivially_copyable_v<DistConvertor<5>>);

TEST_CASE("rq_* on explicit knots: values and derivatives at the knots, near both ends") {
  RQKnots<double, 8> k;
  k.count = 5;
  const double kx[] = {-1, -0.2, 0.5, 1.3, 2}, ky[] = {-2, -1, 0.1, 0.4, 3},
               kd[] = {0.5, 2, 0.3, 1.1, 4};
  for (index_t j = 0; j < 5; ++j) {
    k.x[j] = kx[j];
    k.y[j] = ky[j];
    k.d[j] = kd[j];
  }
  for (index_t j = 0; j < 5; ++j) {
    CAPTURE(j);
    const auto f = rq_forward(kx[j], k);
    CHECK(f.y == doctest::Approx(ky[j]).epsilon(identity_tol));
    CHECK(std::exp(f.log_jac) == doctest::Approx(kd[j]).epsilon(identity_tol));
    const auto r = rq_reverse(ky[j], k);
    CHECK(r.x == doctest::Approx(kx[j]).epsilon(identity_tol));
    CHECK(std::exp(-r.log_jac) == doctest::Approx(kd[j]).epsilon(identity_tol));
  }
  // Near both ends, inside and just outside: y ~ y_end + d_end (x - x_end).
  for (double dx : {-1e-7, 1e-7}) {
    CHECK(rq_forward(kx[0] + dx, k).y == doctest::Approx(ky[0] + kd[0] * dx).epsilon(1e-13));
    CHECK(rq_forward(kx[4] + dx, k).y == doctest::Approx(ky[4] + kd[4] * dx).epsilon(1e-13));
  }

  // Adjoints with respect to x and to every knot coordinate, by central differences.
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  for (double x : {-1.05, -0.9, -0.3, 0.0, 0.45, 0.7, 1.29, 1.8, 1.99, 2.02}) {
    CAPTURE(x);
    const double gy = normal(rng), gl = normal(rng);
    RQKnots<double, 8> gk;
    gk.set_zero(k.count);
    const double gx = rq_backward(x, k, gy, gl, gk);
    auto loss = [&](const RQKnots<double, 8>& kk, double xv) {
      const auto f = rq_forward(xv, kk);
      return gy * f.y + gl * f.log_jac;
    };
    CHECK(gx == doctest::Approx(fd_derivative([&](double v) { return loss(k, v); }, x))
                    .epsilon(grad_rel_tol));
    const double y = rq_forward(x, k).y;
    RQKnots<double, 8> gkr;
    gkr.set_zero(k.count);
    const double gyr = rq_reverse_backward(y, k, gy, gl, gkr);
    auto loss_r = [&](const RQKnots<double, 8>& kk, double yv) {
      const auto r = rq_reverse(yv, kk);
      return gy * r.x + gl * r.log_jac;
    };
    CHECK(gyr == doctest::Approx(fd_derivative([&](double v) { return loss_r(k, v); }, y))
                     .epsilon(grad_rel_tol));
    for (index_t j = 0; j < k.count; ++j)
      for (int c = 0; c < 3; ++c) {
        CAPTURE(j);
        CAPTURE(c);
        auto knot_coord = [&](RQKnots<double, 8>& kk) -> double& {
          return c == 0 ? kk.x[j] : c == 1 ? kk.y[j] : kk.d[j];
        };
        auto with = [&](double v) {
          auto kk = k;
          knot_coord(kk) = v;
          return kk;
        };
        const double v0 = c == 0 ? k.x[j] : c == 1 ? k.y[j] : k.d[j];
        const double an = c == 0 ? gk.x[j] : c == 1 ? gk.y[j] : gk.d[j];
        const double anr = c == 0 ? gkr.x[j] : c == 1 ? gkr.y[j] : gkr.d[j];
        CHECK(an == doctest::Approx(fd_derivative([&](double v) { return loss(with(v), x); }, v0))
                        .epsilon(grad_rel_tol));
        CHECK(anr ==
              doctest::Approx(fd_derivative([&](double v) { return loss_r(with(v), y); }, v0))
                  .epsilon(grad_rel_tol));
      }
  }
}

TEST_CASE("RQSpline: effective knots equal the reference's construction and AugmentKnots") {
  std::mt19937_64 rng(11);
  auto run = [&](auto tag) {
    constexpr index_t K = decltype(tag)::value;
    for (const auto& tr : spline_configs<K>()) {
      CAPTURE(K);
      CAPTURE(static_cast<int>(tr.left));
      CAPTURE(static_cast<int>(tr.right));
      const auto p = random_weights<K>(rng);
      std::vector<double> x, y, d;
      reference_knots(tr, p, x, y, d);
      const auto k = tr.build_knots(p.data());
      REQUIRE(k.count == index_t(x.size()));
      CHECK(k.count == tr.layout().count);
      for (index_t j = 0; j < k.count; ++j) {
        CAPTURE(j);
        CHECK(k.x[j] == doctest::Approx(x[j]).epsilon(identity_tol));
        CHECK(k.y[j] == doctest::Approx(y[j]).epsilon(identity_tol));
        CHECK(k.d[j] == doctest::Approx(d[j]).epsilon(identity_tol));
        if (j > 0) {
          CHECK(k.x[j] > k.x[j - 1]);
          CHECK(k.y[j] > k.y[j - 1]);
        }
        // At every effective knot the spline takes the knot's value and derivative.
        const auto f = tr.forward(k.x[j], p.data());
        CHECK(f.y == doctest::Approx(k.y[j]).epsilon(identity_tol));
        CHECK(f.log_jac == doctest::Approx(std::log(k.d[j])).epsilon(identity_tol));
      }
      CHECK(k.x[tr.layout().off + tr.layout().lin_left] == tr.xlim[0]);  // knot 0 is exactly xlim0
    }
  };
  run(std::integral_constant<index_t, 2>{});
  run(std::integral_constant<index_t, 3>{});
  run(std::integral_constant<index_t, 5>{});
  // Counts: m, m+1, m+2, 2m-1, 2m+1, 3m-2 (m = 5).
  using E = Extrapolation;
  CHECK(RQSpline<5>{}.layout().count == 5);
  CHECK(RQSpline<5>{.right = E::linear}.layout().count == 6);
  CHECK(RQSpline<5>{.left = E::linear, .right = E::linear}.layout().count == 7);
  CHECK(RQSpline<5>{.left = E::anti}.layout().count == 9);
  CHECK(RQSpline<5>{.left = E::anti, .right = E::linear}.layout().count == 11);
  CHECK(RQSpline<5>{.left = E::anti, .right = E::anti}.layout().count == 13);
}

TEST_CASE("RQSpline: backward and reverse_backward match central differences (x and raw weights)") {
  run_spline_gradchecks<2>(101);
  run_spline_gradchecks<3>(102);
  run_spline_gradchecks<5>(103);
}

TEST_CASE("RQSpline: round trip, log-Jacobians cancel and match d y/dx") {
  std::mt19937_64 rng(21);
  for (const auto& tr : spline_configs<5>()) {
    CAPTURE(static_cast<int>(tr.left));
    CAPTURE(static_cast<int>(tr.right));
    for (int trial = 0; trial < 3; ++trial) {
      const auto p = random_weights<5>(rng);
      for (double x : spline_points(tr, p, rng)) check_round_trip(tr, p, x);
    }
  }
}

TEST_CASE("RQSpline: all-zero weights give the identity on xlim = ylim (tails included)") {
  using E = Extrapolation;
  const std::vector<double> zero(RQSpline<6>::num_params, 0.0);
  for (const auto& tr :
       {RQSpline<6>{},
        RQSpline<6>{.xlim = {-2, 3}, .ylim = {-2, 3}, .left = E::linear, .right = E::linear},
        RQSpline<6>{.left = E::anti, .right = E::linear},
        RQSpline<6>{.xlim = {0.5, 1}, .ylim = {0.5, 1}, .left = E::anti, .right = E::anti},
        RQSpline<6>{.left = E::linear, .right = E::linear, .smooth = true}}) {
    for (double x = -4; x <= 4; x += 0.0625) {
      CAPTURE(x);
      const auto f = tr.forward(x, zero.data());
      CHECK(f.y == doctest::Approx(x).epsilon(identity_tol));
      CHECK(f.log_jac == doctest::Approx(0).epsilon(identity_tol));
      CHECK(tr.reverse(x, zero.data()).x == doctest::Approx(x).epsilon(identity_tol));
    }
  }
}

TEST_CASE(
    "RQSpline: 'linear' tails are exactly linear and 'anti' is point-symmetric about the end knot") {
  using E = Extrapolation;
  std::mt19937_64 rng(31);
  const RQSpline<5> lin{.xlim = {-1, 2}, .ylim = {0, 5}, .left = E::linear, .right = E::linear};
  for (int trial = 0; trial < 5; ++trial) {
    const auto p = random_weights<5>(rng);
    const auto k = lin.build_knots(p.data());
    const index_t a = 1, b = k.count - 2;  // the first and last user knots
    // The fiducial segment's slope m = ((y + d) - y)/((x + 1) - x) equals d up to the rounding of
    // y + d and x + 1, a relative error dm <= 2 eps (|x| + |y| + d)/d. Then s = d0 + d1 - 2m ~ 2 d
    // dm and the formula departs from the line through s theta^2 terms: about 6 dm theta^2 in
    // log_jac and in y/|y|, theta ~ t on the unit fiducial segment (~1e-12 at t = 10).
    for (double t : {1e-3, 0.3, 1.0, 2.7, 10.0}) {
      CAPTURE(t);
      const double dm_a = 2 * eps * (std::abs(k.y[a]) + k.d[a] + std::abs(k.x[a])) / k.d[a];
      const double dm_b = 2 * eps * (std::abs(k.y[b]) + k.d[b] + std::abs(k.x[b])) / k.d[b];
      const double tol_a = identity_tol + 8 * dm_a * (1 + t) * (1 + t);
      const double tol_b = identity_tol + 8 * dm_b * (1 + t) * (1 + t);
      const auto fl = lin.forward(k.x[a] - t, p.data());
      CHECK(fl.y == doctest::Approx(k.y[a] - k.d[a] * t).epsilon(tol_a));
      CHECK(fl.log_jac == doctest::Approx(std::log(k.d[a])).epsilon(tol_a));
      const auto fr = lin.forward(k.x[b] + t, p.data());
      CHECK(fr.y == doctest::Approx(k.y[b] + k.d[b] * t).epsilon(tol_b));
      CHECK(fr.log_jac == doctest::Approx(std::log(k.d[b])).epsilon(tol_b));
    }
  }
  // Anti on the left (linear on the right): f(2 x0 - x) = 2 y0 - f(x), log_jac even about x0.
  const RQSpline<5> anti{.xlim = {0.5, 1.5}, .ylim = {-1, 2}, .left = E::anti, .right = E::linear};
  for (int trial = 0; trial < 5; ++trial) {
    const auto p = random_weights<5>(rng);
    for (double x = 0.5; x <= 6; x += 0.01) {
      CAPTURE(x);
      const auto f = anti.forward(x, p.data()), g = anti.forward(1.0 - x, p.data());
      CHECK(g.y == doctest::Approx(-2.0 - f.y).epsilon(identity_tol));
      CHECK(g.log_jac == doctest::Approx(f.log_jac).epsilon(identity_tol));
    }
  }
}

TEST_CASE("RQSpline: the symmetric spline is odd, f(-x) = -f(x), with an even log_jac") {
  using E = Extrapolation;
  std::mt19937_64 rng(41);
  // As the reference's symmetric PhaseDistConvertor: knots on [0, L] plus left 'anti'; here with
  // linear right tails so the odd extension covers the whole line.
  for (const auto& tr :
       {RQSpline<5>{.xlim = {0, 1}, .ylim = {0, 1}, .left = E::anti, .right = E::linear},
        RQSpline<5>{.xlim = {0, 3.14159}, .ylim = {0, 3.14159}, .left = E::anti}}) {
    const double reach = tr.right == E::linear ? 4.0 : tr.xlim[1];
    for (int trial = 0; trial < 5; ++trial) {
      const auto p = random_weights<5>(rng);
      for (double x = 0; x <= reach; x += reach / 400) {
        CAPTURE(x);
        const auto f = tr.forward(x, p.data()), g = tr.forward(-x, p.data());
        CHECK(g.y == doctest::Approx(-f.y).epsilon(identity_tol));
        CHECK(g.log_jac == doctest::Approx(f.log_jac).epsilon(identity_tol));
        const auto r = tr.reverse(-f.y, p.data());
        CHECK(r.x == doctest::Approx(-x).epsilon(roundtrip_tol));
      }
    }
  }
}

TEST_CASE("RQSpline: strictly increasing on a dense grid for random weights") {
  using E = Extrapolation;
  std::mt19937_64 rng(51);
  for (const auto& tr :
       {RQSpline<8>{.xlim = {-2, 2}, .ylim = {-3, 1}, .left = E::linear, .right = E::linear},
        RQSpline<8>{.left = E::anti, .right = E::linear},
        RQSpline<8>{.left = E::linear, .right = E::linear, .smooth = true}}) {
    for (int trial = 0; trial < 4; ++trial) {
      const auto p = random_weights<8>(rng, 2.0);  // wide weights: uneven knots, steep slopes
      const double lo = tr.xlim[0] - 3, hi = tr.xlim[1] + 3;
      const int n = 20000;
      double prev_y = -std::numeric_limits<double>::infinity();
      double prev_x = prev_y;
      bool increasing = true, finite = true, inverse_increasing = true;
      for (int i = 0; i <= n; ++i) {
        const double x = lo + (hi - lo) * i / n;
        const auto f = tr.forward(x, p.data());
        increasing = increasing && f.y > prev_y;
        finite = finite && std::isfinite(f.log_jac);
        prev_y = f.y;
      }
      const auto k = tr.build_knots(p.data());
      const double ylo = k.y[0] - 3, yhi = k.y[k.count - 1] + 3;
      for (int i = 0; i <= n; ++i) {
        const double x = tr.reverse(ylo + (yhi - ylo) * i / n, p.data()).x;
        inverse_increasing = inverse_increasing && x > prev_x;
        prev_x = x;
      }
      CHECK(increasing);
      CHECK(finite);
      CHECK(inverse_increasing);
    }
  }
}

TEST_CASE("RQSpline: float agrees with double") {
  // The double reference runs on the float-rounded inputs and weights, so only float arithmetic
  // differs. Away from knots float agrees to float_rel_tol. Near a knot x_k, theta = (x - x_k)/h
  // carries float's relative error eps_f |x|/|x - x_k| (the subtraction cancels), and likewise
  // eta = (y - y_k)/dy in the inverse; the inverse also multiplies errors by |y| dx/dy. These are
  // properties of the parametrisation, not of the code, so the tolerances include them.
  constexpr double eps_f = std::numeric_limits<float>::epsilon();
  std::mt19937_64 rng(61);
  std::normal_distribution<double> normal;
  for (const auto& tr : spline_configs<5>()) {
    const std::vector<float> pf = [&] {
      const auto w = random_weights<5>(rng, float_weight_sd);
      return std::vector<float>(w.begin(), w.end());
    }();
    const std::vector<double> p(pf.begin(), pf.end());
    const auto k = tr.build_knots(p.data());
    for (double x_any : spline_points(tr, p, rng)) {
      const float xf = float(x_any), gy = float(normal(rng)), gl = float(normal(rng));
      const double x = xf;
      CAPTURE(x);
      const auto fd = tr.forward(x, p.data());
      const double cond_x = std::max(1.0, std::abs(x)) / distance_to_knots(k.x, k.count, x);
      const double cond_y = std::max(1.0, std::abs(fd.y)) / distance_to_knots(k.y, k.count, fd.y);
      const double tol_f = float_rel_tol + 64 * eps_f * cond_x;
      const double tol_r = (float_rel_tol + 64 * eps_f * cond_y) *
                           std::max(1.0, std::abs(fd.y) * std::exp(-fd.log_jac));
      CAPTURE(tol_f);
      CAPTURE(tol_r);
      const auto ff = tr.forward(xf, pf.data());
      CHECK(double(ff.y) == doctest::Approx(fd.y).epsilon(tol_f));
      CHECK(double(ff.log_jac) == doctest::Approx(fd.log_jac).epsilon(tol_f));
      const auto rf = tr.reverse(ff.y, pf.data());
      const auto rd = tr.reverse(double(ff.y), p.data());
      CHECK(double(rf.x) == doctest::Approx(rd.x).epsilon(tol_r));
      CHECK(double(rf.log_jac) == doctest::Approx(rd.log_jac).epsilon(tol_r));
      std::vector<double> gpd(p.size(), 0.0);
      std::vector<float> gpf(p.size(), 0.0f);
      const double gxd = tr.backward(x, p.data(), double(gy), double(gl), gpd.data());
      const float gxf = tr.backward(xf, pf.data(), gy, gl, gpf.data());
      CHECK(double(gxf) == doctest::Approx(gxd).epsilon(tol_f));
      for (std::size_t j = 0; j < p.size(); ++j)
        CHECK(double(gpf[j]) == doctest::Approx(gpd[j]).epsilon(tol_f));
      std::vector<double> gprd(p.size(), 0.0);
      std::vector<float> gprf(p.size(), 0.0f);
      const double gyrd =
          tr.reverse_backward(double(ff.y), p.data(), double(gy), double(gl), gprd.data());
      const float gyrf = tr.reverse_backward(ff.y, pf.data(), gy, gl, gprf.data());
      CHECK(double(gyrf) == doctest::Approx(gyrd).epsilon(tol_r));
      for (std::size_t j = 0; j < p.size(); ++j)
        CHECK(double(gprf[j]) == doctest::Approx(gprd[j]).epsilon(tol_r));
    }
  }
}

TEST_CASE("RQSpline: an xsimd batch (one spline per lane) gives the scalar values lane by lane") {
  using B = simd::native_pack<double>;
  constexpr index_t W = simd::pack_size<B>;
  constexpr index_t NP = RQSpline<5>::num_params;
  std::mt19937_64 rng(71);
  std::normal_distribution<double> normal;
  for (const auto& tr : spline_configs<5>()) {
    alignas(64) std::array<double, W> x{}, gy{}, gl{};
    alignas(64) std::array<std::array<double, W>, NP> p{};
    for (index_t i = 0; i < W; ++i) {
      // lanes spread over the inside and the tails
      x[i] = tr.xlim[0] + (tr.xlim[1] - tr.xlim[0]) * (1.4 * normal(rng) * 0.5 + 0.5);
      gy[i] = normal(rng);
      gl[i] = normal(rng);
      for (index_t k = 0; k < NP; ++k) p[k][i] = normal(rng);
    }
    if (tr.left == Extrapolation::none || tr.right == Extrapolation::none)
      for (index_t i = 0; i < W; ++i) x[i] = std::clamp(x[i], tr.xlim[0], tr.xlim[1]);
    std::array<B, NP> pv, gpv, gprv;
    for (index_t k = 0; k < NP; ++k) {
      pv[k] = simd::load<B>(p[k].data());
      gpv[k] = gprv[k] = B(0.0);
    }
    const B xv = simd::load<B>(x.data()), gyv = simd::load<B>(gy.data()),
            glv = simd::load<B>(gl.data());
    const auto fv = tr.forward(xv, pv.data());
    const auto rv = tr.reverse(fv.y, pv.data());
    const B gxv = tr.backward(xv, pv.data(), gyv, glv, gpv.data());
    const B gyrv = tr.reverse_backward(fv.y, pv.data(), gyv, glv, gprv.data());
    for (index_t i = 0; i < W; ++i) {
      CAPTURE(i);
      std::array<double, NP> ps{}, gps{}, gprs{};
      for (index_t k = 0; k < NP; ++k) ps[k] = p[k][i];
      const auto f = tr.forward(x[i], ps.data());
      const double yi = simd::lane(fv.y, i);
      const auto r = tr.reverse(yi, ps.data());
      const double gx = tr.backward(x[i], ps.data(), gy[i], gl[i], gps.data());
      const double gyr = tr.reverse_backward(yi, ps.data(), gy[i], gl[i], gprs.data());
      CHECK(yi == doctest::Approx(f.y).epsilon(simd_rel_tol));
      CHECK(simd::lane(fv.log_jac, i) == doctest::Approx(f.log_jac).epsilon(simd_rel_tol));
      CHECK(simd::lane(rv.x, i) == doctest::Approx(r.x).epsilon(simd_rel_tol));
      CHECK(simd::lane(rv.log_jac, i) == doctest::Approx(r.log_jac).epsilon(simd_rel_tol));
      CHECK(simd::lane(gxv, i) == doctest::Approx(gx).epsilon(simd_rel_tol));
      CHECK(simd::lane(gyrv, i) == doctest::Approx(gyr).epsilon(simd_rel_tol));
      for (index_t k = 0; k < NP; ++k) {
        CAPTURE(k);
        CHECK(simd::lane(gpv[k], i) == doctest::Approx(gps[k]).epsilon(simd_rel_tol));
        CHECK(simd::lane(gprv[k], i) == doctest::Approx(gprs[k]).epsilon(simd_rel_tol));
      }
    }
  }
}

TEST_CASE("rq_*: shared scalar knots evaluated on a batch equal the scalar evaluation") {
  using B = simd::native_pack<double>;
  constexpr index_t W = simd::pack_size<B>;
  std::mt19937_64 rng(81);
  std::normal_distribution<double> normal;
  const RQSpline<6> tr{.left = Extrapolation::anti, .right = Extrapolation::linear};
  const auto p = random_weights<6>(rng);
  const auto k = tr.build_knots(p.data());
  alignas(64) std::array<double, W> x{};
  for (int rep = 0; rep < 8; ++rep) {
    for (index_t i = 0; i < W; ++i) x[i] = 1.5 * normal(rng);
    const B xv = simd::load<B>(x.data());
    const auto fv = rq_forward(xv, k);  // KV = double, V = batch
    const auto rv = rq_reverse(fv.y, k);
    RQSpline<6>::knots_type<B> gkv;
    gkv.set_zero(k.count);
    const B gxv = rq_backward(xv, k, B(0.7), B(-0.4), gkv);
    RQSpline<6>::knots_type<double> gk;
    gk.set_zero(k.count);
    for (index_t i = 0; i < W; ++i) {
      CAPTURE(x[i]);
      const auto f = rq_forward(x[i], k);
      CHECK(simd::lane(fv.y, i) == f.y);  // +-*/ only, no FMA contraction: bit-identical
      CHECK(simd::lane(fv.log_jac, i) == doctest::Approx(f.log_jac).epsilon(simd_rel_tol));
      CHECK(simd::lane(rv.x, i) == doctest::Approx(rq_reverse(f.y, k).x).epsilon(simd_rel_tol));
      CHECK(simd::lane(gxv, i) ==
            doctest::Approx(rq_backward(x[i], k, 0.7, -0.4, gk)).epsilon(simd_rel_tol));
    }
    for (index_t j = 0; j < k.count; ++j) {  // summed over lanes = summed over scalar calls
      double sx = 0, sy = 0, sd = 0;
      for (index_t i = 0; i < W; ++i) {
        sx += simd::lane(gkv.x[j], i);
        sy += simd::lane(gkv.y[j], i);
        sd += simd::lane(gkv.d[j], i);
      }
      CHECK(sx == doctest::Approx(gk.x[j]).epsilon(simd_rel_tol));
      CHECK(sy == doctest::Approx(gk.y[j]).epsilon(simd_rel_tol));
      CHECK(sd == doctest::Approx(gk.d[j]).epsilon(simd_rel_tol));
    }
  }
}

TEST_CASE("RQSpline::validate names the offending option") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS((RQSpline<4>{.xlim = {1, 0}}.validate()),
                       doctest::Contains("xlim[0] = 1 must be below xlim[1] = 0"), ParameterError);
  CHECK_THROWS_WITH_AS((RQSpline<4>{.ylim = {0.5, 0.5}}.validate()),
                       doctest::Contains("ylim[0] = 0.5 must be below ylim[1] = 0.5"),
                       ParameterError);
  CHECK_THROWS_WITH_AS((RQSpline<4>{.xlim = {nan, 1}}.validate()), doctest::Contains("xlim[0]"),
                       ParameterError);
  CHECK_THROWS_WITH_AS(
      (RQSpline<4>{.ylim = {0, std::numeric_limits<double>::infinity()}}.validate()),
      doctest::Contains("ylim[1]"), ParameterError);
  CHECK_THROWS_WITH_AS((RQSpline<4>{.right = static_cast<Extrapolation>(7)}.validate()),
                       doctest::Contains("right = 7"), ParameterError);
  CHECK_THROWS_WITH_AS((RQSpline<4>{.left = static_cast<Extrapolation>(-1)}.validate()),
                       doctest::Contains("left = -1"), ParameterError);
  CHECK_NOTHROW(RQSpline<4>{}.validate());
  CHECK_NOTHROW(
      (RQSpline<4>{.xlim = {-3, -2}, .ylim = {5, 9}, .left = Extrapolation::anti}.validate()));
  CHECK_NOTHROW(DistConvertor<4>{.symmetric = true, .final_scale = true}.validate());
}

// ---------------------------------------------------------------------------------------------
// DistConvertor

namespace {

std::vector<DistConvertor<5>> convertor_configs() {
  return {DistConvertor<5>{}, DistConvertor<5>{.symmetric = true},
          DistConvertor<5>{.final_scale = true},
          DistConvertor<5>{.symmetric = true, .final_scale = true, .smooth = true}};
}

std::vector<double> convertor_weights(std::mt19937_64& rng, double sd = 1.0) {
  std::normal_distribution<double> normal(0.0, sd);
  std::vector<double> p(DistConvertor<5>::num_params);
  for (double& v : p) v = normal(rng);
  return p;
}

}  // namespace

TEST_CASE("DistConvertor: backward and reverse_backward match central differences") {
  std::mt19937_64 rng(91);
  std::normal_distribution<double> normal;
  CheckCount count;
  for (const auto& tr : convertor_configs()) {
    CAPTURE(tr.symmetric);
    CAPTURE(tr.final_scale);
    for (int trial = 0; trial < 20; ++trial) {
      const auto p = convertor_weights(rng);
      check_adjoints(tr, p, 2.0 * normal(rng), normal(rng), normal(rng), count);
    }
  }
  CHECK(count.forward > 60);
  CHECK(count.reverse > 60);
}

TEST_CASE(
    "DistConvertor: round trip, log-Jacobians, identity at zero weights, the reference's "
    "composition") {
  std::mt19937_64 rng(92);
  std::normal_distribution<double> normal;
  for (const auto& tr : convertor_configs()) {
    CAPTURE(tr.symmetric);
    const std::vector<double> zero(DistConvertor<5>::num_params, 0.0);
    for (double x = -10; x <= 10; x += 0.125) {
      CAPTURE(x);
      const auto f = tr.forward(x, zero.data());
      CHECK(f.y == doctest::Approx(x).epsilon(logit_tol(x)));
      CHECK(f.log_jac == doctest::Approx(0).epsilon(logit_tol(x)));
    }
    for (int trial = 0; trial < 10; ++trial) {
      const auto p = convertor_weights(rng);
      const double x = 2.5 * normal(rng);
      check_round_trip(tr, p, x);
      // Logit o S o Expit (o scale), composed from the separate transforms.
      const auto e = Expit::forward(x);
      const auto s = tr.spline().forward(e.y, p.data());
      const auto l = Logit::forward(s.y);
      const double a = tr.final_scale ? math::softplus(p.back()) : 1.0;
      const auto f = tr.forward(x, p.data());
      CHECK(f.y == doctest::Approx(a * l.y).epsilon(roundtrip_tol));
      CHECK(
          f.log_jac ==
          doctest::Approx(e.log_jac + s.log_jac + l.log_jac + std::log(a)).epsilon(roundtrip_tol));
    }
  }
}

TEST_CASE("DistConvertor: the symmetric convertor is odd, f(-x) = -f(x), with an even log_jac") {
  std::mt19937_64 rng(93);
  for (const auto& tr : {DistConvertor<5>{.symmetric = true},
                         DistConvertor<5>{.symmetric = true, .final_scale = true},
                         DistConvertor<5>{.symmetric = true, .smooth = true}}) {
    CHECK(tr.spline().layout().count == 2 * 5 - 1);
    for (int trial = 0; trial < 5; ++trial) {
      const auto p = convertor_weights(rng);
      for (double x = 0; x <= 8; x += 0.02) {
        CAPTURE(x);
        const auto f = tr.forward(x, p.data()), g = tr.forward(-x, p.data());
        // sigma(-x) = 1 - sigma(x) only up to rounding, which logit amplifies (logit_tol).
        CHECK(g.y == doctest::Approx(-f.y).epsilon(logit_tol(x)));
        CHECK(g.log_jac == doctest::Approx(f.log_jac).epsilon(logit_tol(x)));
      }
    }
  }
}

TEST_CASE("DistConvertor: float agrees with double") {
  std::mt19937_64 rng(94);
  std::normal_distribution<double> normal;
  for (const auto& tr : convertor_configs()) {
    for (int trial = 0; trial < 10; ++trial) {
      const std::vector<float> pf = [&] {
        const auto w = convertor_weights(rng, float_weight_sd);
        return std::vector<float>(w.begin(), w.end());
      }();
      const std::vector<double> p(pf.begin(), pf.end());  // the same rounded weights
      const float xf = float(1.5 * normal(rng)), gy = float(normal(rng)), gl = float(normal(rng));
      const double x = xf;
      CAPTURE(x);
      const auto fd = tr.forward(x, p.data());
      const auto ff = tr.forward(xf, pf.data());
      CHECK(double(ff.y) == doctest::Approx(fd.y).epsilon(float_rel_tol));
      CHECK(double(ff.log_jac) == doctest::Approx(fd.log_jac).epsilon(float_rel_tol));
      CHECK(double(tr.reverse(ff.y, pf.data()).x) ==
            doctest::Approx(tr.reverse(double(ff.y), p.data()).x).epsilon(float_rel_tol));
      std::vector<double> gpd(p.size(), 0.0);
      std::vector<float> gpf(p.size(), 0.0f);
      const double gxd = tr.backward(x, p.data(), double(gy), double(gl), gpd.data());
      const float gxf = tr.backward(xf, pf.data(), gy, gl, gpf.data());
      CHECK(double(gxf) == doctest::Approx(gxd).epsilon(float_rel_tol));
      for (std::size_t j = 0; j < p.size(); ++j)
        CHECK(double(gpf[j]) == doctest::Approx(gpd[j]).epsilon(float_rel_tol));
    }
  }
}

TEST_CASE(
    "DistConvertor: knots prepared once, shared by a batch: values and summed gradients agree") {
  using B = simd::native_pack<double>;
  constexpr index_t W = simd::pack_size<B>;
  constexpr index_t NP = DistConvertor<5>::num_params;
  std::mt19937_64 rng(95);
  std::normal_distribution<double> normal;
  for (const auto& tr : convertor_configs()) {
    const auto p = convertor_weights(rng);
    const auto pr = tr.prepare(p.data());  // scalar knots (KV = double)
    auto g = tr.zero_gradient<B>();
    auto gr = tr.zero_gradient<B>();
    std::vector<double> gp_scalar(NP, 0.0), gpr_scalar(NP, 0.0);
    for (int rep = 0; rep < 4; ++rep) {
      alignas(64) std::array<double, W> x{}, gy{}, gl{};
      for (index_t i = 0; i < W; ++i) {
        x[i] = 2 * normal(rng);
        gy[i] = normal(rng);
        gl[i] = normal(rng);
      }
      const B xv = simd::load<B>(x.data()), gyv = simd::load<B>(gy.data()),
              glv = simd::load<B>(gl.data());
      const auto fv = tr.forward(xv, pr);
      const auto rv = tr.reverse(fv.y, pr);
      const B gxv = tr.backward(xv, pr, gyv, glv, g);
      const B gyrv = tr.reverse_backward(fv.y, pr, gyv, glv, gr);
      for (index_t i = 0; i < W; ++i) {
        CAPTURE(x[i]);
        const auto f = tr.forward(x[i], p.data());
        const double yi = simd::lane(fv.y, i);
        CHECK(yi == doctest::Approx(f.y).epsilon(simd_rel_tol));
        CHECK(simd::lane(fv.log_jac, i) == doctest::Approx(f.log_jac).epsilon(simd_rel_tol));
        CHECK(simd::lane(rv.x, i) ==
              doctest::Approx(tr.reverse(yi, p.data()).x).epsilon(simd_rel_tol));
        CHECK(simd::lane(gxv, i) ==
              doctest::Approx(tr.backward(x[i], p.data(), gy[i], gl[i], gp_scalar.data()))
                  .epsilon(simd_rel_tol));
        CHECK(simd::lane(gyrv, i) ==
              doctest::Approx(tr.reverse_backward(yi, p.data(), gy[i], gl[i], gpr_scalar.data()))
                  .epsilon(simd_rel_tol));
      }
    }
    // Reduce the lanes of the knot gradients, then map them to the weights once.
    auto reduce = [&](const DistConvertor<5>::Prepared<B>& gb) {
      auto gs = tr.zero_gradient<double>();
      for (index_t j = 0; j < gs.knots.count; ++j)
        for (index_t i = 0; i < W; ++i) {
          gs.knots.x[j] += simd::lane(gb.knots.x[j], i);
          gs.knots.y[j] += simd::lane(gb.knots.y[j], i);
          gs.knots.d[j] += simd::lane(gb.knots.d[j], i);
        }
      for (index_t i = 0; i < W; ++i) {
        gs.scale += simd::lane(gb.scale, i);
        gs.log_scale += simd::lane(gb.log_scale, i);
      }
      std::vector<double> gp(NP, 0.0);
      tr.prepare_backward(p.data(), gs, gp.data());
      return gp;
    };
    const auto gp = reduce(g), gpr = reduce(gr);
    for (index_t k = 0; k < NP; ++k) {
      CAPTURE(k);
      CHECK(gp[k] == doctest::Approx(gp_scalar[k]).epsilon(simd_rel_tol));
      CHECK(gpr[k] == doctest::Approx(gpr_scalar[k]).epsilon(simd_rel_tol));
    }
  }
}

TEST_CASE("padding lanes: x = 0 gives finite values and gradients") {
  // Kernels process the padding lanes of a field (zeros), so 0 must map to finite values.
  std::mt19937_64 rng(96);
  auto finite = [](const std::vector<double>& v) {
    return std::all_of(v.begin(), v.end(), [](double a) { return std::isfinite(a); });
  };
  for (const auto& tr : convertor_configs()) {
    const auto p = convertor_weights(rng);
    const auto f = tr.forward(0.0, p.data());
    const auto r = tr.reverse(0.0, p.data());
    std::vector<double> gp(p.size(), 0.0), gpr(p.size(), 0.0);
    const double gx = tr.backward(0.0, p.data(), 1.0, 1.0, gp.data());
    const double gy = tr.reverse_backward(0.0, p.data(), 1.0, 1.0, gpr.data());
    CHECK(std::isfinite(f.y + f.log_jac + r.x + r.log_jac + gx + gy));
    CHECK(finite(gp));
    CHECK(finite(gpr));
    if (tr.symmetric) CHECK(f.y == 0.0);  // odd map
  }
  for (const auto& tr : spline_configs<5>()) {
    const bool covers_zero = (tr.xlim[0] <= 0 || tr.left != Extrapolation::none) &&
                             (tr.xlim[1] >= 0 || tr.right != Extrapolation::none);
    if (!covers_zero) continue;
    const auto p = random_weights<5>(rng);
    const auto f = tr.forward(0.0, p.data());
    std::vector<double> gp(p.size(), 0.0);
    const double gx = tr.backward(0.0, p.data(), 1.0, 1.0, gp.data());
    CHECK(std::isfinite(f.y + f.log_jac + gx));
    CHECK(finite(gp));
  }
}
