// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file UniformPrior<Lat, T>: iid uniform prior on [low, high) at every site (reference 2.6).
///
/// Maths, per sample (N = volume x components reals):
///   log r(x) = -N ln(high - low)  if every x_i lies in [low, high),  -infinity otherwise.
/// Samples: x_i = low + (high - low) u_i, u_i in (0, 1) from CounterRng::uniform_pair.

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/detail/batch_output.hpp>
#include <normflow/errors.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/prior/normal_prior.hpp>
#include <normflow/random/philox.hpp>

namespace normflow {

namespace detail {
template <LatticeShape Lat, SiteOrder Order, class T, index_t C>
struct UniformFillKernel {
  FieldView<T, C> x;
  CounterRng rng;
  double low, width;
  NORMFLOW_HOST_DEVICE void operator()(offset_t i) const noexcept {
    const index_t s = index_t(i / x.stride), b = index_t(i % x.stride);
    if (b >= x.batch) {
      for (index_t c = 0; c < C; ++c) x(s, c, b) = T(0);
      return;
    }
    const index_t site = Order::template site_of<Lat>(s);
    for (index_t j = 0; 2 * j < C; ++j) {
      const DoublePair u = rng.uniform_pair(std::uint32_t(b), std::uint32_t(site), std::uint32_t(j));
      x(s, 2 * j, b) = clamp_below(T(low + width * u.first));
      if (2 * j + 1 < C) x(s, 2 * j + 1, b) = clamp_below(T(low + width * u.second));
    }
  }
  // Rounding can carry low + width * u up to `high`; keep samples inside [low, high).
  NORMFLOW_HOST_DEVICE T clamp_below(T v) const noexcept {
    const T high = T(low + width);
    return v < high ? v : std::nextafter(high, T(low));
  }
};

template <class T, index_t C>
struct UniformLogProbKernel {
  FieldView<const T, C> x;
  T* out;
  T low, high, log_density;
  index_t volume;
  NORMFLOW_HOST_DEVICE void operator()(offset_t i) const noexcept {
    const index_t b = index_t(i);
    bool inside = true;
    for (index_t s = 0; s < volume; ++s)
      for (index_t c = 0; c < C; ++c) {
        const T v = x(s, c, b);
        inside = inside && (v >= low) && (v < high);
      }
    out[b] = inside ? log_density : -std::numeric_limits<T>::infinity();
  }
};
}  // namespace detail

/// Independent uniforms on [low, high) at every site and component.
template <LatticeShape Lat, class T = float, SiteType Site = Scalar, SiteOrder Order = default_order_t<Lat>>
class UniformPrior {
 public:
  using field_type = Field<Lat, T, Site, Order>;
  using value_type = T;
  using lattice = Lat;
  static constexpr index_t components = Site::components;
  static constexpr index_t dof = Lat::volume * Site::components;

  struct Options {
    double low = 0;
    double high = 1;
    std::uint64_t seed = 0;
  };

  UniformPrior() : UniformPrior(Options{}) {}
  explicit UniformPrior(const Options& o) : UniformPrior(o.low, o.high, o.seed) {}
  /// \param low, high finite bounds with low < high
  UniformPrior(double low, double high, std::uint64_t seed = 0) : m_low(low), m_high(high), m_gen(seed) {
    require_finite(low, "UniformPrior", "low");
    require_finite(high, "UniformPrior", "high");
    if (!(low < high))
      throw ParameterError(detail::concat("UniformPrior: low = ", low, " must be below high = ", high));
  }

  double low() const noexcept { return m_low; }
  double high() const noexcept { return m_high; }
  Generator& generator() noexcept { return m_gen; }
  const Generator& generator() const noexcept { return m_gen; }
  void seed(std::uint64_t seed) noexcept { m_gen.set_state(seed, 0); }

  template <exec::Policy Exec = exec::Default>
  field_type sample(long long n, Exec exec = {}) {
    detail::require_batch_size(n, "UniformPrior::sample");
    field_type x{index_t(n)};
    sample_into(x, exec);
    return x;
  }

  template <exec::Policy Exec = exec::Default>
  SampleWithLogProb<field_type> sample_(long long n, Exec exec = {}) {
    SampleWithLogProb<field_type> r{sample(n, exec), std::vector<T>(std::size_t(n))};
    log_prob(r.x, std::span<T>(r.log_prob), exec);
    return r;
  }

  template <exec::Policy Exec = exec::Default>
  void sample_into(field_type& x, Exec exec = {}) {
    sample_into(x, m_gen.next(), exec);
  }
  /// sample_into with a stream taken from generator().next() beforehand (see NormalPrior).
  template <exec::Policy Exec = exec::Default>
  void sample_into(field_type& x, CounterRng stream, Exec exec = {}) const {
    const detail::UniformFillKernel<Lat, Order, T, components> k{x.view(), stream, m_low, m_high - m_low};
    exec::parallel_for(exec, offset_t(Lat::volume) * x.padded_batch(), k);
  }

  template <exec::Policy Exec = exec::Default>
  void log_prob(const field_type& x, std::span<T> out, Exec exec = {}) const {
    detail::require_output_size(out, x.batch(), "UniformPrior::log_prob");
    const detail::UniformLogProbKernel<T, components> k{
        x.cview(), out.data(), T(m_low), T(m_high), T(-double(dof) * std::log(m_high - m_low)), Lat::volume};
    exec::parallel_for(exec, x.batch(), k);
  }

  template <exec::Policy Exec = exec::Default>
  std::vector<T> log_prob(const field_type& x, Exec exec = {}) const {
    std::vector<T> out(std::size_t(x.batch()));
    log_prob(x, std::span<T>(out), exec);
    return out;
  }

 private:
  double m_low, m_high;
  Generator m_gen;
};

}  // namespace normflow
