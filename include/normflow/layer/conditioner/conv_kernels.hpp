// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
// IWYU pragma: private, include <normflow/layer/conditioner/conv_net.hpp>
/// \file Host kernels of the periodic convolutions of ConvStack: a direct convolution vectorized
/// over the batch lanes and register-blocked over output channels, and the weight/bias-gradient
/// reduction. Used by ConvStack; see conv_net.hpp for the maths.
///
/// Data layout (as Field): a[(s * C + c) * stride + b], s a storage position, c < C a channel,
/// b < stride the sample lane (stride = padded batch, a whole number of SIMD packs).
/// Weights: w[(o * cin + i) * ntaps + t]. Taps: taps[t * volume + s] = storage position of
/// site(s) + delta_t (periodic).
///
/// Kernels depend on T only (not on the lattice), so every lattice shares one instantiation.
/// Determinism: each output value (an activation, or one weight/bias gradient) is computed by
/// one work item in a fixed order (taps, then input channels; or sites, then packs, then a fixed
/// horizontal sum of the lanes), so results do not depend on the thread count. The register
/// blocking depends only on the channel counts and the batch, never on the thread count.

#include <algorithm>
#include <type_traits>

#include <normflow/config.hpp>
#include <normflow/exec/host.hpp>
#include <normflow/layer/conditioner/activation.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/simd/pack.hpp>

namespace normflow::detail {

/// One periodic convolution out[o](s) = bias[o] + sum_{t, i} w[o][i][t] in[i](taps[t][s]).
template <class T>
struct ConvKernelArgs {
  const T* in;          ///< [site][cin][stride]
  const T* weight;      ///< [cout][cin][ntaps]
  const T* bias;        ///< [cout], or nullptr for no bias
  const index_t* taps;  ///< [ntaps][volume]
  index_t cin, cout, ntaps, volume, stride;
  index_t site_begin = 0;  ///< output sites [site_begin, site_end) are computed (storage positions)
  index_t site_end = -1;   ///< -1: volume
};

/// What happens to the convolution's result acc at (o, s, b) after it is stored to out.
enum class ConvEpilogue {
  store,       ///< out = acc
  activate,    ///< out = acc (the pre-activation z), out_h = f(acc)
  derivative,  ///< out = acc * f'(z) with z, h = f(z) read from z, h (the chain rule through f)
};

template <class T>
struct ConvOutput {
  ConvEpilogue mode;
  Activation act;
  T* out;      ///< [site][cout][stride]
  T* out_h;    ///< activate: [site][cout][stride]
  const T* z;  ///< derivative: [site][cout][stride]
  const T* h;  ///< derivative: [site][cout][stride]
};

/// Lane sum of v in xsimd's fixed order (v itself for a scalar).
template <class V>
NORMFLOW_ALWAYS_INLINE simd::scalar_t<V> horizontal_sum(const V& v) noexcept {
  if constexpr (std::is_arithmetic_v<V>)
    return v;
  else
    return hadd(v);
}

/// Accumulators per register block: 16 with 32 vector registers (AVX-512), else 8 (16 registers).
template <class V>
inline constexpr index_t conv_accumulators = sizeof(V) >= 64 ? 16 : 8;
/// Packs per work item of the convolution (a work item is one site and one chunk of lanes).
template <class V>
inline constexpr index_t conv_chunk_packs = sizeof(V) >= 64 ? 8 : 4;

/// out[o0, o0 + Ob) at storage position s, lanes [b0, b0 + Pb * width): Ob x Pb accumulators in
/// registers; each weight is broadcast once per (t, i), each input pack loaded once per (t, i).
/// Sum order of every value: bias, then t ascending, then i ascending.
template <class V, index_t Ob, index_t Pb, class T>
inline void conv_block(const ConvKernelArgs<T>& a, T* out, index_t s, index_t o0, index_t b0) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  V acc[Ob][Pb];
  for (index_t o = 0; o < Ob; ++o) {
    const V init = a.bias ? V(a.bias[o0 + o]) : V(T(0));
    for (index_t p = 0; p < Pb; ++p) acc[o][p] = init;
  }
  const offset_t in_site = offset_t(a.cin) * a.stride;
  const index_t w_out = a.cin * a.ntaps;  // distance between output channels in the weights
  const T* NORMFLOW_RESTRICT w0 = a.weight + offset_t(o0) * w_out;
  for (index_t t = 0; t < a.ntaps; ++t) {
    const T* NORMFLOW_RESTRICT xs = a.in + a.taps[offset_t(t) * a.volume + s] * in_site + b0;
    const T* NORMFLOW_RESTRICT wt = w0 + t;
    for (index_t i = 0; i < a.cin; ++i) {
      V xv[Pb];
      for (index_t p = 0; p < Pb; ++p) xv[p] = simd::load<V>(xs + offset_t(i) * a.stride + p * W);
      for (index_t o = 0; o < Ob; ++o) {
        const V w(wt[o * w_out + i * a.ntaps]);
        for (index_t p = 0; p < Pb; ++p) acc[o][p] = fused_multiply_add(w, xv[p], acc[o][p]);
      }
    }
  }
  T* NORMFLOW_RESTRICT dst = out + (offset_t(s) * a.cout + o0) * a.stride + b0;
  for (index_t o = 0; o < Ob; ++o)
    for (index_t p = 0; p < Pb; ++p) simd::store(dst + offset_t(o) * a.stride + p * W, acc[o][p]);
}

/// out[o0, o0 + Ob) at s over np packs from b0: blocks of Pb = min(accumulators / Ob, chunk)
/// packs, then halving block widths for the remainder.
template <class V, index_t Ob, index_t Pb = std::min(conv_accumulators<V> / Ob, conv_chunk_packs<V>), class T>
inline void conv_rows(const ConvKernelArgs<T>& a, T* out, index_t s, index_t o0, index_t b0, index_t np) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  index_t p = 0;
  for (; p + Pb <= np; p += Pb) conv_block<V, Ob, Pb>(a, out, s, o0, b0 + p * W);
  if constexpr (Pb > 1) {
    if (p < np) conv_rows<V, Ob, Pb / 2>(a, out, s, o0, b0 + p * W, np - p);
  }
}

/// The epilogue of one work item: channels [0, C) at s, np packs from b0 (data in L1 by now).
template <class V, class T>
inline void conv_epilogue(const ConvOutput<T>& e, index_t cout, index_t stride, index_t s, index_t b0,
                          index_t np) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  const offset_t base = offset_t(s) * cout * stride + b0;
  if (e.mode == ConvEpilogue::activate) {
    with_activation(e.act, [&]<class Op>(Op) {
      for (index_t c = 0; c < cout; ++c)
        for (index_t p = 0; p < np; ++p) {
          const offset_t k = base + offset_t(c) * stride + p * W;
          simd::store(e.out_h + k, Op::f(simd::load<V>(e.out + k)));
        }
    });
  } else if (e.mode == ConvEpilogue::derivative) {
    with_activation(e.act, [&]<class Op>(Op) {
      for (index_t c = 0; c < cout; ++c)
        for (index_t p = 0; p < np; ++p) {
          const offset_t k = base + offset_t(c) * stride + p * W;
          simd::store(e.out + k, simd::load<V>(e.out + k) * Op::df(simd::load<V>(e.z + k), simd::load<V>(e.h + k)));
        }
    });
  }
}

/// All output channels at storage position s, lanes [b0, b0 + np * width): blocks of 8 output
/// channels, then 4, 2, 1; then the epilogue.
template <class V, class T>
inline void conv_item(const ConvKernelArgs<T>& a, const ConvOutput<T>& e, index_t s, index_t b0,
                      index_t np) noexcept {
  index_t o0 = 0;
  for (; o0 + 8 <= a.cout; o0 += 8) conv_rows<V, 8>(a, e.out, s, o0, b0, np);
  if (a.cout - o0 >= 4) {
    conv_rows<V, 4>(a, e.out, s, o0, b0, np);
    o0 += 4;
  }
  if (a.cout - o0 >= 2) {
    conv_rows<V, 2>(a, e.out, s, o0, b0, np);
    o0 += 2;
  }
  if (a.cout - o0 >= 1) conv_rows<V, 1>(a, e.out, s, o0, b0, np);
  conv_epilogue<V>(e, a.cout, a.stride, s, b0, np);
}

/// The convolution a followed by the epilogue e, over every site and lane. Work items are
/// (site, chunk of conv_chunk_packs packs); items write disjoint outputs.
template <class T, class Exec>
void conv_forward(Exec exec, const ConvKernelArgs<T>& a, const ConvOutput<T>& e) {
  using V = simd::native_pack<T>;
  constexpr index_t W = simd::pack_size<V>;
  constexpr index_t C = conv_chunk_packs<V>;
  const index_t packs = a.stride / W;
  const index_t chunks = (packs + C - 1) / C;
  const index_t s0 = a.site_begin, s1 = a.site_end < 0 ? a.volume : a.site_end;
  exec::parallel_for(exec, offset_t(s1 - s0) * chunks, [=](offset_t item) {
    const index_t s = s0 + index_t(item / chunks), c = index_t(item % chunks);
    conv_item<V>(a, e, s, c * C * W, std::min(C, packs - c * C));
  });
}

/// Gradients of one convolution from gz = dL/d(out) (padding lanes zero):
///   grad_weight[o][i][t] += sum_{s, b} gz[o](s, b) in[i](taps[t][s], b)
///   grad_bias[o]         += sum_{s, b} gz[o](s, b)
/// The weight gradient is a matrix [cout][cin * ntaps]; its column j = i * ntaps + t pairs
/// input channel i with tap t.
template <class T>
struct ConvGradArgs {
  const T* gz;          ///< [site][cout][stride]
  const T* in;          ///< [site][cin][stride]
  const index_t* taps;  ///< [ntaps][volume]
  index_t cin, cout, ntaps, volume, stride;
  T* grad_weight;       ///< [cout][cin][ntaps]
  T* grad_bias;         ///< [cout], or nullptr
  index_t site_begin = 0;  ///< gz is zero outside output sites [site_begin, site_end): skipped
  index_t site_end = -1;   ///< -1: volume
};

/// Weight gradients of rows [o0, o0 + Ob) x columns [j0, j0 + Jb): Ob x Jb pack accumulators,
/// each summed over sites (ascending) and packs (ascending), then over lanes by horizontal_sum.
template <class V, index_t Ob, index_t Jb, class T>
inline void weight_grad_block(const ConvGradArgs<T>& a, index_t o0, index_t j0) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  V acc[Ob][Jb];
  const index_t* NORMFLOW_RESTRICT nb[Jb];
  index_t ch[Jb];
  for (index_t j = 0; j < Jb; ++j) {
    nb[j] = a.taps + offset_t((j0 + j) % a.ntaps) * a.volume;
    ch[j] = (j0 + j) / a.ntaps;
    for (index_t o = 0; o < Ob; ++o) acc[o][j] = V(T(0));
  }
  const index_t s1 = a.site_end < 0 ? a.volume : a.site_end;
  for (index_t s = a.site_begin; s < s1; ++s) {
    const T* NORMFLOW_RESTRICT g = a.gz + (offset_t(s) * a.cout + o0) * a.stride;
    const T* NORMFLOW_RESTRICT x[Jb];
    for (index_t j = 0; j < Jb; ++j) x[j] = a.in + (offset_t(nb[j][s]) * a.cin + ch[j]) * a.stride;
    for (index_t b = 0; b < a.stride; b += W) {
      V gv[Ob], xv[Jb];
      for (index_t o = 0; o < Ob; ++o) gv[o] = simd::load<V>(g + offset_t(o) * a.stride + b);
      for (index_t j = 0; j < Jb; ++j) xv[j] = simd::load<V>(x[j] + b);
      for (index_t o = 0; o < Ob; ++o)
        for (index_t j = 0; j < Jb; ++j) acc[o][j] = fused_multiply_add(gv[o], xv[j], acc[o][j]);
    }
  }
  const offset_t cols = offset_t(a.cin) * a.ntaps;
  for (index_t o = 0; o < Ob; ++o)
    for (index_t j = 0; j < Jb; ++j) a.grad_weight[(o0 + o) * cols + j0 + j] += horizontal_sum(acc[o][j]);
}

/// Bias gradient of output channel o (sites ascending, packs ascending, then the lanes).
template <class V, class T>
inline void bias_grad(const ConvGradArgs<T>& a, index_t o) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  V acc(T(0));
  const index_t s1 = a.site_end < 0 ? a.volume : a.site_end;
  for (index_t s = a.site_begin; s < s1; ++s) {
    const T* g = a.gz + (offset_t(s) * a.cout + o) * a.stride;
    for (index_t b = 0; b < a.stride; b += W) acc += simd::load<V>(g + b);
  }
  a.grad_bias[o] += horizontal_sum(acc);
}

/// Blocks of a range of n rows or columns: n / B blocks of B, then n % B single ones.
struct Blocks {
  index_t full, count;  ///< number of B-wide blocks; all blocks
  template <index_t B>
  static constexpr Blocks of(index_t n) noexcept {
    return {n / B, n / B + n % B};
  }
  /// First index of block k (B-wide blocks first).
  template <index_t B>
  constexpr index_t first(index_t k) const noexcept {
    return k < full ? k * B : full * B + (k - full);
  }
};

/// Adds the weight and bias gradients of one convolution. Work items: (row block, column
/// block) of the weight gradient, then one per bias entry; items write disjoint entries.
template <class T, class Exec>
void conv_param_grad(Exec exec, const ConvGradArgs<T>& a) {
  using V = simd::native_pack<T>;
  constexpr index_t Ob = 4, Jb = conv_accumulators<V> / 4;  // 4 x 4 (AVX-512) or 4 x 2
  const Blocks ob = Blocks::of<Ob>(a.cout), jb = Blocks::of<Jb>(a.cin * a.ntaps);
  const offset_t weight_items = offset_t(ob.count) * jb.count;
  const offset_t bias_items = a.grad_bias ? a.cout : 0;
  exec::parallel_for(exec, weight_items + bias_items, [=](offset_t item) {
    if (item >= weight_items) {
      bias_grad<V>(a, index_t(item - weight_items));
      return;
    }
    const index_t ko = index_t(item / jb.count), kj = index_t(item % jb.count);
    const index_t o0 = ob.first<Ob>(ko), j0 = jb.first<Jb>(kj);
    const bool wide_o = ko < ob.full, wide_j = kj < jb.full;
    if (wide_o && wide_j)
      weight_grad_block<V, Ob, Jb>(a, o0, j0);
    else if (wide_o)
      weight_grad_block<V, Ob, 1>(a, o0, j0);
    else if (wide_j)
      weight_grad_block<V, 1, Jb>(a, o0, j0);
    else
      weight_grad_block<V, 1, 1>(a, o0, j0);
  });
}

}  // namespace normflow::detail
