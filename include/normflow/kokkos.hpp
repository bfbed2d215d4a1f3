// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Opt-in umbrella with the Kokkos backend (exec::KokkosExec). Link normflow::kokkos, which
/// defines NORMFLOW_HAS_KOKKOS=1, and initialise Kokkos in main (Kokkos::ScopeGuard).

#include <normflow/config.hpp>
#if !NORMFLOW_HAS_KOKKOS
#error "<normflow/kokkos.hpp> needs NORMFLOW_HAS_KOKKOS=1: link the CMake target normflow::kokkos"
#endif
#include <normflow/exec/kokkos/kokkos_exec.hpp>
#include <normflow/normflow.hpp>
