// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Host execution policies: exec::Serial and exec::OpenMP.
///
/// Three primitives, the same on every backend:
///   parallel_for(exec, n, f)                       f(i) for i in [0, n)
///   parallel_reduce(exec, n, f, result)            result = sum of f(i), bitwise reproducible
///   parallel_for_lanes<T>(exec, n_outer, padded_batch, k)
///       k.template apply<V>(o, b) for o in [0, n_outer) and b in [0, padded_batch) in steps of
///       pack_size<V>: V is a host SIMD pack of T on host backends, T itself under Kokkos.
///   parallel_for_lane_blocks<T>(exec, padded_batch, k)
///       k.template apply_block<V>(b_begin, b_end) over contiguous blocks that cover the padded
///       batch (bounds are multiples of pack_size<V>); for per-sample reductions over sites, which
///       then sweep the sites once per block with sequential memory access. The split depends on
///       the thread count, so a kernel's per-lane arithmetic must not depend on the block bounds.
/// Reproducibility: parallel_reduce sums fixed blocks of reduce_block_size indices in index order
/// and then the block sums in block order, so the result does not depend on the thread count or
/// the backend. Kernels are functors over trivially copyable views: no exceptions, virtual
/// functions, std containers or allocation inside.

#include <algorithm>
#include <exception>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/simd/pack.hpp>

namespace normflow::exec {

/// One host thread, in index order.
struct Serial {};
/// Host threads from OpenMP (static schedule); Serial when compiled without OpenMP.
struct OpenMP {};

#if defined(_OPENMP)
using HostDefault = OpenMP;  ///< host threads come from OpenMP, never from Kokkos
#else
using HostDefault = Serial;
#endif

/// Indices summed in order inside one block of parallel_reduce (a fixed constant, independent
/// of the thread count, so that results reproduce bit for bit).
inline constexpr offset_t reduce_block_size = 1024;

/// Number of threads OpenMP will use (1 without OpenMP).
inline int max_threads() noexcept {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the number of OpenMP threads for later parallel regions (no-op without OpenMP).
inline void set_num_threads(int n) noexcept {
#if defined(_OPENMP)
  omp_set_num_threads(std::max(1, n));
#else
  (void)n;
#endif
}

template <class F>
void parallel_for(Serial, offset_t n, const F& f) {
  for (offset_t i = 0; i < n; ++i) f(i);
}

template <class F>
void parallel_for(OpenMP, offset_t n, const F& f) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (offset_t i = 0; i < n; ++i) f(i);
}

/// f(lo, hi) once on each OpenMP thread: thread t of a team of T takes [n t / T, n (t + 1) / T)
/// (contiguous blocks of [0, n) in thread order; some may be empty). f(0, n) without OpenMP. For
/// data-parallel loops over whole chunks of work (each thread runs exec::Serial inside). The
/// first exception f throws is rethrown after the team has finished (an exception must not leave
/// an OpenMP region).
template <class F>
void for_each_thread_block(offset_t n, const F& f) {
#if defined(_OPENMP)
  std::exception_ptr error;
#pragma omp parallel
  {
    const offset_t t = omp_get_thread_num(), team = omp_get_num_threads();
    try {
      f(n * t / team, n * (t + 1) / team);
    } catch (...) {
#pragma omp critical(normflow_thread_block_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
#else
  f(offset_t(0), n);
#endif
}

namespace detail {
template <class T, class F>
T reduce_block(offset_t block, offset_t n, const F& f) {
  const offset_t lo = block * reduce_block_size, hi = std::min(n, lo + reduce_block_size);
  T acc = T(0);
  for (offset_t i = lo; i < hi; ++i) acc += f(i);
  return acc;
}
}  // namespace detail

/// result = sum_{i < n} f(i) in the fixed blocked order (see the file comment).
template <class Exec, class F, class T>
  requires std::is_same_v<Exec, Serial> || std::is_same_v<Exec, OpenMP>
void parallel_reduce(Exec exec, offset_t n, const F& f, T& result) {
  const offset_t blocks = (n + reduce_block_size - 1) / reduce_block_size;
  std::vector<T> partial(std::size_t(std::max<offset_t>(blocks, 1)), T(0));
  T* p = partial.data();
  parallel_for(exec, blocks, [=](offset_t k) { p[k] = detail::reduce_block<T>(k, n, f); });
  T acc = T(0);
  for (offset_t k = 0; k < blocks; ++k) acc += partial[std::size_t(k)];
  result = acc;
}

/// k.template apply<V>(o, b) over o < n_outer and the padded batch in SIMD packs (see above).
template <class T, class K>
void parallel_for_lanes(Serial, index_t n_outer, index_t padded_batch, const K& k) {
  using V = simd::native_pack<T>;
  constexpr index_t W = simd::pack_size<V>;
  for (index_t o = 0; o < n_outer; ++o)
    for (index_t b = 0; b < padded_batch; b += W) k.template apply<V>(o, b);
}

template <class T, class K>
void parallel_for_lanes(OpenMP, index_t n_outer, index_t padded_batch, const K& k) {
  using V = simd::native_pack<T>;
  constexpr index_t W = simd::pack_size<V>;
  const offset_t chunks = padded_batch / W, n = offset_t(n_outer) * chunks;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (offset_t i = 0; i < n; ++i) k.template apply<V>(index_t(i / chunks), index_t(i % chunks) * W);
}

/// k.template apply_block<V>(0, padded_batch): one block.
template <class T, class K>
void parallel_for_lane_blocks(Serial, index_t padded_batch, const K& k) {
  k.template apply_block<simd::native_pack<T>>(0, padded_batch);
}

/// One contiguous block of SIMD chunks per thread.
template <class T, class K>
void parallel_for_lane_blocks(OpenMP, index_t padded_batch, const K& k) {
  using V = simd::native_pack<T>;
  constexpr index_t W = simd::pack_size<V>;
  const index_t chunks = padded_batch / W;
  const index_t blocks = std::max(1, std::min<index_t>(index_t(max_threads()), chunks));
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (index_t t = 0; t < blocks; ++t)
    k.template apply_block<V>(index_t(offset_t(chunks) * t / blocks) * W, index_t(offset_t(chunks) * (t + 1) / blocks) * W);
}

namespace detail {
/// f(lo, len) over [0, n) in runs of 16 KiB of T spread over the threads; below 64 KiB in all,
/// one call on the calling thread (a parallel region costs more than the copy).
template <class T, class F>
void for_each_run(OpenMP exec, std::size_t n, const F& f) {
  constexpr std::size_t run = (std::size_t(16) << 10) / sizeof(T);
  if (n * sizeof(T) < (std::size_t(64) << 10)) {
    f(std::size_t(0), n);
    return;
  }
  parallel_for(exec, offset_t((n + run - 1) / run), [&](offset_t k) {
    const std::size_t lo = std::size_t(k) * run;
    f(lo, std::min(run, n - lo));
  });
}
}  // namespace detail

/// dst[i] = src[i] for i < n (non-overlapping); OpenMP: runs of 16 KiB over the threads.
template <class T>
void parallel_copy(Serial, const T* src, T* dst, std::size_t n) {
  std::copy_n(src, n, dst);
}
template <class T>
void parallel_copy(OpenMP exec, const T* src, T* dst, std::size_t n) {
  detail::for_each_run<T>(exec, n, [=](std::size_t lo, std::size_t len) { std::copy_n(src + lo, len, dst + lo); });
}

/// dst[i] = value for i < n, as parallel_copy.
template <class T>
void parallel_fill(Serial, T* dst, std::size_t n, T value) {
  std::fill_n(dst, n, value);
}
template <class T>
void parallel_fill(OpenMP exec, T* dst, std::size_t n, T value) {
  detail::for_each_run<T>(exec, n, [=](std::size_t lo, std::size_t len) { std::fill_n(dst + lo, len, value); });
}

}  // namespace normflow::exec
