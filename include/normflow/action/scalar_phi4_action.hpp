// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file ScalarPhi4Action{kappa, m_sq, lambd}: real scalar phi^4 theory on any periodic lattice
/// (reference 2.1).
///
/// Maths. With d = Lat::rank (size-1 directions included) and periodic boundaries:
///   w0 = kappa,  w2 = m_sq/2 + d kappa,  w4 = lambd
///   S[phi] = sum_x [ w2 phi(x)^2 + w4 phi(x)^4 - w0 sum_mu phi(x) phi(x - mu^) ]
///          = sum_x [ (kappa/2) sum_mu (phi(x + mu^) - phi(x))^2 + (m_sq/2) phi^2 + lambd phi^4 ]
///   force(phi)(x) = -dS/dphi(x) = -2 w2 phi - 4 w4 phi^3 + kappa sum_mu [phi(x + mu^) + phi(x - mu^)]
///   action_density(x) = (m_sq/2) phi^2 + lambd phi^4
///                       + (kappa/4) sum_mu [(phi(x) - phi(x + mu^))^2 + (phi(x) - phi(x - mu^))^2]
///                       (sums to S; the kinetic part is non-negative)
///   potential(x) = (m_sq/2) phi^2 + lambd phi^4,   log_prob = -S - action_logz.
/// Sums over sites run in storage order per sample in the field's precision (deterministic,
/// the same on every backend and thread count).

#include <cmath>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/detail/batch_output.hpp>
#include <normflow/errors.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/lattice/neighbor_table.hpp>
#include <normflow/simd/pack.hpp>

namespace normflow {

namespace detail {
/// Coefficients w0, w2, w4 of reference 2.1 in the field's precision.
template <class T>
struct Phi4Weights {
  T w0, w2, w4;
};

/// Per-sample S: for each lane, the sum over sites in storage order. Sites are the outer loop and
/// up to `R` SIMD chunks of the batch the inner one (accumulators in registers), so memory is read
/// sequentially; each lane's sum has the same terms in the same order whatever the blocking.
template <class T, index_t Rank>
struct Phi4ActionKernel {
  FieldView<const T, 1> phi;
  NeighborView<Rank> nb;
  T* out;
  Phi4Weights<T> w;
  index_t volume;

  template <class V, index_t R>
  NORMFLOW_HOST_DEVICE void sum_sites(index_t b) const noexcept {
    constexpr index_t W = simd::pack_size<V>;
    const V w0(w.w0), w2(w.w2), w4(w.w4);
    V acc[R];
    for (index_t j = 0; j < R; ++j) acc[j] = V(T(0));
    for (index_t s = 0; s < volume; ++s) {
      const T* here = phi.lanes(s) + b;
      const T* back[Rank];
      for (index_t mu = 0; mu < Rank; ++mu) back[mu] = phi.lanes(nb.bwd(s, mu)) + b;
      for (index_t j = 0; j < R; ++j) {
        const V p = simd::load<V>(here + j * W);
        V hop = simd::load<V>(back[0] + j * W);
        for (index_t mu = 1; mu < Rank; ++mu) hop += simd::load<V>(back[mu] + j * W);
        const V p2 = p * p;
        acc[j] += p2 * (w2 + w4 * p2) - w0 * p * hop;
      }
    }
    for (index_t j = 0; j < R; ++j) store_samples(out, acc[j], b + j * W, phi.batch);
  }

  template <class V>
  NORMFLOW_HOST_DEVICE void apply_block(index_t b_begin, index_t b_end) const noexcept {
    simd::for_register_blocks<V, 4>(b_begin, b_end, [this](auto r, index_t b) { this->template sum_sites<V, decltype(r)::value>(b); });
  }
};

template <class T, index_t Rank>
struct Phi4ForceKernel {
  FieldView<const T, 1> phi;
  FieldView<T, 1> f;
  NeighborView<Rank> nb;
  Phi4Weights<T> w;
  template <class V>
  NORMFLOW_HOST_DEVICE void apply(index_t s, index_t b) const noexcept {
    const V p = simd::load<V>(phi.lanes(s) + b);
    V hop = simd::load<V>(phi.lanes(nb.fwd(s, 0)) + b) + simd::load<V>(phi.lanes(nb.bwd(s, 0)) + b);
    for (index_t mu = 1; mu < Rank; ++mu)
      hop += simd::load<V>(phi.lanes(nb.fwd(s, mu)) + b) + simd::load<V>(phi.lanes(nb.bwd(s, mu)) + b);
    const V two_w2(T(2) * w.w2), four_w4(T(4) * w.w4);
    simd::store(f.lanes(s) + b, V(w.w0) * hop - p * (two_w2 + four_w4 * p * p));
  }
};

template <class T, index_t Rank>
struct Phi4DensityKernel {
  FieldView<const T, 1> phi;
  FieldView<T, 1> out;
  NeighborView<Rank> nb;
  T half_m_sq, lambd, quarter_kappa;
  bool kinetic;  // false: potential only
  template <class V>
  NORMFLOW_HOST_DEVICE void apply(index_t s, index_t b) const noexcept {
    const V p = simd::load<V>(phi.lanes(s) + b);
    const V p2 = p * p;
    V r = p2 * (V(half_m_sq) + V(lambd) * p2);
    if (kinetic) {
      V kin(T(0));
      for (index_t mu = 0; mu < Rank; ++mu) {
        const V df = p - simd::load<V>(phi.lanes(nb.fwd(s, mu)) + b);
        const V db = p - simd::load<V>(phi.lanes(nb.bwd(s, mu)) + b);
        kin += df * df + db * db;
      }
      r += V(quarter_kappa) * kin;
    }
    simd::store(out.lanes(s) + b, r);
  }
};
}  // namespace detail

/// Real scalar phi^4 action (reference 2.1), an aggregate so that it reads like the reference:
///   ScalarPhi4Action action{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};
/// m_sq and lambd have no default (an unset one is reported by the first call); kappa defaults to 1.
/// Every method first checks the couplings: finite, lambd >= 0 (else ParameterError naming it).
struct ScalarPhi4Action {
  double kappa = 1.0;                                    ///< hopping coupling
  double m_sq = std::numeric_limits<double>::quiet_NaN();   ///< bare mass squared (required)
  double lambd = std::numeric_limits<double>::quiet_NaN();  ///< quartic coupling >= 0 (required)

  /// Throws ParameterError naming the first invalid coupling.
  void validate() const {
    for (auto [v, name] : {std::pair{m_sq, "m_sq"}, std::pair{lambd, "lambd"}})
      if (std::isnan(v))
        throw ParameterError(detail::concat("ScalarPhi4Action: ", name, " is NaN or was not set; give a finite value, "
                                            "e.g. {.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5}"));
    require_finite(kappa, "ScalarPhi4Action", "kappa");
    require_finite(m_sq, "ScalarPhi4Action", "m_sq");
    require_finite(lambd, "ScalarPhi4Action", "lambd");
    if (lambd < 0)
      throw ParameterError(detail::concat("ScalarPhi4Action: lambd = ", lambd,
                                          " must be >= 0 (the action is unbounded below otherwise)"));
  }

  /// w0 = kappa, w2 = m_sq/2 + d kappa, w4 = lambd for a lattice of rank d.
  template <class T>
  detail::Phi4Weights<T> weights(index_t rank) const noexcept {
    return {T(kappa), T(0.5 * m_sq + double(rank) * kappa), T(lambd)};
  }

  /// Per-sample action S[phi], into out (one entry per sample).
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  void action(const Field<Lat, T, Scalar, Order>& phi, std::span<T> out, Exec exec = {}) const {
    validate();
    detail::require_output_size(out, phi.batch(), "ScalarPhi4Action::action");
    const detail::Phi4ActionKernel<T, Lat::rank> k{phi.cview(), neighbors<Lat, Order>().view(), out.data(),
                                                   weights<T>(Lat::rank), Lat::volume};
    exec::parallel_for_lane_blocks<T>(exec, phi.padded_batch(), k);
  }

  /// Per-sample action S[phi].
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  std::vector<T> action(const Field<Lat, T, Scalar, Order>& phi, Exec exec = {}) const {
    std::vector<T> out(std::size_t(phi.batch()));
    action(phi, std::span<T>(out), exec);
    return out;
  }

  /// The reference's `__call__`: the per-sample action.
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  std::vector<T> operator()(const Field<Lat, T, Scalar, Order>& phi, Exec exec = {}) const {
    return action(phi, exec);
  }

  /// Per-sample log p = -S - action_logz (unnormalised unless action_logz = log Z).
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  std::vector<T> log_prob(const Field<Lat, T, Scalar, Order>& phi, double action_logz = 0, Exec exec = {}) const {
    std::vector<T> out = action(phi, exec);
    for (T& v : out) v = -v - T(action_logz);
    return out;
  }

  /// force = -dS/dphi at every site, into f (resized to phi's batch if needed).
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  void force(const Field<Lat, T, Scalar, Order>& phi, Field<Lat, T, Scalar, Order>& f, Exec exec = {}) const {
    validate();
    if (f.batch() != phi.batch()) f.resize(phi.batch());
    const detail::Phi4ForceKernel<T, Lat::rank> k{phi.cview(), f.view(), neighbors<Lat, Order>().view(),
                                                  weights<T>(Lat::rank)};
    exec::parallel_for_lanes<T>(exec, Lat::volume, phi.padded_batch(), k);
  }

  /// force = -dS/dphi (the reference's `force`, alias `score`).
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  Field<Lat, T, Scalar, Order> force(const Field<Lat, T, Scalar, Order>& phi, Exec exec = {}) const {
    Field<Lat, T, Scalar, Order> f(phi.batch());
    force(phi, f, exec);
    return f;
  }

  /// Alias of force (the reference's `score`).
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  Field<Lat, T, Scalar, Order> score(const Field<Lat, T, Scalar, Order>& phi, Exec exec = {}) const {
    return force(phi, exec);
  }

  /// Symmetric action density (sums over sites to S).
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  Field<Lat, T, Scalar, Order> action_density(const Field<Lat, T, Scalar, Order>& phi, Exec exec = {}) const {
    return density(phi, true, exec);
  }

  /// Element-wise potential (m_sq/2) phi^2 + lambd phi^4.
  template <LatticeShape Lat, class T, SiteOrder Order, exec::Policy Exec = exec::Default>
  Field<Lat, T, Scalar, Order> potential(const Field<Lat, T, Scalar, Order>& phi, Exec exec = {}) const {
    return density(phi, false, exec);
  }

 private:
  template <LatticeShape Lat, class T, SiteOrder Order, class Exec>
  Field<Lat, T, Scalar, Order> density(const Field<Lat, T, Scalar, Order>& phi, bool kinetic, Exec exec) const {
    validate();
    Field<Lat, T, Scalar, Order> out(phi.batch());
    const detail::Phi4DensityKernel<T, Lat::rank> k{phi.cview(), out.view(),     neighbors<Lat, Order>().view(),
                                                    T(0.5 * m_sq), T(lambd), T(0.25 * kappa), kinetic};
    exec::parallel_for_lanes<T>(exec, Lat::volume, phi.padded_batch(), k);
    return out;
  }
};

}  // namespace normflow
