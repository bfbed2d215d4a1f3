// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Trainer<Model>: self-training of the flow without data (reference 4.1, 4.3, 8.2).
///
/// One epoch = one AdamW step on a fresh prior batch of B samples:
///   x ~ r,  y = f(x),  log q = log r(x) - log|det f'(x)|,  log p = -S(y)
///   (alpha annealing: log p = -alpha S(y) + (1 - alpha) log r(y))
///   L = loss(log q, log p),  a_b = dL/dlogq_b,  c_b = dL/dlogp_b
/// Gradient estimators (both through the layers' hand-derived adjoints):
///   total gradient (path_gradient = false): the exact derivative of L(theta) at fixed x,
///     dL/dtheta = backward(gy_b = c_b grad log p(y_b), gl_b = -a_b)
///   path gradient (default; Vaitl et al., arXiv:2207.08219): drops the score term
///     d/dtheta log q_theta(y)|_y, whose expectation vanishes:
///     dL/dtheta = backward(gy_b = a_b g_b + c_b grad log p(y_b), gl_b = 0),
///     g = grad_y log q(y) from the forward-mode recursion g_0 = grad log r(x),
///     g_k = reverse_backward_k(g_{k-1}, gl = 1) (arXiv:2403.15881; see layer/module.hpp).
///     When q = p the cotangent a_b g_b + c_b grad log p vanishes sample by sample.
///     Dropping the score term sum_b a_b d/dtheta log q(y_b)|_y is unbiased only when the weights
///     a_b = dL/dlogq_b are the same for every sample, as for the reverse KL (a_b = 1/N). For other
///     losses (-log ESS, user callables) the trainer therefore uses the total gradient even when
///     path_gradient is set (the reference adds its adjustment regardless, which biases them:
///     measured, -log ESS training of the 1-dof model then fails, ESS 0.0005 after 1000 epochs,
///     while the total gradient reaches 1.0000).
/// Then optional clipping of the total gradient norm, an AdamW step, the scheduler step.
/// A non-finite loss stops training with TrainingError naming the epoch, before any update.
///
/// Chunks: everything before the loss and everything after it is per sample but the sum of the
/// parameter gradient over samples, so the step runs them on chunks of TrainConfig::chunk_size
/// samples (the last one shorter), each with its own fields and tape, and adds the chunks'
/// gradients in chunk order. With at least as many chunks as threads each thread takes whole
/// chunks and runs the flow on one thread inside (data parallel: the threads meet at the loss and
/// at the end, instead of at every kernel, and share no activations); with fewer, the chunks run
/// one after another with all threads inside. The loss, its derivatives and the metrics see the
/// whole batch. With the reverse KL (Losses::kl_mean), whose per-sample derivatives are the
/// constants 1/B and -1/B, each chunk runs its backward half right after its forward half (the
/// threads then meet only at the end; the same bits). Results depend on chunk_size, never on the
/// thread count.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <numbers>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include <normflow/diagnostics/metrics.hpp>
#include <normflow/errors.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/train/adamw.hpp>
#include <normflow/train/loss.hpp>

namespace normflow {

/// Training stopped (a non-finite loss); the message names the epoch.
struct TrainingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Learning-rate schedule, stepped once per epoch.
enum class Scheduler {
  none,    ///< constant lr
  cosine,  ///< cosine annealing to 0 over T_max = int(1.01 n_epochs + 1) epochs (the reference's)
};

/// When to print the live progress line (to stderr).
enum class Progress { automatic, always, never };

/// The chunk of a training step that TrainConfig::chunk_size = 0 selects on a lattice of `volume`
/// sites: 64 samples while a field of 64 samples takes at most 32 KiB (its conditioner's hidden
/// activations, about 8 times that, then stay in L2 at any lane width), else 256 bytes of samples
/// per site and channel (64 in float, 32 in double), so that a convolution's taps around one site
/// (9 sites x 8 channels x 256 bytes = 18 KB) stay in L1.
template <class T>
constexpr long long auto_chunk_size(long long volume) noexcept {
  constexpr long long wide = 64, bytes = static_cast<long long>(sizeof(T));
  if (volume * wide * bytes <= 32 * 1024) return wide;
  return std::max<long long>(1, std::min(wide, 256 / bytes));
}

/// The options of Trainer::run_training (designated initializers, in this order).
struct TrainConfig {
  long long n_epochs = 1000;      ///< optimiser steps, each on a fresh batch
  long long batch_size = 128;     ///< samples per step
  double lr = 1e-3;               ///< AdamW learning rate
  double weight_decay = 1e-2;     ///< AdamW decoupled weight decay
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  Scheduler scheduler = Scheduler::none;
  bool path_gradient = true;      ///< path gradient (default; reverse-KL loss only, see above) or the total gradient
  LossFunction loss_fn = Losses::kl_mean;  ///< reverse KL by default; Losses::minus_log_ess; any callable
  bool clip_grad_norm = false;    ///< clip the total gradient norm to max_grad_norm
  double max_grad_norm = 1.0;
  long long alpha_tmax = 0;       ///< > 0: anneal alpha from 0 to 1 over alpha_tmax epochs
  std::vector<ParamGroup> groups = {};  ///< per-group AdamW hyper-parameters (empty: one group)
  std::string csv_path = {};      ///< metrics CSV (epoch, loss, ess, logp, lr, seconds); empty: none
  bool csv_seconds = true;        ///< false: leave out the wall-clock column (the file is then bitwise reproducible)
  Progress progress = Progress::automatic;
  std::string checkpoint_path = {};  ///< write a checkpoint here (atomically) every checkpoint_every epochs and at the end
  long long checkpoint_every = 0;    ///< 0: only at the end
  std::function<void(long long epoch)> on_epoch = {};  ///< called after every epoch
  /// Samples per chunk of a training step. The step runs the flow, the action and the adjoints
  /// chunk by chunk, each chunk on its own fields and tape, and adds the chunks' parameter
  /// gradients in chunk order: with several threads each thread takes whole chunks (one
  /// synchronisation per step instead of one per kernel, and no data shared between cores),
  /// otherwise the chunks run one after another on all threads. Results depend on chunk_size (the
  /// order of the gradient's sum), never on the thread count. Measured here (16 affine couplings
  /// 1 -> 8 -> 8 -> 2, batch 128, against one chunk of 128): on one thread about the same in float
  /// on 8x8 and 16x16, 2-5% faster on 32x32, 6-18% faster in double (smaller working sets); two
  /// threads 1.9-2.2 times as fast as one (1.3-1.8 before). See benchmarks/README.md.
  /// 0 (the default): automatic (auto_chunk_size): 64 samples, but 32 in double on lattices of
  /// more than 64 sites. 32 against 64 in double (same reference flow and batch): 16x16 -5% on
  /// one thread, -2% on two; 32x32 -6% on either; but 8x8 +8-12% on one thread. In float, 32
  /// samples measured 5-7% slower than 64 on 16x16 and 32x32.
  long long chunk_size = 0;
};

/// One row of the training history.
struct EpochRecord {
  long long epoch;
  double loss, ess, logp, lr, seconds;
};

template <class M>
class Trainer {
 public:
  using field_type = typename M::field_type;
  using T = typename field_type::value_type;

  explicit Trainer(M& model) noexcept : m_model(model) {}

  /// Runs n_epochs optimiser steps (the epoch counter carries over between calls; the optimiser
  /// is rebuilt on every call, as the reference does, unless restore_optimizer was called).
  void run_training(const TrainConfig& c) {
    validate(c);
    const index_t B = index_t(c.batch_size);
    const std::size_t P = m_model.net_.num_params();
    AdamWHyper h{c.lr, c.beta1, c.beta2, c.eps, c.weight_decay};
    std::vector<ParamGroup> groups = c.groups;
    if (groups.empty()) groups.push_back({0, P, h});
    m_opt = AdamW(P, groups);
    if (m_pending) {  // optimiser state restored from a checkpoint
      if (m_pending->m.size() != P)
        throw ParameterError(detail::concat("run_training: the restored optimiser state has ", m_pending->m.size(),
                                            " entries, the net has ", P, " parameters"));
      m_opt.first_moment() = m_pending->m;
      m_opt.second_moment() = m_pending->v;
      m_opt.set_step_count(m_pending->step);
      m_pending.reset();
    }
    Buffers buf(B);
    const long long t_max = (long long)(1.01 * double(c.n_epochs) + 1);
    const bool show = c.progress == Progress::always || (c.progress == Progress::automatic && isatty(fileno(stderr)));
    std::ofstream csv;
    if (!c.csv_path.empty()) {
      csv.open(c.csv_path, std::ios::out | std::ios::trunc);
      if (!csv) throw std::runtime_error("run_training: cannot write the metrics CSV '" + c.csv_path + "'");
      csv << (c.csv_seconds ? "epoch,loss,ess,logp,lr,seconds\n" : "epoch,loss,ess,logp,lr\n");
    }
    double alpha = 0;
    const auto t0 = std::chrono::steady_clock::now();
    auto last_print = t0;
    for (long long e = 0; e < c.n_epochs; ++e) {
      const long long epoch = ++m_epoch;
      const double lr_scale = c.scheduler == Scheduler::cosine
                                  ? 0.5 * (1 + std::cos(std::numbers::pi * double(e) / double(t_max)))
                                  : 1.0;
      const double a = c.alpha_tmax > 0 ? alpha : 1.0;
      const auto [loss, ess, logp_mean] = step(c, a, buf);
      m_opt.step(m_model.net_.params(), std::span<const T>(m_model.net_.grads()), lr_scale);
      if (c.alpha_tmax > 0) alpha = std::min(1.0, alpha + 1.0 / double(c.alpha_tmax));
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const EpochRecord rec{epoch, loss, ess, logp_mean, c.lr * lr_scale, secs};
      m_history.push_back(rec);
      if (csv) {
        char line[256];
        const int n = std::snprintf(line, sizeof line, "%lld,%.17g,%.17g,%.17g,%.17g", rec.epoch, rec.loss, rec.ess,
                                    rec.logp, rec.lr);
        if (c.csv_seconds) std::snprintf(line + n, sizeof line - std::size_t(n), ",%.3f", rec.seconds);
        std::strcat(line, "\n");
        csv << line;
      }
      if (show) {
        const auto now = std::chrono::steady_clock::now();
        if (e + 1 == c.n_epochs || now - last_print > std::chrono::milliseconds(100)) {
          last_print = now;
          const double rate = double(e + 1) / std::max(secs, 1e-9);
          std::fprintf(stderr, "\repoch %lld/%lld  loss %.4f  ess %.3f  %.0f epochs/s  %.0fs left   ", e + 1, c.n_epochs,
                       loss, ess, rate, double(c.n_epochs - e - 1) / rate);
          if (e + 1 == c.n_epochs) std::fprintf(stderr, "\n");
        }
      }
      if (!c.checkpoint_path.empty() &&
          ((c.checkpoint_every > 0 && (e + 1) % c.checkpoint_every == 0) || e + 1 == c.n_epochs))
        m_model.save_checkpoint(c.checkpoint_path);
      if (c.on_epoch) c.on_epoch(epoch);
    }
    if (csv) {
      csv.flush();
      if (!csv) throw std::runtime_error("run_training: writing the metrics CSV '" + c.csv_path + "' failed");
    }
  }

  /// Epochs trained so far (carried across run_training calls).
  long long current_epoch() const noexcept { return m_epoch; }
  void set_current_epoch(long long e) noexcept { m_epoch = e; }
  const std::vector<EpochRecord>& history() const noexcept { return m_history; }
  /// The optimiser of the last (or current) run_training call.
  const AdamW& optimizer() const noexcept { return m_opt; }
  /// Adam's moments and step for the next run_training call (from a checkpoint); the
  /// hyper-parameters come from that call's config.
  void restore_optimizer(std::vector<double> m, std::vector<double> v, std::uint64_t step) {
    m_pending = OptimizerState{std::move(m), std::move(v), step};
  }

  /// Fills the net's gradients for one batch x (log r given) and returns {loss, ess, mean log p}.
  /// Exposed for tests of the estimators; run_training calls it once per epoch.
  struct StepResult {
    double loss, ess, logp_mean;
  };
  /// One chunk of a step's batch (TrainConfig::chunk_size): samples [b0, b0 + nb) of the batch,
  /// with its own fields, tape and parameter gradient.
  struct Chunk {
    Chunk(index_t b0_, index_t nb_, std::size_t params)
        : b0(b0_), nb(nb_), x(nb_), y(nb_), g(nb_), gy(nb_), gx(nb_), force(nb_), grads(params) {}
    index_t b0, nb;
    field_type x, y, g, gy, gx, force;
    typename M::net_type::tape_type tape;
    std::vector<T> grads;
  };
  struct Buffers {
    explicit Buffers(index_t B)
        : x(B), y(B), g(B), gy(B), gx(B), force(B), logr(std::size_t(B)), logj(std::size_t(B)), s(std::size_t(B)),
          logq(std::size_t(B)), logp(std::size_t(B)), dq(std::size_t(B)), dp(std::size_t(B)), gl(std::size_t(B)),
          logr_y(std::size_t(B)) {}
    field_type x, y, g, gy, gx, force;
    std::vector<T> logr, logj, s;
    std::vector<double> logq, logp, dq, dp;
    std::vector<T> gl, logr_y;
    typename M::net_type::tape_type tape;  // the whole batch when it is one chunk
    std::vector<Chunk> chunks;             // otherwise (laid out by step)
  };
  StepResult step(const TrainConfig& c, double alpha, Buffers& buf, bool draw = true) {
    auto& net = m_model.net_;
    auto& prior = m_model.prior;
    const index_t B = buf.x.batch();
    if (c.chunk_size < 0)
      throw ParameterError(
          detail::concat("Trainer::step: chunk_size = ", c.chunk_size, " must be >= 0 (0: automatic)"));
    if (draw) prior.sample_into(buf.x);
    prior.log_prob(buf.x, std::span<T>(buf.logr));
    std::fill(buf.logj.begin(), buf.logj.end(), T(0));
    const bool path = c.path_gradient && is_reverse_kl(c.loss_fn);
    const long long want = c.chunk_size > 0 ? c.chunk_size : auto_chunk_size<T>(field_type::volume);
    const index_t chunk = index_t(std::min<long long>(want, std::max<index_t>(B, 1)));
    const index_t nchunks = B > 0 ? (B + chunk - 1) / chunk : 1;
    if (nchunks > 1) lay_out_chunks(buf, chunk, nchunks);
    // log q and log p of the samples [b0, b0 + nb)
    auto densities = [&](index_t b0, index_t nb) {
      for (index_t b = b0; b < b0 + nb; ++b) {
        buf.logq[std::size_t(b)] = double(buf.logr[std::size_t(b)]) - double(buf.logj[std::size_t(b)]);
        buf.logp[std::size_t(b)] = -alpha * double(buf.s[std::size_t(b)]) +
                                   (alpha < 1 ? (1 - alpha) * double(buf.logr_y[std::size_t(b)]) : 0.0);
      }
    };
    // the cotangent on the log-determinant from the loss's derivatives, samples [b0, b0 + nb)
    auto log_det_cotangent = [&](index_t b0, index_t nb) {
      for (index_t b = b0; b < b0 + nb; ++b) buf.gl[std::size_t(b)] = path ? T(0) : T(-buf.dq[std::size_t(b)]);
    };
    auto check_loss = [&](double loss) {
      if (!std::isfinite(loss))
        throw TrainingError(detail::concat("run_training: the loss is ", loss, " at epoch ", m_epoch,
                                           "; stopping (parameters and the last checkpoint are left as they were "
                                           "before this epoch; try a smaller lr or double precision)"));
    };
    auto forward_chunk = [&](Chunk& ch, auto exec) {
      copy_lanes(buf.x, ch.b0, ch.x, 0, ch.nb);
      forward_part(ch.x, ch.y, ch.g, ch.gx, ch.force, ch.tape, ch.b0, ch.nb, buf, path, alpha, exec);
      copy_lanes(ch.y, 0, buf.y, ch.b0, ch.nb);  // the batch's y, for callers
    };
    auto backward_chunk = [&](Chunk& ch, auto exec) {
      std::fill(ch.grads.begin(), ch.grads.end(), T(0));
      backward_part(ch.gy, ch.g, ch.force, ch.tape, ch.gx, ch.b0, ch.nb, buf, path, std::span<T>(ch.grads), exec);
    };
    double loss = 0;
    if (nchunks > 1 && is_reverse_kl(c.loss_fn)) {
      // The reverse KL's per-sample derivatives do not depend on the batch (dq = 1/B, dp = -1/B:
      // Losses::kl_mean), so each chunk runs its backward half right after its forward half,
      // while the end of its tape is still in cache (32x32 x 128 float, one thread: the tape of a
      // chunk of 64 samples is 88 MB, and with every forward half first the backward halves read
      // all of it from memory). The same operations on the same values as the split order below,
      // so the same bits; the loss is checked before the step returns, before any update.
      const double n = double(B);
      for_each_chunk(buf, [&](Chunk& ch, auto exec) {
        forward_chunk(ch, exec);
        densities(ch.b0, ch.nb);
        for (index_t b = ch.b0; b < ch.b0 + ch.nb; ++b) buf.dq[std::size_t(b)] = 1 / n, buf.dp[std::size_t(b)] = -1 / n;
        log_det_cotangent(ch.b0, ch.nb);
        backward_chunk(ch, exec);
      });
      loss = c.loss_fn(buf.logq, buf.logp, buf.dq, buf.dp);
      check_loss(loss);
      net.zero_grads();
      sum_chunk_grads(buf);
    } else {
      if (nchunks == 1) {
        with_host_exec([&](auto exec) {
          forward_part(buf.x, buf.y, buf.g, buf.gx, buf.force, buf.tape, 0, B, buf, path, alpha, exec);
        });
      } else {
        for_each_chunk(buf, forward_chunk);
      }
      densities(0, B);
      loss = c.loss_fn(buf.logq, buf.logp, buf.dq, buf.dp);
      check_loss(loss);
      log_det_cotangent(0, B);
      net.zero_grads();
      if (nchunks == 1) {
        with_host_exec([&](auto exec) {
          backward_part(buf.gy, buf.g, buf.force, buf.tape, buf.gx, 0, B, buf, path, net.grads(), exec);
        });
      } else {
        for_each_chunk(buf, backward_chunk);
        sum_chunk_grads(buf);
      }
    }
    if (c.clip_grad_norm) {
      double n2 = 0;
      for (T v : net.grads()) n2 += double(v) * double(v);
      const double norm = std::sqrt(n2);
      if (norm > c.max_grad_norm) {
        const T scale = T(c.max_grad_norm / (norm + 1e-6));
        for (T& v : net.grads()) v *= scale;
      }
    }
    double lp = 0;
    for (double v : buf.logp) lp += v;
    const double ess = Metrics::calc_ess(std::span<const double>(buf.logq), std::span<const double>(buf.logp));
    return {loss, ess, lp / double(B)};
  }

 private:
  /// The forward half of a step on the samples [b0, b0 + nb) of the batch held in (x, y, g, gx,
  /// force, tape): y = f(x) with log_det, the path term g (path gradient), S(y) and grad log p(y)
  /// into force; the per-sample values into buf's vectors at b0.
  template <class Exec>
  void forward_part(const field_type& x, field_type& y, field_type& g, field_type& gx, field_type& force,
                    typename M::net_type::tape_type& tape, index_t b0, index_t nb, Buffers& buf, bool path,
                    double alpha, Exec exec) {
    auto& net = m_model.net_;
    auto& prior = m_model.prior;
    const std::span<T> logj(buf.logj.data() + b0, std::size_t(nb)), s(buf.s.data() + b0, std::size_t(nb));
    const std::span<T> gl(buf.gl.data() + b0, std::size_t(nb)), logr_y(buf.logr_y.data() + b0, std::size_t(nb));
    if (path) {
      // the path gradient's cotangent on y: the reverse adjoint of grad log r(x) (and 1 on the
      // log-determinant), fused with the forward pass (Chain::forward_path: each layer's adjoint
      // while its tape is in cache; bench_flow's ForwardPath: 8x8 2.5-5%, 32x32 9-12% less time)
      if constexpr (requires { prior.grad_log_prob(x, gx, exec); })
        prior.grad_log_prob(x, gx, exec);
      else
        prior.grad_log_prob(x, gx);
      std::fill(gl.begin(), gl.end(), T(1));
      net.forward_path(x, y, logj, tape, gx, std::span<const T>(gl), g, exec);
    } else {
      net.forward(x, y, logj, tape, exec);
    }
    // grad log p = alpha force + (1 - alpha) grad log r(y)
    if constexpr (requires { m_model.action.action(y, s, exec); }) {
      m_model.action.action(y, s, exec);
      m_model.action.force(y, force, exec);
    } else {
      m_model.action.action(y, s);
      m_model.action.force(y, force);
    }
    if (alpha < 1) {
      if constexpr (requires { prior.log_prob(y, logr_y, exec); }) {
        prior.log_prob(y, logr_y, exec);
        prior.grad_log_prob(y, gx, exec);  // scratch
      } else {
        prior.log_prob(y, logr_y);
        prior.grad_log_prob(y, gx);
      }
      for (index_t s2 = 0; s2 < field_type::volume; ++s2)
        for (index_t c = 0; c < field_type::components; ++c)
          for (index_t b = 0; b < nb; ++b)
            force(s2, c, b) = T(alpha) * force(s2, c, b) + T(1 - alpha) * gx(s2, c, b);
    }
  }

  /// The backward half on the same samples: the cotangent on y from the loss's per-sample
  /// derivatives (buf.dq, buf.dp at b0; g: the path term from forward_part), then the flow's
  /// adjoint, adding the parameter gradient into gp.
  template <class Exec>
  void backward_part(field_type& gy, const field_type& g, const field_type& force,
                     typename M::net_type::tape_type& tape, field_type& gx, index_t b0, index_t nb, Buffers& buf,
                     bool path, std::span<T> gp, Exec exec) {
    for (index_t s2 = 0; s2 < field_type::volume; ++s2)
      for (index_t c = 0; c < field_type::components; ++c) {
        T* out = gy.lanes(s2, c);
        const T* f = force.lanes(s2, c);
        const T* pg = g.lanes(s2, c);
        for (index_t b = 0; b < nb; ++b) {
          const T cp = T(buf.dp[std::size_t(b0 + b)]);
          out[b] = path ? T(buf.dq[std::size_t(b0 + b)]) * pg[b] + cp * f[b] : cp * f[b];
        }
      }
    m_model.net_.backward_into(tape, gy, std::span<const T>(buf.gl.data() + b0, std::size_t(nb)), gx, gp, exec);
  }

  /// net.grads() += the chunks' gradients, in chunk order (the same sums whatever the thread count).
  void sum_chunk_grads(const Buffers& buf) {
    const std::span<T> grads = m_model.net_.grads();
    for (const Chunk& ch : buf.chunks)
      for (std::size_t i = 0; i < grads.size(); ++i) grads[i] += ch.grads[i];
  }

  /// dst's lanes [to, to + nb) = src's lanes [from, from + nb), every site and component.
  static void copy_lanes(const field_type& src, index_t from, field_type& dst, index_t to, index_t nb) {
    for (index_t s2 = 0; s2 < field_type::volume; ++s2)
      for (index_t c = 0; c < field_type::components; ++c)
        std::copy_n(src.lanes(s2, c) + from, nb, dst.lanes(s2, c) + to);
  }

  /// Lays out buf.chunks for chunks of `chunk` samples (allocating only when the layout changes).
  void lay_out_chunks(Buffers& buf, index_t chunk, index_t nchunks) const {
    const index_t B = buf.x.batch();
    bool same = index_t(buf.chunks.size()) == nchunks;
    for (index_t k = 0; same && k < nchunks; ++k)
      same = buf.chunks[std::size_t(k)].b0 == k * chunk &&
             buf.chunks[std::size_t(k)].nb == std::min(chunk, B - k * chunk);
    if (same) return;
    buf.chunks.clear();
    buf.chunks.reserve(std::size_t(nchunks));
    for (index_t k = 0; k < nchunks; ++k)
      buf.chunks.emplace_back(k * chunk, std::min(chunk, B - k * chunk), m_model.net_.num_params());
  }

  /// f(exec::Serial{}) on one thread (no parallel regions of one thread: about 900 per 8x8 step),
  /// else f(exec::HostDefault{}). The same results either way.
  template <class F>
  static void with_host_exec(F&& f) {
    if (exec::max_threads() <= 1)
      f(exec::Serial{});
    else
      f(exec::HostDefault{});
  }

  /// f(chunk, exec) for every chunk: whole chunks per thread (exec::Serial inside, the threads'
  /// blocks of exec::for_each_thread_block) when there are at least as many chunks as threads,
  /// else one after another on all threads. The first exception a chunk throws is rethrown.
  template <class F>
  static void for_each_chunk(Buffers& buf, F&& f) {
    const index_t n = index_t(buf.chunks.size());
    const int threads = exec::max_threads();
    if (threads <= 1 || n < threads) {
      with_host_exec([&](auto exec) {
        for (Chunk& ch : buf.chunks) f(ch, exec);
      });
      return;
    }
    exec::for_each_thread_block(n, [&](offset_t lo, offset_t hi) {
      for (offset_t k = lo; k < hi; ++k) f(buf.chunks[std::size_t(k)], exec::Serial{});
    });
  }

  /// True when f holds Losses::kl_mean (the loss whose path gradient is unbiased).
  static bool is_reverse_kl(const LossFunction& f) {
    using Fn = double (*)(std::span<const double>, std::span<const double>, std::span<double>, std::span<double>);
    const Fn* p = f.template target<Fn>();
    return p != nullptr && *p == &Losses::kl_mean;
  }

  static void validate(const TrainConfig& c) {
    if (c.n_epochs < 0)
      throw ParameterError(detail::concat("run_training: n_epochs = ", c.n_epochs, " must be >= 0"));
    if (c.batch_size < 2 || c.batch_size >= (1ll << 24))
      throw ParameterError(
          detail::concat("run_training: batch_size = ", c.batch_size, " is outside the valid range [2, 2^24)"));
    AdamW::validate({c.lr, c.beta1, c.beta2, c.eps, c.weight_decay});
    if (c.clip_grad_norm && !(c.max_grad_norm > 0))
      throw ParameterError(detail::concat("run_training: max_grad_norm = ", c.max_grad_norm, " must be > 0"));
    if (c.checkpoint_every < 0)
      throw ParameterError(detail::concat("run_training: checkpoint_every = ", c.checkpoint_every, " must be >= 0"));
    if (c.alpha_tmax < 0)
      throw ParameterError(detail::concat("run_training: alpha_tmax = ", c.alpha_tmax, " must be >= 0 (0: off)"));
    if (!c.loss_fn) throw ParameterError("run_training: loss_fn is empty; give a loss such as Losses::kl_mean");
    if (c.chunk_size < 0)
      throw ParameterError(
          detail::concat("run_training: chunk_size = ", c.chunk_size, " must be >= 0 (0: automatic)"));
  }

  struct OptimizerState {
    std::vector<double> m, v;
    std::uint64_t step;
  };
  M& m_model;
  AdamW m_opt;
  std::optional<OptimizerState> m_pending;
  long long m_epoch = 0;
  std::vector<EpochRecord> m_history;
};

}  // namespace normflow
