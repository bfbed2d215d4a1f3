// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
/// \file Benchmarks of the reference 16-layer affine coupling flow (reference 6.2): forward, and
/// forward + backward, on Lattice<8, 8>, batch 128 (float and double), with achieved GFLOP/s
/// from an analytic FLOP count next to the core's measured FMA peak.
///
/// FLOP count (multiply and add counted separately, convolutions only; activations, the
/// coupling's element maths and copies are left out, so GFLOP/s is a lower bound on the work
/// rate). A convolution c_in -> c_out with kernel k on V sites and B samples costs
///   2 c_in c_out k^d V B.
/// The reference conditioner 1 -> 8 -> 8 -> 2, k = 3, d = 2: 2 (8 + 64 + 16) 9 V B = 1584 V B.
///   forward:            16 x 1584 V B                       (one conditioner pass per layer)
///   forward + backward: 16 x 3 x 1584 V B                   (forward, input gradient, weight gradient)
/// With V = 64 and B = 128: forward 207.6 MFLOP, forward + backward 622.9 MFLOP.
/// The peak: an FMA loop on 12 independent host SIMD accumulators (2 FLOP per lane per FMA).
///
/// PriorSample: NormalPrior::sample_into on 16x16 x 128, one thread, in million normals per second
/// (1000 / that is ns per normal): the host's
/// SIMD sampler (random/philox_simd.hpp) against the per-element kernel that device backends run
/// (the same bits, one Philox call and one Box-Muller per element).
///
/// ForwardPath: the forward pass with the path gradient's reverse adjoint (no parameter
/// gradients), on 8x8 and 32x32, batch 128, float, one thread: fused (forward_path, each layer's
/// adjoint right after its forward) against forward then reverse_backward (the same bits).
///
/// ConvSchedule: one conditioner (ConvStack 1 -> 8 -> 8 -> 2, no bias, a coupling's site ranges) on
/// 32x32 x 128, one thread, float and double: its forward pass (pass 0), its input adjoint (1) and
/// its backward pass with weight gradients (2), each convolution over the whole lattice in turn
/// (layer_by_layer) against the wavefront (the same bits).

#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include <normflow/flow/flow.hpp>
#include <normflow/layer/conditioner/conv_net.hpp>
#include <normflow/layer/coupling.hpp>
#include <normflow/prior/normal_prior.hpp>
#include <normflow/simd/pack.hpp>

#include "fma_peak.hpp"

namespace {

using namespace normflow;
using Lat = Lattice<8, 8>;
template <class T>
using RefFlow = Flow<Repeat<16, AffineCoupling_<ConvNet<Hidden<8, 8>, Kernel<3>>>>, Lat, T>;

constexpr double conv_flop_per_site_sample = 2.0 * (1 * 8 + 8 * 8 + 8 * 2) * 9;

double g_peak_float = 0, g_peak_double = 0;

template <class T>
void fill_normal(typename RefFlow<T>::field_type& x, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < x.batch(); ++b) x(s, b) = T(normal(rng));
}

template <class T>
void report(benchmark::State& state, double flop_per_iter) {
  const double peak = std::is_same_v<T, float> ? g_peak_float : g_peak_double;
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop_per_iter * 1e-9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["peak_GFLOP/s"] = peak;
  state.counters["MFLOP/iter"] = flop_per_iter * 1e-6;
}

template <class T, class Exec>
void BM_FlowForward(benchmark::State& state) {
  const index_t batch = index_t(state.range(0));
  const RefFlow<T> flow(1);
  typename RefFlow<T>::field_type x(batch), y(batch);
  fill_normal<T>(x, 2);
  std::vector<T> log_det(static_cast<std::size_t>(batch));
  typename RefFlow<T>::tape_type tape;
  for (auto _ : state) {
    std::fill(log_det.begin(), log_det.end(), T(0));
    flow.forward(x, y, std::span<T>(log_det), tape, Exec{});
    benchmark::DoNotOptimize(y.data());
  }
  report<T>(state, 16 * conv_flop_per_site_sample * Lat::volume * batch);
}

template <class T, class Exec>
void BM_FlowForwardBackward(benchmark::State& state) {
  const index_t batch = index_t(state.range(0));
  RefFlow<T> flow(1);
  typename RefFlow<T>::field_type x(batch), y(batch), gy(batch), gx(batch);
  fill_normal<T>(x, 2);
  fill_normal<T>(gy, 3);
  std::vector<T> log_det(static_cast<std::size_t>(batch)), gl(static_cast<std::size_t>(batch), T(1));
  typename RefFlow<T>::tape_type tape;
  for (auto _ : state) {
    std::fill(log_det.begin(), log_det.end(), T(0));
    flow.forward(x, y, std::span<T>(log_det), tape, Exec{});
    flow.zero_grads();
    flow.backward(tape, gy, std::span<const T>(gl), gx, Exec{});
    benchmark::DoNotOptimize(gx.data());
  }
  report<T>(state, 3 * 16 * conv_flop_per_site_sample * Lat::volume * batch);
}

using exec::Serial;
using exec::HostDefault;
BENCHMARK_TEMPLATE(BM_FlowForward, float, Serial)->Name("FlowForward<8x8, float, Serial>")->Arg(128)->UseRealTime();
BENCHMARK_TEMPLATE(BM_FlowForward, float, HostDefault)->Name("FlowForward<8x8, float, OpenMP>")->Arg(128)->UseRealTime();
BENCHMARK_TEMPLATE(BM_FlowForward, double, Serial)->Name("FlowForward<8x8, double, Serial>")->Arg(128)->UseRealTime();
BENCHMARK_TEMPLATE(BM_FlowForwardBackward, float, Serial)->Name("FlowForwardBackward<8x8, float, Serial>")->Arg(128)->UseRealTime();
BENCHMARK_TEMPLATE(BM_FlowForwardBackward, float, HostDefault)->Name("FlowForwardBackward<8x8, float, OpenMP>")->Arg(128)->UseRealTime();
BENCHMARK_TEMPLATE(BM_FlowForwardBackward, double, Serial)->Name("FlowForwardBackward<8x8, double, Serial>")->Arg(128)->UseRealTime();

/// NormalPrior draws on 16x16 x 128: the host sampler (simd = 1) or the per-element kernel.
template <class T>
void BM_PriorSample(benchmark::State& state) {
  using L16 = Lattice<16, 16>;
  const bool simd_path = state.range(0) != 0;
  NormalPrior<L16, T> prior(0, 1, 3);
  Field<L16, T> x(128);
  for (auto _ : state) {
    if (simd_path) {
      prior.sample_into(x, exec::Serial{});
    } else {
      const detail::NormalFillKernel<L16, default_order_t<L16>, T, 1> k{x.view(), prior.generator().next(), 0.0, 1.0};
      for (offset_t i = 0; i < offset_t(L16::volume) * x.padded_batch(); ++i) k(i);
    }
    benchmark::DoNotOptimize(x.data());
  }
  const double normals = double(L16::volume) * 128.0 * double(state.iterations());
  state.counters["Mnormal/s"] = benchmark::Counter(normals * 1e-6, benchmark::Counter::kIsRate);
}
BENCHMARK_TEMPLATE(BM_PriorSample, float)->Name("PriorSample<16x16, float, simd>")->Arg(1)->UseRealTime();
BENCHMARK_TEMPLATE(BM_PriorSample, float)->Name("PriorSample<16x16, float, per-element>")->Arg(0)->UseRealTime();
BENCHMARK_TEMPLATE(BM_PriorSample, double)->Name("PriorSample<16x16, double, simd>")->Arg(1)->UseRealTime();

/// The reference flow on lattice L: forward + reverse adjoint, fused (fused = 1) or in two sweeps.
template <class L>
void BM_ForwardPath(benchmark::State& state) {
  using Fl = Flow<Repeat<16, AffineCoupling_<ConvNet<Hidden<8, 8>, Kernel<3>>>>, L, float>;
  const bool fused = state.range(0) != 0;
  const index_t B = 128;
  Fl flow(1);
  typename Fl::field_type x(B), y(B), gx(B), gy(B);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal;
  for (index_t s = 0; s < L::volume; ++s)
    for (index_t b = 0; b < B; ++b) x(s, b) = normal(rng), gx(s, b) = normal(rng);
  std::vector<float> ld(static_cast<std::size_t>(B)), gl(static_cast<std::size_t>(B), 1.f);
  typename Fl::tape_type tape;
  auto run = [&] {
    std::fill(ld.begin(), ld.end(), 0.f);
    if (fused) {
      flow.forward_path(x, y, std::span<float>(ld), tape, gx, std::span<const float>(gl), gy, exec::Serial{});
    } else {
      flow.forward(x, y, std::span<float>(ld), tape, exec::Serial{});
      flow.reverse_backward(tape, gx, std::span<const float>(gl), gy, false, exec::Serial{});
    }
  };
  run();  // warm-up: the tape's and the scratch's first touch (page faults) are not timed
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(gy.data());
  }
}
BENCHMARK_TEMPLATE(BM_ForwardPath, Lat)->Name("ForwardPath<8x8, float, fused>")->Arg(1)->UseRealTime();
BENCHMARK_TEMPLATE(BM_ForwardPath, Lat)->Name("ForwardPath<8x8, float, two sweeps>")->Arg(0)->UseRealTime();
BENCHMARK_TEMPLATE(BM_ForwardPath, Lattice<32, 32>)->Name("ForwardPath<32x32, float, fused>")->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_ForwardPath, Lattice<32, 32>)->Name("ForwardPath<32x32, float, two sweeps>")->Arg(0)->UseRealTime()->Unit(benchmark::kMillisecond);

/// One conditioner on lattice L: forward (pass 0), the input adjoint (1) or backward with weight
/// gradients (2), with ConvSchedule::layer_by_layer (wave = 0) or ConvSchedule::wavefront (wave = 1).
template <class L, class T>
void BM_ConvSchedule(benchmark::State& state) {
  const bool wave = state.range(0) != 0;
  const int64_t pass = state.range(1);
  constexpr index_t V = L::volume, B = 128;
  const ConvStack<L, T> net(ConvNetConfig{.in_channels = 1, .hidden = {8, 8}, .out_channels = 2, .bias = false});
  std::vector<T> params(net.num_params()), grads(net.num_params(), T(0));
  net.init_params(params, 7);
  Field<L, T, Scalar> x(B), gx(B);
  Field<L, T, Channels<2>> y(B), gy(B);
  std::mt19937_64 rng(5);
  std::normal_distribution<T> normal;
  for (index_t s = 0; s < V; ++s)
    for (index_t b = 0; b < B; ++b) x(s, b) = normal(rng), gy(s, 0, b) = normal(rng), gy(s, 1, b) = normal(rng);
  typename ConvStack<L, T>::Workspace ws;
  ws.schedule = wave ? ConvSchedule::wavefront : ConvSchedule::layer_by_layer;
  const SiteRange active{V / 2, V}, frozen{0, V / 2};  // a coupling of parity 1
  auto forward = [&] { net.forward(std::span<const T>(params), x, y, ws, exec::Serial{}, active, active); };
  auto backward = [&](bool with_grads) {
    net.backward(std::span<const T>(params), ws, gy, gx, with_grads ? std::span<T>(grads) : std::span<T>(),
                 exec::Serial{}, frozen);
  };
  forward();
  backward(true);  // warm-up: the thread's scratch
  for (auto _ : state) {
    if (pass == 0)
      forward();
    else
      backward(pass == 2);
    benchmark::DoNotOptimize(pass == 0 ? y.data() : gx.data());
  }
}
BENCHMARK_TEMPLATE(BM_ConvSchedule, Lattice<32, 32>, float)
    ->Name("ConvSchedule<32x32, float>")
    ->ArgNames({"wavefront", "pass"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_ConvSchedule, Lattice<32, 32>, double)
    ->Name("ConvSchedule<32x32, double>")
    ->ArgNames({"wavefront", "pass"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  g_peak_float = bench::fma_peak<float>();
  g_peak_double = bench::fma_peak<double>();
  std::printf("one-core FMA peak (%s): %.1f GFLOP/s float, %.1f GFLOP/s double; threads: %d\n",
              simd::arch_name(), g_peak_float, g_peak_double, exec::max_threads());
  benchmark::AddCustomContext("simd", simd::arch_name());
  benchmark::AddCustomContext("fma_peak_float_GFLOP/s", std::to_string(g_peak_float));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
