// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file The only header that defines macros (NORMFLOW_*).

#include <cassert>

/// 1 when the Kokkos backend is compiled in (set by the CMake target normflow::kokkos).
#ifndef NORMFLOW_HAS_KOKKOS
#define NORMFLOW_HAS_KOKKOS 0
#endif

#if NORMFLOW_HAS_KOKKOS
#include <Kokkos_Macros.hpp>
/// Marks functions callable inside kernels on every backend (a device build compiles them twice).
#define NORMFLOW_HOST_DEVICE KOKKOS_INLINE_FUNCTION
#else
#define NORMFLOW_HOST_DEVICE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NORMFLOW_ALWAYS_INLINE inline __attribute__((always_inline))
/// Register-blocked kernels: kept out of line, so that the caller's loops cannot make GCC move
/// the accumulator array to memory (it then stores and reloads it on every iteration).
#define NORMFLOW_NOINLINE inline __attribute__((noinline))
#define NORMFLOW_RESTRICT __restrict__
#else
#define NORMFLOW_ALWAYS_INLINE inline
#define NORMFLOW_NOINLINE inline
#define NORMFLOW_RESTRICT
#endif

/// Internal invariants inside kernels (never user errors: those throw before any kernel runs).
/// assert() on the host; nothing under NDEBUG.
#define NORMFLOW_ASSERT(cond) assert(cond)
