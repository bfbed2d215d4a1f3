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
#include <filesystem>
#include <span>
#include <string>
#include <typeinfo>
#include <vector>

#include <normflow/diagnostics/metrics.hpp>
#include <normflow/io/checkpoint.hpp>
#include <normflow/version.hpp>
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

  /// The identity a checkpoint records and checks on load: the one given to set_architecture, or
  /// else the compiler's name of the net type (stable for one compiler and one build).
  std::string architecture() const {
    return detail::concat(m_architecture.empty() ? typeid(Net).name() : m_architecture, " params=", net_.num_params(),
                          " scalar=", sizeof(value_type));
  }
  /// Names the architecture (e.g. the options that built a runtime ModuleList_).
  void set_architecture(std::string name) { m_architecture = std::move(name); }

  /// Writes parameters, Adam's state, the epoch counter and the prior's generator position
  /// (atomically: a failed write leaves an existing file as it was).
  void save_checkpoint(const std::filesystem::path& path) const {
    Checkpoint c;
    c.architecture = architecture();
    c.scalar_size = sizeof(value_type);
    c.num_params = net_.num_params();
    c.epoch = std::uint64_t(trainer.current_epoch());
    c.rng_seed = prior.generator().seed();
    c.rng_stream = prior.generator().stream();
    const AdamW& opt = trainer.optimizer();
    c.adam_step = opt.step_count();
    if constexpr (std::is_same_v<value_type, float>)
      c.arrays_f32["params"].assign(net_.params().begin(), net_.params().end());
    else
      c.arrays_f64["params"].assign(net_.params().begin(), net_.params().end());
    if (opt.step_count() > 0 && opt.first_moment().size() == net_.num_params()) {
      c.arrays_f64["adam_m"] = opt.first_moment();
      c.arrays_f64["adam_v"] = opt.second_moment();
    }
    c.meta["normflow_version"] = version_string;
    save_checkpoint_file(path, c);
  }

  /// Restores what save_checkpoint wrote; a checkpoint of another architecture, a truncated or
  /// corrupt file fails with CheckpointError before anything changes.
  void load_checkpoint(const std::filesystem::path& path) {
    const Checkpoint c = load_checkpoint_file(path, architecture());
    const auto& store = [&]() -> const auto& {
      if constexpr (std::is_same_v<value_type, float>)
        return c.arrays_f32;
      else
        return c.arrays_f64;
    }();
    const auto it = store.find("params");
    if (it == store.end() || it->second.size() != net_.num_params())
      throw CheckpointError(detail::concat("load_checkpoint: ", path.string(), " holds no parameter array of ",
                                           net_.num_params(), " values"));
    std::copy(it->second.begin(), it->second.end(), net_.params().begin());
    const auto m = c.arrays_f64.find("adam_m"), v = c.arrays_f64.find("adam_v");
    if (m != c.arrays_f64.end() && v != c.arrays_f64.end()) trainer.restore_optimizer(m->second, v->second, c.adam_step);
    trainer.set_current_epoch((long long)c.epoch);
    prior.generator().set_state(c.rng_seed, c.rng_stream);
  }

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

 private:
  static void save_checkpoint_file(const std::filesystem::path& p, const Checkpoint& c) { normflow::save_checkpoint(p, c); }
  static Checkpoint load_checkpoint_file(const std::filesystem::path& p, const std::string& arch) {
    return normflow::load_checkpoint(p, arch);
  }
  std::string m_architecture;
};

}  // namespace normflow
