// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file reverse_flow_sanitychecker: checks that the flow's reverse inverts its forward (the
/// reference's `reverse_flow_sanitychecker`): x ~ prior, y = f(x), x' = f^{-1}(y), and reports
///   max |x' - x| / max |x|,   max |logJ_f + logJ_{f^-1}|,   max |J_f J_{f^-1} - 1|.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>
#include <vector>

#include <normflow/lattice/lattice.hpp>

namespace normflow {

struct SanityReport {
  double rel_error_x = 0;     ///< max |x' - x| / max |x|
  double log_det_sum = 0;     ///< max over samples of |logJ_f + logJ_{f^-1}|
  double det_product_m1 = 0;  ///< max over samples of |exp(logJ_f + logJ_{f^-1}) - 1|
};

/// Runs the check on n prior samples; prints a one-line summary when `print`.
template <class M>
SanityReport reverse_flow_sanitychecker(M& model, long long n_samples = 4, bool print = true) {
  using F = typename M::field_type;
  using T = typename F::value_type;
  F x = model.prior.sample(n_samples), y(x.batch()), x2(x.batch());
  std::vector<T> ld(std::size_t(x.batch()), T(0)), ldr(std::size_t(x.batch()), T(0));
  typename M::net_type::tape_type tape;
  model.net_.forward(x, y, std::span<T>(ld), tape);
  model.net_.reverse(y, x2, std::span<T>(ldr), tape);
  SanityReport r;
  double xmax = 0, dmax = 0;
  for (index_t s = 0; s < F::volume; ++s)
    for (index_t b = 0; b < x.batch(); ++b) {
      xmax = std::max(xmax, std::abs(double(x(s, b))));
      dmax = std::max(dmax, std::abs(double(x2(s, b)) - double(x(s, b))));
    }
  r.rel_error_x = xmax > 0 ? dmax / xmax : dmax;
  for (std::size_t b = 0; b < ld.size(); ++b) {
    const double sum = double(ld[b]) + double(ldr[b]);
    r.log_det_sum = std::max(r.log_det_sum, std::abs(sum));
    r.det_product_m1 = std::max(r.det_product_m1, std::abs(std::expm1(sum)));
  }
  if (print)
    std::printf("reverse-flow sanity check (%lld samples): |x' - x|/|x| = %.2e, |logJ + logJ_rev| = %.2e, "
                "|J J_rev - 1| = %.2e\n",
                n_samples, r.rel_error_x, r.log_det_sum, r.det_product_m1);
  return r;
}

}  // namespace normflow
