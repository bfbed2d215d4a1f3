// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file DistConvertor_: the reference's learnable monotone map R -> R applied to every site,
/// y = logit(S(expit(x))) [* softplus(w_a)] with one shared rational-quadratic spline S
/// (reference 3.2; maths in transform/dist_convertor.hpp).
///
/// Layer maths: the knots are built once per call from the shared weights p (prepare), every site
/// uses them, log_det[b] += sum_s log f'(x_s). Adjoint: each lane accumulates the knot/scale
/// gradients over the sites in storage order; the real lanes are then summed in order and mapped
/// to dL/dp once (prepare_backward): deterministic whatever the thread count.
/// Parameters: (w_x, w_y, w_d) = 3K - 2, plus w_a with final_scale (the reference's counts; with
/// smooth the K entries w_d are kept but unused, so the reference's smooth count is 2(K - 1)).

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/detail/aligned_allocator.hpp>
#include <normflow/errors.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/flow/flow.hpp>
#include <normflow/layer/elementwise_layer.hpp>
#include <normflow/layer/module.hpp>
#include <normflow/simd/pack.hpp>
#include <normflow/transform/dist_convertor.hpp>

namespace normflow {

/// Options of a DistConvertor_ (the reference's keyword arguments).
struct DistConvertorOptions {
  index_t knots_len = 10;    ///< user knots of the spline; must equal the Knots template argument
  bool symmetric = false;    ///< an odd map: knots on the upper half plus 'anti' reflection
  bool smooth = false;       ///< spline derivatives from the knot slopes (w_d unused)
  bool final_scale = false;  ///< multiply the output by softplus(w_a)
};

namespace detail {
template <index_t K, bool Reverse, class T>
struct ConvertorMapKernel {
  DistConvertor<K> tr;
  typename DistConvertor<K>::template Prepared<T> prep;
  FieldView<const T, 1> in;
  FieldView<T, 1> out;
  T* log_det;
  index_t volume;
  template <class V>
  NORMFLOW_HOST_DEVICE void apply_block(index_t b_begin, index_t b_end) const noexcept {
    constexpr index_t W = simd::pack_size<V>;
    for (index_t b = b_begin; b < b_end; b += W) {
      V acc(T(0));
      for (index_t s = 0; s < volume; ++s) {
        const V v = simd::load<V>(in.lanes(s) + b);
        if constexpr (Reverse) {
          const auto r = tr.reverse(v, prep);
          simd::store(out.lanes(s) + b, r.x);
          acc += r.log_jac;
        } else {
          const auto r = tr.forward(v, prep);
          simd::store(out.lanes(s) + b, r.y);
          acc += r.log_jac;
        }
      }
      add_samples(log_det, acc, b, in.batch);
    }
  }
};

/// Adjoint; per-lane gradient holders are stored entry by entry: g_lanes[e * stride + b] with
/// entries x[0..n), y[0..n), d[0..n), scale, log_scale (n = the effective knot count).
template <index_t K, bool Reverse, class T>
struct ConvertorAdjointKernel {
  DistConvertor<K> tr;
  typename DistConvertor<K>::template Prepared<T> prep;
  FieldView<const T, 1> point;
  FieldView<const T, 1> g_out;
  FieldView<T, 1> g_in;
  const T* gl;
  T* g_lanes;
  index_t volume, n;
  template <class V>
  NORMFLOW_HOST_DEVICE void apply_block(index_t b_begin, index_t b_end) const noexcept {
    constexpr index_t W = simd::pack_size<V>;
    const index_t stride = point.stride;
    for (index_t b = b_begin; b < b_end; b += W) {
      auto g = tr.template zero_gradient<V>();
      const V glv = simd::load<V>(gl + b);
      for (index_t s = 0; s < volume; ++s) {
        const V v = simd::load<V>(point.lanes(s) + b), go = simd::load<V>(g_out.lanes(s) + b);
        V r(T(0));
        if constexpr (Reverse)
          r = tr.reverse_backward(v, prep, go, glv, g);
        else
          r = tr.backward(v, prep, go, glv, g);
        simd::store(g_in.lanes(s) + b, r);
      }
      for (index_t j = 0; j < n; ++j) {
        simd::store(g_lanes + offset_t(j) * stride + b, g.knots.x[j]);
        simd::store(g_lanes + offset_t(n + j) * stride + b, g.knots.y[j]);
        simd::store(g_lanes + offset_t(2 * n + j) * stride + b, g.knots.d[j]);
      }
      simd::store(g_lanes + offset_t(3 * n) * stride + b, g.scale);
      simd::store(g_lanes + offset_t(3 * n + 1) * stride + b, g.log_scale);
    }
  }
};
}  // namespace detail

template <index_t K, class F>
class DistConvertorLayer;

/// DistConvertor_ with K knots bound to the field type F (see the file comment).
template <index_t K, LatticeShape Lat, class T, SiteOrder Order>
class DistConvertorLayer<K, Field<Lat, T, Scalar, Order>>
    : public MapAdjointLayer<DistConvertorLayer<K, Field<Lat, T, Scalar, Order>>> {
  friend class MapAdjointLayer<DistConvertorLayer>;

 public:
  static constexpr const char* layer_name = "DistConvertor_";
  using field_type = Field<Lat, T, Scalar, Order>;
  using value_type = T;
  using transform_type = DistConvertor<K>;
  using buffer = AlignedBuffer<T>;
  struct tape_type {
    field_type x, y;
    buffer gl, g_lanes;
  };

  /// \param layer_index unused (no parity)
  explicit DistConvertorLayer(index_t layer_index = 0, DistConvertorOptions o = {}) : m_options(o) {
    (void)layer_index;
    if (o.knots_len != K)
      throw ParameterError(detail::concat("DistConvertor_: knots_len = ", o.knots_len, " differs from the compiled ",
                                          K, " knots; use DistConvertor_<Lat, T, ", o.knots_len, ">"));
    m_tr.symmetric = o.symmetric;
    m_tr.smooth = o.smooth;
    m_tr.final_scale = o.final_scale;
    m_tr.validate();
  }

  const DistConvertorOptions& options() const noexcept { return m_options; }
  std::size_t num_params() const noexcept {
    return std::size_t(transform_type::spline_params) + (m_options.final_scale ? 1 : 0);
  }
  /// The reference's initialisation: zeros (the identity map).
  void init_params(std::span<T> p, std::uint64_t) const {
    for (T& v : p) v = T(0);
  }

 private:
  using full_params = std::array<T, std::size_t(transform_type::num_params)>;

  /// The transform's full weight vector (w_a = 0 without final_scale).
  full_params full(std::span<const T> p) const noexcept {
    full_params f{};
    for (std::size_t k = 0; k < p.size(); ++k) f[k] = p[k];
    return f;
  }

  template <bool Reverse, class Exec>
  void map(const char* where, std::span<const T> p, const field_type& in, field_type& out, std::span<T> log_det,
           tape_type&, Exec exec) const {
    detail::require_layer_args(where, num_params(), p, in, log_det);
    if (out.batch() != in.batch()) out.resize(in.batch());
    const full_params f = full(p);
    const detail::ConvertorMapKernel<K, Reverse, T> k{m_tr, m_tr.template prepare<T>(f.data()), in.cview(),
                                                      out.view(), log_det.data(), Lat::volume};
    exec::parallel_for_lane_blocks<T>(exec, in.padded_batch(), k);
  }

  template <bool Reverse, class Exec>
  void adjoint(const char* where, std::span<const T> p, tape_type& tape, const field_type& point,
               const field_type& g_out, std::span<const T> gl, field_type& g_in, std::span<T> gp, Exec exec) const {
    detail::require_adjoint_args(where, num_params(), p, gp, g_out, gl, point.batch(), true);
    const index_t batch = point.batch(), stride = point.padded_batch();
    if (g_in.batch() != batch) g_in.resize(batch);
    detail::padded_copy(gl, stride, tape.gl);
    const index_t n = m_tr.spline().layout().count;
    tape.g_lanes.assign(std::size_t(3 * n + 2) * std::size_t(stride), T(0));
    const full_params f = full(p);
    const detail::ConvertorAdjointKernel<K, Reverse, T> k{m_tr,          m_tr.template prepare<T>(f.data()),
                                                          point.cview(), g_out.cview(),
                                                          g_in.view(),   tape.gl.data(),
                                                          tape.g_lanes.data(), Lat::volume,
                                                          n};
    exec::parallel_for_lane_blocks<T>(exec, stride, k);
    if (gp.empty()) return;
    // sum the real lanes in order, then map the knot gradients to the weights once
    auto lane_sum = [&](index_t e) {
      T acc = T(0);
      for (index_t b = 0; b < batch; ++b) acc += tape.g_lanes[std::size_t(e) * std::size_t(stride) + std::size_t(b)];
      return acc;
    };
    auto g = m_tr.template zero_gradient<T>();
    for (index_t j = 0; j < n; ++j) {
      g.knots.x[j] = lane_sum(j);
      g.knots.y[j] = lane_sum(n + j);
      g.knots.d[j] = lane_sum(2 * n + j);
    }
    g.scale = lane_sum(3 * n);
    g.log_scale = lane_sum(3 * n + 1);
    full_params gfull{};
    m_tr.prepare_backward(f.data(), g, gfull.data());
    for (std::size_t k2 = 0; k2 < gp.size(); ++k2) gp[k2] += gfull[k2];
  }

  DistConvertorOptions m_options;
  DistConvertor<K> m_tr{};
};

/// Layer spec of a DistConvertor with compile-time options, for Flow specs:
///   Flow<Sequence<SplineConvertor_<50, true, true>, AffineCoupling_<>>, Lattice<8, 8>>
template <index_t K, bool Symmetric = false, bool Smooth = false, bool FinalScale = false>
struct SplineConvertor_ {
  template <class F>
  struct bind : DistConvertorLayer<K, F> {
    explicit bind(index_t layer_index = 0)
        : DistConvertorLayer<K, F>(layer_index, {.knots_len = K, .symmetric = Symmetric, .smooth = Smooth,
                                                 .final_scale = FinalScale}) {}
  };
};

/// The reference's DistConvertor_ as a ready `net_` (layer plus parameters), seed vocabulary:
///   DistConvertor_<Lattice<1>> net_{{.knots_len = 10, .symmetric = true}};
/// \tparam Lat   the lattice (the same map at every site)
/// \tparam T     float (default) or double
/// \tparam Knots compiled knot count (knots_len must match it)
template <LatticeShape Lat, class T = float, index_t Knots = 10>
class DistConvertor_ : public Parametrized<DistConvertorLayer<Knots, Field<Lat, T>>> {
  using base = Parametrized<DistConvertorLayer<Knots, Field<Lat, T>>>;

 public:
  explicit DistConvertor_(DistConvertorOptions o = {}, std::uint64_t seed = 0)
      : base(DistConvertorLayer<Knots, Field<Lat, T>>(0, o), seed) {}
};

}  // namespace normflow
