// SPDX-License-Identifier: MIT
#pragma once
// Backends every backend-generic test runs on, and helpers for thread-count tests.
#include <tuple>

#include <normflow/exec/exec.hpp>

namespace normflow::test {

using Backends = std::tuple<normflow::exec::Serial, normflow::exec::OpenMP
#if NORMFLOW_HAS_KOKKOS
                            ,
                            normflow::exec::KokkosExec<>
#endif
                            >;

/// Sets the OpenMP thread count for its lifetime, then restores it.
struct ThreadCount {
  int saved;
  explicit ThreadCount(int n) : saved(normflow::exec::max_threads()) { normflow::exec::set_num_threads(n); }
  ~ThreadCount() { normflow::exec::set_num_threads(saved); }
};

}  // namespace normflow::test
