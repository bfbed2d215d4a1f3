// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file NormalPrior<Lat, T>: iid Gaussian prior over the sites of a lattice (reference 2.6).
///
/// Maths, per sample (N = volume x components reals):
///   log r(x) = sum_i [ -(x_i - mu)^2 / (2 sigma^2) - ln sigma - (1/2) ln 2 pi ]
///            = -(1 / (2 sigma^2)) sum_i (x_i - mu)^2 - N (ln sigma + (1/2) ln 2 pi)
///   d log r / d x_i = -(x_i - mu) / sigma^2
/// Samples: x_i = mu + sigma z_i with z_i from CounterRng::normal_pair (seed, stream, b, site, j),
/// components 2j and 2j+1 sharing one Philox call.

#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/detail/batch_output.hpp>
#include <normflow/errors.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/random/philox.hpp>
#include <normflow/random/philox_simd.hpp>
#include <normflow/simd/pack.hpp>

namespace normflow {

/// A batch of samples with their per-sample log-density (the reference's `sample_` result).
template <class F>
struct SampleWithLogProb {
  F x;
  std::vector<typename F::value_type> log_prob;
};

namespace detail {
/// x(s, c, b) = loc + scale * z(b, site(s), c) for real samples, 0 in padding lanes. The host
/// runs fill_lanes (packs of doubles through Philox and Box-Muller together, philox_simd.hpp), a
/// device operator() per element; both give the same bits.
template <LatticeShape Lat, SiteOrder Order, class T, index_t C>
struct NormalFillKernel {
  FieldView<T, C> x;
  CounterRng rng;
  double loc, scale;
  /// Host: the samples [b, b + N W) at storage position s, V a pack of W doubles.
  template <class V, int N>
  void fill_lanes(index_t s, index_t b) const noexcept {
    constexpr index_t W = simd::pack_size<V>;
    const index_t site = Order::template site_of<Lat>(s);
    for (index_t j = 0; 2 * j < C; ++j) {
      V z1[N], z2[N];
      normal_pair_lanes<V, N>(rng, std::uint32_t(b), std::uint32_t(site), std::uint32_t(j), z1, z2);
      for (int n = 0; n < N; ++n) {
        store_lanes<V>(s, 2 * j, b + n * W, V(loc) + V(scale) * z1[n]);
        if (2 * j + 1 < C) store_lanes<V>(s, 2 * j + 1, b + n * W, V(loc) + V(scale) * z2[n]);
      }
    }
  }
  /// x(s, c, [b, b + W)) = v (rounded to T), 0 in padding lanes.
  template <class V>
  void store_lanes(index_t s, index_t c, index_t b, const V& v) const noexcept {
    constexpr index_t W = simd::pack_size<V>;
    T* out = &x(s, c, b);
    if (b + W <= x.batch) {
      if constexpr (std::is_same_v<T, double>) {
        v.store_unaligned(out);
        return;
      }
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float> && W == 8) {
        _mm256_storeu_ps(out, _mm512_cvtpd_ps(v));  // round to nearest, as T(double)
        return;
      }
#endif
    }
    alignas(64) double tmp[W];
    v.store_aligned(tmp);
    for (index_t l = 0; l < W; ++l) out[l] = b + l < x.batch ? T(tmp[l]) : T(0);
  }
  NORMFLOW_HOST_DEVICE void operator()(offset_t i) const noexcept {
    const index_t s = index_t(i / x.stride), b = index_t(i % x.stride);
    if (b >= x.batch) {
      for (index_t c = 0; c < C; ++c) x(s, c, b) = T(0);
      return;
    }
    const index_t site = Order::template site_of<Lat>(s);
    for (index_t j = 0; 2 * j < C; ++j) {
      const DoublePair z = rng.normal_pair(std::uint32_t(b), std::uint32_t(site), std::uint32_t(j));
      x(s, 2 * j, b) = T(loc + scale * z.first);
      if (2 * j + 1 < C) x(s, 2 * j + 1, b) = T(loc + scale * z.second);
    }
  }
};

/// out[b] = -half_inv_var * sum_{s,c} (x - loc)^2 - constant, summed over (s, c) in storage order
/// per lane; sites outer, up to R SIMD chunks inner (sequential reads, same bits for any blocking).
template <class T, index_t C>
struct NormalLogProbKernel {
  FieldView<const T, C> x;
  T* out;
  T loc, half_inv_var, constant;
  index_t volume;

  template <class V, index_t R>
  NORMFLOW_HOST_DEVICE void sum_sites(index_t b) const noexcept {
    constexpr index_t W = simd::pack_size<V>;
    const V mu(loc);
    V acc[R];
    for (index_t j = 0; j < R; ++j) acc[j] = V(T(0));
    for (index_t s = 0; s < volume; ++s)
      for (index_t c = 0; c < C; ++c) {
        const T* p = x.lanes(s, c) + b;
        for (index_t j = 0; j < R; ++j) {
          const V d = simd::load<V>(p + j * W) - mu;
          acc[j] += d * d;
        }
      }
    for (index_t j = 0; j < R; ++j)
      store_samples(out, V(T(0)) - V(half_inv_var) * acc[j] - V(constant), b + j * W, x.batch);
  }

  template <class V>
  NORMFLOW_HOST_DEVICE void apply_block(index_t b_begin, index_t b_end) const noexcept {
    simd::for_register_blocks<V, 4>(b_begin, b_end, [this](auto r, index_t b) { this->template sum_sites<V, decltype(r)::value>(b); });
  }
};

/// g = -(x - loc) * inv_var, element-wise.
template <class T, index_t C>
struct NormalScoreKernel {
  FieldView<const T, C> x;
  FieldView<T, C> g;
  T loc, inv_var;
  template <class V>
  NORMFLOW_HOST_DEVICE void apply(index_t s, index_t b) const noexcept {
    for (index_t c = 0; c < C; ++c)
      simd::store(g.lanes(s, c) + b, (V(loc) - simd::load<V>(x.lanes(s, c) + b)) * V(inv_var));
  }
};
}  // namespace detail

/// Independent Gaussians N(loc, scale^2) at every site and component.
/// \tparam Lat   the lattice
/// \tparam T     float (the reference's default precision) or double
/// \tparam Site  per-site content (Scalar for a real scalar field)
/// \tparam Order the site order of the fields it produces
template <LatticeShape Lat, class T = float, SiteType Site = Scalar, SiteOrder Order = default_order_t<Lat>>
class NormalPrior {
 public:
  using field_type = Field<Lat, T, Site, Order>;
  using value_type = T;
  using lattice = Lat;
  static constexpr index_t components = Site::components;
  /// Number of reals per sample.
  static constexpr index_t dof = Lat::volume * Site::components;

  /// Named options: NormalPrior<Lat> prior{{.loc = 0, .scale = 1, .seed = 7}}.
  struct Options {
    double loc = 0;
    double scale = 1;
    std::uint64_t seed = 0;
  };

  NormalPrior() : NormalPrior(Options{}) {}
  explicit NormalPrior(const Options& o) : NormalPrior(o.loc, o.scale, o.seed) {}
  /// \param loc   mean, finite
  /// \param scale standard deviation, finite and > 0
  /// \param seed  seed of the counter-based generator
  NormalPrior(double loc, double scale, std::uint64_t seed = 0) : m_loc(loc), m_scale(scale), m_gen(seed) {
    require_finite(loc, "NormalPrior", "loc");
    require_finite(scale, "NormalPrior", "scale");
    if (!(scale > 0))
      throw ParameterError(detail::concat("NormalPrior: scale = ", scale, " must be > 0 (a standard deviation)"));
  }

  double loc() const noexcept { return m_loc; }
  double scale() const noexcept { return m_scale; }
  Generator& generator() noexcept { return m_gen; }
  const Generator& generator() const noexcept { return m_gen; }
  /// Restarts the generator from `seed` (stream 0).
  void seed(std::uint64_t seed) noexcept { m_gen.set_state(seed, 0); }

  /// n fresh samples.
  template <exec::Policy Exec = exec::Default>
  field_type sample(long long n, Exec exec = {}) {
    detail::require_batch_size(n, "NormalPrior::sample");
    field_type x{index_t(n)};
    sample_into(x, exec);
    return x;
  }

  /// n fresh samples and their log-density: auto [x, log_r] = prior.sample_(n).
  template <exec::Policy Exec = exec::Default>
  SampleWithLogProb<field_type> sample_(long long n, Exec exec = {}) {
    SampleWithLogProb<field_type> r{sample(n, exec), std::vector<T>(std::size_t(n))};
    log_prob(r.x, std::span<T>(r.log_prob), exec);
    return r;
  }

  /// Overwrites x (its batch size is kept) with fresh samples; no allocation.
  template <exec::Policy Exec = exec::Default>
  void sample_into(field_type& x, Exec exec = {}) {
    sample_into(x, m_gen.next(), exec);
  }
  /// sample_into with a stream taken from generator().next() beforehand: batches whose streams
  /// were taken in order, filled in any order or at once on several threads, hold the bits that
  /// sample_into gives them one after another. const: the generator is not advanced.
  template <exec::Policy Exec = exec::Default>
  void sample_into(field_type& x, CounterRng stream, Exec exec = {}) const {
    const detail::NormalFillKernel<Lat, Order, T, components> k{x.view(), stream, m_loc, m_scale};
    if constexpr (std::is_same_v<Exec, exec::Serial> || std::is_same_v<Exec, exec::OpenMP>) {
      // host: groups of G packs of doubles per work item (the last group of a site may be shorter)
      using VD = simd::native_pack<double>;
      constexpr index_t W = simd::pack_size<VD>, G = 4;
      const index_t packs = x.padded_batch() / W, groups = (packs + G - 1) / G;
      exec::parallel_for(exec, offset_t(Lat::volume) * groups, [=](offset_t i) {
        const index_t s = index_t(i / groups), p0 = index_t(i % groups) * G;
        if (packs - p0 >= G)
          k.template fill_lanes<VD, G>(s, p0 * W);
        else
          for (index_t p = p0; p < packs; ++p) k.template fill_lanes<VD, 1>(s, p * W);
      });
    } else {
      exec::parallel_for(exec, offset_t(Lat::volume) * x.padded_batch(), k);
    }
  }

  /// Per-sample log r(x), into out (one entry per sample).
  template <exec::Policy Exec = exec::Default>
  void log_prob(const field_type& x, std::span<T> out, Exec exec = {}) const {
    detail::require_output_size(out, x.batch(), "NormalPrior::log_prob");
    const double log_norm = double(dof) * (std::log(m_scale) + 0.5 * std::log(2 * std::numbers::pi));
    const detail::NormalLogProbKernel<T, components> k{x.cview(), out.data(), T(m_loc),
                                                       T(0.5 / (m_scale * m_scale)), T(log_norm), Lat::volume};
    exec::parallel_for_lane_blocks<T>(exec, x.padded_batch(), k);
  }

  /// Per-sample log r(x).
  template <exec::Policy Exec = exec::Default>
  std::vector<T> log_prob(const field_type& x, Exec exec = {}) const {
    std::vector<T> out(std::size_t(x.batch()));
    log_prob(x, std::span<T>(out), exec);
    return out;
  }

  /// g = d log r / dx = -(x - loc) / scale^2 (the input of the path-gradient estimator).
  template <exec::Policy Exec = exec::Default>
  void grad_log_prob(const field_type& x, field_type& g, Exec exec = {}) const {
    if (g.batch() != x.batch()) g.resize(x.batch());
    const detail::NormalScoreKernel<T, components> k{x.cview(), g.view(), T(m_loc), T(1.0 / (m_scale * m_scale))};
    exec::parallel_for_lanes<T>(exec, Lat::volume, x.padded_batch(), k);
  }

 private:
  double m_loc, m_scale;
  Generator m_gen;
};

}  // namespace normflow
