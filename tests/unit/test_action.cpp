// SPDX-License-Identifier: MIT
// ScalarPhi4Action: against a naive loop, force against central differences, density sums to S.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include <normflow/action/scalar_phi4_action.hpp>
#include <normflow/prior/normal_prior.hpp>

using namespace normflow;

namespace {
// Naive S from reference 2.1's second form, on lexicographic coordinates (independent of the
// neighbour tables): S = sum_x [(kappa/2) sum_mu (phi(x+mu) - phi(x))^2 + (m^2/2) phi^2 + lambda phi^4].
template <class Lat, class F>
double naive_action(const F& phi, index_t b, const ScalarPhi4Action& a) {
  double S = 0;
  for (index_t site = 0; site < Lat::volume; ++site) {
    const double p = phi.at_site(site, 0, b);
    auto x = Lat::coord(site);
    for (index_t mu = 0; mu < Lat::rank; ++mu) {
      auto y = x;
      y[mu] = (x[mu] + 1) % Lat::extents[mu];
      const double d = double(phi.at_site(Lat::site(y), 0, b)) - p;
      S += 0.5 * a.kappa * d * d;
    }
    S += 0.5 * a.m_sq * p * p + a.lambd * p * p * p * p;
  }
  return S;
}

template <class Lat>
void check_against_naive() {
  const ScalarPhi4Action a{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};
  NormalPrior<Lat, double> prior(0.2, 1.1, 17);
  const index_t n = 11;
  const auto phi = prior.sample(n);
  const auto S = a.action(phi);
  const auto dens = a.action_density(phi);
  const auto pot = a.potential(phi);
  for (index_t b = 0; b < n; ++b) {
    const double ref = naive_action<Lat>(phi, b, a);
    CHECK(S[b] == doctest::Approx(ref).epsilon(1e-12));
    double sum = 0;
    for (index_t s = 0; s < Lat::volume; ++s) {
      sum += dens(s, b);
      const double p = phi(s, b);
      CHECK(pot(s, b) == doctest::Approx(0.5 * a.m_sq * p * p + a.lambd * p * p * p * p).epsilon(1e-13));
    }
    CHECK(sum == doctest::Approx(S[b]).epsilon(1e-12));  // action_density sums to the action
  }
  const auto logp = a.log_prob(phi, 1.5);
  CHECK(logp[3] == doctest::Approx(-S[3] - 1.5).epsilon(1e-14));
}

// Force = -dS/dphi against central differences, every site, relative error < 1e-7.
template <class Lat>
void check_force_central_differences(const ScalarPhi4Action& a) {
  NormalPrior<Lat, double> prior(0.1, 0.9, 23);
  const index_t n = 3;
  auto phi = prior.sample(n);
  const auto F = a.force(phi);
  double max_rel = 0;
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < n; ++b) {
      const double v = phi(s, b);
      const double h = std::cbrt(std::numeric_limits<double>::epsilon()) * std::max(1.0, std::abs(v));
      phi(s, b) = v + h;
      const double sp = a.action(phi)[b];
      phi(s, b) = v - h;
      const double sm = a.action(phi)[b];
      phi(s, b) = v;
      const double fd = -(sp - sm) / (2 * h);
      // scale by the largest term of the force so near-zero forces are not over-weighted
      const double scale = std::max({std::abs(fd), std::abs(a.kappa) * 4 * Lat::rank, 1.0});
      max_rel = std::max(max_rel, std::abs(F(s, b) - fd) / scale);
    }
  CAPTURE(max_rel);
  CHECK(max_rel < 1e-7);
}
}  // namespace

TEST_CASE("ScalarPhi4Action matches a naive loop: the density sums to S") {
  check_against_naive<Lattice<4, 4>>();
  check_against_naive<Lattice<8, 8>>();
  check_against_naive<Lattice<3, 4, 5>>();
  check_against_naive<Lattice<2, 2>>();
  check_against_naive<Lattice<1>>();
  check_against_naive<Lattice<4, 4, 4>>();
}

TEST_CASE("ScalarPhi4Action: force = -dS/dphi against central differences (double)") {
  check_force_central_differences<Lattice<4, 4>>({.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5});
  check_force_central_differences<Lattice<3, 4, 5>>({.kappa = 0.3, .m_sq = 1.25, .lambd = 0.0});
  check_force_central_differences<Lattice<1>>({.kappa = 0, .m_sq = -2.0, .lambd = 0.2});
  check_force_central_differences<Lattice<8, 8>>({.kappa = 1.0, .m_sq = 0.5, .lambd = 1.3});
}

TEST_CASE("ScalarPhi4Action: the 1-dof action is -phi^2 + 0.2 phi^4") {
  const ScalarPhi4Action a{.kappa = 0, .m_sq = -2.0, .lambd = 0.2};
  ScalarField<Lattice<1>, double> phi(2);
  phi(0, 0) = 1.5;
  phi(0, 1) = -0.7;
  const auto S = a.action(phi);
  CHECK(S[0] == doctest::Approx(-1.5 * 1.5 + 0.2 * std::pow(1.5, 4)).epsilon(1e-15));
  CHECK(S[1] == doctest::Approx(-0.49 + 0.2 * std::pow(0.7, 4)).epsilon(1e-15));
}

TEST_CASE("ScalarPhi4Action: float agrees with double") {
  using Lat = Lattice<8, 8>;
  const ScalarPhi4Action a{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};
  NormalPrior<Lat, float> pf(0, 1, 4);
  NormalPrior<Lat, double> pd(0, 1, 4);
  const auto xf = pf.sample(40);
  const auto xd = pd.sample(40);
  const auto Sf = a.action(xf);
  const auto Sd = a.action(xd);
  for (index_t b = 0; b < 40; ++b) CHECK(double(Sf[b]) == doctest::Approx(Sd[b]).epsilon(1e-4));
}

TEST_CASE("ScalarPhi4Action rejects bad couplings, naming them") {
  ScalarField<Lattice<2, 2>, double> phi(1);
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS((ScalarPhi4Action{.kappa = 1, .m_sq = 1, .lambd = -0.1}.action(phi)),
                       doctest::Contains("lambd = -0.1"), ParameterError);
  CHECK_THROWS_WITH_AS((ScalarPhi4Action{.kappa = inf, .m_sq = 1, .lambd = 0.1}.action(phi)),
                       doctest::Contains("kappa"), ParameterError);
  CHECK_THROWS_WITH_AS((ScalarPhi4Action{.kappa = 1, .m_sq = nan, .lambd = 0.1}.force(phi)),
                       doctest::Contains("m_sq"), ParameterError);
  CHECK_THROWS_WITH_AS((ScalarPhi4Action{.kappa = 1, .m_sq = 1}.action(phi)), doctest::Contains("lambd"),
                       ParameterError);
  CHECK_NOTHROW(ScalarPhi4Action{.m_sq = 1, .lambd = 0}.validate());
}
