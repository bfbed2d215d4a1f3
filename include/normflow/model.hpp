// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Model{prior, net_, action}: the reference's top-level object (reference 1.1).
///
///   NormalPrior<Lattice<1>> prior;
///   ScalarPhi4Action action{.kappa = 0, .m_sq = -2.0, .lambd = 0.2};
///   DistConvertor_<Lattice<1>> net_{{.knots_len = 10, .symmetric = true}};
///   Model model{prior, net_, action};
///   model.trainer.run_training({.n_epochs = 1000, .batch_size = 64, .lr = 0.01});
///   auto x = model.posterior.sample(1000);   // flow samples
///   auto y = model.mcmc.sample(1000);        // Metropolis-corrected samples
/// The model keeps its own copies of prior, net_ and action (model.net_ is the trained one). It
/// is neither copyable nor movable: trainer, posterior and mcmc refer back to it.

#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include <normflow/diagnostics/metrics.hpp>
#include <normflow/mcmc/blocked_mcmc_sampler.hpp>
#include <normflow/mcmc/mcmc_sampler.hpp>
#include <normflow/model/posterior.hpp>
#include <normflow/train/trainer.hpp>

namespace normflow {

/// The result of Model::compute_metrics: ESS and (mean, std) of log(q/p), log q and log p.
struct ModelMetrics {
  double ess;
  MeanStd log_ratio, logq, logp;
};

/// Formats value(error) with `digits` significant digits in the error, e.g. "1.234(56)".
inline std::string fmt_val_err(double value, double error, int digits = 2) {
  if (!(error > 0) || !std::isfinite(error)) return detail::concat(value);
  const int e = int(std::floor(std::log10(error))) - (digits - 1);
  const int decimals = e < 0 ? -e : 0;
  const double scale = std::pow(10.0, e);
  const long long err = std::llround(error / scale);
  char buf[64];
  if (decimals > 0)
    std::snprintf(buf, sizeof buf, "%.*f(%lld)", decimals, value, err);
  else
    std::snprintf(buf, sizeof buf, "%.0f(%lld)", std::round(value / scale) * scale, err * (long long)scale);
  return buf;
}

template <class Prior, class Net, class Action>
class Model {
 public:
  using prior_type = Prior;
  using net_type = Net;
  using action_type = Action;
  using field_type = typename Net::field_type;
  using value_type = typename field_type::value_type;
  static_assert(std::is_same_v<typename Prior::field_type, field_type>,
                "Model{prior, net_, action}: the prior and the net must act on the same field type "
                "(lattice, precision and site order)");

  Prior prior;
  Net net_;
  Action action;
  Trainer<Model> trainer{*this};
  Posterior<Model> posterior{*this};
  MCMCSampler<Model> mcmc{*this};
  BlockedMCMCSampler<Model> blocked_mcmc{*this};

  Model(Prior p, Net n, Action a) : prior(std::move(p)), net_(std::move(n)), action(std::move(a)) {}
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  /// Metrics on n fresh flow samples; prints them (the reference's format) when epoch >= 0.
  ModelMetrics compute_metrics(long long n, long long epoch = -1) {
    const auto s = posterior.sample__(n);
    ModelMetrics m;
    m.ess = ess(s.logq, s.logp);
    m.log_ratio = Metrics::log_ratio(std::span<const value_type>(s.logq), std::span<const value_type>(s.logp));
    m.logq = mean_std(s.logq);
    m.logp = mean_std(s.logp);
    if (epoch >= 0) {
      const double rn = std::sqrt(double(n));
      std::printf("Epoch: %lld | ess: %.4f | log(q/p): %s | log(q): %s | log(p): %s\n", epoch, m.ess,
                  fmt_val_err(m.log_ratio.mean, m.log_ratio.std / rn).c_str(),
                  fmt_val_err(m.logq.mean, m.logq.std / rn).c_str(), fmt_val_err(m.logp.mean, m.logp.std / rn).c_str());
    }
    return m;
  }
};

}  // namespace normflow
