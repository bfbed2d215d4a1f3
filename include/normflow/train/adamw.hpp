// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file AdamW over flat parameter storage, with per-group hyper-parameters (reference 4.4).
///
/// Maths (PyTorch's AdamW, step t = 1, 2, ..., per parameter with gradient g):
///   m <- b1 m + (1 - b1) g,      v <- b2 v + (1 - b2) g^2
///   theta <- theta (1 - lr wd)
///   theta <- theta - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// Defaults lr = 1e-3, betas (0.9, 0.999), eps = 1e-8, weight_decay = 1e-2. Moments are kept in
/// double whatever the parameter type. Element-wise: the same bits with any thread count.

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <normflow/errors.hpp>

namespace normflow {

/// Hyper-parameters of one AdamW group.
struct AdamWHyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

/// A contiguous range [begin, end) of the flat parameters with its own hyper-parameters (the
/// reference's `setup_groups`); lr is scaled by the scheduler like the others.
struct ParamGroup {
  std::size_t begin = 0;
  std::size_t end = 0;
  AdamWHyper hyper{};
};

/// AdamW over one flat parameter vector, optionally split into groups.
class AdamW {
 public:
  AdamW() = default;
  /// One group over all n parameters.
  AdamW(std::size_t n, AdamWHyper h) : AdamW(n, std::vector<ParamGroup>{{0, n, h}}) {}
  /// Groups must be disjoint and lie inside [0, n); parameters in no group are not updated.
  AdamW(std::size_t n, std::vector<ParamGroup> groups) : m_groups(std::move(groups)), m_m(n, 0.0), m_v(n, 0.0) {
    for (const ParamGroup& g : m_groups) {
      if (g.begin > g.end || g.end > n)
        throw ParameterError(detail::concat("AdamW: group [", g.begin, ", ", g.end, ") is outside [0, ", n, ")"));
      validate(g.hyper);
    }
  }

  static void validate(const AdamWHyper& h) {
    require_finite(h.lr, "AdamW", "lr");
    if (!(h.lr >= 0)) throw ParameterError(detail::concat("AdamW: lr = ", h.lr, " must be >= 0"));
    if (!(h.beta1 >= 0 && h.beta1 < 1))
      throw ParameterError(detail::concat("AdamW: beta1 = ", h.beta1, " is outside [0, 1)"));
    if (!(h.beta2 >= 0 && h.beta2 < 1))
      throw ParameterError(detail::concat("AdamW: beta2 = ", h.beta2, " is outside [0, 1)"));
    if (!(h.eps > 0)) throw ParameterError(detail::concat("AdamW: eps = ", h.eps, " must be > 0"));
    if (!(h.weight_decay >= 0))
      throw ParameterError(detail::concat("AdamW: weight_decay = ", h.weight_decay, " must be >= 0"));
  }

  /// One step; the learning rate of every group is multiplied by lr_scale (the scheduler's).
  template <class T>
  void step(std::span<T> params, std::span<const T> grads, double lr_scale = 1.0) {
    if (params.size() != m_m.size() || grads.size() != m_m.size())
      throw ShapeError(detail::concat("AdamW::step: ", params.size(), " parameters and ", grads.size(),
                                      " gradients for an optimiser of ", m_m.size()));
    ++m_step;
    for (const ParamGroup& g : m_groups) {
      const AdamWHyper& h = g.hyper;
      const double lr = h.lr * lr_scale;
      const double bc1 = 1 - std::pow(h.beta1, double(m_step)), bc2 = std::sqrt(1 - std::pow(h.beta2, double(m_step)));
      for (std::size_t i = g.begin; i < g.end; ++i) {
        const double gi = double(grads[i]);
        m_m[i] = h.beta1 * m_m[i] + (1 - h.beta1) * gi;
        m_v[i] = h.beta2 * m_v[i] + (1 - h.beta2) * gi * gi;
        double th = double(params[i]) * (1 - lr * h.weight_decay);
        th -= (lr / bc1) * m_m[i] / (std::sqrt(m_v[i]) / bc2 + h.eps);
        params[i] = T(th);
      }
    }
  }

  std::uint64_t step_count() const noexcept { return m_step; }
  const std::vector<ParamGroup>& groups() const noexcept { return m_groups; }
  /// First and second moments (for checkpoints).
  std::vector<double>& first_moment() noexcept { return m_m; }
  std::vector<double>& second_moment() noexcept { return m_v; }
  const std::vector<double>& first_moment() const noexcept { return m_m; }
  const std::vector<double>& second_moment() const noexcept { return m_v; }
  void set_step_count(std::uint64_t t) noexcept { m_step = t; }

 private:
  std::vector<ParamGroup> m_groups;
  std::vector<double> m_m, m_v;
  std::uint64_t m_step = 0;
};

}  // namespace normflow
