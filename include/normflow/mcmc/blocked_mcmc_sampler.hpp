// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file BlockedMCMCSampler<Model>: Metropolis-within-Gibbs in the latent space (reference 5.2).
///
/// Maths. The chain lives on latent fields x, with target pi(x) = p(f(x)) |det f'(x)|, whose image
/// y = f(x) is distributed as p. A move resamples one block of sites of x from the prior r (an
/// independence proposal on that block; r factorises over sites), so the Metropolis-Hastings ratio
/// is pi(x') r(x) / (pi(x) r(x')) = exp(Delta(x) - Delta(x')), Delta = log r(x) - logJ(x) + S(f(x))
/// = log q - log p: accept if ln u < Delta_ref - Delta'. Blocks are contiguous runs of
/// volume / n_blocks sites in lexicographic order; every output is one sweep over the blocks.

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <normflow/errors.hpp>
#include <normflow/field/field.hpp>
#include <normflow/model/posterior.hpp>
#include <normflow/random/philox.hpp>

namespace normflow {

template <class M>
class BlockedMCMCSampler {
 public:
  using field_type = typename M::field_type;
  using T = typename field_type::value_type;
  using Lat = typename field_type::lattice;

  explicit BlockedMCMCSampler(M& model, std::uint64_t seed = 0x626c6f636bull) noexcept : m_model(model), m_gen(seed) {}

  void reset(std::uint64_t seed) {
    m_gen.set_state(seed, 0);
    m_has_ref = false;
    m_accepted = m_proposed = 0;
  }

  /// n chain elements (one sweep over the blocks each), with their log q and log p.
  FlowSamples<field_type> sample__(long long n, index_t n_blocks = 1) {
    detail::require_batch_size(n, "BlockedMCMCSampler::sample__");
    if (n_blocks < 1 || Lat::volume % n_blocks != 0)
      throw ParameterError(detail::concat("BlockedMCMCSampler::sample__: n_blocks = ", n_blocks,
                                          " must divide the lattice volume ", Lat::volume));
    const index_t len = Lat::volume / n_blocks;
    FlowSamples<field_type> out{field_type(index_t(n)), std::vector<T>(std::size_t(n)), std::vector<T>(std::size_t(n))};
    field_type x_new(1), fresh(1), y(1);
    if (!m_has_ref) {
      m_x.resize(1);
      m_model.prior.sample_into(m_x);
      evaluate(m_x, y, m_ref_logq, m_ref_logp);
      m_y = y;
      m_has_ref = true;
    }
    for (long long i = 0; i < n; ++i) {
      const CounterRng rng = m_gen.next();
      for (index_t blk = 0; blk < n_blocks; ++blk) {
        x_new = m_x;
        m_model.prior.sample_into(fresh);
        for (index_t site = blk * len; site < (blk + 1) * len; ++site) x_new.at_site(site, 0, 0) = fresh.at_site(site, 0, 0);
        T logq, logp;
        evaluate(x_new, y, logq, logp);
        const double delta = double(logq) - double(logp), delta_ref = double(m_ref_logq) - double(m_ref_logp);
        const double u = rng.uniform_pair(std::uint32_t(blk), 0, 0).first;
        ++m_proposed;
        if (std::log(u) < delta_ref - delta) {
          m_x = x_new;
          m_y = y;
          m_ref_logq = logq;
          m_ref_logp = logp;
          ++m_accepted;
        }
      }
      detail::copy_sample(m_y, 0, out.y, index_t(i));
      out.logq[std::size_t(i)] = m_ref_logq;
      out.logp[std::size_t(i)] = m_ref_logp;
    }
    return out;
  }
  field_type sample(long long n, index_t n_blocks = 1) { return sample__(n, n_blocks).y; }

  /// Acceptance rate over every block decision so far.
  double acceptance_rate() const noexcept { return m_proposed ? double(m_accepted) / double(m_proposed) : 0.0; }

 private:
  // y = f(x), log q = log r(x) - logJ, log p = -S(y) for one sample
  void evaluate(const field_type& x, field_type& y, T& logq, T& logp) {
    T lr, ld = T(0), s;
    m_model.prior.log_prob(x, std::span<T>(&lr, 1));
    m_model.net_.forward(x, y, std::span<T>(&ld, 1), m_tape);
    m_model.action.action(y, std::span<T>(&s, 1));
    logq = lr - ld;
    logp = -s;
  }

  M& m_model;
  Generator m_gen;
  bool m_has_ref = false;
  field_type m_x, m_y;
  T m_ref_logq{}, m_ref_logp{};
  typename M::net_type::tape_type m_tape;
  long long m_accepted = 0, m_proposed = 0;
};

}  // namespace normflow
