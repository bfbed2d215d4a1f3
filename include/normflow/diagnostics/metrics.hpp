// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Metrics of a flow q against a target p from per-sample (log q, log p) (reference 4.2).
///
/// Maths, with Delta_b = log q_b - log p_b, N samples, LSE the log-sum-exp over samples and
/// w_b = p_b / q_b = exp(-Delta_b) the importance weights:
///   ESS       = exp(2 LSE(-Delta) - LSE(-2 Delta)) / N  = (sum w)^2 / (N sum w^2)  in (0, 1]
///   log Z     ~ LSE(-Delta) - ln N          (importance-sampling estimate; p unnormalised)
///   err(log Z) ~ sqrt((1/ESS - 1) / N)       (delta method: relative error of the mean weight)
///   KL mean   = mean(Delta)  (reverse KL up to + log Z),   KL var = unbiased variance of Delta
///   minus log ESS = -(2 LSE(-Delta) - LSE(-2 Delta)) + ln N
///   direct KL = mean(w~ (-Delta - log Z)) with w~ = exp(-Delta - log Z)
/// Everything is computed in double with max-shifted log-sum-exps, so |Delta| up to 1e4 and
/// beyond is exact to rounding (no overflow of exp).

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include <normflow/errors.hpp>

namespace normflow {

/// Mean and standard deviation (unbiased) of a set of numbers.
struct MeanStd {
  double mean = 0;
  double std = 0;
};

namespace detail {
template <class A, class B>
void require_same_length(std::span<A> logq, std::span<B> logp, const char* where) {
  if (logq.size() != logp.size())
    throw ShapeError(concat(where, ": logq has ", logq.size(), " entries but logp has ", logp.size()));
  if (logq.empty()) throw ShapeError(concat(where, ": needs at least one sample (logq and logp are empty)"));
}

/// log sum_b exp(c * (logp_b - logq_b)), shifted by the maximum.
template <class A, class B>
double lse_minus_delta(std::span<A> logq, std::span<B> logp, double c) {
  double m = -std::numeric_limits<double>::infinity();
  for (std::size_t b = 0; b < logq.size(); ++b) m = std::max(m, c * (double(logp[b]) - double(logq[b])));
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (std::size_t b = 0; b < logq.size(); ++b) s += std::exp(c * (double(logp[b]) - double(logq[b])) - m);
  return m + std::log(s);
}
}  // namespace detail

/// Mean and unbiased standard deviation of v (std = 0 for one value).
template <class T>
MeanStd mean_std(std::span<const T> v) {
  if (v.empty()) throw ShapeError("mean_std: needs at least one value");
  double m = 0;
  for (T x : v) m += double(x);
  m /= double(v.size());
  double q = 0;
  for (T x : v) q += (double(x) - m) * (double(x) - m);
  return {m, v.size() > 1 ? std::sqrt(q / double(v.size() - 1)) : 0.0};
}
template <class T>
MeanStd mean_std(const std::vector<T>& v) {
  return mean_std(std::span<const T>(v));
}

/// The reference's `Metrics`: functions of per-sample (logq, logp).
struct Metrics {
  /// Normalised effective sample size (sum w)^2 / (N sum w^2), in (0, 1].
  template <class A, class B>
  static double calc_ess(std::span<const A> logq, std::span<const B> logp) {
    detail::require_same_length(logq, logp, "calc_ess");
    const double a = detail::lse_minus_delta(logq, logp, 1.0), b = detail::lse_minus_delta(logq, logp, 2.0);
    return std::exp(2 * a - b) / double(logq.size());
  }
  /// -ln ESS (the "ESS loss").
  template <class A, class B>
  static double calc_minus_logess(std::span<const A> logq, std::span<const B> logp) {
    detail::require_same_length(logq, logp, "calc_minus_logess");
    const double a = detail::lse_minus_delta(logq, logp, 1.0), b = detail::lse_minus_delta(logq, logp, 2.0);
    return -(2 * a - b) + std::log(double(logq.size()));
  }
  /// mean(logq - logp): reverse KL up to + log Z (the default loss).
  template <class A, class B>
  static double calc_kl_mean(std::span<const A> logq, std::span<const B> logp) {
    return log_ratio(logq, logp).mean;
  }
  /// Unbiased variance of logq - logp.
  template <class A, class B>
  static double calc_kl_var(std::span<const A> logq, std::span<const B> logp) {
    const double s = log_ratio(logq, logp).std;
    return s * s;
  }
  /// -(LSE(logp - logq) - ln N) = -(estimate of log Z).
  template <class A, class B>
  static double calc_minus_logz(std::span<const A> logq, std::span<const B> logp) {
    detail::require_same_length(logq, logp, "calc_minus_logz");
    return -(detail::lse_minus_delta(logq, logp, 1.0) - std::log(double(logq.size())));
  }
  /// Forward-KL estimate mean(w~ (-Delta - log Z)), w~ = exp(-Delta - log Z).
  template <class A, class B>
  static double calc_direct_kl_mean(std::span<const A> logq, std::span<const B> logp) {
    const double logz = -calc_minus_logz(logq, logp);
    double s = 0;
    for (std::size_t b = 0; b < logq.size(); ++b) {
      const double e = double(logp[b]) - double(logq[b]) - logz;
      s += std::exp(e) * e;
    }
    return s / double(logq.size());
  }
  /// Pearson correlation of logq and logp.
  template <class A, class B>
  static double calc_corrcoef(std::span<const A> logq, std::span<const B> logp) {
    detail::require_same_length(logq, logp, "calc_corrcoef");
    const std::size_t n = logq.size();
    double mq = 0, mp = 0;
    for (std::size_t b = 0; b < n; ++b) mq += double(logq[b]), mp += double(logp[b]);
    mq /= double(n), mp /= double(n);
    double cqq = 0, cpp = 0, cqp = 0;
    for (std::size_t b = 0; b < n; ++b) {
      const double dq = double(logq[b]) - mq, dp = double(logp[b]) - mp;
      cqq += dq * dq, cpp += dp * dp, cqp += dq * dp;
    }
    return cqp / std::sqrt(cqq * cpp);
  }
  /// Mean and standard deviation of log(q/p) = logq - logp.
  template <class A, class B>
  static MeanStd log_ratio(std::span<const A> logq, std::span<const B> logp) {
    detail::require_same_length(logq, logp, "log_ratio");
    std::vector<double> d(logq.size());
    for (std::size_t b = 0; b < d.size(); ++b) d[b] = double(logq[b]) - double(logp[b]);
    return mean_std(std::span<const double>(d));
  }
};

/// Normalised ESS of per-sample (logq, logp); see Metrics::calc_ess.
template <class A, class B>
double ess(const std::vector<A>& logq, const std::vector<B>& logp) {
  return Metrics::calc_ess(std::span<const A>(logq), std::span<const B>(logp));
}
template <class A, class B>
double ess(std::span<const A> logq, std::span<const B> logp) {
  return Metrics::calc_ess(logq, logp);
}

/// Importance-sampling estimate of log Z = log E_q[p/q] with its statistical error.
struct LogZEstimate {
  double value;
  double error;
};

/// log Z ~ LSE(logp - logq) - ln N, error sqrt((1/ESS - 1)/N) (delta method).
template <class A, class B>
LogZEstimate estimate_log_z(std::span<const A> logq, std::span<const B> logp) {
  const double e = Metrics::calc_ess(logq, logp);
  return {-Metrics::calc_minus_logz(logq, logp), std::sqrt(std::max(0.0, (1.0 / e - 1.0) / double(logq.size())))};
}
template <class A, class B>
LogZEstimate estimate_log_z(const std::vector<A>& logq, const std::vector<B>& logp) {
  return estimate_log_z(std::span<const A>(logq), std::span<const B>(logp));
}

}  // namespace normflow
