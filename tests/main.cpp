// SPDX-License-Identifier: MIT
// doctest main; initialises Kokkos when the backend is compiled in.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <normflow/config.hpp>
#if NORMFLOW_HAS_KOKKOS
#include <Kokkos_Core.hpp>
#endif

int main(int argc, char** argv) {
#if NORMFLOW_HAS_KOKKOS
  Kokkos::ScopeGuard guard(argc, argv);
#endif
  return doctest::Context(argc, argv).run();
}
