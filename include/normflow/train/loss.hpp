// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Training losses of per-sample (log q, log p) with their derivatives (reference 4.2).
///
/// A loss returns its value and writes dL/dlogq_b and dL/dlogp_b. With Delta_b = logq_b - logp_b:
///   reverse KL (default):  L = mean(Delta),  dL/dlogq_b = 1/N,  dL/dlogp_b = -1/N
///   minus log ESS:         L = -(2 LSE(-Delta) - LSE(-2 Delta)) + ln N
///       with p_b = softmax(-Delta)_b and r_b = softmax(-2 Delta)_b:
///       dL/dlogq_b = 2 (p_b - r_b),  dL/dlogp_b = -2 (p_b - r_b)
/// A user loss is any callable of that shape (LossFunction).

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <span>

#include <normflow/errors.hpp>

namespace normflow {

/// value = L(logq, logp); writes dL/dlogq and dL/dlogp (each N entries).
using LossFunction = std::function<double(std::span<const double> logq, std::span<const double> logp,
                                          std::span<double> dlogq, std::span<double> dlogp)>;

/// The built-in losses.
struct Losses {
  /// mean(logq - logp): reverse KL divergence up to + log Z (the reference's default).
  static double kl_mean(std::span<const double> logq, std::span<const double> logp, std::span<double> dq,
                        std::span<double> dp) {
    const double n = double(logq.size());
    double s = 0;
    for (std::size_t b = 0; b < logq.size(); ++b) {
      s += logq[b] - logp[b];
      dq[b] = 1 / n;
      dp[b] = -1 / n;
    }
    return s / n;
  }

  /// -ln ESS (the reference's "ESS loss").
  static double minus_log_ess(std::span<const double> logq, std::span<const double> logp, std::span<double> dq,
                              std::span<double> dp) {
    const std::size_t n = logq.size();
    double m1 = -std::numeric_limits<double>::infinity();
    for (std::size_t b = 0; b < n; ++b) m1 = std::max(m1, logp[b] - logq[b]);
    double s1 = 0, s2 = 0;
    for (std::size_t b = 0; b < n; ++b) {
      const double e = logp[b] - logq[b] - m1;
      s1 += std::exp(e);
      s2 += std::exp(2 * e);
    }
    for (std::size_t b = 0; b < n; ++b) {
      const double e = logp[b] - logq[b] - m1;
      const double g = 2 * (std::exp(e) / s1 - std::exp(2 * e) / s2);
      dq[b] = g;
      dp[b] = -g;
    }
    const double lse1 = m1 + std::log(s1), lse2 = 2 * m1 + std::log(s2);
    return -(2 * lse1 - lse2) + std::log(double(n));
  }
};

}  // namespace normflow
