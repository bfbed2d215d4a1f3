// SPDX-License-Identifier: MIT
// Serial, OpenMP and Kokkos give identical action values, forces and log-densities on the same
// input, and the OpenMP results do not depend on the thread count.
#include <doctest/doctest.h>

#include <cstring>

#include "support/backends.hpp"
#include <normflow/action/scalar_phi4_action.hpp>
#include <normflow/prior/normal_prior.hpp>

using namespace normflow;

namespace {
template <class A, class B>
bool same_bits(const A& a, const B& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
}

template <class Lat, class T, class Exec>
void check_backend() {
  const ScalarPhi4Action a{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};
  NormalPrior<Lat, T> prior(0, 1, 31);
  const auto phi = prior.sample(45, exec::Serial{});
  const auto S_ref = a.action(phi, exec::Serial{});
  const auto F_ref = a.force(phi, exec::Serial{});
  const auto D_ref = a.action_density(phi, exec::Serial{});
  const auto L_ref = prior.log_prob(phi, exec::Serial{});
  for (int threads : {1, 2}) {
    test::ThreadCount tc(threads);
    CHECK(same_bits(a.action(phi, Exec{}), S_ref));
    CHECK(same_bits(a.force(phi, Exec{}).flat(), F_ref.flat()));
    CHECK(same_bits(a.action_density(phi, Exec{}).flat(), D_ref.flat()));
    CHECK(same_bits(prior.log_prob(phi, Exec{}), L_ref));
  }
}
}  // namespace

TEST_CASE_TEMPLATE_DEFINE("Backends give bitwise identical actions, forces and log-densities", Exec, agree_id) {
  check_backend<Lattice<8, 8>, float, Exec>();
  check_backend<Lattice<8, 8>, double, Exec>();
  check_backend<Lattice<3, 4, 5>, double, Exec>();
  check_backend<Lattice<1>, float, Exec>();
}
TEST_CASE_TEMPLATE_APPLY(agree_id, test::Backends);
