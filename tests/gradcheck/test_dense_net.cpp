// SPDX-License-Identifier: MIT
// DenseNet: VJPs against central differences, a naive triple-loop reference (forward and
// backward), float against double, thread-count reproducibility, padding lanes, strides, the
// Field overloads, allocation-free reuse, initialisation and configuration errors.
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
#include <utility>
#include <vector>

#include "support/backends.hpp"
#include <normflow/layer/conditioner/dense_net.hpp>

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

/// A batch of feature vectors, x[f * stride + b], as DenseNet reads and writes them.
template <class T>
struct Batch {
  index_t features, batch, stride;
  std::vector<T> data;
  Batch(index_t f, index_t b, index_t s)
      : features(f), batch(b), stride(s), data(std::size_t(f) * std::size_t(s), T(0)) {}
  Batch(index_t f, index_t b) : Batch(f, b, padded_batch_size<T>(b)) {}
  std::size_t at(index_t f, index_t b) const { return std::size_t(f) * std::size_t(stride) + std::size_t(b); }
  T& operator()(index_t f, index_t b) { return data[at(f, b)]; }
  const T& operator()(index_t f, index_t b) const { return data[at(f, b)]; }
  std::span<T> span() { return data; }
  std::span<const T> cspan() const { return data; }
};

/// Standard normals in the real lanes (padding lanes untouched).
template <class T>
void fill_normal(Batch<T>& x, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  for (index_t f = 0; f < x.features; ++f)
    for (index_t b = 0; b < x.batch; ++b) x(f, b) = T(normal(rng));
}

std::vector<double> normal_vector(std::size_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> v(n);
  for (double& e : v) e = normal(rng);
  return v;
}

/// <a, b> over the real lanes.
template <class T>
double dot(const Batch<T>& a, const Batch<T>& b) {
  double acc = 0;
  for (index_t f = 0; f < a.features; ++f)
    for (index_t k = 0; k < a.batch; ++k) acc += double(a(f, k)) * double(b(f, k));
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
template <class TA>
double batch_rel_diff(const Batch<TA>& a, const Batch<double>& b) {
  double diff = 0, scale = 0;
  for (index_t f = 0; f < b.features; ++f)
    for (index_t k = 0; k < b.batch; ++k) {
      diff = std::max(diff, std::abs(double(a(f, k)) - b(f, k)));
      scale = std::max(scale, std::abs(b(f, k)));
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

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

DenseNetConfig small_config(Activation act, bool bias, std::vector<index_t> hidden = {5, 4}) {
  return {.in_features = 3, .hidden = std::move(hidden), .out_features = 2, .activation = act, .bias = bias};
}

// Central-difference step: truncation O(h^2) and rounding O(eps |L| / h) both stay near 1e-10
// relative; small enough that a leaky_relu kink is crossed with negligible probability.
constexpr double fd_step = 1e-6;
constexpr double fd_rel_tol = 1e-6;

/// Directional derivatives of L = <w, y(params, x)> along random vx and vp separately, against
/// central differences.
void check_directional_vjp(const DenseNetConfig& cfg, index_t batch, std::uint64_t seed) {
  using Net = DenseNet<double>;
  const Net net(cfg);
  const index_t nin = cfg.in_features, nout = cfg.out_features;
  std::mt19937_64 rng(seed);
  std::vector<double> params(net.num_params());
  net.init_params(params, seed);
  Batch<double> x(nin, batch), vx(nin, batch), gx(nin, batch), xh(nin, batch);
  Batch<double> w(nout, batch), y(nout, batch), yh(nout, batch);
  fill_normal(x, rng);
  fill_normal(vx, rng);
  fill_normal(w, rng);
  const std::vector<double> vp = normal_vector(params.size(), rng);

  Net::Workspace ws;
  net.forward(params, x.cspan(), y.span(), batch, x.stride, ws);
  std::vector<double> grads(params.size(), 0.0);
  net.backward(params, ws, w.cspan(), gx.span(), grads);

  auto loss = [&](double hx, double hp) {
    std::vector<double> p = params;
    for (std::size_t j = 0; j < p.size(); ++j) p[j] += hp * vp[j];
    for (std::size_t j = 0; j < x.data.size(); ++j) xh.data[j] = x.data[j] + hx * vx.data[j];
    Net::Workspace ws2;
    net.forward(p, xh.cspan(), yh.span(), batch, xh.stride, ws2);
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
  bool padding_zero = true;  // gx and y are zero in the padding lanes
  for (index_t f = 0; f < nin; ++f)
    for (index_t b = batch; b < gx.stride; ++b) padding_zero = padding_zero && gx(f, b) == 0.0;
  for (index_t f = 0; f < nout; ++f)
    for (index_t b = batch; b < y.stride; ++b) padding_zero = padding_zero && y(f, b) == 0.0;
  CHECK(padding_zero);
}

double apply_activation(Activation act, double z) {
  switch (act) {
    case Activation::tanh: return std::tanh(z);
    case Activation::leaky_relu: return z > 0 ? z : 0.01 * z;
    case Activation::silu: return z / (1 + std::exp(-z));
    case Activation::none: return z;
  }
  return z;
}

double activation_derivative(Activation act, double z) {
  switch (act) {
    case Activation::tanh: return 1 - std::tanh(z) * std::tanh(z);
    case Activation::leaky_relu: return z > 0 ? 1 : 0.01;
    case Activation::silu: {
      const double s = 1 / (1 + std::exp(-z));
      return s * (1 + z * (1 - s));
    }
    case Activation::none: return 1;
  }
  return 1;
}

/// Forward and backward by the definition, with plain loops over [feature][sample] arrays
/// (layout and offsets recomputed here, independent of DenseNet's).
struct Naive {
  std::vector<double> y, gx, grads;
};

Naive naive_net(const DenseNetConfig& cfg, const std::vector<double>& params, const std::vector<double>& x,
                const std::vector<double>& gy, index_t batch) {
  std::vector<index_t> widths{cfg.in_features};
  widths.insert(widths.end(), cfg.hidden.begin(), cfg.hidden.end());
  widths.push_back(cfg.out_features);
  const index_t layers = index_t(widths.size()) - 1;
  std::vector<std::size_t> w_off(static_cast<std::size_t>(layers)), b_off(static_cast<std::size_t>(layers));
  std::size_t off = 0;
  for (index_t l = 0; l < layers; ++l) {
    w_off[std::size_t(l)] = off;
    b_off[std::size_t(l)] = off + std::size_t(widths[std::size_t(l)] * widths[std::size_t(l) + 1]);
    off = b_off[std::size_t(l)] + (cfg.bias ? std::size_t(widths[std::size_t(l) + 1]) : 0);
  }
  // forward: keep every layer's input a^l and pre-activation z^l
  std::vector<std::vector<double>> a{x}, z;
  for (index_t l = 0; l < layers; ++l) {
    const index_t ni = widths[std::size_t(l)], no = widths[std::size_t(l) + 1];
    std::vector<double> zl(std::size_t(no * batch)), al(std::size_t(no * batch));
    for (index_t o = 0; o < no; ++o)
      for (index_t b = 0; b < batch; ++b) {
        double acc = cfg.bias ? params[b_off[std::size_t(l)] + std::size_t(o)] : 0.0;
        for (index_t i = 0; i < ni; ++i)
          acc += params[w_off[std::size_t(l)] + std::size_t(o * ni + i)] * a.back()[std::size_t(i * batch + b)];
        zl[std::size_t(o * batch + b)] = acc;
        al[std::size_t(o * batch + b)] = l + 1 < layers ? apply_activation(cfg.activation, acc) : acc;
      }
    z.push_back(zl);
    a.push_back(al);
  }
  Naive r;
  r.y = a.back();
  r.grads.assign(off, 0.0);
  std::vector<double> g = gy;  // dL/dz^l
  for (index_t l = layers - 1; l >= 0; --l) {
    const index_t ni = widths[std::size_t(l)], no = widths[std::size_t(l) + 1];
    const std::vector<double>& al = a[std::size_t(l)];
    for (index_t o = 0; o < no; ++o) {
      for (index_t i = 0; i < ni; ++i) {
        double acc = 0;
        for (index_t b = 0; b < batch; ++b) acc += g[std::size_t(o * batch + b)] * al[std::size_t(i * batch + b)];
        r.grads[w_off[std::size_t(l)] + std::size_t(o * ni + i)] = acc;
      }
      if (cfg.bias) {
        double acc = 0;
        for (index_t b = 0; b < batch; ++b) acc += g[std::size_t(o * batch + b)];
        r.grads[b_off[std::size_t(l)] + std::size_t(o)] = acc;
      }
    }
    std::vector<double> ga(std::size_t(ni * batch), 0.0);
    for (index_t i = 0; i < ni; ++i)
      for (index_t b = 0; b < batch; ++b) {
        double acc = 0;
        for (index_t o = 0; o < no; ++o)
          acc += params[w_off[std::size_t(l)] + std::size_t(o * ni + i)] * g[std::size_t(o * batch + b)];
        const std::size_t k = std::size_t(i * batch + b);
        ga[k] = l > 0 ? acc * activation_derivative(cfg.activation, z[std::size_t(l) - 1][k]) : acc;
      }
    g = std::move(ga);
  }
  r.gx = std::move(g);
  return r;
}

/// DenseNet against naive_net: y, gx and grads, norm-wise relative error <= tol.
void check_against_naive(const DenseNetConfig& cfg, index_t batch, index_t stride, std::uint64_t seed,
                         double tol = 1e-13) {
  using Net = DenseNet<double>;
  const Net net(cfg);
  std::mt19937_64 rng(seed);
  std::vector<double> params = normal_vector(net.num_params(), rng);
  for (double& p : params) p *= 0.3;
  Batch<double> x(cfg.in_features, batch, stride), gx(cfg.in_features, batch, stride);
  Batch<double> gy(cfg.out_features, batch, stride), y(cfg.out_features, batch, stride);
  fill_normal(x, rng);
  fill_normal(gy, rng);
  auto dense = [batch](const Batch<double>& v) {  // [feature][sample] without padding
    std::vector<double> d(std::size_t(v.features * batch));
    for (index_t f = 0; f < v.features; ++f)
      for (index_t b = 0; b < batch; ++b) d[std::size_t(f * batch + b)] = v(f, b);
    return d;
  };
  Net::Workspace ws;
  net.forward(params, x.cspan(), y.span(), batch, stride, ws);
  std::vector<double> grads(params.size(), 0.0);
  net.backward(params, ws, gy.cspan(), gx.span(), grads);
  const Naive ref = naive_net(cfg, params, dense(x), dense(gy), batch);
  CHECK(span_rel_diff(std::span<const double>(dense(y)), std::span<const double>(ref.y)) <= tol);
  CHECK(span_rel_diff(std::span<const double>(dense(gx)), std::span<const double>(ref.gx)) <= tol);
  CHECK(span_rel_diff(std::span<const double>(grads), std::span<const double>(ref.grads)) <= tol);
}

}  // namespace

TEST_CASE("DenseNet: directional VJP (dL/dx, dL/dparams) matches central differences") {
  std::uint64_t seed = 100;
  for (Activation act : all_activations)
    for (bool bias : {true, false})
      for (index_t batch : {3, 17})
        for (const std::vector<index_t>& hidden : {std::vector<index_t>{}, std::vector<index_t>{5, 4}}) {
          CAPTURE(activation_name(act));
          CAPTURE(bias);
          CAPTURE(batch);
          CAPTURE(hidden.size());
          check_directional_vjp(small_config(act, bias, hidden), batch, ++seed);
        }
}

TEST_CASE("DenseNet: VJP with several batch chunks and weight-gradient tiles") {
  // batch 300: chunks of 256 + 44 rows; 70 inputs: tiles 64 + 6
  check_directional_vjp({.in_features = 70, .hidden = {9}, .out_features = 3, .activation = Activation::silu,
                         .bias = true},
                        300, 7);
  check_directional_vjp({.in_features = 2, .hidden = {1, 130}, .out_features = 1, .activation = Activation::tanh,
                         .bias = true},
                        5, 8);
}

TEST_CASE("DenseNet: every parameter and input gradient entry against central differences") {
  using Net = DenseNet<double>;
  constexpr index_t batch = 3;
  for (Activation act : {Activation::tanh, Activation::silu}) {
    CAPTURE(activation_name(act));
    const DenseNetConfig cfg = small_config(act, true);
    const Net net(cfg);
    std::mt19937_64 rng(21);
    std::vector<double> params(net.num_params());
    net.init_params(params, 5);
    Batch<double> x(3, batch), gx(3, batch), w(2, batch);
    fill_normal(x, rng);
    fill_normal(w, rng);
    Net::Workspace ws;
    Batch<double> y(2, batch);
    net.forward(params, x.cspan(), y.span(), batch, x.stride, ws);
    std::vector<double> grads(params.size(), 1.0);  // backward adds: start from 1
    net.backward(params, ws, w.cspan(), gx.span(), grads);
    auto loss = [&](const std::vector<double>& p, const Batch<double>& xv) {
      Net::Workspace ws2;
      Batch<double> yh(2, batch);
      net.forward(p, xv.cspan(), yh.span(), batch, xv.stride, ws2);
      return dot(w, yh);
    };
    const double h = 1e-5;
    double worst = 0, gmax = 0;
    for (double g : grads) gmax = std::max(gmax, std::abs(g - 1.0));
    for (std::size_t j = 0; j < params.size(); ++j) {
      std::vector<double> up = params, dn = params;
      up[j] += h;
      dn[j] -= h;
      worst = std::max(worst, std::abs((grads[j] - 1.0) - (loss(up, x) - loss(dn, x)) / (2 * h)) / gmax);
    }
    CHECK(worst < 1e-8);
    worst = 0;
    gmax = 0;
    for (double g : gx.data) gmax = std::max(gmax, std::abs(g));
    for (index_t f = 0; f < 3; ++f)
      for (index_t b = 0; b < batch; ++b) {
        Batch<double> xh = x;
        xh(f, b) += h;
        const double lp = loss(params, xh);
        xh(f, b) -= 2 * h;
        worst = std::max(worst, std::abs(gx(f, b) - (lp - loss(params, xh)) / (2 * h)) / gmax);
      }
    CHECK(worst < 1e-8);
  }
}

TEST_CASE("DenseNet: forward and backward match a naive triple loop") {
  for (Activation act : all_activations)
    for (bool bias : {true, false}) {
      CAPTURE(activation_name(act));
      CAPTURE(bias);
      check_against_naive(small_config(act, bias), 3, 8, 1);
      check_against_naive(small_config(act, bias), 17, 17, 2);  // stride == batch: no padding
      check_against_naive(small_config(act, bias, {}), 5, 9, 3);
      check_against_naive(small_config(act, bias, {7}), 1, 1, 4);
    }
  // Eigen's blocking splits the products (k and m blocks), several chunks and tiles per layer
  check_against_naive({.in_features = 100, .hidden = {300}, .out_features = 70, .activation = Activation::silu,
                       .bias = true},
                      600, 600, 5, 1e-12);
  check_against_naive({.in_features = 1, .hidden = {64, 65}, .out_features = 129, .activation = Activation::tanh,
                       .bias = false},
                      513, 520, 6, 1e-12);
}

TEST_CASE("DenseNet: float agrees with double to 1e-5 relative (outputs and gradients)") {
  constexpr index_t batch = 19;
  for (Activation act : all_activations) {
    CAPTURE(activation_name(act));
    const DenseNetConfig cfg{.in_features = 6, .hidden = {16, 8}, .out_features = 3, .activation = act, .bias = true};
    const DenseNet<float> netf(cfg);
    const DenseNet<double> netd(cfg);
    std::vector<float> pf(netf.num_params());
    netf.init_params(pf, 15);
    std::vector<double> pd(pf.begin(), pf.end());
    std::mt19937_64 rng(16);
    Batch<float> xf(6, batch), gxf(6, batch), yf(3, batch), wf(3, batch);
    fill_normal(xf, rng);
    fill_normal(wf, rng);
    Batch<double> xd(6, batch), gxd(6, batch), yd(3, batch), wd(3, batch);
    for (index_t b = 0; b < batch; ++b) {
      for (index_t f = 0; f < 6; ++f) xd(f, b) = xf(f, b);
      for (index_t f = 0; f < 3; ++f) wd(f, b) = wf(f, b);
    }
    DenseNet<float>::Workspace wsf;
    DenseNet<double>::Workspace wsd;
    netf.forward(pf, xf.cspan(), yf.span(), batch, xf.stride, wsf);
    netd.forward(pd, xd.cspan(), yd.span(), batch, xd.stride, wsd);
    std::vector<float> gf(pf.size(), 0.0f);
    std::vector<double> gd(pd.size(), 0.0);
    netf.backward(pf, wsf, wf.cspan(), gxf.span(), gf);
    netd.backward(pd, wsd, wd.cspan(), gxd.span(), gd);
    CHECK(batch_rel_diff(yf, yd) < 1e-5);
    CHECK(batch_rel_diff(gxf, gxd) < 1e-5);
    CHECK(span_rel_diff(std::span<const float>(gf), std::span<const double>(gd)) < 1e-5);
  }
}

TEST_CASE_TEMPLATE("DenseNet: 1 and 2 OpenMP threads give bitwise identical outputs and gradients", T, float,
                   double) {
  using Net = DenseNet<T>;
  constexpr index_t batch = 600;  // 3 chunks (256, 256, 88)
  // 70 inputs: weight-gradient tiles 64 + 6; 130 hidden: 64 + 64 + 2
  const DenseNetConfig cfg{.in_features = 70, .hidden = {130, 33}, .out_features = 13,
                           .activation = Activation::silu, .bias = true};
  const Net net(cfg);
  std::vector<T> params(net.num_params());
  net.init_params(params, 17);
  std::mt19937_64 rng(18);
  Batch<T> x(70, batch), w(13, batch);
  fill_normal(x, rng);
  fill_normal(w, rng);
  struct Result {
    std::vector<T> y, gx, grads;
  };
  auto run = [&](int threads, auto exec) {
    test::ThreadCount guard(threads);
    Batch<T> y(13, batch), gx(70, batch);
    std::vector<T> grads(params.size(), T(0));
    typename Net::Workspace ws;
    net.forward(params, x.cspan(), y.span(), batch, x.stride, ws, exec);
    net.backward(params, ws, w.cspan(), gx.span(), std::span<T>(grads), exec);
    return Result{y.data, gx.data, grads};
  };
  const Result one = run(1, exec::OpenMP{}), two = run(2, exec::OpenMP{});
  const Result serial1 = run(1, exec::Serial{}), serial2 = run(2, exec::Serial{});  // Eigen sees 2 threads
  CHECK(same_bits(one.y, two.y));
  CHECK(same_bits(one.gx, two.gx));
  CHECK(same_bits(one.grads, two.grads));
  CHECK(same_bits(one.y, serial1.y));
  CHECK(same_bits(one.grads, serial1.grads));
  CHECK(same_bits(serial1.y, serial2.y));
  CHECK(same_bits(serial1.gx, serial2.gx));
  CHECK(same_bits(serial1.grads, serial2.grads));
}

TEST_CASE("DenseNet: padding lanes of x and gy never reach outputs or gradients") {
  using Net = DenseNet<double>;
  for (index_t batch : {3, 17, 300}) {
    CAPTURE(batch);
    const Net net(small_config(Activation::silu, true));
    std::vector<double> params(net.num_params());
    net.init_params(params, 19);
    std::mt19937_64 rng(20);
    Batch<double> x(3, batch), gx(3, batch), gx2(3, batch), w(2, batch), y(2, batch), y2(2, batch);
    fill_normal(x, rng);
    fill_normal(w, rng);
    Net::Workspace ws;
    std::vector<double> g(params.size(), 0.0), g2(params.size(), 0.0);
    net.forward(params, x.cspan(), y.span(), batch, x.stride, ws);
    net.backward(params, ws, w.cspan(), gx.span(), g);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (index_t b = batch; b < x.stride; ++b) {
      for (index_t f = 0; f < 3; ++f) x(f, b) = nan;
      for (index_t f = 0; f < 2; ++f) w(f, b) = nan;
    }
    std::fill(y2.data.begin(), y2.data.end(), nan);  // outputs are fully overwritten
    std::fill(gx2.data.begin(), gx2.data.end(), nan);
    net.forward(params, x.cspan(), y2.span(), batch, x.stride, ws);
    net.backward(params, ws, w.cspan(), gx2.span(), g2);
    CHECK(same_bits(y.data, y2.data));  // padding lanes too: zero
    CHECK(same_bits(gx.data, gx2.data));
    CHECK(same_bits(g, g2));
  }
}

TEST_CASE("DenseNet: any stride >= batch gives the same bits") {
  using Net = DenseNet<double>;
  constexpr index_t batch = 21;
  const Net net(small_config(Activation::tanh, true));
  std::vector<double> params(net.num_params());
  net.init_params(params, 23);
  std::vector<std::vector<double>> ys, gxs, gs;
  for (index_t stride : {21, 22, 24, 40}) {
    std::mt19937_64 rng(24);
    Batch<double> x(3, batch, stride), gx(3, batch, stride), w(2, batch, stride), y(2, batch, stride);
    fill_normal(x, rng);
    fill_normal(w, rng);
    Net::Workspace ws;
    std::vector<double> g(params.size(), 0.0);
    net.forward(params, x.cspan(), y.span(), batch, stride, ws);
    net.backward(params, ws, w.cspan(), gx.span(), g);
    std::vector<double> yd, gxd;
    for (index_t b = 0; b < batch; ++b) {
      for (index_t f = 0; f < 2; ++f) yd.push_back(y(f, b));
      for (index_t f = 0; f < 3; ++f) gxd.push_back(gx(f, b));
    }
    ys.push_back(yd);
    gxs.push_back(gxd);
    gs.push_back(g);
  }
  for (std::size_t k = 1; k < ys.size(); ++k) {
    CAPTURE(k);
    CHECK(same_bits(ys[0], ys[k]));
    CHECK(same_bits(gxs[0], gxs[k]));
    CHECK(same_bits(gs[0], gs[k]));
  }
}

TEST_CASE("DenseNet: the Field overloads treat the flattened field as the feature vector") {
  using Lat = Lattice<2, 2>;
  using Net = DenseNet<double>;
  constexpr index_t batch = 5;
  const Net net({.in_features = 8, .hidden = {6}, .out_features = 4, .activation = Activation::tanh, .bias = true});
  std::vector<double> params(net.num_params());
  net.init_params(params, 25);
  std::mt19937_64 rng(26);
  Field<Lat, double, Channels<2>> x(batch), gx(batch);
  ScalarField<Lat, double> y(batch), w(batch);
  std::normal_distribution<double> normal;
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < batch; ++b) {
      x(s, 0, b) = normal(rng);
      x(s, 1, b) = normal(rng);
      w(s, 0, b) = normal(rng);
    }
  Net::Workspace ws;
  std::vector<double> g(params.size(), 0.0), g2(params.size(), 0.0);
  net.forward(params, x, y, ws);
  net.backward(params, ws, w, gx, g);
  Batch<double> xs(8, batch), ys(4, batch), ws_(4, batch), gxs(8, batch);
  std::copy(x.flat().begin(), x.flat().end(), xs.data.begin());
  std::copy(w.flat().begin(), w.flat().end(), ws_.data.begin());
  Net::Workspace ws2;
  net.forward(params, xs.cspan(), ys.span(), batch, xs.stride, ws2);
  net.backward(params, ws2, ws_.cspan(), gxs.span(), g2);
  CHECK(std::equal(ys.data.begin(), ys.data.end(), y.flat().begin()));
  CHECK(std::equal(gxs.data.begin(), gxs.data.end(), gx.flat().begin()));
  CHECK(g == g2);

  Field<Lat, double, Channels<3>> x3(batch);
  ScalarField<Lat, double> y6(batch + 1);
  CHECK_THROWS_WITH_AS(net.forward(params, x3, y, ws), doctest::Contains("in_features = 8"), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, x, x, ws), doctest::Contains("out_features = 4"), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, x, y6, ws), doctest::Contains("batch sizes differ"), ShapeError);
  CHECK_THROWS_WITH_AS(net.backward(params, ws, y6, gx, g), doctest::Contains("batch sizes differ"), ShapeError);
}

TEST_CASE("DenseNet: batch 0 and batch 1") {
  using Net = DenseNet<double>;
  const Net net(small_config(Activation::tanh, true));
  std::vector<double> params(net.num_params()), g(net.num_params(), 0.0);
  net.init_params(params, 27);
  Batch<double> x(3, 0, 8), y(2, 0, 8), gx(3, 0, 8);
  std::fill(y.data.begin(), y.data.end(), 7.0);
  std::fill(gx.data.begin(), gx.data.end(), 7.0);
  Net::Workspace ws;
  net.forward(params, x.cspan(), y.span(), 0, 8, ws);
  net.backward(params, ws, y.cspan(), gx.span(), g);
  CHECK(std::all_of(y.data.begin(), y.data.end(), [](double v) { return v == 0.0; }));
  CHECK(std::all_of(gx.data.begin(), gx.data.end(), [](double v) { return v == 0.0; }));
  CHECK(std::all_of(g.begin(), g.end(), [](double v) { return v == 0.0; }));
  check_directional_vjp(small_config(Activation::silu, true), 1, 28);
}

TEST_CASE("DenseNet: forward and backward allocate nothing once the workspace is laid out") {
  using Net = DenseNet<float>;
  const Net net({.in_features = 40, .hidden = {64, 64}, .out_features = 13, .activation = Activation::tanh,
                 .bias = true});
  constexpr index_t batch = 333;
  std::vector<float> params(net.num_params()), grads(net.num_params(), 0.0f);
  net.init_params(params, 1);
  Batch<float> x(40, batch), gx(40, batch), y(13, batch);
  std::mt19937_64 rng(2);
  fill_normal(x, rng);
  Net::Workspace ws;
  net.forward(params, x.cspan(), y.span(), batch, x.stride, ws);
  net.backward(params, ws, y.cspan(), gx.span(), grads);
  const long before = heap_allocations.load();
  for (int k = 0; k < 3; ++k) {
    net.forward(params, x.cspan(), y.span(), batch, x.stride, ws);
    net.backward(params, ws, y.cspan(), gx.span(), grads);
    net.forward(params, x.cspan(), y.span(), batch, x.stride, ws, exec::Serial{});
    net.backward(params, ws, y.cspan(), gx.span(), grads, exec::Serial{});
  }
  CHECK(heap_allocations.load() == before);
}

TEST_CASE("DenseNet: parameter layout, count and initialisation") {
  const DenseNet<double> net(small_config(Activation::tanh, true));
  // 3 -> 5 -> 4 -> 2, plus biases
  CHECK(net.num_layers() == 3);
  CHECK(net.in_features(1) == 5);
  CHECK(net.out_features(1) == 4);
  CHECK(net.num_params() == std::size_t(5 * 3 + 5 + 4 * 5 + 4 + 2 * 4 + 2));
  CHECK(net.weight_offset(1) == std::size_t(5 * 3 + 5));
  CHECK(net.bias_offset(0) == std::size_t(5 * 3));
  CHECK(net.bias_offset(2) == std::size_t(5 * 3 + 5 + 4 * 5 + 4 + 2 * 4));
  const DenseNet<double> no_bias(small_config(Activation::tanh, false));
  CHECK(no_bias.num_params() == std::size_t(5 * 3 + 4 * 5 + 2 * 4));
  CHECK(no_bias.weight_offset(2) == std::size_t(5 * 3 + 4 * 5));

  const DenseNet<double> big({.in_features = 40, .hidden = {300}, .out_features = 7, .activation = Activation::tanh,
                              .bias = true});
  std::vector<double> a(big.num_params()), b(big.num_params()), c(big.num_params());
  big.init_params(a, 42);
  big.init_params(b, 42);
  big.init_params(c, 43);
  CHECK(a == b);
  CHECK(a != c);
  for (index_t l = 0; l < big.num_layers(); ++l) {
    const double bound = 1.0 / std::sqrt(double(big.in_features(l)));
    for (const std::pair<std::size_t, std::size_t>& block :
         {std::pair{big.weight_offset(l), big.bias_offset(l)},
          std::pair{big.bias_offset(l), big.bias_offset(l) + std::size_t(big.out_features(l))}}) {
      const std::size_t begin = block.first, end = block.second;  // weights, then biases
      double lo = 1, hi = -1;
      for (std::size_t j = begin; j < end; ++j) {
        lo = std::min(lo, a[j]);
        hi = std::max(hi, a[j]);
      }
      CAPTURE(l);
      CAPTURE(begin);
      CHECK(lo >= -bound);
      CHECK(hi <= bound);
      if (end - begin >= 100) {  // the full range is used
        CHECK(lo < -0.9 * bound);
        CHECK(hi > 0.9 * bound);
      }
    }
  }
  std::vector<float> af(big.num_params());
  DenseNet<float>(big.config()).init_params(af, 42);
  bool rounded = true;
  for (std::size_t j = 0; j < a.size(); ++j) rounded = rounded && af[j] == float(a[j]);
  CHECK(rounded);

  big.init_params(b, 42, DenseInit::zero);
  CHECK(std::all_of(b.begin(), b.end(), [](double v) { return v == 0.0; }));
  big.init_params(b, 42, DenseInit::zero_last);
  CHECK(std::equal(a.begin(), a.begin() + std::ptrdiff_t(big.weight_offset(1)), b.begin()));
  CHECK(std::all_of(b.begin() + std::ptrdiff_t(big.weight_offset(1)), b.end(), [](double v) { return v == 0.0; }));
}

TEST_CASE("DenseNet: invalid configurations and shapes throw, naming the parameter") {
  using Net = DenseNet<double>;
  auto cfg = [](auto edit) {
    DenseNetConfig c = small_config(Activation::tanh, true);
    edit(c);
    return c;
  };
  CHECK_THROWS_WITH_AS(Net(cfg([](DenseNetConfig& c) { c.in_features = 0; })),
                       doctest::Contains("in_features = 0 is outside the valid range [1, "), ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](DenseNetConfig& c) { c.out_features = -2; })),
                       doctest::Contains("out_features = -2 is outside the valid range [1, "), ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](DenseNetConfig& c) { c.in_features = (1 << 24) + 1; })),
                       doctest::Contains("in_features = 16777217"), ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](DenseNetConfig& c) { c.hidden = {8, 0}; })), doctest::Contains("hidden[1] = 0"),
                       ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](DenseNetConfig& c) { c.activation = Activation(17); })),
                       doctest::Contains("activation = 17"), ParameterError);
  CHECK_THROWS_WITH_AS(Net(cfg([](DenseNetConfig& c) { c.hidden = {1 << 16, 1 << 16}; })),
                       doctest::Contains("layer 1 has 4294967296 weights"), ParameterError);
  CHECK_NOTHROW(Net(cfg([](DenseNetConfig& c) { c.hidden = {}; })));  // a single linear layer

  const Net net(small_config(Activation::tanh, true));
  std::vector<double> params(net.num_params()), grads(net.num_params());
  std::vector<double> short_params(net.num_params() - 1);
  Batch<double> x(3, 3), gx(3, 3), y(2, 3), x4(3, 4, 9), gy9(2, 9, 9);
  Net::Workspace ws;
  CHECK_THROWS_WITH_AS(net.backward(params, ws, y.cspan(), gx.span(), grads), doctest::Contains("call forward"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(short_params, x.cspan(), y.span(), 3, x.stride, ws),
                       doctest::Contains("params.size() = "), ShapeError);
  CHECK_THROWS_WITH_AS(net.init_params(short_params, 1), doctest::Contains("params.size() = "), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, y.cspan(), y.span(), 3, y.stride, ws),
                       doctest::Contains("x.size() = 16 but in_features * stride = 3 * 8 = 24"), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, x.cspan(), x.span(), 3, x.stride, ws),
                       doctest::Contains("y.size() = 24 but out_features * stride = 2 * 8 = 16"), ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, x.cspan(), y.span(), 9, 8, ws), doctest::Contains("stride = 8"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(net.forward(params, x.cspan(), y.span(), -1, 8, ws), doctest::Contains("batch = -1"),
                       ShapeError);
  net.forward(params, x.cspan(), y.span(), 3, x.stride, ws);
  CHECK(ws.batch() == 3);
  CHECK_THROWS_WITH_AS(net.backward(params, ws, y.cspan(), gx.span(), short_params),
                       doctest::Contains("grads.size() = "), ShapeError);
  CHECK_THROWS_WITH_AS(net.backward(params, ws, gy9.cspan(), gx.span(), grads), doctest::Contains("gy.size() = 18"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(net.backward(params, ws, y.cspan(), x4.span(), grads), doctest::Contains("gx.size() = "),
                       ShapeError);
  const Net other(cfg([](DenseNetConfig& c) { c.hidden = {5}; }));
  std::vector<double> other_params(other.num_params()), other_grads(other.num_params());
  CHECK_THROWS_WITH_AS(other.backward(other_params, ws, y.cspan(), gx.span(), other_grads),
                       doctest::Contains("call forward"), ShapeError);
  const Net linear(cfg([](DenseNetConfig& c) { c.activation = Activation::none; }));  // same widths
  CHECK_THROWS_WITH_AS(linear.backward(params, ws, y.cspan(), gx.span(), grads), doctest::Contains("call forward"),
                       ShapeError);
}
