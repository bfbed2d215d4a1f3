// SPDX-License-Identifier: MIT
// Element-wise transforms (Identity, Affine, Tanh, Expit, Logit) and normflow::math: adjoints of
// forward and reverse against central differences, round trips, log-Jacobians against the
// finite-difference derivative, float against double, xsimd batches against scalars lane by lane.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include <normflow/simd/pack.hpp>
#include <normflow/transform/elementwise.hpp>
#include <normflow/transform/math.hpp>

using namespace normflow;

namespace {

constexpr double eps = std::numeric_limits<double>::epsilon();
// Central differences with h = cbrt(eps) max(1, |v|): truncation h^2 |f'''|/6 plus rounding
// eps |L|/h, each about 4e-11 relative for O(1) curvature; 1e-7 leaves three orders of headroom.
constexpr double grad_rel_tol = 1e-7;
// Round trips and forward + reverse log-Jacobians: a few hundred roundings of O(1) values.
constexpr double roundtrip_tol = 4096 * eps;  // ~9e-13
// log of a central-difference derivative: its relative error (~4e-11) plus headroom.
constexpr double fd_log_tol = 1e-8;
// float against double: about 80 float epsilons for a handful of transcendental calls.
constexpr double float_rel_tol = 1e-5;
// xsimd's exp/log/tanh differ from libm by a few ulp; 64 eps bounds it for O(1) values.
constexpr double simd_rel_tol = 64 * eps;

/// A step with h exactly representable at v (so (v+h) - (v-h) = 2h).
double fd_step(double v) {
  const double h = std::cbrt(eps) * std::max(1.0, std::abs(v));
  volatile double t = v + h;
  return t - v;
}

/// Points of each transform's domain (Logit lives on (0, 1)).
template <class Tr>
double sample_x(std::mt19937_64& rng) {
  if constexpr (std::is_same_v<Tr, Logit>) {
    return std::uniform_real_distribution<double>(0.02, 0.98)(rng);
  } else {
    return 2.0 * std::normal_distribution<double>()(rng);
  }
}

/// fd_step(y), shrunk near the edge of a bounded reverse domain ((-1, 1) for Tanh, (0, 1) for
/// Expit) so that the truncation error (h/margin)^2 stays below 1e-8.
template <class Tr>
double reverse_step(double y) {
  double margin = std::numeric_limits<double>::infinity();
  if constexpr (std::is_same_v<Tr, Tanh>) margin = 1 - std::abs(y);
  if constexpr (std::is_same_v<Tr, Expit>) margin = std::min(y, 1 - y);
  const double h = std::min(fd_step(y), 1e-4 * margin);
  volatile double t = y + h;
  return t - y;
}

template <class Tr>
std::vector<double> sample_params(std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> p(std::max<index_t>(Tr::num_params, 1), 0.0);  // >= 1 so data() is valid
  for (index_t k = 0; k < Tr::num_params; ++k) p[k] = normal(rng);
  return p;
}

/// Central-difference check of backward (L = gy y + gl log_jac) and of reverse_backward
/// (L = gx x + gl log_jac_inv at y = f(x)), for the input and every parameter.
template <class Tr>
void check_adjoints(const Tr& tr, const std::vector<double>& p, double x, double gy, double gl) {
  CAPTURE(x);
  CAPTURE(gy);
  CAPTURE(gl);
  // forward
  std::vector<double> gp(p.size(), 0.0);
  const double gx = tr.backward(x, p.data(), gy, gl, gp.data());
  auto loss = [&](double xv, const std::vector<double>& pv) {
    const auto r = tr.forward(xv, pv.data());
    return gy * r.y + gl * r.log_jac;
  };
  const double hx = fd_step(x);
  CHECK(gx ==
        doctest::Approx((loss(x + hx, p) - loss(x - hx, p)) / (2 * hx)).epsilon(grad_rel_tol));
  for (index_t k = 0; k < Tr::num_params; ++k) {
    CAPTURE(k);
    auto up = p, dn = p;
    const double h = fd_step(p[k]);
    up[k] += h;
    dn[k] -= h;
    CHECK(gp[k] == doctest::Approx((loss(x, up) - loss(x, dn)) / (2 * h)).epsilon(grad_rel_tol));
  }
  // reverse, at y = f(x); the cotangents are reused for (x, log_jac_inv)
  const double y = tr.forward(x, p.data()).y;
  std::vector<double> gpr(p.size(), 0.0);
  const double gyr = tr.reverse_backward(y, p.data(), gy, gl, gpr.data());
  auto loss_r = [&](double yv, const std::vector<double>& pv) {
    const auto r = tr.reverse(yv, pv.data());
    return gy * r.x + gl * r.log_jac;
  };
  const double hy = reverse_step<Tr>(y);
  CHECK(gyr ==
        doctest::Approx((loss_r(y + hy, p) - loss_r(y - hy, p)) / (2 * hy)).epsilon(grad_rel_tol));
  for (index_t k = 0; k < Tr::num_params; ++k) {
    CAPTURE(k);
    auto up = p, dn = p;
    const double h = fd_step(p[k]);
    up[k] += h;
    dn[k] -= h;
    CHECK(gpr[k] ==
          doctest::Approx((loss_r(y, up) - loss_r(y, dn)) / (2 * h)).epsilon(grad_rel_tol));
  }
}

}  // namespace

TEST_CASE_TEMPLATE("element transforms: backward and reverse_backward match central differences",
                   Tr, Identity, Affine, Tanh, Expit, Logit) {
  std::mt19937_64 rng(20240611);  // fixed seed: failures reproduce
  std::normal_distribution<double> normal;
  for (int trial = 0; trial < 50; ++trial) {
    const auto p = sample_params<Tr>(rng);
    const double x = sample_x<Tr>(rng);
    check_adjoints(Tr{}, p, x, normal(rng), normal(rng));
  }
}

TEST_CASE_TEMPLATE("element transforms: round trip, log-Jacobians cancel and match d y/dx", Tr,
                   Identity, Affine, Tanh, Expit, Logit) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const auto p = sample_params<Tr>(rng);
    const double x = sample_x<Tr>(rng);
    CAPTURE(x);
    const auto f = Tr::forward(x, p.data());
    const auto r = Tr::reverse(f.y, p.data());
    CHECK(r.x == doctest::Approx(x).epsilon(roundtrip_tol));
    CHECK(f.log_jac + r.log_jac == doctest::Approx(0).epsilon(roundtrip_tol));
    const double h = fd_step(x);
    const double dydx = (Tr::forward(x + h, p.data()).y - Tr::forward(x - h, p.data()).y) / (2 * h);
    CHECK(f.log_jac == doctest::Approx(std::log(dydx)).epsilon(fd_log_tol));
  }
}

TEST_CASE("element transforms: the reference's log-Jacobian formulas (3.1)") {
  for (double x : {-3.0, -0.4, 0.0, 0.3, 2.5}) {
    CAPTURE(x);
    const double s = 1 / (1 + std::exp(-x));
    CHECK(Expit::forward(x).y == doctest::Approx(s).epsilon(4 * eps));
    CHECK(Expit::forward(x).log_jac == doctest::Approx(-x + 2 * std::log(s)).epsilon(64 * eps));
    CHECK(Tanh::forward(x).log_jac ==
          doctest::Approx(-2 * std::log(std::cosh(x))).epsilon(64 * eps));
    const double u = s;  // Logit on (0, 1)
    CHECK(Logit::forward(u).y == doctest::Approx(std::log(u / (1 - u))).epsilon(64 * eps));
    CHECK(Logit::forward(u).log_jac == doctest::Approx(-std::log(u * (1 - u))).epsilon(64 * eps));
    const double t = std::tanh(x);
    CHECK(Tanh::reverse(t).log_jac ==
          doctest::Approx(2 * std::log(std::cosh(std::atanh(t)))).epsilon(1e-12));
  }
  // No overflow in the tails, where the reference's cosh / exp(-x) would overflow.
  CHECK(std::isfinite(Tanh::forward(800.0).log_jac));
  CHECK(Tanh::forward(800.0).log_jac ==
        doctest::Approx(-1600 + 2 * std::log(2.0)).epsilon(4 * eps));
  CHECK(Expit::forward(-800.0).log_jac == doctest::Approx(-800).epsilon(4 * eps));
  CHECK(Expit::forward(800.0).log_jac == doctest::Approx(-800).epsilon(4 * eps));
}

TEST_CASE("Affine: zero weights are the identity: softplus(0) = 1 and its linear branch") {
  const std::array<double, 2> zero{0, 0};
  for (double x : {-2.0, 0.0, 1.5}) {
    CHECK(Affine::forward(x, zero.data()).y == x);
    CHECK(Affine::forward(x, zero.data()).log_jac == 0);
    CHECK(Affine::reverse(x, zero.data()).x == x);
  }
  CHECK(math::softplus(0.0) == 1.0);
  CHECK(math::softplus(0.0f) == 1.0f);
  // beta w > 20 returns w (torch.nn.Softplus(beta=ln 2, threshold=20)); derivative exactly 1.
  const double w_big = 30.0;  // ln2 * 30 = 20.8
  CHECK(math::softplus(w_big) == w_big);
  CHECK(math::softplus_grad(w_big) == 1.0);
  const double w = 1.7;
  CHECK(math::softplus(w) ==
        doctest::Approx(std::log1p(std::exp(math::ln2 * w)) / math::ln2).epsilon(4 * eps));
  // Gradients on the linear branch too.
  check_adjoints(Affine{}, {w_big, -0.3}, 0.8, 1.1, -0.7);
  // y = softplus(w_s) x + w_b, log_jac = log softplus(w_s)
  const std::array<double, 2> p{0.4, -1.2};
  const double a = std::log1p(std::exp(math::ln2 * 0.4)) / math::ln2;
  CHECK(Affine::forward(2.0, p.data()).y == doctest::Approx(a * 2.0 - 1.2).epsilon(4 * eps));
  CHECK(Affine::forward(2.0, p.data()).log_jac == doctest::Approx(std::log(a)).epsilon(4 * eps));
}

TEST_CASE("math: select/where/min/max, on scalars and batches") {
  CHECK(math::select(true, 1.0, 2.0) == 1.0);
  CHECK(math::where(false, 1.0, 2.0) == 2.0);
  CHECK(math::min(1.0, 2.0) == 1.0);
  CHECK(math::max(1.0f, 2.0f) == 2.0f);
  using B = simd::native_pack<double>;
  alignas(64) std::array<double, simd::pack_size<B>> a{}, b{};
  for (index_t i = 0; i < simd::pack_size<B>; ++i) {
    a[i] = i;
    b[i] = 1.5;
  }
  const B va = simd::load<B>(a.data()), vb = simd::load<B>(b.data());
  const B s = math::select(va < vb, va, vb);
  const B sp = math::softplus(va * 12.0);  // lanes on both softplus branches
  for (index_t i = 0; i < simd::pack_size<B>; ++i) {
    CHECK(simd::lane(s, i) == std::min(a[i], b[i]));
    CHECK(simd::lane(sp, i) == doctest::Approx(math::softplus(12.0 * a[i])).epsilon(simd_rel_tol));
  }
}

TEST_CASE_TEMPLATE("element transforms: float agrees with double", Tr, Identity, Affine, Tanh,
                   Expit, Logit) {
  std::mt19937_64 rng(99);
  std::normal_distribution<double> normal;
  for (int trial = 0; trial < 50; ++trial) {
    const auto p = sample_params<Tr>(rng);
    const double x = sample_x<Tr>(rng);
    const double gy = normal(rng), gl = normal(rng);
    std::vector<float> pf(p.begin(), p.end());
    CAPTURE(x);
    const auto fd = Tr::forward(x, p.data());
    const auto ff = Tr::forward(float(x), pf.data());
    CHECK(double(ff.y) == doctest::Approx(fd.y).epsilon(float_rel_tol));
    CHECK(double(ff.log_jac) == doctest::Approx(fd.log_jac).epsilon(float_rel_tol));
    const auto rd = Tr::reverse(fd.y, p.data());
    const auto rf = Tr::reverse(float(fd.y), pf.data());
    CHECK(double(rf.x) == doctest::Approx(rd.x).epsilon(float_rel_tol));
    CHECK(double(rf.log_jac) == doctest::Approx(rd.log_jac).epsilon(float_rel_tol));
    std::vector<double> gpd(p.size(), 0.0);
    std::vector<float> gpf(p.size(), 0.0f);
    const double gxd = Tr::backward(x, p.data(), gy, gl, gpd.data());
    const float gxf = Tr::backward(float(x), pf.data(), float(gy), float(gl), gpf.data());
    CHECK(double(gxf) == doctest::Approx(gxd).epsilon(float_rel_tol));
    for (index_t k = 0; k < Tr::num_params; ++k)
      CHECK(double(gpf[k]) == doctest::Approx(gpd[k]).epsilon(float_rel_tol));
  }
}

TEST_CASE_TEMPLATE("element transforms: an xsimd batch gives the scalar values lane by lane", Tr,
                   Identity, Affine, Tanh, Expit, Logit) {
  using B = simd::native_pack<double>;
  constexpr index_t W = simd::pack_size<B>;
  constexpr index_t NP = std::max<index_t>(Tr::num_params, 1);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  alignas(64) std::array<double, W> x{}, gy{}, gl{};
  alignas(64) std::array<std::array<double, W>, NP> p{};
  for (index_t i = 0; i < W; ++i) {
    x[i] = sample_x<Tr>(rng);
    gy[i] = normal(rng);
    gl[i] = normal(rng);
    for (index_t k = 0; k < Tr::num_params; ++k) p[k][i] = normal(rng);
  }
  std::array<B, NP> pv, gpv, gprv;
  for (index_t k = 0; k < NP; ++k) {
    pv[k] = simd::load<B>(p[k].data());
    gpv[k] = gprv[k] = B(0.0);
  }
  const B xv = simd::load<B>(x.data()), gyv = simd::load<B>(gy.data()),
          glv = simd::load<B>(gl.data());
  const auto fv = Tr::forward(xv, pv.data());
  const auto rv = Tr::reverse(fv.y, pv.data());
  const B gxv = Tr::backward(xv, pv.data(), gyv, glv, gpv.data());
  const B gyrv = Tr::reverse_backward(fv.y, pv.data(), gyv, glv, gprv.data());
  for (index_t i = 0; i < W; ++i) {
    CAPTURE(i);
    std::array<double, NP> ps{}, gps{}, gprs{};
    for (index_t k = 0; k < Tr::num_params; ++k) ps[k] = p[k][i];
    const auto f = Tr::forward(x[i], ps.data());
    const double yi = simd::lane(fv.y, i);
    const auto r = Tr::reverse(yi, ps.data());
    const double gx = Tr::backward(x[i], ps.data(), gy[i], gl[i], gps.data());
    const double gyr = Tr::reverse_backward(yi, ps.data(), gy[i], gl[i], gprs.data());
    CHECK(yi == doctest::Approx(f.y).epsilon(simd_rel_tol));
    CHECK(simd::lane(fv.log_jac, i) == doctest::Approx(f.log_jac).epsilon(simd_rel_tol));
    CHECK(simd::lane(rv.x, i) == doctest::Approx(r.x).epsilon(simd_rel_tol));
    CHECK(simd::lane(rv.log_jac, i) == doctest::Approx(r.log_jac).epsilon(simd_rel_tol));
    CHECK(simd::lane(gxv, i) == doctest::Approx(gx).epsilon(simd_rel_tol));
    CHECK(simd::lane(gyrv, i) == doctest::Approx(gyr).epsilon(simd_rel_tol));
    for (index_t k = 0; k < Tr::num_params; ++k) {
      CHECK(simd::lane(gpv[k], i) == doctest::Approx(gps[k]).epsilon(simd_rel_tol));
      CHECK(simd::lane(gprv[k], i) == doctest::Approx(gprs[k]).epsilon(simd_rel_tol));
    }
  }
}
