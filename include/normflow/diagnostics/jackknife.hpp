// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Binned jackknife errors for (possibly autocorrelated) Monte Carlo series (reference 5.3,
/// with the correct jackknife scaling the reference lacks).
///
/// Maths. Split N samples into n = N / bin bins (the remainder is dropped). For a function f of
/// the means of several series, with f_i computed leaving bin i out and f_bar their mean:
///   estimate = f(all samples),   error^2 = (n - 1)/n * sum_i (f_i - f_bar)^2.
/// Binning makes the error honest when the bin is longer than the autocorrelation time (an
/// independence Metropolis chain repeats states after rejections).

#include <cmath>
#include <functional>
#include <span>
#include <vector>

#include <normflow/diagnostics/metrics.hpp>
#include <normflow/errors.hpp>

namespace normflow {

/// Value and jackknife error of f(mean(series_0), mean(series_1), ...).
inline MeanStd jackknife(const std::vector<std::span<const double>>& series, std::size_t bin,
                         const std::function<double(std::span<const double>)>& f) {
  if (series.empty()) throw ShapeError("jackknife: give at least one series");
  const std::size_t N = series[0].size();
  for (const auto& s : series)
    if (s.size() != N) throw ShapeError("jackknife: every series must have the same length");
  if (bin < 1) throw ParameterError("jackknife: bin = 0 must be at least 1");
  const std::size_t n = N / bin;
  if (n < 2) throw ParameterError(detail::concat("jackknife: ", N, " samples in bins of ", bin, " give fewer than 2 bins"));
  const std::size_t K = series.size();
  std::vector<double> bin_sum(n * K, 0.0), total(K, 0.0);
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t i = 0; i < n * bin; ++i) {
      bin_sum[(i / bin) * K + k] += series[k][i];
      total[k] += series[k][i];
    }
  std::vector<double> means(K), f_i(n);
  for (std::size_t k = 0; k < K; ++k) means[k] = total[k] / double(n * bin);
  const double full = f(means);
  double fbar = 0;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < K; ++k) means[k] = (total[k] - bin_sum[i * K + k]) / double((n - 1) * bin);
    f_i[i] = f(means);
    fbar += f_i[i];
  }
  fbar /= double(n);
  double var = 0;
  for (double v : f_i) var += (v - fbar) * (v - fbar);
  return {full, std::sqrt(var * double(n - 1) / double(n))};
}

/// Mean of one series with its binned jackknife error (= the binned standard error).
inline MeanStd jackknife_mean(std::span<const double> v, std::size_t bin) {
  return jackknife({v}, bin, [](std::span<const double> m) { return m[0]; });
}

}  // namespace normflow
