// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Elementwise_<Transform>: one element transform, with one shared parameter set, applied to
/// every site (the reference's Affine_, Tanh_, Expit_, Logit_, Identity_).
///
/// Maths. With p the Transform's num_params shared parameters and per-site maps y_s = f(x_s; p):
///   log_det[b] += sum_s log|f'(x_s; p)|                                   (forward)
///   gx_s = Transform::backward(x_s, p, gy_s, gl[b]),  gp += sum_{s,b} d/dp    (adjoint of forward)
/// and likewise for reverse with Transform::reverse / reverse_backward. The parameter gradient is
/// summed over sites in storage order per sample lane, then over the real samples in order:
/// deterministic, whatever the thread count.

#include <cstdint>
#include <span>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/detail/aligned_allocator.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/layer/module.hpp>
#include <normflow/simd/pack.hpp>
#include <normflow/transform/elementwise.hpp>

namespace normflow {

namespace detail {
/// out[b + l] += lane l of v for the real samples.
template <class V>
NORMFLOW_ALWAYS_INLINE void add_samples(simd::scalar_t<V>* out, const V& v, index_t b, index_t batch) noexcept {
  for (index_t l = 0; l < simd::pack_size<V>; ++l)
    if (b + l < batch) out[b + l] += simd::lane(v, l);
}

template <class Tr>
inline constexpr index_t param_slots = Tr::num_params > 0 ? Tr::num_params : 1;

/// forward (Reverse = false) or reverse (true) of an element transform over all sites.
template <class Tr, bool Reverse, class T>
struct ElementwiseMapKernel {
  FieldView<const T, 1> in;
  FieldView<T, 1> out;
  T* log_det;
  const T* p;
  index_t volume;

  template <class V, index_t R>
  NORMFLOW_HOST_DEVICE void sweep(index_t b) const noexcept {
    constexpr index_t W = simd::pack_size<V>;
    V pv[param_slots<Tr>];
    for (index_t k = 0; k < Tr::num_params; ++k) pv[k] = V(p[k]);
    V acc[R];
    for (index_t j = 0; j < R; ++j) acc[j] = V(T(0));
    for (index_t s = 0; s < volume; ++s)
      for (index_t j = 0; j < R; ++j) {
        const V v = simd::load<V>(in.lanes(s) + b + j * W);
        if constexpr (Reverse) {
          const auto r = Tr::reverse(v, pv);
          simd::store(out.lanes(s) + b + j * W, r.x);
          acc[j] += r.log_jac;
        } else {
          const auto r = Tr::forward(v, pv);
          simd::store(out.lanes(s) + b + j * W, r.y);
          acc[j] += r.log_jac;
        }
      }
    for (index_t j = 0; j < R; ++j) add_samples(log_det, acc[j], b + j * W, in.batch);
  }
  template <class V>
  NORMFLOW_HOST_DEVICE void apply_block(index_t b_begin, index_t b_end) const noexcept {
    simd::for_register_blocks<V, 4>(b_begin, b_end, [this](auto r, index_t b) { this->template sweep<V, decltype(r)::value>(b); });
  }
};

/// Adjoint of forward (Reverse = false: point = x, cotangent gy -> gx) or of reverse (true:
/// point = y, cotangent gx -> gy). Per-lane parameter gradients go to gp_lanes[k * stride + b].
template <class Tr, bool Reverse, class T>
struct ElementwiseAdjointKernel {
  FieldView<const T, 1> point;
  FieldView<const T, 1> g_out;
  FieldView<T, 1> g_in;
  const T* gl;  // padded, zero beyond the batch
  const T* p;
  T* gp_lanes;
  index_t volume;

  template <class V, index_t R>
  NORMFLOW_HOST_DEVICE void sweep(index_t b) const noexcept {
    constexpr index_t W = simd::pack_size<V>, P = param_slots<Tr>;
    V pv[P];
    for (index_t k = 0; k < Tr::num_params; ++k) pv[k] = V(p[k]);
    V gp[R][P];
    V glv[R];
    for (index_t j = 0; j < R; ++j) {
      glv[j] = simd::load<V>(gl + b + j * W);
      for (index_t k = 0; k < P; ++k) gp[j][k] = V(T(0));
    }
    for (index_t s = 0; s < volume; ++s)
      for (index_t j = 0; j < R; ++j) {
        const V v = simd::load<V>(point.lanes(s) + b + j * W);
        const V g = simd::load<V>(g_out.lanes(s) + b + j * W);
        V r(T(0));
        if constexpr (Reverse)
          r = Tr::reverse_backward(v, pv, g, glv[j], gp[j]);
        else
          r = Tr::backward(v, pv, g, glv[j], gp[j]);
        simd::store(g_in.lanes(s) + b + j * W, r);
      }
    if (gp_lanes)
      for (index_t j = 0; j < R; ++j)
        for (index_t k = 0; k < Tr::num_params; ++k) simd::store(gp_lanes + k * point.stride + b + j * W, gp[j][k]);
  }
  template <class V>
  NORMFLOW_HOST_DEVICE void apply_block(index_t b_begin, index_t b_end) const noexcept {
    simd::for_register_blocks<V, 4>(b_begin, b_end, [this](auto r, index_t b) { this->template sweep<V, decltype(r)::value>(b); });
  }
};
}  // namespace detail

template <class Tr, class F>
class ElementwiseLayer;

/// Elementwise_<Transform> bound to the field type F (see the file comment).
template <class Tr, LatticeShape Lat, class T, SiteOrder Order>
class ElementwiseLayer<Tr, Field<Lat, T, Scalar, Order>>
    : public MapAdjointLayer<ElementwiseLayer<Tr, Field<Lat, T, Scalar, Order>>> {
  friend class MapAdjointLayer<ElementwiseLayer>;

 public:
  static constexpr const char* layer_name = "Elementwise_";
  using field_type = Field<Lat, T, Scalar, Order>;
  using value_type = T;
  using buffer = AlignedBuffer<T>;
  /// The pair (x, y) of the last forward or reverse, plus scratch for the adjoints.
  struct tape_type {
    field_type x, y;
    buffer gl, gp_lanes;
  };

  /// \param layer_index position in the flow (unused: element-wise layers have no parity)
  explicit ElementwiseLayer(index_t layer_index = 0) noexcept { (void)layer_index; }

  std::size_t num_params() const noexcept { return std::size_t(Tr::num_params); }
  /// The reference's initialisation: zeros (the identity for Affine).
  void init_params(std::span<T> p, std::uint64_t) const {
    for (T& v : p) v = T(0);
  }

 private:
  template <bool Reverse, class Exec>
  void map(const char* where, std::span<const T> p, const field_type& in, field_type& out, std::span<T> log_det,
           tape_type&, Exec exec) const {
    detail::require_layer_args(where, num_params(), p, in, log_det);
    if (out.batch() != in.batch()) out.resize(in.batch());
    const detail::ElementwiseMapKernel<Tr, Reverse, T> k{in.cview(), out.view(), log_det.data(), p.data(),
                                                         Lat::volume};
    exec::parallel_for_lane_blocks<T>(exec, in.padded_batch(), k);
  }

  template <bool Reverse, class Exec>
  void adjoint(const char* where, std::span<const T> p, tape_type& tape, const field_type& point,
               const field_type& g_out, std::span<const T> gl, field_type& g_in, std::span<T> gp, Exec exec) const {
    detail::require_adjoint_args(where, num_params(), p, gp, g_out, gl, point.batch(), true);
    const index_t stride = point.padded_batch(), batch = point.batch();
    if (g_in.batch() != batch) g_in.resize(batch);
    detail::padded_copy(gl, stride, tape.gl);
    const bool want_gp = Tr::num_params > 0 && !gp.empty();
    if (want_gp) tape.gp_lanes.assign(std::size_t(Tr::num_params) * std::size_t(stride), T(0));
    const detail::ElementwiseAdjointKernel<Tr, Reverse, T> k{
        point.cview(), g_out.cview(), g_in.view(), tape.gl.data(), p.data(), want_gp ? tape.gp_lanes.data() : nullptr,
        Lat::volume};
    exec::parallel_for_lane_blocks<T>(exec, stride, k);
    if (want_gp)
      for (index_t k2 = 0; k2 < Tr::num_params; ++k2) {
        T acc = T(0);
        for (index_t b = 0; b < batch; ++b) acc += tape.gp_lanes[std::size_t(k2) * std::size_t(stride) + std::size_t(b)];
        gp[std::size_t(k2)] += acc;
      }
  }
};

/// Layer spec: the element transform Tr at every site with shared parameters.
template <class Tr>
struct Elementwise_ {
  template <class F>
  using bind = ElementwiseLayer<Tr, F>;
};

/// The reference's element-wise layers.
using Identity_ = Elementwise_<Identity>;
using Affine_ = Elementwise_<Affine>;
using Tanh_ = Elementwise_<Tanh>;
using Expit_ = Elementwise_<Expit>;
using Logit_ = Elementwise_<Logit>;

}  // namespace normflow
