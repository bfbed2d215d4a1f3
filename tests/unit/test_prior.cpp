// SPDX-License-Identifier: MIT
// Priors: moments within 5 sigma, log_prob against the closed form, parameter validation.
#include <doctest/doctest.h>

#include <cmath>
#include <numbers>

#include "support/backends.hpp"
#include <normflow/prior/normal_prior.hpp>
#include <normflow/prior/uniform_prior.hpp>

using namespace normflow;

TEST_CASE_TEMPLATE("NormalPrior: sample mean and variance within 5 sigma", T, float, double) {
  using Lat = Lattice<8, 8>;
  const double mu = 0.3, sigma = 1.7;
  NormalPrior<Lat, T> prior(mu, sigma, 11);
  const index_t n = 2000;
  const auto x = prior.sample(n);
  double s1 = 0, s2 = 0;
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < n; ++b) {
      s1 += double(x(s, b));
      s2 += (double(x(s, b)) - mu) * (double(x(s, b)) - mu);
    }
  const double N = double(n) * Lat::volume;
  const double mean = s1 / N, var = s2 / N;
  CHECK(std::abs(mean - mu) < 5 * sigma / std::sqrt(N));
  CHECK(std::abs(var - sigma * sigma) < 5 * sigma * sigma * std::sqrt(2.0 / N));
}

TEST_CASE("NormalPrior: log_prob equals the closed form, constants included") {
  using Lat = Lattice<3, 4, 5>;
  const double mu = -0.4, sigma = 0.8;
  NormalPrior<Lat, double> prior(mu, sigma, 3);
  const auto [x, logr] = prior.sample_(7);
  REQUIRE(logr.size() == 7);
  for (index_t b = 0; b < 7; ++b) {
    double ref = 0;  // sum_i log N(x_i; mu, sigma)
    for (index_t s = 0; s < Lat::volume; ++s) {
      const double z = (x(s, b) - mu) / sigma;
      ref += -0.5 * z * z - std::log(sigma) - 0.5 * std::log(2 * std::numbers::pi);
    }
    CHECK(logr[b] == doctest::Approx(ref).epsilon(1e-13));
  }
  // score: d log r / dx = -(x - mu)/sigma^2
  ScalarField<Lat, double> g;
  prior.grad_log_prob(x, g);
  CHECK(g(7, 0, 3) == doctest::Approx(-(x(7, 0, 3) - mu) / (sigma * sigma)).epsilon(1e-14));
}

TEST_CASE("NormalPrior on Lattice<1> (the 1-dof model), float by default") {
  NormalPrior<Lattice<1>> prior;
  static_assert(std::is_same_v<decltype(prior)::value_type, float>);
  const auto [x, logr] = prior.sample_(64);
  for (index_t b = 0; b < 64; ++b) {
    const double v = x(0, b);
    CHECK(logr[b] == doctest::Approx(-0.5 * v * v - 0.5 * std::log(2 * std::numbers::pi)).epsilon(1e-6));
  }
}

TEST_CASE("UniformPrior: range, moments and log_prob") {
  using Lat = Lattice<4, 4>;
  UniformPrior<Lat, double> prior(-1.0, 3.0, 8);
  const index_t n = 4000;
  const auto [x, logr] = prior.sample_(n);
  double s1 = 0;
  bool inside = true;
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < n; ++b) {
      s1 += x(s, b);
      inside = inside && x(s, b) >= -1.0 && x(s, b) < 3.0;
    }
  CHECK(inside);
  const double N = double(n) * Lat::volume, sd = 4.0 / std::sqrt(12.0);
  CHECK(std::abs(s1 / N - 1.0) < 5 * sd / std::sqrt(N));
  CHECK(logr[0] == doctest::Approx(-Lat::volume * std::log(4.0)).epsilon(1e-14));
  auto y = x;
  y(2, 0, 5) = 3.5;  // outside
  CHECK(std::isinf(prior.log_prob(y)[5]));
  CHECK(prior.log_prob(y)[5] < 0);
}

TEST_CASE("Priors reject bad parameters before any work, naming them") {
  using Lat = Lattice<2, 2>;
  CHECK_THROWS_WITH_AS((NormalPrior<Lat>(0, 0)), doctest::Contains("scale"), ParameterError);
  CHECK_THROWS_WITH_AS((NormalPrior<Lat>(0, -1)), doctest::Contains("scale"), ParameterError);
  CHECK_THROWS_WITH_AS((NormalPrior<Lat>(std::nan(""), 1)), doctest::Contains("loc"), ParameterError);
  CHECK_THROWS_WITH_AS((NormalPrior<Lat>(0, INFINITY)), doctest::Contains("scale"), ParameterError);
  CHECK_THROWS_WITH_AS((UniformPrior<Lat>(1, 1)), doctest::Contains("low"), ParameterError);
  NormalPrior<Lat> prior;
  CHECK_THROWS_WITH_AS(prior.sample(0), doctest::Contains("batch size n = 0"), ParameterError);
  CHECK_THROWS_WITH_AS(prior.sample(-5), doctest::Contains("[1, 2^30)"), ParameterError);
  const auto x = prior.sample(4);
  std::vector<float> wrong(3);
  CHECK_THROWS_AS(prior.log_prob(x, std::span<float>(wrong)), ShapeError);
}
