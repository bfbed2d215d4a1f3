// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Execution policies and exec::Default.

#include <type_traits>

#include <normflow/config.hpp>
#include <normflow/exec/host.hpp>
#if NORMFLOW_HAS_KOKKOS
#include <normflow/exec/kokkos/kokkos_exec.hpp>
#endif

namespace normflow::exec {

#if NORMFLOW_HAS_KOKKOS
/// A device build of Kokkos (CUDA, HIP) becomes the default; a host-only Kokkos (Debian's
/// Serial-only build) does not: host threads then come from OpenMP.
using Default = std::conditional_t<
    std::is_same_v<::Kokkos::DefaultExecutionSpace, ::Kokkos::DefaultHostExecutionSpace>, HostDefault,
    KokkosExec<>>;
#else
/// The default execution policy: OpenMP when compiled with OpenMP, else Serial.
using Default = HostDefault;
#endif

template <class E>
inline constexpr bool is_exec_policy_v = std::is_same_v<E, Serial> || std::is_same_v<E, OpenMP>
#if NORMFLOW_HAS_KOKKOS
                                         || requires { typename E::space; }
#endif
    ;

/// Satisfied by exec::Serial, exec::OpenMP and exec::KokkosExec<Space>.
template <class E>
concept Policy = is_exec_policy_v<E>;

}  // namespace normflow::exec
