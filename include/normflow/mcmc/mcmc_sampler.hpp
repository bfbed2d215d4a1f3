// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file MCMCSampler<Model>: independence Metropolis with flow proposals (reference 5.1).
///
/// Maths. Proposals y' ~ q (fresh flow samples); with Delta = log q - log p, the move from the
/// chain state y to y' is accepted with probability min(1, exp(Delta(y) - Delta(y'))) =
/// min(1, [p(y')/q(y')] / [p(y)/q(y)]): accept if ln u < Delta_ref - Delta'. The chain's stationary
/// distribution is p exactly, whatever q (as long as q > 0 where p > 0). The state carries over
/// between calls; on the very first call the first proposal is accepted. A rejection repeats the
/// current state. Uniforms u come from the sampler's own counter-based generator (seed, stream).

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <normflow/field/field.hpp>
#include <normflow/model/posterior.hpp>
#include <normflow/random/philox.hpp>

namespace normflow {

template <class M>
class MCMCSampler {
 public:
  using field_type = typename M::field_type;
  using T = typename field_type::value_type;

  explicit MCMCSampler(M& model, std::uint64_t seed = 0x6d636d63ull) noexcept : m_model(model), m_gen(seed) {}

  /// Reseeds the acceptance generator and forgets the chain state.
  void reset(std::uint64_t seed) {
    m_gen.set_state(seed, 0);
    m_has_ref = false;
    m_history.clear();
    m_accepted = m_proposed = 0;
  }

  /// n chain elements (with repeats after rejections), continuing the chain.
  field_type sample(long long n) { return sample__(n).y; }

  /// n chain elements with their log q and log p.
  FlowSamples<field_type> sample__(long long n) {
    FlowSamples<field_type> prop = m_model.posterior.sample__(n);
    const index_t N = prop.y.batch();
    const CounterRng rng = m_gen.next();
    FlowSamples<field_type> out{field_type(N), std::vector<T>(std::size_t(N)), std::vector<T>(std::size_t(N))};
    if (!m_has_ref) {
      m_ref.resize(1);
      m_ref_delta = double(prop.logq[0]) - double(prop.logp[0]);
    }
    index_t last = -1;  // last accepted proposal of this batch
    long long accepted = 0;
    for (index_t i = 0; i < N; ++i) {
      const double delta = double(prop.logq[std::size_t(i)]) - double(prop.logp[std::size_t(i)]);
      const double u = rng.uniform_pair(std::uint32_t(i), 0, 0).first;
      const bool accept = (!m_has_ref && i == 0) || std::log(u) < m_ref_delta - delta;
      if (accept) {
        last = i;
        m_ref_delta = delta;
        ++accepted;
      }
      if (last >= 0) {
        detail::copy_sample(prop.y, last, out.y, i);
        out.logq[std::size_t(i)] = prop.logq[std::size_t(last)];
        out.logp[std::size_t(i)] = prop.logp[std::size_t(last)];
      } else {
        detail::copy_sample(m_ref, 0, out.y, i);
        out.logq[std::size_t(i)] = m_ref_logq;
        out.logp[std::size_t(i)] = m_ref_logp;
      }
    }
    detail::copy_sample(out.y, N - 1, m_ref, 0);
    m_ref_logq = out.logq[std::size_t(N - 1)];
    m_ref_logp = out.logp[std::size_t(N - 1)];
    m_has_ref = true;
    m_history.push_back(double(accepted) / double(N));
    m_accepted += accepted;
    m_proposed += N;
    return out;
  }

  /// Acceptance rate over every proposal so far.
  double acceptance_rate() const noexcept { return m_proposed ? double(m_accepted) / double(m_proposed) : 0.0; }
  /// Acceptance rate of each call (the reference's history.accept_rate).
  const std::vector<double>& history() const noexcept { return m_history; }

 private:
  M& m_model;
  Generator m_gen;
  bool m_has_ref = false;
  field_type m_ref;
  T m_ref_logq{}, m_ref_logp{};
  double m_ref_delta = 0;
  std::vector<double> m_history;
  long long m_accepted = 0, m_proposed = 0;
};

}  // namespace normflow
