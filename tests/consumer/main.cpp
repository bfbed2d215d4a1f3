// SPDX-License-Identifier: MIT
// A consumer of the installed package: samples the prior and evaluates the phi^4 action.
#include <cmath>
#include <cstdio>

#include <normflow/normflow.hpp>

int main() {
  using namespace normflow;
  NormalPrior<Lattice<4, 4>, double> prior(0, 1, 1);
  const auto x = prior.sample(8);
  const ScalarPhi4Action action{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};
  const auto s = action.action(x);
  std::printf("consumer: S[0] = %.6f (normflow %s)\n", s[0], version_string);
  return std::isfinite(s[0]) ? 0 : 1;
}
