// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file The machine's FMA peak for the benchmarks: 12 independent SIMD accumulators per thread,
/// one FMA each per round (2 x 12 x lanes FLOP), through simd::fma (the FMA instruction; xsimd
/// 8.1's own fma is a multiply and an add on AVX-512).

#include <algorithm>
#include <chrono>

#include <normflow/simd/pack.hpp>

namespace normflow::bench {

/// iters rounds of the kernel; returns a sum that depends on every accumulator.
template <class T>
[[gnu::noinline]] T fma_kernel(long iters) {
  using V = simd::native_pack<T>;
  constexpr int A = 12;
  V acc[A];
  for (int i = 0; i < A; ++i) acc[i] = V(T(i) * T(1e-3));
  const V a(T(0.999999)), b(T(1e-7));
  for (long n = 0; n < iters; ++n)
    for (int i = 0; i < A; ++i) acc[i] = simd::fma(acc[i], a, b);
  T sink = 0;
  for (int i = 0; i < A; ++i) sink += xsimd::hadd(acc[i]);
  return sink;
}

/// Total FMA rate of `threads` threads running fma_kernel together (GFLOP/s), best of `reps`.
template <class T>
double fma_peak(int threads = 1, int reps = 5, long iters = 20'000'000) {
  constexpr double flop_per_round = 2.0 * 12 * simd::pack_size<simd::native_pack<T>>;
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    T sink = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(+ : sink)
#endif
    sink += fma_kernel<T>(iters);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    volatile T keep = sink;
    (void)keep;
    best = std::max(best, threads * flop_per_round * double(iters) / sec * 1e-9);
  }
  return best;
}

}  // namespace normflow::bench
