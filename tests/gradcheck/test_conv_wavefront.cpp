// SPDX-License-Identifier: MIT
// ConvStack's wavefront order of the forward pass and of the input adjoint: the schedule runs every
// item of every convolution once and after everything it reads; the adjoint's ring buffers hand
// every reader the value it needs; and the interleaved passes give the bits of the layer-by-layer
// ones (outputs, the stored activations, input adjoints), on any lattice, kernel size, depth, site
// order, activation and site range.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <span>
#include <type_traits>
#include <vector>

#include "support/backends.hpp"
#include <normflow/layer/conditioner/conv_net.hpp>

using namespace normflow;

namespace {

/// The tap table of a ConvStack: [t][s] = storage position of site(s) + delta_t.
template <class Net>
std::vector<index_t> tap_table(const Net& net) {
  const index_t V = Net::volume, K = net.num_taps();
  std::vector<index_t> taps(static_cast<std::size_t>(K * V));
  for (index_t t = 0; t < K; ++t)
    for (index_t s = 0; s < V; ++s) taps[std::size_t(t * V + s)] = net.tap_neighbor(t, s);
  return taps;
}

/// Checks a schedule by brute force: every (layer, item) exactly once, and every item of layer
/// l >= 1 after all the items of layer l - 1 it reads through the taps.
void check_schedule(const detail::WaveSchedule& w, const std::vector<index_t>& taps, index_t K, index_t V,
                    index_t layers) {
  std::vector<std::vector<int>> when(static_cast<std::size_t>(layers), std::vector<int>(std::size_t(V), -1));
  int step = 0;
  for (const detail::WaveRun& r : w.runs) {
    REQUIRE(r.layer >= 0);
    REQUIRE(r.layer < layers);
    REQUIRE(r.k0 >= 0);
    REQUIRE(r.k0 < r.k1);
    REQUIRE(r.k1 <= V);
    for (index_t k = r.k0; k < r.k1; ++k) {
      CHECK(when[std::size_t(r.layer)][std::size_t(k)] == -1);  // not run before
      when[std::size_t(r.layer)][std::size_t(k)] = step++;
    }
  }
  int late = 0;
  for (index_t l = 0; l < layers; ++l)
    for (index_t k = 0; k < V; ++k) {
      REQUIRE(when[std::size_t(l)][std::size_t(k)] >= 0);  // run at all
      if (l == 0) continue;
      const index_t s = detail::conv_item_site(k, V);
      for (index_t t = 0; t < K; ++t) {
        const index_t p = detail::conv_site_item(taps[std::size_t(t * V + s)], V);
        if (when[std::size_t(l - 1)][std::size_t(p)] > when[std::size_t(l)][std::size_t(k)]) ++late;
      }
    }
  CHECK(late == 0);
  CHECK(w.lag.size() == std::size_t(layers - 1));
}

/// Replays a schedule with its ring plan, tagging each ring slot with the site written there: every
/// read through the plan's taps must find the site the convolution's tap names, and no slot count
/// may exceed the lattice. With a backward plan, the weight-gradient tiles after each run read their
/// sites' slots too, and each chunk's tiles must cover it once, in order.
void check_rings(const detail::WaveSchedule& w, const detail::ConvRingPlan& plan, const std::vector<index_t>& taps,
                 index_t K, index_t V, index_t layers, const detail::ConvBackwardPlan* back = nullptr) {
  if (layers < 2) return;
  REQUIRE(plan.slots.size() == std::size_t(layers - 1));
  std::vector<std::vector<index_t>> content(std::size_t(layers - 1));
  for (index_t l = 0; l + 1 < layers; ++l) {
    CHECK(plan.slots[std::size_t(l)] <= V);
    content[std::size_t(l)].assign(std::size_t(plan.slots[std::size_t(l)]), -1);
  }
  int wrong = 0;
  // per (layer, chunk): the next site its tiles must start at
  const detail::WgradPlan chunks(1, 1, K, 0, V, V);
  std::vector<std::vector<index_t>> next(std::size_t(layers), std::vector<index_t>(std::size_t(chunks.nchunks), -1));
  for (std::size_t ri = 0; ri < w.runs.size(); ++ri) {
    const detail::WaveRun& r = w.runs[ri];
    for (index_t k = r.k0; k < r.k1; ++k) {
      const index_t s = detail::conv_item_site(k, V);
      if (r.layer >= 1)
        for (index_t t = 0; t < K; ++t) {
          const index_t slot = plan.taps[std::size_t(r.layer)][std::size_t(t * V + s)];
          if (content[std::size_t(r.layer - 1)][std::size_t(slot)] != taps[std::size_t(t * V + s)]) ++wrong;
        }
      if (r.layer + 1 < layers) content[std::size_t(r.layer)][std::size_t(plan.out_pos[std::size_t(r.layer)][std::size_t(s)])] = s;
    }
    if (!back) continue;
    for (index_t i = back->tiles_after[ri]; i < back->tiles_after[ri + 1]; ++i) {
      const detail::WgradTiles& t = back->tiles[std::size_t(i)];
      REQUIRE(t.layer >= 1);
      index_t c0, c1;
      chunks.chunk(t.chunk, c0, c1);
      index_t& n = next[std::size_t(t.layer)][std::size_t(t.chunk)];
      CHECK(t.first == (n < 0));
      CHECK(t.s0 == (n < 0 ? c0 : n));
      CHECK(t.s1 <= c1);
      n = t.s1;
      for (index_t s = t.s0; s < t.s1; ++s)
        if (content[std::size_t(t.layer - 1)][std::size_t(plan.out_pos[std::size_t(t.layer - 1)][std::size_t(s)])] != s)
          ++wrong;
    }
  }
  CHECK(wrong == 0);
  if (back)
    for (index_t l = 1; l < layers; ++l)
      for (index_t ch = 0; ch < chunks.nchunks; ++ch) {
        index_t c0, c1;
        chunks.chunk(ch, c0, c1);
        CHECK(next[std::size_t(l)][std::size_t(ch)] == c1);  // every chunk done to its end
      }
}

template <class Lat, class Order = default_order_t<Lat>>
void check_schedules(const ConvNetConfig& cfg) {
  const ConvStack<Lat, float, Order> net(cfg);
  const std::vector<index_t> taps = tap_table(net);
  for (index_t layers : {1, 2, 3, 5})
    for (index_t block : {1, 7, 16, 1000}) {
      CAPTURE(layers);
      CAPTURE(block);
      const detail::WaveSchedule w =
          detail::conv_wavefront_schedule(taps.data(), net.num_taps(), Lat::volume, layers, block);
      check_schedule(w, taps, net.num_taps(), Lat::volume, layers);
      check_rings(w, detail::conv_ring_plan(w, taps.data(), net.num_taps(), Lat::volume, layers), taps,
                  net.num_taps(), Lat::volume, layers);
      const detail::ConvBackwardPlan back =
          detail::conv_backward_plan(w, taps.data(), net.num_taps(), Lat::volume, layers);
      check_rings(w, back.ring, taps, net.num_taps(), Lat::volume, layers, &back);
    }
}

/// Forward with each schedule from the same input; y and every stored activation must be the same
/// bits, and so must the backward pass with parameter gradients (a wavefront with ring buffers
/// and weight-gradient tiles without bias; layer by layer with bias) and without them (the input
/// adjoint, a wavefront with ring buffers).
template <class Lat, class T, class Order = default_order_t<Lat>, index_t Cin = 2>
void check_same_bits(const ConvNetConfig& cfg, index_t batch, SiteRange out_sites = {},
                     SiteRange zero_in_sites = {0, 0}, SiteRange in_sites = {}) {
  using Net = ConvStack<Lat, T, Order>;
  const Net net(cfg);
  std::vector<T> params(net.num_params());
  net.init_params(params, 11);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  Field<Lat, T, Channels<Cin>, Order> x(batch), gx1(batch), gx2(batch);
  Field<Lat, T, Channels<3>, Order> y1(batch), y2(batch), gy(batch);
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t c = 0; c < Cin; ++c)
      for (index_t b = 0; b < batch; ++b) x(s, c, b) = T(normal(rng));
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t c = 0; c < 3; ++c)
      for (index_t b = 0; b < batch; ++b) gy(s, c, b) = T(normal(rng));
  typename Net::Workspace ws1, ws2;
  ws1.schedule = ConvSchedule::layer_by_layer;
  ws2.schedule = ConvSchedule::wavefront;
  net.forward(params, x, y1, ws1, exec::Serial{}, out_sites, zero_in_sites);
  net.forward(params, x, y2, ws2, exec::Serial{}, out_sites, zero_in_sites);
  CHECK(net.use_wavefront(ws2, exec::Serial{}) == (cfg.hidden.size() >= 1));
  CHECK_FALSE(net.use_wavefront(ws1, exec::Serial{}));
  CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(T)) == 0);
  std::vector<T> g1(net.num_params(), T(0.25)), g2(net.num_params(), T(0.25));
  net.backward(params, ws1, gy, gx1, std::span<T>(g1), exec::Serial{});
  net.backward(params, ws2, gy, gx2, std::span<T>(g2), exec::Serial{});
  CHECK(std::memcmp(gx1.data(), gx2.data(), gx1.size() * sizeof(T)) == 0);
  CHECK(std::memcmp(g1.data(), g2.data(), g1.size() * sizeof(T)) == 0);
  // the input adjoint alone; gx keeps its old values outside in_sites
  for (auto* f : {&gx1, &gx2}) std::fill(f->data(), f->data() + f->size(), T(0.5));
  net.backward(params, ws1, gy, gx1, std::span<T>(), exec::Serial{}, in_sites);
  net.backward(params, ws2, gy, gx2, std::span<T>(), exec::Serial{}, in_sites);
  CHECK(std::memcmp(gx1.data(), gx2.data(), gx1.size() * sizeof(T)) == 0);
}

ConvNetConfig config(std::vector<index_t> hidden, index_t kernel, Activation act = Activation::tanh, bool bias = false) {
  return {.in_channels = 2, .hidden = std::move(hidden), .out_channels = 3, .kernel_size = kernel,
          .activation = act, .bias = bias};
}

}  // namespace

TEST_CASE("conv_wavefront_schedule: every item of every layer once, after all the items it reads") {
  check_schedules<Lattice<8, 8>>(config({8, 8}, 3));
  check_schedules<Lattice<6, 10>>(config({4}, 3));
  check_schedules<Lattice<5, 7>>(config({4}, 3));           // odd volume: items in storage order
  check_schedules<Lattice<4, 4, 6>>(config({4}, 3));        // rank 3
  check_schedules<Lattice<6, 6>>(config({4}, 5));           // kernel 5: taps reach 2 rows
  check_schedules<Lattice<3, 5>>(config({4}, 5));           // kernel larger than the lattice
  check_schedules<Lattice<6, 6>>(config({4}, 1));           // kernel 1: no neighbours
  check_schedules<Lattice<8, 8>, Lexicographic>(config({4}, 3));
  check_schedules<Lattice<12>>(config({4}, 3));             // rank 1
}

TEST_CASE("conv_wavefront_schedule: the later layers run while layer 0 is still going") {
  // the point of the schedule: on 32x32 each layer stays a few rows behind the one before
  const ConvStack<Lattice<32, 32>, float> net(config({8, 8}, 3));
  const std::vector<index_t> taps = tap_table(net);
  const detail::WaveSchedule w = detail::conv_wavefront_schedule(taps.data(), 9, 1024, 3, 16);
  REQUIRE(w.lag.size() == 2);
  for (index_t lag : w.lag) {
    CHECK(lag > 0);
    CHECK(lag <= 4 * 32);  // at most four rows of 32 sites
  }
  index_t before_last_block = 0;  // items of layer 2 run before layer 0's last block
  index_t done0 = 0;
  for (const detail::WaveRun& r : w.runs) {
    if (r.layer == 0) done0 += r.k1 - r.k0;
    if (r.layer == 2 && done0 < 1024) before_last_block += r.k1 - r.k0;
  }
  CHECK(before_last_block > 1024 / 2);
}

TEST_CASE_TEMPLATE("ConvStack: the wavefront forward pass gives the layer-by-layer bits", T, float, double) {
  check_same_bits<Lattice<8, 8>, T>(config({8, 8}, 3), 37);
  check_same_bits<Lattice<8, 8>, T>(config({8, 8}, 3), 20, SiteRange{32, 64}, SiteRange{0, 32},
                                    SiteRange{0, 32});  // a coupling's halves
  check_same_bits<Lattice<32, 32>, T>(config({8, 8}, 3), 16, SiteRange{0, 512}, SiteRange{512, 1024},
                                      SiteRange{512, 1024});
  check_same_bits<Lattice<16, 12>, T>(config({5, 4, 3}, 3, Activation::silu), 5);
  check_same_bits<Lattice<5, 7>, T>(config({4}, 3, Activation::leaky_relu), 3);
  check_same_bits<Lattice<4, 4, 6>, T>(config({4, 3}, 3), 9, SiteRange{0, 48}, SiteRange{48, 96}, SiteRange{48, 96});
  check_same_bits<Lattice<6, 6>, T>(config({3, 4}, 5, Activation::none), 17);
  check_same_bits<Lattice<3, 5>, T>(config({3, 4}, 5), 2);
  check_same_bits<Lattice<6, 6>, T>(config({4}, 1), 17);
  check_same_bits<Lattice<8, 6>, T, Lexicographic>(config({4, 4}, 3), 4);
  check_same_bits<Lattice<8, 6>, T>(config({}, 3), 4);  // one convolution: nothing to interleave
  check_same_bits<Lattice<16, 18>, T>(config({6, 5}, 3), 37, SiteRange{144, 288}, SiteRange{0, 144},
                                      SiteRange{0, 144});  // 3 weight-gradient chunks per parity
  check_same_bits<Lattice<8, 8>, T>(config({8, 8}, 3, Activation::tanh, true), 20);  // bias: layer by layer
  // one input channel: the input adjoint onto one parity runs in row blocks layer by layer
  // (detail::conv_row_blocks) and site by site in the wavefront; 10 input columns per block row,
  // one or two blocks per row pair; with a bias as well
  // (no bias: the backward with weight gradients runs as a wavefront too, against the fused
  // layer-by-layer sweep, conv_backward_fused, whose one-channel adjoint is in row blocks as well)
  const ConvNetConfig one{.in_channels = 1, .hidden = {8, 8}, .out_channels = 3, .kernel_size = 3, .bias = false};
  check_same_bits<Lattice<8, 8>, T, EvenOdd, 1>(one, 20, SiteRange{32, 64}, SiteRange{0, 32}, SiteRange{0, 32});
  check_same_bits<Lattice<8, 8>, T, EvenOdd, 1>(one, 37, SiteRange{0, 32}, SiteRange{32, 64}, SiteRange{32, 64});
  check_same_bits<Lattice<4, 16>, T, EvenOdd, 1>(one, 9, SiteRange{32, 64}, SiteRange{0, 32}, SiteRange{0, 32});
  check_same_bits<Lattice<6, 8>, T, EvenOdd, 1>(one, 16, SiteRange{0, 24}, SiteRange{24, 48}, SiteRange{24, 48});
  // the fused backward sweep: two 64-site chunks per parity of whole rows of blocks (16x16), and
  // chunks shorter than a row of blocks (2x128: the per-site kernel there)
  check_same_bits<Lattice<16, 16>, T, EvenOdd, 1>(one, 19, SiteRange{128, 256}, SiteRange{0, 128},
                                                  SiteRange{0, 128});
  check_same_bits<Lattice<2, 128>, T, EvenOdd, 1>(one, 5, SiteRange{0, 128}, SiteRange{128, 256},
                                                  SiteRange{128, 256});
  ConvNetConfig biased = one;
  biased.bias = true;
  check_same_bits<Lattice<8, 8>, T, EvenOdd, 1>(biased, 20, SiteRange{32, 64}, SiteRange{0, 32}, SiteRange{0, 32});
}

TEST_CASE("ConvStack: the automatic schedule takes the wavefront on one thread for large activations only") {
  const ConvNetConfig cfg{.in_channels = 1, .hidden = {8, 8}, .out_channels = 2, .kernel_size = 3, .bias = false};
  auto chooses = [&]<class Lat, class T>(Lat, T, int threads, index_t batch = 128) {
    const ConvStack<Lat, T> net(cfg);
    std::vector<T> params(net.num_params());
    net.init_params(params, 1);
    Field<Lat, T, Scalar> x(batch);
    Field<Lat, T, Channels<2>> y(batch);
    typename ConvStack<Lat, T>::Workspace ws;
    test::ThreadCount guard(threads);
    net.forward(params, x, y, ws, exec::OpenMP{});
    return net.use_wavefront(ws, exec::OpenMP{});
  };
  CHECK_FALSE(chooses(Lattice<8, 8>{}, float{}, 1));     // 0.27 MB per activation: fits in L2
  CHECK_FALSE(chooses(Lattice<8, 8>{}, float{}, 1, 1024));  // 2.1 MB, but the layers keep half the lattice live
  CHECK(chooses(Lattice<16, 16>{}, float{}, 1));         // 1.06 MB per activation
  CHECK(chooses(Lattice<16, 16>{}, float{}, 1, 64));     // 0.54 MB: a training step's chunk
  CHECK_FALSE(chooses(Lattice<16, 16>{}, float{}, 1, 32));  // 0.27 MB
  CHECK(chooses(Lattice<32, 32>{}, float{}, 1));         // 4.3 MB per activation, 0.8 MB window
  CHECK(chooses(Lattice<32, 32>{}, double{}, 1));        // 1.6 MB window
  CHECK_FALSE(chooses(Lattice<128, 128>{}, float{}, 1)); // the window (3.2 MB) leaves L2
  if (exec::max_threads() >= 2) CHECK_FALSE(chooses(Lattice<32, 32>{}, float{}, 2));
}

namespace {

/// Counts the entries where a and b differ as values (a zero's sign aside: the taps by half leave
/// out terms that are exact zeros, which can only flip the sign of a zero sum).
template <class F>
std::size_t value_mismatches(const F& a, const F& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += !(a.data()[i] == b.data()[i]);
  return n;
}

/// A coupling's use of a ConvStack with the taps by half on and off, each schedule: the same
/// outputs, input adjoints
/// (with and without weight gradients) and weight gradients. `active` is the half the coupling
/// transforms: the input x is read as zero there (zero_in_sites), the output is computed there
/// (out_sites), and the input adjoint is wanted on the other half (in_sites).
template <class Lat, class T, class Order = EvenOdd, index_t Cin = 2>
void check_half_taps(const ConvNetConfig& cfg, index_t batch, index_t active) {
  using Net = ConvStack<Lat, T, Order>;
  const Net net(cfg);
  std::vector<T> params(net.num_params());
  net.init_params(params, 7);
  std::mt19937_64 rng(9);
  std::normal_distribution<double> normal;
  constexpr index_t V = Lat::volume, H = V / 2;
  const SiteRange act{active * H, (active + 1) * H}, frz{(1 - active) * H, (2 - active) * H};
  Field<Lat, T, Channels<Cin>, Order> x(batch), gx_on(batch), gx_off(batch);
  Field<Lat, T, Channels<3>, Order> y_on(batch), y_off(batch), gy(batch);
  for (index_t s = 0; s < V; ++s)
    for (index_t b = 0; b < batch; ++b) {
      for (index_t c = 0; c < Cin; ++c) x(s, c, b) = T(normal(rng));
      for (index_t c = 0; c < 3; ++c) gy(s, c, b) = T(normal(rng));
    }
  for (ConvSchedule schedule : {ConvSchedule::layer_by_layer, ConvSchedule::wavefront}) {
    CAPTURE(int(schedule));
    typename Net::Workspace on, off, bor;
    on.schedule = off.schedule = bor.schedule = schedule;
    off.half_taps = false;
    bor.borrow_input = true;  // x read in place where it has no padding lanes (the same bits)
    net.forward(params, x, y_on, on, exec::Serial{}, act, act);
    net.forward(params, x, y_off, off, exec::Serial{}, act, act);
    CHECK(value_mismatches(y_on, y_off) == 0);
    Field<Lat, T, Channels<3>, Order> y_bor(batch);
    net.forward(params, x, y_bor, bor, exec::Serial{}, act, act);
    CHECK(bor.input_borrowed() == (x.batch() == x.padded_batch() && std::is_same_v<Order, EvenOdd>));
    CHECK_FALSE(on.input_borrowed());
    CHECK(std::memcmp(y_bor.data(), y_on.data(), y_on.size() * sizeof(T)) == 0);
    std::vector<T> g_on(net.num_params(), T(0.25)), g_off(net.num_params(), T(0.25)), g_bor(g_on);
    net.backward(params, on, gy, gx_on, std::span<T>(g_on), exec::Serial{}, frz);
    net.backward(params, off, gy, gx_off, std::span<T>(g_off), exec::Serial{}, frz);
    CHECK(value_mismatches(gx_on, gx_off) == 0);
    CHECK(g_on == g_off);
    net.backward(params, bor, gy, gx_off, std::span<T>(g_bor), exec::Serial{}, frz);
    CHECK(std::memcmp(gx_off.data(), gx_on.data(), gx_on.size() * sizeof(T)) == 0);
    CHECK(std::memcmp(g_bor.data(), g_on.data(), g_on.size() * sizeof(T)) == 0);
    net.backward(params, on, gy, gx_on, std::span<T>(), exec::Serial{}, frz);
    net.backward(params, off, gy, gx_off, std::span<T>(), exec::Serial{}, frz);
    CHECK(value_mismatches(gx_on, gx_off) == 0);
  }
}

/// The tap counts attach_half_taps gives the two halves for an input nonzero on half q (-1, -1:
/// none on this lattice and order).
template <class Lat, class Order = EvenOdd>
std::pair<index_t, index_t> half_tap_counts(index_t kernel, index_t q) {
  const ConvStack<Lat, float, Order> net(ConvNetConfig{.in_channels = 1, .hidden = {2}, .out_channels = 2,
                                                       .kernel_size = kernel, .bias = false});
  std::vector<float> w(std::size_t(2 * net.num_taps()), 1.0f), packed(w.size(), 0.0f);
  detail::ConvKernelArgs<float> a{nullptr, nullptr, nullptr, nullptr, 1, 2, net.num_taps(), Lat::volume, 16};
  if (!net.attach_half_taps(a, q, w.data(), packed.data(), false)) return {-1, -1};
  return {a.ntaps, a.ntaps_hi};
}

}  // namespace

TEST_CASE("ConvStack: taps by half exist exactly where the halves are a checkerboard of the taps") {
  using P = std::pair<index_t, index_t>;
  // 3 x 3 on even/odd storage: the nonzero half's own sites read the centre and the 4 diagonals,
  // the other half's sites the 4 nearest neighbours
  CHECK(half_tap_counts<Lattice<8, 8>>(3, 0) == P{5, 4});
  CHECK(half_tap_counts<Lattice<8, 8>>(3, 1) == P{4, 5});
  CHECK(half_tap_counts<Lattice<6, 6>>(5, 0) == P{13, 12});
  CHECK(half_tap_counts<Lattice<4, 4, 6>>(3, 1) == P{14, 13});  // 13 taps of even |delta|_1, 14 odd
  CHECK(half_tap_counts<Lattice<6, 6>>(1, 0) == P{1, 0});  // kernel 1: nothing reaches the other half
  CHECK(half_tap_counts<Lattice<12>>(3, 0) == P{1, 2});
  // no checkerboard: lexicographic halves (the top and bottom of the lattice; even/odd storage
  // needs even extents)
  CHECK(half_tap_counts<Lattice<8, 8>, Lexicographic>(3, 0) == P{-1, -1});
  CHECK(half_tap_counts<Lattice<6, 5>, Lexicographic>(3, 1) == P{-1, -1});
  CHECK(half_tap_counts<Lattice<6, 5>, Lexicographic>(1, 0) == P{1, 0});  // kernel 1: any halves
}

TEST_CASE_TEMPLATE("ConvStack: reading only the taps into the nonzero half gives the values of every tap", T, float,
                   double) {
  check_half_taps<Lattice<8, 8>, T>(config({8, 8}, 3), 20, 1);
  check_half_taps<Lattice<8, 8>, T>(config({8, 8}, 3), 37, 0);
  check_half_taps<Lattice<8, 8>, T>(config({8, 8}, 3), 32, 0);   // no padding lanes: x read in place
  check_half_taps<Lattice<32, 32>, T>(config({8, 8}, 3), 16, 0);  // the wavefront's rings and tiles
  check_half_taps<Lattice<16, 18>, T>(config({6, 5}, 3, Activation::silu), 9, 1);
  check_half_taps<Lattice<4, 4, 6>, T>(config({4, 3}, 3), 9, 1);
  check_half_taps<Lattice<6, 6>, T>(config({3, 4}, 5, Activation::none), 17, 0);
  check_half_taps<Lattice<6, 6>, T>(config({4}, 1), 5, 1);
  check_half_taps<Lattice<8, 6>, T>(config({}, 3), 4, 0);         // one convolution: first and last
  check_half_taps<Lattice<8, 6>, T>(config({}, 3), 16, 1);
  check_half_taps<Lattice<8, 8>, T>(config({8, 8}, 3, Activation::tanh, true), 20, 1);  // bias
  check_half_taps<Lattice<8, 6>, T, Lexicographic>(config({4, 4}, 3), 16, 0);  // none: every tap, both
  const ConvNetConfig one{.in_channels = 1, .hidden = {8, 8}, .out_channels = 3, .kernel_size = 3, .bias = false};
  check_half_taps<Lattice<8, 8>, T, EvenOdd, 1>(one, 20, 1);  // W1's conditioner (2 -> 3 outputs)
  check_half_taps<Lattice<16, 16>, T, EvenOdd, 1>(one, 19, 0);
  check_half_taps<Lattice<16, 16>, T, EvenOdd, 1>(one, 32, 1);
}
