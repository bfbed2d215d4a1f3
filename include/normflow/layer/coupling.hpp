// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Checkerboard coupling layers (reference 3.3): AffineCoupling_, AdditiveCoupling_ and the
/// generic CouplingLayer<Transform, NetSpec, F> they are made of.
///
/// Maths. Layer k updates the sites of parity p = k mod 2 (active, x_a) from the other half
/// (frozen, x_f). With theta = net(x_f) (the conditioner sees the full-size field with zeros on
/// the active sites, as the reference; its outputs on frozen sites are unused):
///   y_a = T(x_a; theta_a),   y_f = x_f,   log_det += sum_{a} log|T'(x_a; theta_a)|
/// Adjoint of forward, with cotangents gy and gl (per sample):
///   gx_a = dT/dx^T gy_a + gl dlogT'/dx,      g_theta_a = dT/dtheta^T gy_a + gl dlogT'/dtheta
///   (g_theta = 0 on frozen sites), then through the conditioner:
///   gx_f = gy_f + [net'(x_f)^T g_theta]_f,   gp += the conditioner's weight gradient.
/// Adjoint of reverse: the same with T^{-1} (the frozen half and theta are the same for x and y).
/// With even/odd storage the two halves are contiguous blocks of storage positions: parity p is
/// [p V/2, (p + 1) V/2). Every sum over sites runs in storage order per sample: deterministic.

#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/detail/aligned_allocator.hpp>
#include <normflow/detail/thread_scratch.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/layer/conditioner/conv_net.hpp>
#include <normflow/layer/conditioner/conv_net_spec.hpp>
#include <normflow/layer/elementwise_layer.hpp>
#include <normflow/layer/module.hpp>
#include <normflow/simd/pack.hpp>
#include <normflow/transform/coupling_transforms.hpp>
#include <normflow/transform/rq_spline.hpp>

namespace normflow {

namespace detail {
/// forward (Reverse = false) or reverse of T on the active block [a0, a0 + n) of storage positions;
/// log_det[b] += the per-sample sum of log_jac.
template <class Tr, bool Reverse, class T, index_t C>
struct CouplingMapKernel {
  Tr tr;
  FieldView<const T, 1> in;
  FieldView<T, 1> out;
  FieldView<const T, C> theta;
  T* log_det;
  index_t a0, n;

  template <class V, index_t R>
  NORMFLOW_HOST_DEVICE void sweep(index_t b) const noexcept {
    constexpr index_t W = simd::pack_size<V>;
    V acc[R];
    for (index_t j = 0; j < R; ++j) acc[j] = V(T(0));
    for (index_t s = a0; s < a0 + n; ++s)
      for (index_t j = 0; j < R; ++j) {
        V pv[C];
        for (index_t c = 0; c < C; ++c) pv[c] = simd::load<V>(theta.lanes(s, c) + b + j * W);
        const V v = simd::load<V>(in.lanes(s) + b + j * W);
        if constexpr (Reverse) {
          const auto r = tr.reverse(v, pv);
          simd::store(out.lanes(s) + b + j * W, r.x);
          acc[j] += r.log_jac;
        } else {
          const auto r = tr.forward(v, pv);
          simd::store(out.lanes(s) + b + j * W, r.y);
          acc[j] += r.log_jac;
        }
      }
    for (index_t j = 0; j < R; ++j) add_samples(log_det, acc[j], b + j * W, in.batch);
  }
  template <class V>
  NORMFLOW_HOST_DEVICE void apply_block(index_t b_begin, index_t b_end) const noexcept {
    simd::for_register_blocks<V, 2>(b_begin, b_end, [this](auto r, index_t b) { this->template sweep<V, decltype(r)::value>(b); });
  }
};

/// Adjoint of T (Reverse = false: at x) or of T^{-1} (true: at y) on the active block: writes the
/// input cotangent on active sites and g_theta there.
template <class Tr, bool Reverse, class T, index_t C>
struct CouplingAdjointKernel {
  Tr tr;
  FieldView<const T, 1> point;
  FieldView<const T, 1> g_out;
  FieldView<T, 1> g_in;
  FieldView<const T, C> theta;
  FieldView<T, C> g_theta;
  const T* gl;  // padded
  index_t a0;

  template <class V>
  NORMFLOW_HOST_DEVICE void apply(index_t i, index_t b) const noexcept {
    const index_t s = a0 + i;
    V pv[C], gp[C];
    for (index_t c = 0; c < C; ++c) {
      pv[c] = simd::load<V>(theta.lanes(s, c) + b);
      gp[c] = V(T(0));
    }
    const V v = simd::load<V>(point.lanes(s) + b), g = simd::load<V>(g_out.lanes(s) + b);
    const V glv = simd::load<V>(gl + b);
    V r(T(0));
    if constexpr (Reverse)
      r = tr.reverse_backward(v, pv, g, glv, gp);
    else
      r = tr.backward(v, pv, g, glv, gp);
    simd::store(g_in.lanes(s) + b, r);
    for (index_t c = 0; c < C; ++c) simd::store(g_theta.lanes(s, c) + b, gp[c]);
  }
};

/// out = a + b on the block [f0, f0 + n) of storage positions.
template <class T>
struct AddBlockKernel {
  FieldView<const T, 1> a, b;
  FieldView<T, 1> out;
  index_t f0;
  template <class V>
  NORMFLOW_HOST_DEVICE void apply(index_t i, index_t bb) const noexcept {
    const index_t s = f0 + i;
    simd::store(out.lanes(s) + bb, simd::load<V>(a.lanes(s) + bb) + simd::load<V>(b.lanes(s) + bb));
  }
};
}  // namespace detail

template <class Tr, class NetSpec, class F>
class CouplingLayer;

/// A checkerboard coupling with per-site transform Tr whose parameters come from a ConvNet.
/// \tparam Tr      per-site transform (AffineContraction, Additive, RQSpline<K>, ...)
/// \tparam NetSpec conditioner spec, ConvNet<...>
template <class Tr, class NetSpec, LatticeShape Lat, class T, SiteOrder Order>
class CouplingLayer<Tr, NetSpec, Field<Lat, T, Scalar, Order>>
    : public MapAdjointLayer<CouplingLayer<Tr, NetSpec, Field<Lat, T, Scalar, Order>>> {
  friend class MapAdjointLayer<CouplingLayer>;
  static_assert(std::is_same_v<Order, EvenOdd>,
                "Coupling layers need the EvenOdd site order, so every lattice extent must be even "
                "(e.g. Lattice<8, 8>)");
  static_assert(is_conv_net_spec_v<NetSpec>, "Coupling layers take a ConvNet<...> conditioner spec");

 public:
  static constexpr const char* layer_name = "CouplingLayer";
  using field_type = Field<Lat, T, Scalar, Order>;
  using value_type = T;
  static constexpr index_t channels = Tr::num_params;
  using theta_type = Field<Lat, T, Channels<channels>, Order>;
  using net_type = ConvStack<Lat, T, Order>;
  using buffer = AlignedBuffer<T>;
  static constexpr index_t half = Lat::volume / 2;

  /// What forward/reverse record and the adjoints reuse: the point (x, y), the conditioner's
  /// input, output and workspace, and the padded copy of gl.
  struct tape_type {
    field_type x, y;
    theta_type theta;
    typename net_type::Workspace ws;
    buffer gl;
  };

  /// \param layer_index position in the flow; the layer updates parity layer_index mod 2
  /// \param tr          the per-site transform (its options, e.g. a spline's xlim)
  explicit CouplingLayer(index_t layer_index = 0, Tr tr = Tr{})
      : m_parity(layer_index % 2), m_tr(tr), m_net(NetSpec::config(1, channels)) {}

  /// With a runtime conditioner architecture (hidden channels, kernel, activation, bias); its
  /// input and output channel counts are set here (1 and Tr::num_params).
  CouplingLayer(index_t layer_index, Tr tr, ConvNetConfig net)
      : m_parity(layer_index % 2), m_tr(tr), m_net(with_channels(std::move(net))) {}

  index_t parity() const noexcept { return m_parity; }
  const net_type& net() const noexcept { return m_net; }
  std::size_t num_params() const noexcept { return m_net.num_params(); }
  /// The reference's initialisation: PyTorch's default for every convolution.
  void init_params(std::span<T> p, std::uint64_t seed) const { m_net.init_params(p, seed); }

 private:
  /// The adjoint's transient fields (see adjoint).
  struct AdjointScratch {
    field_type g_cond;
    theta_type g_theta;
  };

  static ConvNetConfig with_channels(ConvNetConfig c) {
    c.in_channels = 1;
    c.out_channels = channels;
    return c;
  }
  index_t active_begin() const noexcept { return m_parity * half; }
  index_t frozen_begin() const noexcept { return (1 - m_parity) * half; }

  /// tape.theta = net(`in` with the active half zeroed): the conditioner reads the active half as
  /// zero (its own copy of the input is the masked one). In the forward direction, where `in` is
  /// the tape's own x (Chain writes each layer's input there: MapAdjointLayer::input_in_tape),
  /// which stays as it is until the adjoints, the conditioner reads it in place instead of a copy
  /// (ConvWorkspace::borrow_input).
  template <class Exec>
  void condition(std::span<const T> p, const field_type& in, tape_type& tape, Exec exec, bool forward) const {
    if (tape.theta.batch() != in.batch()) tape.theta.resize(in.batch());
    tape.ws.borrow_input = forward && &in == &tape.x;
    // theta is read on the active block only: the last convolution computes just that block
    const SiteRange active{active_begin(), active_begin() + half};
    m_net.forward(p, in, tape.theta, tape.ws, host(exec), active, active);
  }

  template <bool Reverse, class Exec>
  void map(const char* where, std::span<const T> p, const field_type& in, field_type& out, std::span<T> log_det,
           tape_type& tape, Exec exec) const {
    detail::require_layer_args(where, num_params(), p, in, log_det);
    if (out.batch() != in.batch()) out.resize(in.batch());
    condition(p, in, tape, exec, !Reverse);
    const std::size_t run = std::size_t(half) * std::size_t(in.padded_batch());
    exec::parallel_copy(host(exec), in.lanes(frozen_begin()), out.lanes(frozen_begin()), run);
    const detail::CouplingMapKernel<Tr, Reverse, T, channels> k{
        m_tr, in.cview(), out.view(), tape.theta.cview(), log_det.data(), active_begin(), half};
    exec::parallel_for_lane_blocks<T>(host(exec), in.padded_batch(), k);
  }

  template <bool Reverse, class Exec>
  void adjoint(const char* where, std::span<const T> p, tape_type& tape, const field_type& point,
               const field_type& g_out, std::span<const T> gl, field_type& g_in, std::span<T> gp, Exec exec) const {
    detail::require_adjoint_args(where, num_params(), p, gp, g_out, gl, point.batch(), true);
    const index_t batch = point.batch(), stride = point.padded_batch();
    if (g_in.batch() != batch) g_in.resize(batch);
    // g_theta and g_cond live only during this call: the thread's scratch, shared by every layer
    // of this type (detail/thread_scratch.hpp; both are written before they are read)
    AdjointScratch& scratch = detail::thread_scratch_object<AdjointScratch>();
    theta_type& g_theta = scratch.g_theta;
    field_type& g_cond = scratch.g_cond;
    if (g_theta.batch() != batch) g_theta.resize(batch);
    if (g_cond.batch() != batch) g_cond.resize(batch);
    detail::padded_copy(gl, stride, tape.gl);
    // g_theta: zero on frozen sites, the transform's adjoint on active sites
    exec::parallel_fill(host(exec), g_theta.lanes(frozen_begin()), std::size_t(half) * channels * std::size_t(stride),
                        T(0));
    const detail::CouplingAdjointKernel<Tr, Reverse, T, channels> k{
        m_tr, point.cview(), g_out.cview(), g_in.view(), tape.theta.cview(), g_theta.view(), tape.gl.data(),
        active_begin()};
    exec::parallel_for_lanes<T>(host(exec), half, stride, k);
    // through the conditioner: g_cond = net'^T g_theta, gp += weight gradient
    // empty gp: input adjoint only; g_cond is read on the frozen block only
    m_net.backward(p, tape.ws, g_theta, g_cond, gp, host(exec), SiteRange{frozen_begin(), frozen_begin() + half});
    // frozen sites: direct path plus the conditioner's
    const detail::AddBlockKernel<T> add{g_out.cview(), g_cond.cview(), g_in.view(), frozen_begin()};
    exec::parallel_for_lanes<T>(host(exec), half, stride, add);
  }

  /// The conditioner runs on host threads (its kernels are host SIMD kernels).
  template <class Exec>
  static auto host(Exec) noexcept {
    if constexpr (std::is_same_v<Exec, exec::Serial>)
      return exec::Serial{};
    else
      return exec::HostDefault{};
  }

  index_t m_parity;
  Tr m_tr;
  net_type m_net;
};

/// Layer spec: the reference's AffineCoupling_, y_a = t + x_a e^{-|s|} with (t, s) = net(x_f).
template <class NetSpec = ConvNet<>>
struct AffineCoupling_ {
  template <class F>
  using bind = CouplingLayer<AffineContraction, NetSpec, F>;
};

/// Layer spec: the reference's AdditiveCoupling_, y_a = x_a + t with t = net(x_f).
template <class NetSpec = ConvNet<>>
struct AdditiveCoupling_ {
  template <class F>
  using bind = CouplingLayer<Additive, NetSpec, F>;
};

/// Spline options of the reference's 8x8 spline coupling (6.5): knots on xlim = ylim = (0, 2),
/// 'anti' reflection on the left and linear tails on the right, i.e. an odd spline on [-2, 2]
/// with linear tails (the identity at zero weights).
struct OddSplineLinearTails {
  template <index_t K>
  static RQSpline<K> make() {
    RQSpline<K> s{};
    s.xlim[0] = s.ylim[0] = 0.0;
    s.xlim[1] = s.ylim[1] = 2.0;
    s.left = Extrapolation::anti;
    s.right = Extrapolation::linear;
    return s;
  }
};
/// OddSplineLinearTails with minimum bin widths/heights and knot derivatives of 1e-3 (Durkan et
/// al.'s safeguards): no bin can collapse, so the inverse stays well conditioned in float.
struct OddSplineLinearTailsSafe {
  template <index_t K>
  static RQSpline<K> make() {
    RQSpline<K> s = OddSplineLinearTails::make<K>();
    s.min_bin = 1e-3;
    s.min_derivative = 1e-3;
    return s;
  }
};
/// The non-symmetric variant: knots on (-2, 2), linear tails on both sides.
struct SplineLinearTails {
  template <index_t K>
  static RQSpline<K> make() {
    RQSpline<K> s{};
    s.xlim[0] = s.ylim[0] = -2.0;
    s.xlim[1] = s.ylim[1] = 2.0;
    s.left = s.right = Extrapolation::linear;
    return s;
  }
};

/// Layer spec: the reference's RQSplineCoupling_, a per-site rational-quadratic spline with
/// `Knots` knots whose 3 Knots - 2 raw weights come from net(x_f) (13 channels for 5 knots).
/// \tparam Opt spline options: a type with `template <index_t K> static RQSpline<K> make()`
template <index_t Knots, class NetSpec = ConvNet<>, class Opt = OddSplineLinearTails>
struct RQSplineCoupling_ {
  template <class F>
  struct bind : CouplingLayer<RQSpline<Knots>, NetSpec, F> {
    explicit bind(index_t layer_index = 0) : CouplingLayer<RQSpline<Knots>, NetSpec, F>(layer_index, make()) {}

   private:
    static RQSpline<Knots> make() {
      RQSpline<Knots> s = Opt::template make<Knots>();
      s.validate();
      return s;
    }
  };
};

/// Tag for Coupling<...>: a spline coupling with Knots knots.
template <index_t Knots>
struct Spline {
  static_assert(Knots >= 2, "Spline<Knots>: a spline needs at least 2 knots, e.g. Coupling<Spline<10>>");
};

/// Short spellings with the default conditioner ConvNet<> (1 -> 8 -> 8 -> out, kernel 3, tanh,
/// no bias): Coupling<Affine> (the reference AffineCoupling_), Coupling<Additive>,
/// Coupling<Spline<10>> (RQSplineCoupling_ with 10 knots).
template <class Kind, class NetSpec = ConvNet<>>
struct Coupling {
  static_assert(sizeof(Kind) == 0,
                "Coupling<Kind>: Kind must be Affine, Additive or Spline<Knots>, e.g. Coupling<Spline<10>>");
};
template <class NetSpec>
struct Coupling<Affine, NetSpec> : AffineCoupling_<NetSpec> {};
template <class NetSpec>
struct Coupling<AffineContraction, NetSpec> : AffineCoupling_<NetSpec> {};
template <class NetSpec>
struct Coupling<Additive, NetSpec> : AdditiveCoupling_<NetSpec> {};
template <index_t K, class NetSpec>
struct Coupling<Spline<K>, NetSpec> : RQSplineCoupling_<K, NetSpec> {};

}  // namespace normflow
