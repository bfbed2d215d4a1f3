// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
/// \file Micro-benchmark of the per-element rational-quadratic spline RQSpline<5> with the options
/// of the reference's spline coupling (OddSplineLinearTails: xlim = ylim = (0, 2), 'anti' on the
/// left, 'linear' on the right), as CouplingLayer<RQSpline<5>> calls it: every element has its own
/// 13 raw weights, loaded as host SIMD packs over the batch (weights stored channel-major, one
/// contiguous run of elements per channel, as the conditioner's output field).
///
/// One iteration evaluates forward, reverse, backward or reverse_backward on 8192 elements
/// (float and double, the native pack); the counter ns/elem is the CPU time per element.
/// Run: cmake --build build --target bench_spline && ./build/benchmarks/bench_spline
/// Inputs: x ~ N(0, 1.2^2) (so lanes fall in the reflected half, inside the knots and in the
/// linear tail), weights ~ N(0, 1), cotangents ~ N(0, 1); reverse runs at y = forward(x).

#include <algorithm>
#include <random>
#include <span>
#include <vector>

#include <benchmark/benchmark.h>

#include <normflow/detail/aligned_allocator.hpp>
#include <normflow/flow/flow.hpp>
#include <normflow/layer/coupling.hpp>
#include <normflow/simd/pack.hpp>
#include <normflow/transform/rq_spline.hpp>

namespace {

using namespace normflow;

constexpr index_t K = 5;
constexpr index_t NP = RQSpline<K>::num_params;
constexpr index_t N = 8192;

template <class T>
using buffer = std::vector<T, detail::AlignedAllocator<T, batch_alignment_bytes>>;

template <class T>
struct Data {
  RQSpline<K> tr = OddSplineLinearTails::make<K>();
  buffer<T> x, y, gy, gl, p, out, out2, gp;
  Data() : x(N), y(N), gy(N), gl(N), p(std::size_t(NP) * N), out(N), out2(N), gp(std::size_t(NP) * N) {
    std::mt19937_64 rng(2024);
    std::normal_distribution<double> normal;
    for (index_t i = 0; i < N; ++i) {
      x[i] = T(1.2 * normal(rng));
      gy[i] = T(normal(rng));
      gl[i] = T(normal(rng));
    }
    for (auto& v : p) v = T(normal(rng));
    for (index_t i = 0; i < N; ++i) {
      T pi[NP];
      for (index_t c = 0; c < NP; ++c) pi[c] = p[std::size_t(c) * N + i];
      y[i] = tr.forward(x[i], pi).y;
    }
  }
};

template <class T>
Data<T>& data() {
  static Data<T> d;
  return d;
}

enum class Op { forward, reverse, backward, reverse_backward };

template <class T, Op op>
void BM_Spline(benchmark::State& state) {
  using V = simd::native_pack<T>;
  constexpr index_t W = simd::pack_size<V>;
  Data<T>& d = data<T>();
  const RQSpline<K> tr = d.tr;
  for (auto _ : state) {
    for (index_t b = 0; b < N; b += W) {
      V pv[NP];
      for (index_t c = 0; c < NP; ++c) pv[c] = simd::load<V>(d.p.data() + std::size_t(c) * N + b);
      if constexpr (op == Op::forward) {
        const auto r = tr.forward(simd::load<V>(d.x.data() + b), pv);
        simd::store(d.out.data() + b, r.y);
        simd::store(d.out2.data() + b, r.log_jac);
      } else if constexpr (op == Op::reverse) {
        const auto r = tr.reverse(simd::load<V>(d.y.data() + b), pv);
        simd::store(d.out.data() + b, r.x);
        simd::store(d.out2.data() + b, r.log_jac);
      } else {
        V gp[NP];
        for (index_t c = 0; c < NP; ++c) gp[c] = V(T(0));
        const V gyv = simd::load<V>(d.gy.data() + b), glv = simd::load<V>(d.gl.data() + b);
        V r;
        if constexpr (op == Op::backward)
          r = tr.backward(simd::load<V>(d.x.data() + b), pv, gyv, glv, gp);
        else
          r = tr.reverse_backward(simd::load<V>(d.y.data() + b), pv, gyv, glv, gp);
        simd::store(d.out.data() + b, r);
        for (index_t c = 0; c < NP; ++c) simd::store(d.gp.data() + std::size_t(c) * N + b, gp[c]);
      }
    }
    benchmark::ClobberMemory();
  }
  state.counters["ns/elem"] =
      benchmark::Counter(double(N), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert,
                         benchmark::Counter::kIs1000);
  state.SetLabel(simd::arch_name());
}

BENCHMARK_TEMPLATE(BM_Spline, float, Op::forward);
BENCHMARK_TEMPLATE(BM_Spline, float, Op::reverse);
BENCHMARK_TEMPLATE(BM_Spline, float, Op::backward);
BENCHMARK_TEMPLATE(BM_Spline, float, Op::reverse_backward);
BENCHMARK_TEMPLATE(BM_Spline, double, Op::forward);
BENCHMARK_TEMPLATE(BM_Spline, double, Op::reverse);
BENCHMARK_TEMPLATE(BM_Spline, double, Op::backward);
BENCHMARK_TEMPLATE(BM_Spline, double, Op::reverse_backward);

/// The layer-level context: a training step (forward, then backward) of 4 RQSplineCoupling_<5>
/// layers (default conditioner) on 8x8, batch 128, exec::Serial; AffineCoupling_ for comparison.
/// ns/elem is per active-site evaluation (4 layers x 32 active sites x 128 samples), conditioner
/// included.
template <class Layer, class T, class Exec = exec::Serial>
void BM_FlowStep(benchmark::State& state) {
  using Lat = Lattice<8, 8>;
  using FlowT = Flow<Repeat<4, Layer>, Lat, T>;
  const index_t batch = 128;
  FlowT flow(1);
  typename FlowT::field_type x(batch), y(batch), gy(batch), gx(batch);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < batch; ++b) {
      x(s, b) = T(normal(rng));
      gy(s, b) = T(normal(rng));
    }
  std::vector<T> log_det(static_cast<std::size_t>(batch)), gl(static_cast<std::size_t>(batch), T(1));
  typename FlowT::tape_type tape;
  for (auto _ : state) {
    std::fill(log_det.begin(), log_det.end(), T(0));
    flow.forward(x, y, std::span<T>(log_det), tape, Exec{});
    flow.zero_grads();
    flow.backward(tape, gy, std::span<const T>(gl), gx, Exec{});
    benchmark::DoNotOptimize(gx.data());
  }
  state.counters["ns/elem"] = benchmark::Counter(double(4 * Lat::volume / 2 * batch),
                                                 benchmark::Counter::kIsIterationInvariantRate |
                                                     benchmark::Counter::kInvert,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK_TEMPLATE(BM_FlowStep, RQSplineCoupling_<5>, float)->Name("FlowStep<4 x RQSplineCoupling_<5>, float>");
BENCHMARK_TEMPLATE(BM_FlowStep, RQSplineCoupling_<5>, double)->Name("FlowStep<4 x RQSplineCoupling_<5>, double>");
BENCHMARK_TEMPLATE(BM_FlowStep, AffineCoupling_<>, float)->Name("FlowStep<4 x AffineCoupling_, float>");

}  // namespace

BENCHMARK_MAIN();
