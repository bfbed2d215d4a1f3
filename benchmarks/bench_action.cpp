// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
/// \file Benchmarks of ScalarPhi4Action (action + force) against a raw-loop baseline, with the
/// machine's memory bandwidth measured once at start-up by a STREAM triad for reference.
///
/// Maths timed (reference 2.1, rank d, w0 = kappa, w2 = m_sq/2 + d kappa, w4 = lambd):
///   S[phi]        = sum_x [ w2 phi^2 + w4 phi^4 - w0 phi(x) sum_mu phi(x - mu^) ]   (per sample)
///   force(phi)(x) = w0 sum_mu [phi(x + mu^) + phi(x - mu^)] - phi (2 w2 + 4 w4 phi^2)
///
/// Byte model (what the kernels must move at least; the same convention as STREAM, so
/// frac_of_stream compares like with like: logical reads plus logical writes, no write-allocate
/// traffic). With V = volume, B = padded batch, F = V B sizeof(T) (one field):
///   action: reads the field once (F) and the neighbour table once (N = V 2d sizeof(index_t):
///           the table interleaves fwd and bwd entries, so whole lines are fetched although only
///           bwd is used), writes batch sizeof(T);
///   force:  reads the field once and the table once, writes the force once: 2F + N.
/// Neighbour reads phi(x +- mu^) are counted as cache hits (no bytes), and so are the table reads
/// after its first one (the table is re-read by every SIMD chunk). This is the minimum traffic;
/// where a kernel re-fetches neighbour lines from beyond L2 (the even/odd order does once the
/// field outgrows L2, see README.md) the achieved GB/s comes out lower than the bus carried.
/// When the field fits a cache level, frac_of_stream can exceed 1.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <normflow/action/scalar_phi4_action.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/prior/normal_prior.hpp>
#include <normflow/simd/pack.hpp>

namespace {

using normflow::index_t;
using Default = normflow::exec::Default;
using Serial = normflow::exec::Serial;
using L8x8 = normflow::Lattice<8, 8>;
using L16x16 = normflow::Lattice<16, 16>;
using L64x64 = normflow::Lattice<64, 64>;

// The couplings of reference 2.1's broken-phase example.
constexpr normflow::ScalarPhi4Action kAction{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};
constexpr std::uint64_t kSeed = 2024;

// ------------------------------------------------------------------------------------------------
// STREAM triad: a[i] = b[i] + s c[i], measured once in main before any benchmark runs.
// Bytes per element: 3 x 8 (read b, read c, write a), STREAM's convention (no write-allocate).
// ------------------------------------------------------------------------------------------------

/// Best triad bandwidths over three arrays of array_bytes each.
struct Triad {
  double all_threads_gbs = 0;   ///< with exec::max_threads() threads
  double one_thread_gbs = 0;    ///< with one thread
  std::size_t array_bytes = 0;  ///< 0: not measured
  int reps = 0;                 ///< timed repetitions (the best one counts)
};
/// dram: arrays far beyond every cache (the machine's memory bandwidth, the reference of the
/// frac_of_stream counters); cache: arrays beyond L2 but inside the last-level cache, printed for
/// context (shapes whose fields fit the LLC can exceed the dram figure).
struct StreamBandwidth {
  Triad dram, cache;
  int threads = 1;
};
StreamBandwidth g_stream;

struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};
/// A 64-byte aligned, uninitialised array (no value-initialisation: first touch is the caller's).
template <class T>
using Buffer = std::unique_ptr<T[], FreeDeleter>;

template <class T>
Buffer<T> allocate(std::size_t n) {
  const std::size_t bytes = std::max<std::size_t>(64, (n * sizeof(T) + 63) / 64 * 64);
  auto* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (p == nullptr) throw std::bad_alloc();
  return Buffer<T>(p);
}

/// Last-level cache size in bytes (0 when the C library does not say).
std::size_t last_level_cache_bytes() {
  long llc = 0;
#if defined(_SC_LEVEL3_CACHE_SIZE)
  llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
#if defined(_SC_LEVEL2_CACHE_SIZE)
  if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  return llc > 0 ? std::size_t(llc) : 0;
}

/// Best (of `reps`, after one warm-up) triad bandwidth in GB/s with `threads` threads.
double triad_gbs(double* a, const double* b, const double* c, std::ptrdiff_t n, int threads,
                 int reps) {
  constexpr double s = 3.0;
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (std::ptrdiff_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
    const auto t1 = std::chrono::steady_clock::now();
    if (r > 0) best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  (void)threads;
  return 3.0 * sizeof(double) * double(n) / best * 1e-9;
}

/// Triad over three arrays of total_bytes / 3 each, best of `reps` repetitions after a warm-up.
Triad measure_triad(std::size_t total_bytes, int threads, int reps) {
  Triad r;
  const std::ptrdiff_t n = std::ptrdiff_t(total_bytes / 3 / sizeof(double));
  if (n <= 0) return r;
  r.array_bytes = std::size_t(n) * sizeof(double);
  r.reps = reps;
  Buffer<double> a = allocate<double>(std::size_t(n)), b = allocate<double>(std::size_t(n)),
                 c = allocate<double>(std::size_t(n));
  // First touch with the same static schedule as the timed loop (page placement).
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    a[i] = 0.0;
    b[i] = 1.0;
    c[i] = 2.0;
  }
  r.all_threads_gbs = triad_gbs(a.get(), b.get(), c.get(), n, threads, reps);
  r.one_thread_gbs = triad_gbs(a.get(), b.get(), c.get(), n, 1, reps);
  // Every a[i] must be 1 + 3 x 2 (a cheap check that the loop ran).
  if (a[0] != 7.0 || a[n - 1] != 7.0) std::fprintf(stderr, "stream triad: wrong result\n");
  return r;
}

/// Measures g_stream. DRAM size (over the three arrays): NORMFLOW_STREAM_MIB if set (0 skips the
/// measurement; the stream counters then read 0), else 4 x the last-level cache (STREAM's rule:
/// well beyond every cache) clamped to [512 MiB, 2 GiB]. Cache size: min(24 MiB, LLC / 2).
void measure_stream() {
  const std::size_t llc = last_level_cache_bytes();
  std::size_t total =
      std::clamp<std::size_t>(4 * llc, std::size_t(512) << 20, std::size_t(2048) << 20);
  if (const char* env = std::getenv("NORMFLOW_STREAM_MIB"))
    total = std::size_t(std::atoll(env)) << 20;
  g_stream.threads = normflow::exec::max_threads();
  if (total == 0) return;
  g_stream.dram = measure_triad(total, g_stream.threads, 5);
  if (llc > 0)
    g_stream.cache = measure_triad(std::min(std::size_t(24) << 20, llc / 2), g_stream.threads, 20);
}

/// Wall-clock seconds of the timed loop, read around `for (auto _ : state)` (the same interval
/// as the library's real-time timer), so that GB/s can be a plain counter: a kIsRate counter
/// would print as "GB/s=3.1/s" on the console.
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// bytes_per_second, GB/s (achieved), stream_GB/s (the reference) and frac_of_stream for a run
/// of state.iterations() iterations moving `bytes_per_iter` bytes each in `seconds`.
void add_bandwidth_counters(benchmark::State& state, double bytes_per_iter, double seconds,
                            double stream_gbs) {
  const double bytes = double(state.iterations()) * bytes_per_iter;
  state.SetBytesProcessed(std::int64_t(bytes));
  const double gbs = seconds > 0 ? bytes / seconds * 1e-9 : 0.0;
  state.counters["GB/s"] = gbs;
  state.counters["stream_GB/s"] = stream_gbs;
  state.counters["frac_of_stream"] = stream_gbs > 0 ? gbs / stream_gbs : 0.0;
}

// ------------------------------------------------------------------------------------------------
// Library: ScalarPhi4Action::action and ::force with preallocated outputs.
// ------------------------------------------------------------------------------------------------

enum class Kernels { action = 1, force = 2, both = 3 };

template <class Lat, class T, class Exec>
void run_library(benchmark::State& state, Kernels which) {
  const index_t batch = index_t(state.range(0));
  normflow::NormalPrior<Lat, T> prior(0, 1, kSeed);
  const normflow::ScalarField<Lat, T> phi = prior.sample(batch);
  normflow::ScalarField<Lat, T> f(batch);
  std::vector<T> out(static_cast<std::size_t>(batch));
  const Exec exec{};
  const bool do_action = (int(which) & 1) != 0, do_force = (int(which) & 2) != 0;

  const auto t0 = Clock::now();
  for (auto _ : state) {
    if (do_action) kAction.action(phi, std::span<T>(out), exec);
    if (do_force) kAction.force(phi, f, exec);
    benchmark::DoNotOptimize(out.data());
    benchmark::DoNotOptimize(f.data());
    benchmark::ClobberMemory();
  }
  const double seconds = seconds_since(t0);

  // Byte model of the file comment.
  const double field = double(Lat::volume) * double(phi.padded_batch()) * sizeof(T);
  const double table = double(Lat::volume) * 2.0 * Lat::rank * sizeof(index_t);
  const double bytes = (do_action ? field + table + double(batch) * sizeof(T) : 0.0) +  //
                       (do_force ? 2.0 * field + table : 0.0);
  state.SetItemsProcessed(state.iterations() * std::int64_t(batch) * Lat::volume);
  const bool serial = std::is_same_v<Exec, Serial> || g_stream.threads == 1;
  add_bandwidth_counters(state, bytes, seconds,
                         serial ? g_stream.dram.one_thread_gbs : g_stream.dram.all_threads_gbs);
}

/// action + force, the timed unit of an HMC-like step.
template <class Lat, class T, class Exec>
void BM_ActionForce(benchmark::State& state) {
  run_library<Lat, T, Exec>(state, Kernels::both);
}
/// action alone (per-sample sum over sites, parallel over SIMD chunks of the batch only).
template <class Lat, class T, class Exec>
void BM_Action(benchmark::State& state) {
  run_library<Lat, T, Exec>(state, Kernels::action);
}
/// force alone (parallel over sites x SIMD chunks).
template <class Lat, class T, class Exec>
void BM_Force(benchmark::State& state) {
  run_library<Lat, T, Exec>(state, Kernels::force);
}

// ------------------------------------------------------------------------------------------------
// Raw baseline: the same action and force as plain scalar loops over a lexicographic,
// batch-innermost array phi[(x L1 + y) B + b], neighbours by index arithmetic (no table), left to
// the compiler's auto-vectorizer (GCC 12 picks 256-bit vectors under -march=native on AVX-512
// parts; xsimd in the library uses 512-bit ones). Same expression trees as the library kernels,
// so the force agrees bit for bit; the action sums sites in lexicographic order, per thread
// block of rows, rather than in even/odd order (checked against the library with a tolerance).
// Bytes: action F + batch sizeof(T) (the per-thread partial sums, threads x B, stay in L1/L2 and
// are not counted), force 2F.
// ------------------------------------------------------------------------------------------------

template <class T>
struct RawWeights {
  T w0, w2, w4, two_w2, four_w4;
};

/// Partial action of all samples over rows x in [x0, x1) of an L0 x L1 lattice, into out[0, B):
/// sites outer (in lexicographic order), samples inner.
template <index_t L0, index_t L1, class T>
void raw_action(const T* __restrict__ phi, T* __restrict__ out, std::ptrdiff_t B, index_t x0,
                index_t x1, const RawWeights<T> w) {
  const auto at = [B](index_t x, index_t y) { return (std::ptrdiff_t(x) * L1 + y) * B; };
  for (std::ptrdiff_t b = 0; b < B; ++b) out[b] = T(0);
  for (index_t x = x0; x < x1; ++x) {
    const index_t xm = x == 0 ? L0 - 1 : x - 1;
    for (index_t y = 0; y < L1; ++y) {
      const index_t ym = y == 0 ? L1 - 1 : y - 1;
      const T *p = phi + at(x, y), *px = phi + at(xm, y), *py = phi + at(x, ym);
      for (std::ptrdiff_t b = 0; b < B; ++b) {
        const T v = p[b], v2 = v * v;
        out[b] += v2 * (w.w2 + w.w4 * v2) - w.w0 * v * (px[b] + py[b]);
      }
    }
  }
}

/// Force of all samples on rows x in [x0, x1) of an L0 x L1 lattice.
template <index_t L0, index_t L1, class T>
void raw_force(const T* __restrict__ phi, T* __restrict__ f, std::ptrdiff_t B, index_t x0,
               index_t x1, const RawWeights<T> w) {
  const auto at = [B](index_t x, index_t y) { return (std::ptrdiff_t(x) * L1 + y) * B; };
  for (index_t x = x0; x < x1; ++x) {
    const index_t xp = x == L0 - 1 ? 0 : x + 1, xm = x == 0 ? L0 - 1 : x - 1;
    for (index_t y = 0; y < L1; ++y) {
      const index_t yp = y == L1 - 1 ? 0 : y + 1, ym = y == 0 ? L1 - 1 : y - 1;
      const T *p = phi + at(x, y), *pxp = phi + at(xp, y), *pxm = phi + at(xm, y),
              *pyp = phi + at(x, yp), *pym = phi + at(x, ym);
      T* o = f + at(x, y);
      for (std::ptrdiff_t b = 0; b < B; ++b) {
        const T v = p[b];
        const T hop = (pxp[b] + pxm[b]) + (pyp[b] + pym[b]);
        o[b] = w.w0 * hop - v * (w.two_w2 + w.four_w4 * v * v);
      }
    }
  }
}

/// Action and force of the whole batch with `threads` threads in one parallel region, each
/// thread owning a contiguous block of rows: partial actions into part[t B, (t + 1) B), summed
/// in thread order after a barrier (so the action's bits depend on the thread count, unlike the
/// library's). Splitting the batch across threads instead, as the library's action does, made
/// this step 1.9x slower with 2 threads (235 against 123 us at 64 x 64, float, batch 128),
/// slower even than one thread. A likely cause: each core's prefetchers also fetch the other
/// core's half of every site's run of samples.
template <index_t L0, index_t L1, class T>
void raw_run(const T* phi, T* f, T* out, T* part, std::ptrdiff_t B, int threads,
             const RawWeights<T>& w) {
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
  {
    const index_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const index_t x0 = L0 * t / nt, x1 = L0 * (t + 1) / nt;
    raw_action<L0, L1, T>(phi, part + t * B, B, x0, x1, w);
    raw_force<L0, L1, T>(phi, f, B, x0, x1, w);
#pragma omp barrier
    const std::ptrdiff_t lo = B * t / nt, hi = B * (t + 1) / nt;
    for (std::ptrdiff_t b = lo; b < hi; ++b) {
      T acc = part[b];
      for (index_t k = 1; k < nt; ++k) acc += part[k * B + b];
      out[b] = acc;
    }
  }
#else
  (void)threads;
  (void)part;
  raw_action<L0, L1, T>(phi, out, B, 0, L0, w);
  raw_force<L0, L1, T>(phi, f, B, 0, L0, w);
#endif
}

/// Raw baseline of BM_ActionForce; range(0) = batch, range(1) = threads.
template <class Lat, class T>
void BM_RawActionForce(benchmark::State& state) {
  static_assert(Lat::rank == 2, "the raw baseline is written for rank-2 lattices");
  constexpr index_t L0 = Lat::extents[0], L1 = Lat::extents[1];
  const index_t batch = index_t(state.range(0));
  const int threads = int(state.range(1));
  const std::ptrdiff_t B = normflow::padded_batch_size<T>(batch);

  // The library's sample, copied to lexicographic order.
  normflow::NormalPrior<Lat, T> prior(0, 1, kSeed);
  const normflow::ScalarField<Lat, T> phi_lib = prior.sample(batch);
  const std::size_t n = std::size_t(Lat::volume) * std::size_t(B);
  Buffer<T> phi = allocate<T>(n), f = allocate<T>(n), out = allocate<T>(std::size_t(B)),
            part = allocate<T>(std::size_t(threads) * std::size_t(B));
  std::fill_n(phi.get(), n, T(0));
  std::fill_n(f.get(), n, T(0));
  std::fill_n(out.get(), B, T(0));
  for (index_t site = 0; site < Lat::volume; ++site)
    for (index_t b = 0; b < batch; ++b)
      phi[std::size_t(site * B + b)] = phi_lib.at_site(site, 0, b);
  const auto wl = kAction.weights<T>(Lat::rank);
  const RawWeights<T> w{wl.w0, wl.w2, wl.w4, T(2) * wl.w2, T(4) * wl.w4};

  // Cross-check against the library once (outside the timed loop).
  raw_run<L0, L1, T>(phi.get(), f.get(), out.get(), part.get(), B, threads, w);
  {
    const auto f_lib = kAction.force(phi_lib);
    const auto s_lib = kAction.action(phi_lib);
    constexpr double eps = std::numeric_limits<T>::epsilon();
    double worst_f = 0, worst_s = 0;
    for (index_t site = 0; site < Lat::volume; ++site)
      for (index_t b = 0; b < batch; ++b) {
        const double ref = f_lib.at_site(site, 0, b),
                     d = std::abs(double(f[std::size_t(site * B + b)]) - ref);
        worst_f = std::max(worst_f, d / (16 * eps * (1 + std::abs(ref))));
      }
    // Different summation order over V sites: rounding error ~ sqrt(V) eps sum_x |term(x)|, with
    // sum_x |term(x)| about 2 V for unit-normal fields; allow 16 x that with 8 V.
    for (index_t b = 0; b < batch; ++b) {
      const double ref = s_lib[std::size_t(b)], d = std::abs(double(out[std::size_t(b)]) - ref);
      worst_s =
          std::max(worst_s, d / (16 * eps * std::sqrt(double(Lat::volume)) * 8 * Lat::volume));
    }
    if (worst_f > 1 || worst_s > 1) {
      state.SkipWithError(("raw baseline disagrees with the library (force " +
                           std::to_string(worst_f) + ", action " + std::to_string(worst_s) +
                           " x tolerance)")
                              .c_str());
      return;
    }
  }

  const auto t0 = Clock::now();
  for (auto _ : state) {
    raw_run<L0, L1, T>(phi.get(), f.get(), out.get(), part.get(), B, threads, w);
    benchmark::DoNotOptimize(out.get());
    benchmark::DoNotOptimize(f.get());
    benchmark::ClobberMemory();
  }
  const double seconds = seconds_since(t0);

  const double field = double(Lat::volume) * double(B) * sizeof(T);
  const double bytes = field + double(batch) * sizeof(T) + 2.0 * field;
  state.SetItemsProcessed(state.iterations() * std::int64_t(batch) * Lat::volume);
  add_bandwidth_counters(
      state, bytes, seconds,
      threads == 1 ? g_stream.dram.one_thread_gbs : g_stream.dram.all_threads_gbs);
}

// ------------------------------------------------------------------------------------------------
// Registration: 3 shapes x {float, double} x batch {128, 1024} with exec::Default; Serial and the
// raw baseline (1 thread and all threads) on 64 x 64; action and force apart on 64 x 64.
// Real time throughout (CPU time of the main thread undercounts OpenMP work).
// ------------------------------------------------------------------------------------------------

void batches(benchmark::internal::Benchmark* b) {
  b->ArgName("batch")->Arg(128)->Arg(1024)->UseRealTime()->Unit(benchmark::kMicrosecond);
}
void raw_batches(benchmark::internal::Benchmark* b) {
  std::vector<std::int64_t> threads{1};
  if (normflow::exec::max_threads() > 1) threads.push_back(normflow::exec::max_threads());
  b->ArgNames({"batch", "threads"})
      ->ArgsProduct({{128, 1024}, threads})
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

BENCHMARK_TEMPLATE(BM_ActionForce, L8x8, float, Default)->Apply(batches);
BENCHMARK_TEMPLATE(BM_ActionForce, L8x8, double, Default)->Apply(batches);
BENCHMARK_TEMPLATE(BM_ActionForce, L16x16, float, Default)->Apply(batches);
BENCHMARK_TEMPLATE(BM_ActionForce, L16x16, double, Default)->Apply(batches);
BENCHMARK_TEMPLATE(BM_ActionForce, L64x64, float, Default)->Apply(batches);
BENCHMARK_TEMPLATE(BM_ActionForce, L64x64, double, Default)->Apply(batches);
BENCHMARK_TEMPLATE(BM_ActionForce, L64x64, float, Serial)->Apply(batches);
BENCHMARK_TEMPLATE(BM_ActionForce, L64x64, double, Serial)->Apply(batches);
BENCHMARK_TEMPLATE(BM_RawActionForce, L64x64, float)->Apply(raw_batches);
BENCHMARK_TEMPLATE(BM_RawActionForce, L64x64, double)->Apply(raw_batches);
BENCHMARK_TEMPLATE(BM_Action, L64x64, float, Default)->Apply(batches);
BENCHMARK_TEMPLATE(BM_Force, L64x64, float, Default)->Apply(batches);

}  // namespace

int main(int argc, char** argv) {
  // Initialize consumes the --benchmark_* flags, so look for --benchmark_list_tests first.
  bool list_only = false;
  for (int i = 1; i < argc; ++i)
    list_only |= std::strncmp(argv[i], "--benchmark_list_tests", 22) == 0 &&
                 std::strcmp(argv[i], "--benchmark_list_tests=false") != 0;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  if (!list_only) {
    measure_stream();
    for (const auto& [name, t] :
         {std::pair{"DRAM", &g_stream.dram}, std::pair{"cache-resident", &g_stream.cache}})
      if (t->array_bytes > 0)
        std::fprintf(stderr,
                     "STREAM triad, %s (3 x %.0f MiB, best of %d): %.2f GB/s with %d threads, %.2f "
                     "GB/s with 1 thread\n",
                     name, double(t->array_bytes) / (1 << 20), t->reps, t->all_threads_gbs,
                     g_stream.threads, t->one_thread_gbs);
  }

  const auto fixed2 = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", v);
    return std::string(buf);
  };
  benchmark::AddCustomContext("normflow_simd_arch", normflow::simd::arch_name());
  benchmark::AddCustomContext("normflow_threads", std::to_string(normflow::exec::max_threads()));
  benchmark::AddCustomContext("stream_triad_GB/s_all_threads",
                              fixed2(g_stream.dram.all_threads_gbs));
  benchmark::AddCustomContext("stream_triad_GB/s_1_thread", fixed2(g_stream.dram.one_thread_gbs));
  benchmark::AddCustomContext("stream_array_MiB", std::to_string(g_stream.dram.array_bytes >> 20));
  benchmark::AddCustomContext("cache_triad_GB/s_all_threads",
                              fixed2(g_stream.cache.all_threads_gbs));
  benchmark::AddCustomContext("cache_triad_GB/s_1_thread", fixed2(g_stream.cache.one_thread_gbs));
  benchmark::AddCustomContext("cache_triad_array_MiB",
                              std::to_string(g_stream.cache.array_bytes >> 20));

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
