// SPDX-License-Identifier: MIT
// Metrics: ESS, log(q/p), log Z; stability for large |log w|.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <normflow/diagnostics/jackknife.hpp>
#include <normflow/diagnostics/metrics.hpp>

using namespace normflow;

TEST_CASE("ESS is 1 when logq = logp, whatever the constant offset") {
  const std::vector<double> logq{-1.0, 2.5, 0.3, -7.0, 4.0};
  std::vector<double> logp = logq;
  CHECK(ess(logq, logp) == doctest::Approx(1.0).epsilon(1e-14));
  for (double& v : logp) v += 1234.5;  // p unnormalised: ESS only sees ratios
  // logp - logq is now exact only to 1234.5 * eps ~ 3e-13
  CHECK(ess(logq, logp) == doctest::Approx(1.0).epsilon(1e-12));
}

TEST_CASE("ESS, log Z and log(q/p) on a 4-sample example computed by hand") {
  // Delta = logq - logp = {0, ln 2, -ln 2, 0}: w = p/q = {1, 1/2, 2, 1}
  // ESS = (sum w)^2 / (N sum w^2) = 4.5^2 / (4 * 6.25) = 20.25 / 25 = 0.81
  // log Z = ln(mean w) = ln(4.5 / 4)
  const double l2 = std::log(2.0);
  const std::vector<double> logq{0.0, l2, -l2, 0.0};
  const std::vector<double> logp{0.0, 0.0, 0.0, 0.0};
  CHECK(ess(logq, logp) == doctest::Approx(0.81).epsilon(1e-14));
  const std::span<const double> q(logq), p(logp);
  CHECK(Metrics::calc_minus_logess(q, p) == doctest::Approx(-std::log(0.81)).epsilon(1e-13));
  const auto z = estimate_log_z(logq, logp);
  CHECK(z.value == doctest::Approx(std::log(4.5 / 4)).epsilon(1e-14));
  CHECK(z.error == doctest::Approx(std::sqrt((1 / 0.81 - 1) / 4)).epsilon(1e-12));
  CHECK(Metrics::calc_minus_logz(q, p) == doctest::Approx(-std::log(4.5 / 4)).epsilon(1e-14));
  const auto r = Metrics::log_ratio(q, p);
  CHECK(r.mean == doctest::Approx(0.0).epsilon(1e-15));
  CHECK(r.std == doctest::Approx(std::sqrt(2 * l2 * l2 / 3)).epsilon(1e-14));
  CHECK(Metrics::calc_kl_var(q, p) == doctest::Approx(2 * l2 * l2 / 3).epsilon(1e-14));
  // forward KL: w~ = w / mean(w), mean(w~ ln w~)
  double dkl = 0;
  for (double w : {1.0, 0.5, 2.0, 1.0}) dkl += (w / 1.125) * std::log(w / 1.125);
  CHECK(Metrics::calc_direct_kl_mean(q, p) == doctest::Approx(dkl / 4).epsilon(1e-13));
}

TEST_CASE("Metrics are stable for |log w| up to 1e4") {
  // Same example shifted by +-1e4: ratios unchanged, so ESS unchanged; log Z shifts exactly.
  const double l2 = std::log(2.0);
  for (double shift : {1e4, -1e4}) {
    const std::vector<double> logq{shift, shift + l2, shift - l2, shift};
    const std::vector<double> logp{0.0, 0.0, 0.0, 0.0};
    CHECK(ess(logq, logp) == doctest::Approx(0.81).epsilon(1e-11));  // inputs exact to 1e4 * eps
    const auto z = estimate_log_z(logq, logp);
    CHECK(std::isfinite(z.value));
    CHECK(z.value == doctest::Approx(std::log(4.5 / 4) - shift).epsilon(1e-12));
  }
  // One dominant weight: ESS -> 1/N
  const std::vector<double> logq{0.0, 1e4, 1e4, 1e4};
  const std::vector<double> logp{0.0, 0.0, 0.0, 0.0};
  CHECK(ess(logq, logp) == doctest::Approx(0.25).epsilon(1e-12));
}

TEST_CASE("Metrics accept float inputs and reject mismatched lengths") {
  const std::vector<float> logq{0.1f, 0.2f};
  const std::vector<double> logp{0.1, 0.2};
  CHECK(ess(logq, logp) == doctest::Approx(1.0).epsilon(1e-6));
  const std::vector<double> three{1, 2, 3};
  CHECK_THROWS_AS(ess(logq, three), ShapeError);
  const std::vector<double> none;
  CHECK_THROWS_AS(ess(none, none), ShapeError);
}

TEST_CASE("Binned jackknife: the mean's error equals the binned standard error: a nonlinear function") {
  std::vector<double> v;
  for (int i = 0; i < 1000; ++i) v.push_back(std::sin(0.37 * i) + 0.01 * i);
  const auto j = jackknife_mean(std::span<const double>(v), 10);
  std::vector<double> bins;
  for (int i = 0; i < 100; ++i) {
    double s = 0;
    for (int k = 0; k < 10; ++k) s += v[std::size_t(10 * i + k)];
    bins.push_back(s / 10);
  }
  const auto m = mean_std(bins);
  CHECK(j.mean == doctest::Approx(m.mean).epsilon(1e-13));
  CHECK(j.std == doctest::Approx(m.std / std::sqrt(100.0)).epsilon(1e-10));
  // f = <x>^2: error ~ 2 |<x>| err(<x>) to first order
  const auto sq = jackknife({std::span<const double>(v)}, 10, [](std::span<const double> mm) { return mm[0] * mm[0]; });
  CHECK(sq.mean == doctest::Approx(m.mean * m.mean).epsilon(1e-12));
  CHECK(sq.std == doctest::Approx(2 * std::abs(m.mean) * j.std).epsilon(0.02));
  CHECK_THROWS_AS(jackknife_mean(std::span<const double>(v), 600), ParameterError);
}
