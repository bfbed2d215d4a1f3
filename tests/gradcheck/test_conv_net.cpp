// SPDX-License-Identifier: MIT
// ConvStack: VJPs against central differences, a naive lexicographic reference, symmetries,
// float against double, thread-count reproducibility, padding lanes and configuration errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <span>
#include <tuple>
#include <vector>

#include "support/backends.hpp"
#include <normflow/layer/conditioner/conv_net.hpp>

using namespace normflow;

// This executable counts heap allocations (replaced global operator new) to check that forward
// and backward allocate nothing once a workspace is laid out for the batch.
namespace {
std::atomic<long> heap_allocations{0};
}  // namespace
void* operator new(std::size_t n) {
  heap_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t align) {
  heap_allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = std::size_t(align), bytes = (std::max<std::size_t>(n, 1) + a - 1) / a * a;
  if (void* p = std::aligned_alloc(a, bytes)) return p;
  throw std::bad_alloc();
}
// GCC pairs inlined library new/delete calls with these bodies and warns about malloc/free.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace {

constexpr Activation all_activations[] = {Activation::tanh, Activation::leaky_relu, Activation::silu,
                                          Activation::none};

/// Standard normals in the real lanes of f (padding lanes untouched).
template <class F>
void fill_normal(F& f, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  for (index_t s = 0; s < F::volume; ++s)
    for (index_t c = 0; c < F::components; ++c)
      for (index_t b = 0; b < f.batch(); ++b) f(s, c, b) = typename F::value_type(normal(rng));
}

std::vector<double> normal_vector(std::size_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> v(n);
  for (double& e : v) e = normal(rng);
  return v;
}

/// <a, b> over the real lanes.
template <class F>
double dot(const F& a, const F& b) {
  double acc = 0;
  for (index_t s = 0; s < F::volume; ++s)
    for (index_t c = 0; c < F::components; ++c)
      for (index_t b_ = 0; b_ < a.batch(); ++b_) acc += double(a(s, c, b_)) * double(b(s, c, b_));
  return acc;
}

double dot(std::span<const double> a, std::span<const double> b) {
  double acc = 0;
  for (std::size_t j = 0; j < a.size(); ++j) acc += a[j] * b[j];
  return acc;
}

double relative_error(double analytic, double numeric) {
  return std::abs(analytic - numeric) / std::max(std::abs(numeric), 1e-300);
}

/// max |a - b| / max |b| over the real lanes (a norm-wise relative error).
template <class FA, class FB>
double field_rel_diff(const FA& a, const FB& b) {
  double diff = 0, scale = 0;
  for (index_t s = 0; s < FB::volume; ++s)
    for (index_t c = 0; c < FB::components; ++c)
      for (index_t k = 0; k < b.batch(); ++k) {
        diff = std::max(diff, std::abs(double(a(s, c, k)) - double(b(s, c, k))));
        scale = std::max(scale, std::abs(double(b(s, c, k))));
      }
  return diff / scale;
}

template <class TA>
double span_rel_diff(std::span<const TA> a, std::span<const double> b) {
  double diff = 0, scale = 0;
  for (std::size_t j = 0; j < b.size(); ++j) {
    diff = std::max(diff, std::abs(double(a[j]) - b[j]));
    scale = std::max(scale, std::abs(b[j]));
  }
  return diff / scale;
}

/// Outputs of one forward and backward pass.
template <class Y, class GX>
struct NetResult {
  Y y;
  GX gx;
  std::vector<typename Y::value_type> grads;
};

ConvNetConfig small_config(Activation act, bool bias, index_t kernel = 3) {
  return {.in_channels = 2, .hidden = {3, 4}, .out_channels = 3, .kernel_size = kernel, .activation = act, .bias = bias};
}

// Central-difference step: truncation O(h^2) and rounding O(eps |L| / h) both stay near 1e-10
// relative; small enough that a leaky_relu kink is crossed with negligible probability.
constexpr double fd_step = 1e-6;
constexpr double fd_rel_tol = 1e-6;

/// Directional derivatives of L = <w, y(params, x)> along random (vx, vp), against central
/// differences; batch 3 by default (odd: padding lanes are exercised).
template <class Lat, class Order = default_order_t<Lat>>
void check_directional_vjp(const ConvNetConfig& cfg, std::uint64_t seed, index_t batch = 3) {
  using Net = ConvStack<Lat, double, Order>;
  using In = Field<Lat, double, Channels<2>, Order>;
  using Out = Field<Lat, double, Channels<3>, Order>;
  const Net net(cfg);
  std::mt19937_64 rng(seed);
  std::vector<double> params(net.num_params());
  net.init_params(params, seed);
  In x(batch), vx(batch), gx(batch), xh(batch);
  Out w(batch), y(batch);
  fill_normal(x, rng);
  fill_normal(vx, rng);
  fill_normal(w, rng);
  const std::vector<double> vp = normal_vector(params.size(), rng);

  typename Net::Workspace ws;
  net.forward(params, x, y, ws);
  std::vector<double> grads(params.size(), 0.0);
  net.backward(params, ws, w, gx, grads);

  auto loss = [&](double hx, double hp) {
    std::vector<double> p = params;
    for (std::size_t j = 0; j < p.size(); ++j) p[j] += hp * vp[j];
    for (std::size_t j = 0; j < x.size(); ++j) xh.flat()[j] = x.flat()[j] + hx * vx.flat()[j];
    typename Net::Workspace ws2;
    Out yh(batch);
    net.forward(p, xh, yh, ws2);
    return dot(w, yh);
  };
  const double fd_x = (loss(fd_step, 0) - loss(-fd_step, 0)) / (2 * fd_step);
  const double fd_p = (loss(0, fd_step) - loss(0, -fd_step)) / (2 * fd_step);
  const double an_x = dot(gx, vx);
  const double an_p = dot(std::span<const double>(grads), std::span<const double>(vp));
  CAPTURE(an_x);
  CAPTURE(fd_x);
  CAPTURE(an_p);
  CAPTURE(fd_p);
  CHECK(relative_error(an_x, fd_x) < fd_rel_tol);
  CHECK(relative_error(an_p, fd_p) < fd_rel_tol);
  // gx is zero in the padding lanes.
  bool padding_zero = true;
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t c = 0; c < 2; ++c)
      for (index_t b = batch; b < gx.padded_batch(); ++b) padding_zero = padding_zero && gx(s, c, b) == 0.0;
  CHECK(padding_zero);
}

/// The forward pass by the definition, over lexicographic coordinates (independent of the tap
/// table and the site order). x and the result are [lexicographic site][channel][sample].
template <class Lat>
std::vector<double> naive_forward(const ConvNetConfig& cfg, const std::vector<double>& params,
                                  std::vector<double> a, index_t batch) {
  constexpr index_t d = Lat::rank;
  const index_t k = cfg.kernel_size, r = k / 2;
  index_t taps = 1;
  for (index_t j = 0; j < d; ++j) taps *= k;
  std::vector<index_t> channels{cfg.in_channels};
  channels.insert(channels.end(), cfg.hidden.begin(), cfg.hidden.end());
  channels.push_back(cfg.out_channels);
  std::size_t off = 0;
  const index_t layers = index_t(channels.size()) - 1;
  for (index_t l = 0; l < layers; ++l) {
    const index_t ci = channels[std::size_t(l)], co = channels[std::size_t(l) + 1];
    const std::size_t w_off = off, b_off = off + std::size_t(co * ci * taps);
    off = b_off + (cfg.bias ? std::size_t(co) : 0);
    std::vector<double> z(std::size_t(Lat::volume * co * batch), 0.0);
    for (index_t site = 0; site < Lat::volume; ++site) {
      const auto xc = Lat::coord(site);
      for (index_t o = 0; o < co; ++o)
        for (index_t b = 0; b < batch; ++b) {
          double acc = cfg.bias ? params[b_off + std::size_t(o)] : 0.0;
          for (index_t t = 0; t < taps; ++t) {
            // tap t: digits of t in base k, first direction most significant, minus r
            auto nc = xc;
            index_t rest = t;
            for (index_t j = d - 1; j >= 0; --j) {
              const index_t delta = rest % k - r;
              rest /= k;
              const index_t L = Lat::extents[std::size_t(j)];
              nc[std::size_t(j)] = ((nc[std::size_t(j)] + delta) % L + L) % L;
            }
            const index_t n = Lat::site(nc);
            for (index_t i = 0; i < ci; ++i)
              acc += params[w_off + std::size_t((o * ci + i) * taps + t)] * a[std::size_t((n * ci + i) * batch + b)];
          }
          double& out = z[std::size_t((site * co + o) * batch + b)];
          out = acc;
          if (l + 1 < layers) {
            switch (cfg.activation) {
              case Activation::tanh: out = std::tanh(acc); break;
              case Activation::leaky_relu: out = acc > 0 ? acc : 0.01 * acc; break;
              case Activation::silu: out = acc / (1 + std::exp(-acc)); break;
              case Activation::none: break;
            }
          }
        }
    }
    a = std::move(z);
  }
  return a;
}

/// net.forward against naive_forward on one lattice / order / architecture.
template <class Lat, class Order, index_t Cin, index_t Cout>
void check_against_naive(const ConvNetConfig& cfg, index_t batch, std::uint64_t seed) {
  using Net = ConvStack<Lat, double, Order>;
  const Net net(cfg);
  std::mt19937_64 rng(seed);
  std::vector<double> params = normal_vector(net.num_params(), rng);
  for (double& p : params) p *= 0.3;
  Field<Lat, double, Channels<Cin>, Order> x(batch);
  Field<Lat, double, Channels<Cout>, Order> y(batch);
  fill_normal(x, rng);
  std::vector<double> xl(std::size_t(Lat::volume * Cin * batch));
  for (index_t site = 0; site < Lat::volume; ++site)
    for (index_t c = 0; c < Cin; ++c)
      for (index_t b = 0; b < batch; ++b) xl[std::size_t((site * Cin + c) * batch + b)] = x.at_site(site, c, b);
  typename Net::Workspace ws;
  net.forward(params, x, y, ws);
  const std::vector<double> ref = naive_forward<Lat>(cfg, params, xl, batch);
  double diff = 0, scale = 0;
  for (index_t site = 0; site < Lat::volume; ++site)
    for (index_t c = 0; c < Cout; ++c)
      for (index_t b = 0; b < batch; ++b) {
        const double r = ref[std::size_t((site * Cout + c) * batch + b)];
        diff = std::max(diff, std::abs(y.at_site(site, c, b) - r));
        scale = std::max(scale, std::abs(r));
      }
  CAPTURE(diff);
  CAPTURE(scale);
  CHECK(scale > 0);
  CHECK(diff <= 1e-13 * scale);
}

}  // namespace

TEST_CASE_TEMPLATE("ConvStack: directional VJP (dL/dx, dL/dparams) matches central differences", Lat,
                   Lattice<4, 4>, Lattice<2, 2>, Lattice<4, 2, 4>, Lattice<5>) {
  std::uint64_t seed = 100;
  for (Activation act : all_activations)
    for (bool bias : {true, false}) {
      CAPTURE(activation_name(act));
      CAPTURE(bias);
      check_directional_vjp<Lat>(small_config(act, bias), ++seed);
    }
}

TEST_CASE("ConvStack: VJP on other orders, kernel sizes and depths") {
  check_directional_vjp<Lattice<4, 4>, Lexicographic>(small_config(Activation::silu, true), 7);
  check_directional_vjp<Lattice<2, 2>>(small_config(Activation::tanh, true, 5), 8);  // taps wrap twice
  check_directional_vjp<Lattice<4, 2, 4>>(small_config(Activation::tanh, true, 1), 9);
  ConvNetConfig single{.in_channels = 2, .hidden = {}, .out_channels = 3, .kernel_size = 3,
                       .activation = Activation::tanh, .bias = true};
  check_directional_vjp<Lattice<3, 5>>(single, 10);
  ConvNetConfig wide{.in_channels = 2, .hidden = {13, 9}, .out_channels = 3, .kernel_size = 3,
                     .activation = Activation::silu, .bias = true};  // 8 + 4 + 1 and 8 + 1 channel blocks
  check_directional_vjp<Lattice<4, 4>>(wide, 11);
}

TEST_CASE("ConvStack: VJP across weight-gradient chunks, tiles, lane blocks and channel groups") {
  // 80 sites: a full 64-site tile and a partial one; batch 37 in double: 5 packs of 8 lanes (two
  // 2-pack blocks and a single one, padding in the last); 13 hidden channels: row blocks 4, 4, 4, 1
  // and input-channel groups of 3 and 4; 27 taps in 3d: three tap groups.
  ConvNetConfig wide{.in_channels = 2, .hidden = {13, 9}, .out_channels = 3, .kernel_size = 3,
                     .activation = Activation::tanh, .bias = true};
  check_directional_vjp<Lattice<10, 8>>(wide, 21, 37);
  check_directional_vjp<Lattice<10, 8>, Lexicographic>(wide, 22, 16);
  check_directional_vjp<Lattice<4, 6, 4>>(wide, 23, 19);
  // 256 sites: four weight-gradient chunks of 64 sites (two per parity), eight tiles
  check_directional_vjp<Lattice<16, 16>>(wide, 24, 40);
  // 8 -> 8 and 8 -> 16: the transposed weight gradient with AVX-512 (detail::wgrad_transposed:
  // items of 8 rows, blocks of 3 taps), one and two row blocks; 27 taps: blocks of 3 in 3d
  ConvNetConfig eight{.in_channels = 2, .hidden = {8, 8, 16}, .out_channels = 3, .kernel_size = 3,
                      .activation = Activation::tanh, .bias = true};
  check_directional_vjp<Lattice<10, 8>>(eight, 25, 37);
  check_directional_vjp<Lattice<16, 16>>(eight, 26, 9);
  check_directional_vjp<Lattice<4, 6, 4>>(eight, 27, 8);
}

TEST_CASE("ConvStack: every parameter and input gradient entry on Lattice<2, 2>") {
  using Lat = Lattice<2, 2>;
  using Net = ConvStack<Lat, double>;
  constexpr index_t batch = 3;
  for (Activation act : {Activation::tanh, Activation::silu}) {
    CAPTURE(activation_name(act));
    const Net net(small_config(act, true));
    std::mt19937_64 rng(21);
    std::vector<double> params(net.num_params());
    net.init_params(params, 5);
    Field<Lat, double, Channels<2>> x(batch), gx(batch), xh(batch);
    Field<Lat, double, Channels<3>> w(batch), y(batch);
    fill_normal(x, rng);
    fill_normal(w, rng);
    Net::Workspace ws;
    net.forward(params, x, y, ws);
    std::vector<double> grads(params.size(), 1.0);  // backward adds: start from 1
    net.backward(params, ws, w, gx, grads);
    auto loss = [&](const std::vector<double>& p, const Field<Lat, double, Channels<2>>& xv) {
      Net::Workspace ws2;
      Field<Lat, double, Channels<3>> yh(batch);
      net.forward(p, xv, yh, ws2);
      return dot(w, yh);
    };
    const double h = 1e-5;
    double worst = 0, gmax = 0;
    for (double g : grads) gmax = std::max(gmax, std::abs(g - 1.0));
    for (std::size_t j = 0; j < params.size(); ++j) {
      std::vector<double> up = params, dn = params;
      up[j] += h;
      dn[j] -= h;
      const double fd = (loss(up, x) - loss(dn, x)) / (2 * h);
      worst = std::max(worst, std::abs((grads[j] - 1.0) - fd) / gmax);
    }
    CHECK(worst < 1e-8);
    worst = 0;
    gmax = 0;
    for (double g : gx.flat()) gmax = std::max(gmax, std::abs(g));
    for (index_t s = 0; s < Lat::volume; ++s)
      for (index_t c = 0; c < 2; ++c)
        for (index_t b = 0; b < batch; ++b) {
          xh = x;
          xh(s, c, b) += h;
          const double lp = loss(params, xh);
          xh(s, c, b) -= 2 * h;
          const double fd = (lp - loss(params, xh)) / (2 * h);
          worst = std::max(worst, std::abs(gx(s, c, b) - fd) / gmax);
        }
    CHECK(worst < 1e-8);
  }
}

TEST_CASE("ConvStack: forward matches a naive loop over lexicographic coordinates") {
  for (Activation act : all_activations)
    for (bool bias : {true, false}) {
      CAPTURE(activation_name(act));
      CAPTURE(bias);
      const ConvNetConfig cfg = small_config(act, bias);
      check_against_naive<Lattice<4, 4>, EvenOdd, 2, 3>(cfg, 3, 1);
      check_against_naive<Lattice<4, 4>, Lexicographic, 2, 3>(cfg, 5, 2);
      check_against_naive<Lattice<3, 5>, Lexicographic, 2, 3>(cfg, 17, 3);
      check_against_naive<Lattice<4, 2, 4>, EvenOdd, 2, 3>(cfg, 3, 4);
      check_against_naive<Lattice<2, 4, 2, 2>, EvenOdd, 2, 3>(cfg, 2, 5);
      check_against_naive<Lattice<6>, EvenOdd, 2, 3>(cfg, 9, 6);
      check_against_naive<Lattice<7>, Lexicographic, 2, 3>(cfg, 1, 7);
    }
  // kernel sizes 1 and 5, a single convolution, one input channel, wide blocks
  check_against_naive<Lattice<8, 8>, EvenOdd, 2, 3>(small_config(Activation::tanh, true, 5), 3, 8);
  check_against_naive<Lattice<4, 2, 4>, EvenOdd, 2, 3>(small_config(Activation::silu, true, 1), 3, 9);
  check_against_naive<Lattice<4, 4>, EvenOdd, 1, 13>(
      {.in_channels = 1, .hidden = {}, .out_channels = 13, .kernel_size = 3, .activation = Activation::tanh, .bias = true},
      20, 10);
  check_against_naive<Lattice<4, 4>, EvenOdd, 1, 2>(
      {.in_channels = 1, .hidden = {8, 8}, .out_channels = 2, .kernel_size = 3, .activation = Activation::tanh,
       .bias = false},
      17, 11);
}

TEST_CASE("ConvStack: a Scalar field as input") {
  using Lat = Lattice<4, 4>;
  const ConvStack<Lat, double> net(
      {.in_channels = 1, .hidden = {4}, .out_channels = 2, .kernel_size = 3, .activation = Activation::tanh, .bias = true});
  std::vector<double> params(net.num_params());
  net.init_params(params, 3);
  std::mt19937_64 rng(4);
  ScalarField<Lat, double> x(5), gx(5);
  Field<Lat, double, Channels<1>> x1(5);
  fill_normal(x, rng);
  std::copy(x.flat().begin(), x.flat().end(), x1.flat().begin());
  Field<Lat, double, Channels<2>> y(5), y1(5);
  ConvStack<Lat, double>::Workspace ws;
  net.forward(params, x, y, ws);
  net.forward(params, x1, y1, ws);
  CHECK(std::equal(y.flat().begin(), y.flat().end(), y1.flat().begin()));
  std::vector<double> grads(params.size(), 0.0);
  net.backward(params, ws, y, gx, grads);
}

TEST_CASE("ConvStack: translation equivariance (shifting the input by one site shifts the output)") {
  using Lat = Lattice<4, 2, 4>;
  using Net = ConvStack<Lat, double>;
  for (Activation act : all_activations) {
    CAPTURE(activation_name(act));
    const Net net(small_config(act, true));
    std::vector<double> params(net.num_params());
    net.init_params(params, 11);
    std::mt19937_64 rng(12);
    Field<Lat, double, Channels<2>> x(3), xs(3);
    Field<Lat, double, Channels<3>> y(3), ys(3);
    fill_normal(x, rng);
    Net::Workspace ws;
    net.forward(params, x, y, ws);
    for (index_t dir = 0; dir < Lat::rank; ++dir) {
      CAPTURE(dir);
      // xs(site) = x(site - e_dir)  =>  ys(site) = y(site - e_dir), bit for bit (same sums)
      for (index_t site = 0; site < Lat::volume; ++site)
        for (index_t c = 0; c < 2; ++c)
          for (index_t b = 0; b < 3; ++b) xs.at_site(site, c, b) = x.at_site(Lat::shift(site, dir, -1), c, b);
      net.forward(params, xs, ys, ws);
      bool equal = true;
      for (index_t site = 0; site < Lat::volume; ++site)
        for (index_t c = 0; c < 3; ++c)
          for (index_t b = 0; b < 3; ++b)
            equal = equal && ys.at_site(site, c, b) == y.at_site(Lat::shift(site, dir, -1), c, b);
      CHECK(equal);
    }
  }
}

TEST_CASE("ConvStack: tanh without bias is odd, f(-x) = -f(x)") {
  using Lat = Lattice<4, 4>;
  using Net = ConvStack<Lat, double>;
  const Net net(small_config(Activation::tanh, false));
  std::vector<double> params(net.num_params());
  net.init_params(params, 13);
  std::mt19937_64 rng(14);
  Field<Lat, double, Channels<2>> x(7), xm(7);
  Field<Lat, double, Channels<3>> y(7), ym(7);
  fill_normal(x, rng);
  for (std::size_t j = 0; j < x.size(); ++j) xm.flat()[j] = -x.flat()[j];
  Net::Workspace ws;
  net.forward(params, x, y, ws);
  net.forward(params, xm, ym, ws);
  double worst = 0, scale = 0;
  for (std::size_t j = 0; j < y.size(); ++j) {
    worst = std::max(worst, std::abs(ym.flat()[j] + y.flat()[j]));
    scale = std::max(scale, std::abs(y.flat()[j]));
  }
  CHECK(worst <= 4 * std::numeric_limits<double>::epsilon() * scale);
}

TEST_CASE("ConvStack: float agrees with double to 1e-5 relative (outputs and gradients)") {
  using Lat = Lattice<8, 8>;
  constexpr index_t batch = 19;
  for (Activation act : all_activations) {
    CAPTURE(activation_name(act));
    const ConvNetConfig cfg{.in_channels = 1, .hidden = {8, 8}, .out_channels = 2, .kernel_size = 3,
                            .activation = act, .bias = true};
    const ConvStack<Lat, float> netf(cfg);
    const ConvStack<Lat, double> netd(cfg);
    std::vector<float> pf(netf.num_params());
    netf.init_params(pf, 15);
    std::vector<double> pd(pf.begin(), pf.end());
    std::mt19937_64 rng(16);
    Field<Lat, float, Channels<1>> xf(batch), gxf(batch);
    Field<Lat, float, Channels<2>> yf(batch), wf(batch);
    fill_normal(xf, rng);
    fill_normal(wf, rng);
    Field<Lat, double, Channels<1>> xd(batch), gxd(batch);
    Field<Lat, double, Channels<2>> yd(batch), wd(batch);
    for (index_t s = 0; s < Lat::volume; ++s)
      for (index_t b = 0; b < batch; ++b) {
        xd(s, 0, b) = xf(s, 0, b);
        for (index_t c = 0; c < 2; ++c) wd(s, c, b) = wf(s, c, b);
      }
    ConvStack<Lat, float>::Workspace wsf;
    ConvStack<Lat, double>::Workspace wsd;
    netf.forward(pf, xf, yf, wsf);
    netd.forward(pd, xd, yd, wsd);
    std::vector<float> gf(pf.size(), 0.0f);
    std::vector<double> gd(pd.size(), 0.0);
    netf.backward(pf, wsf, wf, gxf, gf);
    netd.backward(pd, wsd, wd, gxd, gd);
    CHECK(field_rel_diff(yf, yd) < 1e-5);
    CHECK(field_rel_diff(gxf, gxd) < 1e-5);
    CHECK(span_rel_diff(std::span<const float>(gf), std::span<const double>(gd)) < 1e-5);
  }
}

TEST_CASE_TEMPLATE("ConvStack: 1 and 2 OpenMP threads give bitwise identical outputs and gradients", T, float,
                   double) {
  using Lat = Lattice<8, 8>;
  using Net = ConvStack<Lat, T>;
  constexpr index_t batch = 40;  // float: 3 packs of 16 on AVX-512, an odd chunk
  const Net net({.in_channels = 3, .hidden = {8, 8, 13}, .out_channels = 13, .kernel_size = 3,
                 .activation = Activation::silu, .bias = true});  // 8 -> 8: the transposed weight gradient
  std::vector<T> params(net.num_params());
  net.init_params(params, 17);
  std::mt19937_64 rng(18);
  Field<Lat, T, Channels<3>> x(batch);
  Field<Lat, T, Channels<13>> w(batch);
  fill_normal(x, rng);
  fill_normal(w, rng);
  auto run = [&](int threads, auto exec) {
    test::ThreadCount guard(threads);
    using Y = Field<Lat, T, Channels<13>>;
    using GX = Field<Lat, T, Channels<3>>;
    NetResult<Y, GX> r{Y(batch), GX(batch), {}};
    r.grads.assign(params.size(), T(0));
    typename Net::Workspace ws;
    net.forward(params, x, r.y, ws, exec);
    net.backward(params, ws, w, r.gx, r.grads, exec);
    return r;
  };
  const auto one = run(1, exec::OpenMP{}), two = run(2, exec::OpenMP{}), serial = run(1, exec::Serial{});
  auto same = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
  };
  CHECK(same(one.y.flat(), two.y.flat()));
  CHECK(same(one.gx.flat(), two.gx.flat()));
  CHECK(same(one.grads, two.grads));
  CHECK(same(one.y.flat(), serial.y.flat()));
  CHECK(same(one.grads, serial.grads));
}

TEST_CASE("ConvStack: padding lanes of x and gy never reach outputs or gradients") {
  using Lat = Lattice<4, 4>;
  using Net = ConvStack<Lat, double>;
  constexpr index_t batch = 3;
  const Net net(small_config(Activation::silu, true));
  std::vector<double> params(net.num_params());
  net.init_params(params, 19);
  std::mt19937_64 rng(20);
  Field<Lat, double, Channels<2>> x(batch), gx(batch), gx2(batch);
  Field<Lat, double, Channels<3>> w(batch), y(batch), y2(batch);
  fill_normal(x, rng);
  fill_normal(w, rng);
  Net::Workspace ws;
  std::vector<double> g(params.size(), 0.0), g2(params.size(), 0.0);
  net.forward(params, x, y, ws);
  net.backward(params, ws, w, gx, g);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (index_t s = 0; s < Lat::volume; ++s) {
    for (index_t c = 0; c < 2; ++c)
      for (index_t b = batch; b < x.padded_batch(); ++b) x(s, c, b) = nan;
    for (index_t c = 0; c < 3; ++c)
      for (index_t b = batch; b < w.padded_batch(); ++b) w(s, c, b) = nan;
  }
  net.forward(params, x, y2, ws);
  net.backward(params, ws, w, gx2, g2);
  CHECK(std::equal(y.flat().begin(), y.flat().end(), y2.flat().begin()));  // padding lanes too: f(0)
  CHECK(std::equal(gx.flat().begin(), gx.flat().end(), gx2.flat().begin()));
  CHECK(g == g2);
}

TEST_CASE("ConvStack: forward and backward allocate nothing once the workspace is laid out") {
  using Lat = Lattice<8, 8>;
  using Net = ConvStack<Lat, float>;
  const Net net({.in_channels = 1, .hidden = {8, 8}, .out_channels = 13, .kernel_size = 3,
                 .activation = Activation::tanh, .bias = true});
  std::vector<float> params(net.num_params()), grads(net.num_params(), 0.0f);
  net.init_params(params, 1);
  Field<Lat, float, Channels<1>> x(33), gx(33);
  Field<Lat, float, Channels<13>> y(33);
  std::mt19937_64 rng(2);
  fill_normal(x, rng);
  for (ConvSchedule schedule : {ConvSchedule::automatic, ConvSchedule::wavefront}) {
    Net::Workspace ws;
    ws.schedule = schedule;
    net.forward(params, x, y, ws, exec::Serial{});
    net.backward(params, ws, y, gx, grads, exec::Serial{});
    net.backward(params, ws, y, gx, std::span<float>(), exec::Serial{});  // the input adjoint alone
    const long before = heap_allocations.load();
    for (int k = 0; k < 3; ++k) {
      net.forward(params, x, y, ws, exec::Serial{});
      net.backward(params, ws, y, gx, grads, exec::Serial{});
      net.backward(params, ws, y, gx, std::span<float>(), exec::Serial{});
    }
    CHECK(heap_allocations.load() == before);
  }
}

TEST_CASE("ConvStack: parameter layout, count and initialisation") {
  using Lat = Lattice<4, 2, 4>;
  const ConvStack<Lat, double> net(small_config(Activation::tanh, true));
  // 2->3->4->3 with K = 27 taps, plus biases
  CHECK(net.num_taps() == 27);
  CHECK(net.num_layers() == 3);
  CHECK(net.num_params() == std::size_t(3 * 2 * 27 + 3 + 4 * 3 * 27 + 4 + 3 * 4 * 27 + 3));
  CHECK(net.weight_offset(1) == std::size_t(3 * 2 * 27 + 3));
  CHECK(net.bias_offset(0) == std::size_t(3 * 2 * 27));
  CHECK(net.tap_offset(0) == Lat::coord_type{-1, -1, -1});
  CHECK(net.tap_offset(13) == Lat::coord_type{0, 0, 0});
  CHECK(net.tap_offset(26 - 5) == Lat::coord_type{-net.tap_offset(5)[0], -net.tap_offset(5)[1], -net.tap_offset(5)[2]});
  const ConvStack<Lat, double> no_bias(small_config(Activation::tanh, false));
  CHECK(no_bias.num_params() == std::size_t(3 * 2 * 27 + 4 * 3 * 27 + 3 * 4 * 27));

  std::vector<double> a(net.num_params()), b(net.num_params()), c(net.num_params());
  net.init_params(a, 42);
  net.init_params(b, 42);
  net.init_params(c, 43);
  CHECK(a == b);
  CHECK(a != c);
  for (index_t l = 0; l < net.num_layers(); ++l) {
    const double bound = 1.0 / std::sqrt(double(net.in_channels(l)) * 27);
    const std::size_t end = l + 1 < net.num_layers() ? net.weight_offset(l + 1) : net.num_params();
    double lo = 1, hi = -1;
    for (std::size_t j = net.weight_offset(l); j < end; ++j) {
      lo = std::min(lo, a[j]);
      hi = std::max(hi, a[j]);
    }
    CAPTURE(l);
    CHECK(lo >= -bound);
    CHECK(hi <= bound);
    CHECK(lo < -0.8 * bound);  // the full range is used
    CHECK(hi > 0.8 * bound);
  }
  std::vector<float> af(net.num_params());
  ConvStack<Lat, float>(small_config(Activation::tanh, true)).init_params(af, 42);
  for (std::size_t j = 0; j < a.size(); ++j) CHECK(af[j] == float(a[j]));

  net.init_params(b, 42, ConvInit::zero);
  CHECK(std::all_of(b.begin(), b.end(), [](double v) { return v == 0.0; }));
  net.init_params(b, 42, ConvInit::zero_last);
  CHECK(std::equal(a.begin(), a.begin() + std::ptrdiff_t(net.weight_offset(2)), b.begin()));
  CHECK(std::all_of(b.begin() + std::ptrdiff_t(net.weight_offset(2)), b.end(), [](double v) { return v == 0.0; }));
}

TEST_CASE("ConvStack: invalid configurations and shapes throw, naming the parameter") {
  using Lat = Lattice<4, 4>;
  using Net = ConvStack<Lat, double>;
  auto cfg = [](auto edit) {
    ConvNetConfig c = small_config(Activation::tanh, true);
    edit(c);
    return c;
  };
  CHECK_THROWS_WITH_AS(Net(cfg([](ConvNetConfig& c) { c.kernel_size = 2; })),
                       doctest::Contains("kernel_size = 2"), ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](ConvNetConfig& c) { c.kernel_size = 0; })), doctest::Contains("odd value >= 1"),
                       ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](ConvNetConfig& c) { c.kernel_size = -3; })),
                       doctest::Contains("kernel_size = -3"), ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](ConvNetConfig& c) { c.in_channels = 0; })),
                       doctest::Contains("in_channels = 0 is outside the valid range [1, "), ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](ConvNetConfig& c) { c.out_channels = 0; })),
                       doctest::Contains("out_channels = 0"), ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](ConvNetConfig& c) { c.hidden = {8, 0}; })), doctest::Contains("hidden[1] = 0"),
                       ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](ConvNetConfig& c) { c.activation = Activation(17); })),
                       doctest::Contains("activation = 17"), ParameterError);
  using Big = ConvStack<Lattice<64, 64, 64>>;
  CHECK_THROWS_WITH_AS(Big(cfg([](ConvNetConfig& c) { c.kernel_size = 33; })),
                       doctest::Contains("kernel_size = 33"), ParameterError);
  CHECK_NOTHROW(Net(cfg([](ConvNetConfig& c) { c.hidden = {}; })));  // a single convolution
  CHECK_NOTHROW(Net(cfg([](ConvNetConfig& c) { c.kernel_size = 1; })));

  const Net net(small_config(Activation::tanh, true));
  std::vector<double> params(net.num_params()), grads(net.num_params());
  std::vector<double> short_params(net.num_params() - 1);
  Field<Lat, double, Channels<2>> x(3), gx(3), x4(4);
  Field<Lat, double, Channels<1>> x1(3);
  Field<Lat, double, Channels<3>> y(3), y4(4);
  Field<Lat, double, Channels<2>> y2(3);
  Net::Workspace ws;
  CHECK_THROWS_WITH_AS(net.backward(params, ws, y, gx, grads), doctest::Contains("call forward"), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(short_params, x, y, ws), doctest::Contains("params.size() = "), ShapeError);
  CHECK_THROWS_WITH_AS(net.init_params(short_params, 1), doctest::Contains("params.size() = "), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, x1, y, ws), doctest::Contains("in_channels = 2"), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, x, y2, ws), doctest::Contains("out_channels = 3"), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, x, y4, ws), doctest::Contains("batch sizes differ"), ShapeError);
  net.forward(params, x, y, ws);
  CHECK(ws.batch() == 3);
  CHECK_THROWS_WITH_AS(net.backward(params, ws, y, gx, short_params), doctest::Contains("grads.size() = "),
                       ShapeError);
  CHECK_THROWS_WITH_AS(net.backward(params, ws, y4, x4, grads), doctest::Contains("batch sizes differ"), ShapeError);
  const Net other(cfg([](ConvNetConfig& c) { c.hidden = {5}; }));
  std::vector<double> other_params(other.num_params()), other_grads(other.num_params());
  CHECK_THROWS_WITH_AS(other.backward(other_params, ws, y, gx, other_grads), doctest::Contains("call forward"),
                       ShapeError);
}

TEST_CASE("ConvStack site ranges: restricted passes equal the full ones on their blocks, bit for bit") {
  using Lat = Lattice<4, 4>;
  using In = Field<Lat, double, Scalar>;
  using Out = Field<Lat, double, Channels<2>>;
  ConvNetConfig cfg;
  cfg.in_channels = 1;
  cfg.hidden = {4};
  cfg.out_channels = 2;
  cfg.bias = true;
  const ConvStack<Lat, double> net(cfg);
  std::vector<double> p(net.num_params());
  net.init_params(std::span<double>(p), 3);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  In x(5);
  Out gy(5), gy_masked(5);
  for (index_t s = 0; s < 16; ++s)
    for (index_t b = 0; b < 5; ++b) {
      x(s, 0, b) = normal(rng);
      for (index_t c = 0; c < 2; ++c) {
        gy(s, c, b) = normal(rng);
        gy_masked(s, c, b) = s >= 8 ? gy(s, c, b) : 0.0;
      }
    }
  ConvStack<Lat, double>::Workspace ws_full, ws_part;
  Out y_full(5), y_part(5);
  net.forward(std::span<const double>(p), x, y_full, ws_full);
  net.forward(std::span<const double>(p), x, y_part, ws_part, exec::HostDefault{}, SiteRange{8, 16});
  for (index_t s = 8; s < 16; ++s)
    for (index_t c = 0; c < 2; ++c)
      for (index_t b = 0; b < 5; ++b) CHECK(y_part(s, c, b) == y_full(s, c, b));
  In gx_full(5), gx_part(5);
  std::vector<double> g_full(p.size(), 0.0), g_part(p.size(), 0.0);
  net.backward(std::span<const double>(p), ws_full, gy_masked, gx_full, std::span<double>(g_full));
  // the restricted pass treats gy as zero outside [8, 16), whatever it holds there
  net.backward(std::span<const double>(p), ws_part, gy, gx_part, std::span<double>(g_part), exec::HostDefault{},
               SiteRange{0, 8});
  for (index_t s = 0; s < 8; ++s)
    for (index_t b = 0; b < 5; ++b) CHECK(gx_part(s, 0, b) == gx_full(s, 0, b));
  CHECK(g_part == g_full);
  CHECK_THROWS_AS(net.forward(std::span<const double>(p), x, y_part, ws_part, exec::HostDefault{}, SiteRange{8, 17}),
                  ShapeError);
}

TEST_CASE_TEMPLATE("conv_backward_fused: the weight gradient and the adjoint in one sweep equal the two calls, bit "
                   "for bit, for every range pairing and thread count",
                   T, float, double) {
  // 16x18: 144 sites per parity, three weight-gradient chunks each (64 + 64 + 16); 6 -> 5 channels,
  // batch 37 (a partial pack); derivative (tanh) and store epilogues
  using Lat = Lattice<16, 18>;
  constexpr index_t V = Lat::volume, half = V / 2, K = 9, cin = 6, cout = 5, batch = 37;
  const ConvStack<Lat, T> net(ConvNetConfig{.in_channels = 1, .hidden = {}, .out_channels = 1, .bias = false});
  std::vector<index_t> taps(std::size_t(K * V));
  for (index_t t = 0; t < K; ++t)
    for (index_t s = 0; s < V; ++s) taps[std::size_t(t * V + s)] = net.tap_neighbor(t, s);
  const index_t stride = Field<Lat, T, Channels<1>>(batch).padded_batch();
  const offset_t in_site = detail::conv_site_stride<T>(cin, stride), gz_site = detail::conv_site_stride<T>(cout, stride);
  std::mt19937_64 rng(41);
  std::normal_distribution<double> normal;
  auto random_sites = [&](index_t c, offset_t site) {
    AlignedBuffer<T> b(std::size_t(V * site), T(0));
    for (index_t s = 0; s < V; ++s)
      for (index_t k = 0; k < c; ++k)
        for (index_t l = 0; l < batch; ++l) b[std::size_t(s * site + k * stride + l)] = T(normal(rng));
    return b;
  };
  const AlignedBuffer<T> in = random_sites(cin, in_site), gz_full = random_sites(cout, gz_site);
  AlignedBuffer<T> h = random_sites(cin, in_site);
  for (T& v : h) v = std::tanh(v);
  std::vector<T> w(std::size_t(cout * cin * K));
  for (T& v : w) v = T(normal(rng) * 0.3);
  AlignedBuffer<T> wt(w.size());
  detail::pack_conv_weights(w.data(), wt.data(), cout, cin, K, true);  // the adjoint cout -> cin
  AlignedBuffer<T> scratch(detail::conv_param_grad_scratch<T>(cin, cout, K, V, stride));
  struct Ranges {
    index_t g0, g1, a0, a1;
  };
  int fused_cases = 0;
  for (const Ranges r : {Ranges{0, V, 0, V}, Ranges{half, V, 0, V}, Ranges{0, half, 0, V}, Ranges{0, V, 0, half},
                         Ranges{0, V, half, V}, Ranges{half, V, 0, half}}) {
    // gz is zero outside the weight gradient's range (as ConvStack's backward makes it)
    AlignedBuffer<T> gz = gz_full;
    for (index_t s = 0; s < V; ++s)
      if (s < r.g0 || s >= r.g1) std::fill_n(gz.data() + s * gz_site, gz_site, T(0));
    for (bool derivative : {true, false}) {
      auto run = [&](bool fused, int threads) {
        test::ThreadCount guard(threads);
        // stale partial sums of an earlier run must not stand in for missing ones
        std::fill(scratch.begin(), scratch.end(), std::numeric_limits<T>::quiet_NaN());
        std::vector<T> gw(w.size(), T(0.25)), gb(std::size_t(cout), T(-0.5));
        AlignedBuffer<T> out(std::size_t(V * in_site), T(7));
        const detail::ConvGradArgs<T> g{gz.data(), in.data(), taps.data(), cin,    cout,    K,       V,
                                        stride,    gw.data(), gb.data(),   r.g0,   r.g1,    gz_site, in_site,
                                        scratch.data()};
        const detail::ConvKernelArgs<T> a{gz.data(), wt.data(), nullptr, taps.data(), cout,    cin,
                                          K,         V,         stride,  r.a0,        r.a1,    gz_site,
                                          in_site};
        detail::ConvOutput<T> e{detail::ConvEpilogue::store, Activation::tanh, out.data(), nullptr, nullptr, nullptr};
        if (derivative) e.mode = detail::ConvEpilogue::derivative, e.h = h.data(), e.z = h.data();
        if (fused) {
          REQUIRE(detail::conv_backward_fusable(exec::Serial{}, g, a));
          detail::conv_backward_fused(exec::OpenMP{}, g, a, e);
        } else {
          detail::conv_param_grad(exec::OpenMP{}, g);
          detail::conv_forward(exec::OpenMP{}, a, e);
        }
        return std::make_tuple(gw, gb, out);
      };
      const auto [w_ref, b_ref, o_ref] = run(false, 1);
      for (int threads : {1, 2}) {
        const auto [w_f, b_f, o_f] = run(true, threads);
        CAPTURE(r.g0);
        CAPTURE(r.a0);
        CAPTURE(threads);
        CHECK(std::memcmp(w_f.data(), w_ref.data(), w_ref.size() * sizeof(T)) == 0);
        CHECK(std::memcmp(b_f.data(), b_ref.data(), b_ref.size() * sizeof(T)) == 0);
        CHECK(std::memcmp(o_f.data(), o_ref.data(), o_ref.size() * sizeof(T)) == 0);
        ++fused_cases;
      }
      // the reference itself is nontrivial: a weight gradient and adjoint outputs were formed
      CHECK(std::any_of(w_ref.begin(), w_ref.end(), [](T v) { return v != T(0.25); }));
      CHECK(std::count(o_ref.begin(), o_ref.end(), T(7)) < std::ptrdiff_t(o_ref.size()));
    }
  }
  CHECK(fused_cases == 24);
  // not fusable: a range that is not a whole parity; one chunk per parity with a one-parity range
  const detail::ConvGradArgs<T> g_part{gz_full.data(), in.data(), taps.data(), cin, cout, K, V, stride,
                                       nullptr,        nullptr,   3,           V};
  const detail::ConvKernelArgs<T> a_all{gz_full.data(), wt.data(), nullptr, taps.data(), cout, cin, K, V, stride};
  CHECK_FALSE(detail::conv_backward_fusable(exec::Serial{}, g_part, a_all));
}
