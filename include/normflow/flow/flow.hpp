// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Compile-time composition: Sequence<S...>, Repeat<N, S>, Chain<L...> and
/// Flow<Spec, Lat, T>, the owner of a flow's parameters and gradients.
///
/// A *spec* is a type that names a layer without a lattice: it has `template <class F> using bind`
/// giving the layer bound to field type F (Affine_, AffineCoupling_<ConvNet<...>>, ...).
/// Sequence<S...> and Repeat<N, S> flatten into one list of leaf specs; layer k of the flat list is
/// constructed with its index k (couplings update parity k mod 2, as the reference).
///
/// Chain maths, for y = f_n o ... o f_1 (x) with intermediate fields x_0 = x, x_k = f_k(x_{k-1}):
///   log_det = sum_k log|det f_k'|,  backward runs the layers' adjoints from n down to 1 with the
///   same gl for every layer (log_det is a sum), reverse_backward runs the layers' reverse adjoints
///   from 1 up to n (the adjoint of x = f_1^{-1} o ... o f_n^{-1}(y) propagates a cotangent from x
///   to y), which is also the forward-mode path-gradient recursion of arXiv:2403.15881. Because
///   that recursion runs in the forward direction, forward_path runs it fused with the forward
///   pass: layer k's reverse adjoint right after layer k's forward, while its tape is in cache
///   (the results of forward followed by reverse_backward without parameter gradients, bit for
///   bit).

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

#include <normflow/detail/aligned_allocator.hpp>
#include <normflow/errors.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/layer/module.hpp>

namespace normflow {

/// Layers applied in order (the compile-time ModuleList_).
template <class... S>
struct Sequence {
  static_assert(sizeof...(S) >= 1, "Sequence<...>: give at least one layer");
};
/// N copies of a layer spec; copy k updates parity k mod 2 where that matters.
template <index_t N, class S>
struct Repeat {
  static_assert(N >= 1, "Repeat<N, Layer>: N must be at least 1");
};

namespace detail {
template <class S>
struct flatten {
  using type = std::tuple<S>;
};
template <class... S>
struct flatten<Sequence<S...>> {
  using type = decltype(std::tuple_cat(std::declval<typename flatten<S>::type>()...));
};
template <class S, std::size_t... I>
auto repeat_tuple(std::index_sequence<I...>)
    -> decltype(std::tuple_cat(((void)I, std::declval<typename flatten<S>::type>())...));
template <index_t N, class S>
struct flatten<Repeat<N, S>> {
  using type = decltype(repeat_tuple<S>(std::make_index_sequence<std::size_t(N)>{}));
};

template <class S, class F>
concept BindableSpec = requires { typename S::template bind<F>; };

/// Layer L keeps its input in its tape's x (MapAdjointLayer::input_in_tape), a field of type F.
template <class L, class F>
concept keeps_input_in_tape = requires {
  requires bool(L::input_in_tape);
  requires std::is_same_v<decltype(std::declval<typename L::tape_type&>().x), F>;
};

template <class F, class Tuple>
struct bind_all;
template <class F, class... S>
struct bind_all<F, std::tuple<S...>> {
  using type = std::tuple<typename S::template bind<F>...>;
};
}  // namespace detail

template <class S>
inline constexpr bool is_layer_spec_v = requires { typename detail::flatten<S>::type; } &&
                                        requires { typename S::template bind<Field<Lattice<2, 2>, double>>; };
template <class... S>
inline constexpr bool is_layer_spec_v<Sequence<S...>> = (is_layer_spec_v<S> && ...);
template <index_t N, class S>
inline constexpr bool is_layer_spec_v<Repeat<N, S>> = is_layer_spec_v<S>;

/// Layers L... (already bound to one field type) applied in order: itself a Module_.
template <class... L>
class Chain {
  static_assert(sizeof...(L) >= 1, "Chain<...>: give at least one layer");

 public:
  using field_type = typename std::tuple_element_t<0, std::tuple<L...>>::field_type;
  using value_type = typename field_type::value_type;
  using T = value_type;
  static constexpr std::size_t size = sizeof...(L);

  /// Intermediate fields and the layers' own tapes.
  struct tape_type {
    // intermediate fields of forward/reverse, ping-pong: layer k writes mid[k % 2] (the layers
    // record their own (x, y), so the chain keeps no intermediate past the next layer); forward
    // and forward_path write into the next layer's tape.x instead where it keeps its input there
    // (see link)
    std::array<field_type, 2> mid;
    std::tuple<typename L::tape_type...> layers;
    field_type g0, g1;  // adjoint scratch
  };

  /// Layer k is constructed with index first_index + k.
  explicit Chain(index_t first_index = 0)
      : Chain(first_index, std::make_index_sequence<size>{}) {}

  /// Layer K (bound type).
  template <std::size_t K>
  const auto& layer() const noexcept {
    return std::get<K>(m_layers);
  }
  const std::tuple<L...>& layers() const noexcept { return m_layers; }

  std::size_t num_params() const noexcept { return m_offset.back(); }
  /// Layer k's parameters are [offset(k), offset(k+1)) of the flat vector.
  std::size_t offset(std::size_t k) const noexcept { return m_offset[k]; }

  void init_params(std::span<T> p, std::uint64_t seed) const {
    if (p.size() != num_params())
      throw ShapeError(detail::concat("Chain::init_params: got ", p.size(), " values, the flow has ", num_params(),
                                      " parameters"));
    for_each_layer([&]<std::size_t K>(const auto& l) {
      // layer K draws from its own stream of the seed: (seed, K) mixed by a fixed odd multiplier
      l.init_params(slice<K>(p), seed * 0x9E3779B97F4A7C15ull + K);
    });
  }

  template <exec::Policy Exec = exec::HostDefault>
  void forward(std::span<const T> p, const field_type& x, field_type& y, std::span<T> log_det, tape_type& tape,
               Exec exec = {}) const {
    require_params(p, "Chain::forward");
    for_each_layer([&]<std::size_t K>(const auto& l) {
      const field_type& in = input<K>(x, tape);
      field_type& out = output<K>(y, tape);
      l.forward(slice<K>(p), in, out, log_det, std::get<K>(tape.layers), exec);
    });
  }

  /// forward, and the path-gradient recursion fused with it: gy = the reverse adjoint of the
  /// chain for the cotangent gx on x and gl on the log-determinant (reverse_backward with no
  /// parameter gradients), each layer's right after its forward (see the file comment). gx and
  /// gy must be distinct fields, and distinct from x and y.
  template <exec::Policy Exec = exec::HostDefault>
  void forward_path(std::span<const T> p, const field_type& x, field_type& y, std::span<T> log_det, tape_type& tape,
                    const field_type& gx, std::span<const T> gl, field_type& gy, Exec exec = {}) const {
    require_params(p, "Chain::forward_path");
    for_each_layer([&]<std::size_t K>(const auto& l) {
      const field_type& in = input<K>(x, tape);
      field_type& out = output<K>(y, tape);
      const field_type& g_in = K == 0 ? gx : (K % 2 ? tape.g0 : tape.g1);
      field_type& g_out = K + 1 == size ? gy : (K % 2 ? tape.g1 : tape.g0);
      auto& lt = std::get<K>(tape.layers);
      if constexpr (requires { l.forward_path(slice<K>(p), in, out, log_det, lt, g_in, gl, g_out, exec); }) {
        l.forward_path(slice<K>(p), in, out, log_det, lt, g_in, gl, g_out, exec);  // (records no y)
      } else {
        l.forward(slice<K>(p), in, out, log_det, lt, exec);
        l.reverse_backward(slice<K>(p), lt, g_in, gl, g_out, std::span<T>{}, exec);
      }
    });
  }

  template <exec::Policy Exec = exec::HostDefault>
  void reverse(std::span<const T> p, const field_type& y, field_type& x, std::span<T> log_det, tape_type& tape,
               Exec exec = {}) const {
    require_params(p, "Chain::reverse");
    for_each_layer_reversed([&]<std::size_t K>(const auto& l) {
      // layer K maps its output (y or mid[K % 2]) back to its input (mid[(K - 1) % 2] or x)
      const field_type& in = K + 1 == size ? y : tape.mid[K % 2];
      field_type& out = K == 0 ? x : tape.mid[(K - 1) % 2];
      l.reverse(slice<K>(p), in, out, log_det, std::get<K>(tape.layers), exec);
    });
  }

  template <exec::Policy Exec = exec::HostDefault>
  void backward(std::span<const T> p, tape_type& tape, const field_type& gy, std::span<const T> gl, field_type& gx,
                std::span<T> gp, Exec exec = {}) const {
    require_params(p, "Chain::backward");
    require_grads(gp, "Chain::backward");
    for_each_layer_reversed([&]<std::size_t K>(const auto& l) {
      // cotangent on layer K's output -> on its input; ping-pong through g0/g1
      const field_type& g_out = K + 1 == size ? gy : ((size - 1 - K) % 2 ? tape.g0 : tape.g1);
      field_type& g_in = K == 0 ? gx : ((size - 1 - K) % 2 ? tape.g1 : tape.g0);
      l.backward(slice<K>(p), std::get<K>(tape.layers), g_out, gl, g_in, grad_slice<K>(gp), exec);
    });
  }

  template <exec::Policy Exec = exec::HostDefault>
  void reverse_backward(std::span<const T> p, tape_type& tape, const field_type& gx, std::span<const T> gl,
                        field_type& gy, std::span<T> gp, Exec exec = {}) const {
    require_params(p, "Chain::reverse_backward");
    if (!gp.empty()) require_grads(gp, "Chain::reverse_backward");
    for_each_layer([&]<std::size_t K>(const auto& l) {
      const field_type& g_in = K == 0 ? gx : (K % 2 ? tape.g0 : tape.g1);
      field_type& g_out = K + 1 == size ? gy : (K % 2 ? tape.g1 : tape.g0);
      l.reverse_backward(slice<K>(p), std::get<K>(tape.layers), g_in, gl, g_out,
                         gp.empty() ? gp : grad_slice<K>(gp), exec);
    });
  }

 private:
  template <std::size_t... I>
  Chain(index_t first, std::index_sequence<I...>) : m_layers(L(first + index_t(I))...) {
    std::size_t k = 0;
    m_offset[0] = 0;
    ((m_offset[k + 1] = m_offset[k] + std::get<I>(m_layers).num_params(), ++k), ...);
  }

  /// The field between layers K - 1 and K (0 < K < size) in forward and forward_path: layer K's
  /// tape.x where the layer keeps its input there (MapAdjointLayer::input_in_tape), so that layer
  /// K - 1 writes its output straight into it and layer K records its input without a copy (the
  /// W1 flow's step on 32x32 x 128 float 1-2% faster, on 8x8 within the noise; 2 V less per flow);
  /// else the ping-pong field mid[(K - 1) % 2].
  template <std::size_t K>
  static field_type& link(tape_type& tape) noexcept {
    using LK = std::tuple_element_t<K, std::tuple<L...>>;
    if constexpr (detail::keeps_input_in_tape<LK, field_type>)
      return std::get<K>(tape.layers).x;
    else
      return tape.mid[(K - 1) % 2];
  }
  /// Layer K's input and output field in forward and forward_path.
  template <std::size_t K>
  static const field_type& input(const field_type& x, tape_type& tape) noexcept {
    if constexpr (K == 0)
      return x;
    else
      return link<K>(tape);
  }
  template <std::size_t K>
  static field_type& output(field_type& y, tape_type& tape) noexcept {
    if constexpr (K + 1 == size)
      return y;
    else
      return link<K + 1>(tape);
  }

  template <class Fn>
  void for_each_layer(Fn&& fn) const {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (fn.template operator()<I>(std::get<I>(m_layers)), ...);
    }(std::make_index_sequence<size>{});
  }
  template <class Fn>
  void for_each_layer_reversed(Fn&& fn) const {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (fn.template operator()<size - 1 - I>(std::get<size - 1 - I>(m_layers)), ...);
    }(std::make_index_sequence<size>{});
  }

  template <std::size_t K>
  std::span<const T> slice(std::span<const T> p) const noexcept {
    return p.subspan(m_offset[K], m_offset[K + 1] - m_offset[K]);
  }
  template <std::size_t K>
  std::span<T> slice(std::span<T> p) const noexcept {
    return p.subspan(m_offset[K], m_offset[K + 1] - m_offset[K]);
  }
  template <std::size_t K>
  std::span<T> grad_slice(std::span<T> gp) const noexcept {
    return slice<K>(gp);
  }

  void require_params(std::span<const T> p, const char* where) const {
    if (p.size() != num_params())
      throw ShapeError(detail::concat(where, ": got ", p.size(), " parameters, the flow has ", num_params()));
  }
  void require_grads(std::span<T> gp, const char* where) const {
    if (gp.size() != num_params())
      throw ShapeError(detail::concat(where, ": the gradient has ", gp.size(), " entries, the flow has ",
                                      num_params(), " parameters"));
  }

  std::tuple<L...> m_layers;
  std::array<std::size_t, size + 1> m_offset{};
};

namespace detail {
template <class F, class Tuple>
struct chain_of;
template <class F, class... S>
struct chain_of<F, std::tuple<S...>> {
  using type = Chain<typename S::template bind<F>...>;
};
}  // namespace detail

/// The flat Chain of a spec bound to field type F.
template <class Spec, class F>
using chain_t = typename detail::chain_of<F, typename detail::flatten<Spec>::type>::type;

/// Result of the allocating Flow::forward / Flow::reverse: the output and the per-sample log-det.
template <class F>
struct FlowOutput {
  F y;
  std::vector<typename F::value_type> log_det;
};

/// A layer (any Module_) together with its parameters and gradients in flat contiguous storage:
/// the `net_` of a Model. An optimiser walks params() and grads() without knowing the layers.
template <Module_ L>
class Parametrized {
 public:
  using layer_type = L;
  using field_type = typename L::field_type;
  using value_type = typename L::value_type;
  using T = value_type;
  using tape_type = typename L::tape_type;
  using buffer = AlignedBuffer<T>;

  /// Takes the layer and initialises its parameters with the reference's defaults from `seed`.
  explicit Parametrized(L layer, std::uint64_t seed = 0)
      : m_layer(std::move(layer)), m_params(m_layer.num_params()), m_grads(m_layer.num_params()) {
    init(seed);
  }

  const L& layer() const noexcept { return m_layer; }
  std::size_t num_params() const noexcept { return m_layer.num_params(); }
  /// Parameter count (the reference's `npar`).
  std::size_t npar() const noexcept { return num_params(); }
  std::span<T> params() noexcept { return {m_params.data(), m_params.size()}; }
  std::span<const T> params() const noexcept { return {m_params.data(), m_params.size()}; }
  std::span<T> grads() noexcept { return {m_grads.data(), m_grads.size()}; }
  std::span<const T> grads() const noexcept { return {m_grads.data(), m_grads.size()}; }
  void zero_grads() noexcept { std::fill(m_grads.begin(), m_grads.end(), T(0)); }
  /// Re-initialises every parameter from `seed`.
  void init(std::uint64_t seed) { m_layer.init_params(params(), seed); }

  /// y = f(x), log_det[b] += log|det f'|; the tape keeps what the adjoints need.
  template <exec::Policy Exec = exec::HostDefault>
  void forward(const field_type& x, field_type& y, std::span<T> log_det, tape_type& tape, Exec exec = {}) const {
    m_layer.forward(params(), x, y, log_det, tape, exec);
  }
  /// forward fused with the path-gradient recursion: gy = the reverse adjoint for the cotangents
  /// gx (on x) and gl (on log_det), no parameter gradients; bit for bit forward followed by
  /// reverse_backward(tape, gx, gl, gy, false). Chains and module lists run each layer's adjoint
  /// right after its forward (see Chain); other layers run the two calls.
  template <exec::Policy Exec = exec::HostDefault>
  void forward_path(const field_type& x, field_type& y, std::span<T> log_det, tape_type& tape, const field_type& gx,
                    std::span<const T> gl, field_type& gy, Exec exec = {}) const {
    if constexpr (requires { m_layer.forward_path(params(), x, y, log_det, tape, gx, gl, gy, exec); }) {
      m_layer.forward_path(params(), x, y, log_det, tape, gx, gl, gy, exec);
    } else {
      m_layer.forward(params(), x, y, log_det, tape, exec);
      m_layer.reverse_backward(params(), tape, gx, gl, gy, std::span<T>{}, exec);
    }
  }
  template <exec::Policy Exec = exec::HostDefault>
  void reverse(const field_type& y, field_type& x, std::span<T> log_det, tape_type& tape, Exec exec = {}) const {
    m_layer.reverse(params(), y, x, log_det, tape, exec);
  }
  /// Adjoint of forward; adds the parameter gradient into grads().
  template <exec::Policy Exec = exec::HostDefault>
  void backward(tape_type& tape, const field_type& gy, std::span<const T> gl, field_type& gx, Exec exec = {}) {
    m_layer.backward(params(), tape, gy, gl, gx, grads(), exec);
  }
  /// Adjoint of forward; adds the parameter gradient into gp (num_params() values) instead of
  /// grads(): a training step's chunks of the batch each into their own (Trainer::step).
  template <exec::Policy Exec = exec::HostDefault>
  void backward_into(tape_type& tape, const field_type& gy, std::span<const T> gl, field_type& gx, std::span<T> gp,
                     Exec exec = {}) const {
    if (gp.size() != num_params())
      throw ShapeError(detail::concat("backward_into: gp has ", gp.size(), " entries, the flow has ", num_params(),
                                      " parameters"));
    m_layer.backward(params(), tape, gy, gl, gx, gp, exec);
  }
  /// Adjoint of reverse; adds the parameter gradient into grads() if `param_grads`.
  template <exec::Policy Exec = exec::HostDefault>
  void reverse_backward(tape_type& tape, const field_type& gx, std::span<const T> gl, field_type& gy,
                        bool param_grads = true, Exec exec = {}) {
    m_layer.reverse_backward(params(), tape, gx, gl, gy, param_grads ? grads() : std::span<T>{}, exec);
  }

  /// Allocating forward: {y, log_det} with log_det starting at 0.
  FlowOutput<field_type> forward(const field_type& x) const {
    FlowOutput<field_type> r{field_type(x.batch()), std::vector<T>(std::size_t(x.batch()), T(0))};
    tape_type tape;
    forward(x, r.y, std::span<T>(r.log_det), tape);
    return r;
  }
  /// Allocating reverse: {x, log_det of the inverse}.
  FlowOutput<field_type> reverse(const field_type& y) const {
    FlowOutput<field_type> r{field_type(y.batch()), std::vector<T>(std::size_t(y.batch()), T(0))};
    tape_type tape;
    reverse(y, r.y, std::span<T>(r.log_det), tape);
    return r;
  }

 private:
  L m_layer;
  buffer m_params, m_grads;
};

/// A normalizing flow: the layers of Spec bound to scalar fields on Lat, with its parameters and
/// gradients in flat contiguous storage.
///   Flow<Repeat<16, AffineCoupling_<ConvNet<Hidden<8, 8>>>>, Lattice<8, 8>> net_;
///   auto [y, log_det] = net_.forward(x);
/// \tparam Spec  a layer spec, Sequence<...> or Repeat<N, ...>
/// \tparam Lat   the lattice
/// \tparam T     float (default, as the reference) or double
/// \tparam Order site order of the fields
template <class Spec, class Lat, class T = float, class Order = default_order_t<Lat>>
class Flow : public Parametrized<chain_t<Spec, Field<Lat, T, Scalar, Order>>> {
  static_assert(is_lattice_v<Lat>,
                "Flow<Spec, Lat>: the second argument must be a normflow::Lattice, e.g. "
                "Flow<Coupling<Spline<10>>, Lattice<8, 8>>");
  static_assert(is_layer_spec_v<Spec>,
                "Flow<Spec, Lat>: the first argument must be a layer (AffineCoupling_<...>, Affine_, ...) "
                "or a Sequence<...>/Repeat<N, ...> of layers");
  using base = Parametrized<chain_t<Spec, Field<Lat, T, Scalar, Order>>>;

 public:
  using chain_type = chain_t<Spec, Field<Lat, T, Scalar, Order>>;
  using lattice = Lat;

  /// Builds the layers and initialises the parameters with the reference's defaults from `seed`.
  explicit Flow(std::uint64_t seed = 0) : base(chain_type(0), seed) {}

  const chain_type& chain() const noexcept { return this->layer(); }
};

}  // namespace normflow
