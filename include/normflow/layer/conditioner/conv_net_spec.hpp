// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file ConvNet<Options...>: the compile-time description of a coupling's conditioner network,
/// turned into a runtime ConvStack (the kernels) by the layer that owns it.
///
///   ConvNet<>                                         1 -> 8 -> 8 -> out, kernel 3, tanh, no bias
///   ConvNet<Hidden<16, 16>, Kernel<5>, Act<Activation::leaky_relu>, Bias<true>>
/// Defaults are the reference workload's (6.2): hidden (8, 8), kernel 3, tanh, no bias (so that the
/// net is odd and the affine coupling flow Z2-equivariant). The input and output channel counts
/// come from the layer (1 in; 2 for affine, 3K - 2 for a K-knot spline coupling).

#include <type_traits>
#include <vector>

#include <normflow/lattice/lattice.hpp>
#include <normflow/layer/conditioner/activation.hpp>
#include <normflow/layer/conditioner/conv_net.hpp>

namespace normflow {

/// Hidden channel counts of a ConvNet (each >= 1; Hidden<> is a single convolution).
template <index_t... H>
struct Hidden {
  static_assert(((H >= 1) && ...), "Hidden<...>: every hidden channel count must be at least 1");
};
/// Kernel size of every convolution (odd: same-size periodic convolutions).
template <index_t K>
struct Kernel {
  static_assert(K >= 1 && K % 2 == 1, "Kernel<K>: the kernel size must be odd and at least 1, e.g. Kernel<3>");
};
/// Activation after every convolution but the last.
template <Activation A>
struct Act {};
/// Whether every convolution has a bias.
template <bool B>
struct Bias {};

namespace detail {
template <class T>
inline constexpr bool is_hidden_v = false;
template <index_t... H>
inline constexpr bool is_hidden_v<Hidden<H...>> = true;
template <class T>
inline constexpr bool is_kernel_v = false;
template <index_t K>
inline constexpr bool is_kernel_v<Kernel<K>> = true;
template <class T>
inline constexpr bool is_act_v = false;
template <Activation A>
inline constexpr bool is_act_v<Act<A>> = true;
template <class T>
inline constexpr bool is_bias_v = false;
template <bool B>
inline constexpr bool is_bias_v<Bias<B>> = true;

template <class T>
inline constexpr bool is_convnet_option_v = is_hidden_v<T> || is_kernel_v<T> || is_act_v<T> || is_bias_v<T>;

template <index_t... H>
std::vector<index_t> hidden_list(Hidden<H...>) {
  return {H...};
}
template <index_t K>
constexpr index_t kernel_value(Kernel<K>) {
  return K;
}
template <Activation A>
constexpr Activation act_value(Act<A>) {
  return A;
}
template <bool B>
constexpr bool bias_value(Bias<B>) {
  return B;
}
}  // namespace detail

/// Conditioner spec (see the file comment). Options in any order, each at most once.
template <class... Options>
struct ConvNet {
  static_assert((detail::is_convnet_option_v<Options> && ...),
                "ConvNet<...>: options are Hidden<...>, Kernel<K>, Act<Activation::...> and Bias<bool>");
  static_assert((int(detail::is_hidden_v<Options>) + ... + 0) <= 1, "ConvNet<...>: give Hidden<...> at most once");
  static_assert((int(detail::is_kernel_v<Options>) + ... + 0) <= 1, "ConvNet<...>: give Kernel<K> at most once");
  static_assert((int(detail::is_act_v<Options>) + ... + 0) <= 1, "ConvNet<...>: give Act<...> at most once");
  static_assert((int(detail::is_bias_v<Options>) + ... + 0) <= 1, "ConvNet<...>: give Bias<...> at most once");

  /// The runtime configuration with in/out channels set by the layer.
  static ConvNetConfig config(index_t in_channels, index_t out_channels) {
    ConvNetConfig c;
    c.in_channels = in_channels;
    c.out_channels = out_channels;
    c.hidden = {8, 8};
    c.kernel_size = 3;
    c.activation = Activation::tanh;
    c.bias = false;
    (apply(c, Options{}), ...);
    return c;
  }

 private:
  template <class O>
  static void apply(ConvNetConfig& c, O o) {
    if constexpr (detail::is_hidden_v<O>) c.hidden = detail::hidden_list(o);
    if constexpr (detail::is_kernel_v<O>) c.kernel_size = detail::kernel_value(o);
    if constexpr (detail::is_act_v<O>) c.activation = detail::act_value(o);
    if constexpr (detail::is_bias_v<O>) c.bias = detail::bias_value(o);
  }
};

template <class T>
inline constexpr bool is_conv_net_spec_v = false;
template <class... O>
inline constexpr bool is_conv_net_spec_v<ConvNet<O...>> = true;

}  // namespace normflow
