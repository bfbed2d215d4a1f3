// SPDX-License-Identifier: MIT
// A consumer of the installed package's Kokkos backend.
#include <cmath>
#include <cstdio>

#include <normflow/kokkos.hpp>

int main(int argc, char** argv) {
  Kokkos::ScopeGuard guard(argc, argv);
  using namespace normflow;
  NormalPrior<Lattice<4, 4>, double> prior(0, 1, 1);
  const auto x = prior.sample(8, exec::KokkosExec<>{});
  const ScalarPhi4Action action{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};
  const auto s = action.action(x, exec::KokkosExec<>{});
  std::printf("consumer (Kokkos): S[0] = %.6f\n", s[0]);
  return std::isfinite(s[0]) ? 0 : 1;
}
