// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
// IWYU pragma: private, include <normflow/layer/conditioner/conv_net.hpp>
/// \file Host kernels of the periodic convolutions of ConvStack: a direct convolution vectorized
/// over the batch lanes and register-blocked over output channels, and the weight/bias-gradient
/// reduction. Used by ConvStack; see conv_net.hpp for the maths.
///
/// Data layout: a[s * site + c * stride + b], s a storage position, c < C a channel, b < stride
/// the sample lane (stride = padded batch, a whole number of SIMD packs), site >= C * stride the
/// distance between sites (C * stride: Field's layout; ConvStack's own buffers pad it to an odd
/// number of cache lines, see conv_site_stride).
/// Weights: w[(o * cin + i) * ntaps + t]; the convolution kernel reads them repacked by
/// pack_conv_weights (output-channel blocks, each [t][i][o] with o fastest). Taps:
/// taps[t * volume + s] = storage position of site(s) + delta_t (periodic).
///
/// Kernels depend on T only (not on the lattice), so every lattice shares one instantiation.
/// Determinism: each activation is computed by one work item in a fixed order (taps, then input
/// channels); each weight gradient entry is a sum of per-chunk partial packs (each over its
/// chunk's tiles, packs and sites in order) taken in chunk order, then a fixed horizontal sum of
/// the lanes; each bias gradient entry by one item (sites, packs, lanes). So results do not
/// depend on the thread count. Chunks, tiles and register blocks depend only on the lattice, the
/// channel counts and the batch, never on the thread count.
///
/// Performance notes (AVX-512, GCC 12; see benchmarks/README.md): the FMA goes through
/// simd::fma (xsimd 8.1 has none for AVX-512); weights are repacked so a register block reads
/// them at fixed offsets; the input-channel loop is unrolled for common channel counts so the
/// accumulators stay in registers across the tap loop; the weight gradient is tiled so its
/// operands are reused from L1. xsimd's vector stores may alias any object, so a kernel that reads
/// its arguments through a struct reference re-reads them after every store: the convolution
/// kernels copy what they use into locals first (see conv_block_body).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/exec/host.hpp>
#include <normflow/layer/conditioner/activation.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/simd/pack.hpp>

namespace normflow::detail {

/// The distance between sites in ConvStack's own buffers of c channels: c * stride rounded up to
/// an odd number of 64-byte cache lines. (With c * stride * sizeof(T) a multiple of 4 KiB, e.g.
/// 8 channels x 128 float lanes, every site's pack b of channel i falls into one L1 set, and the
/// 9 taps and the weight gradient's tiles evict each other; an odd line count spreads consecutive
/// sites over all sets.)
template <class T>
constexpr offset_t conv_site_stride(index_t c, index_t stride) noexcept {
  constexpr offset_t line = 64 / sizeof(T);
  offset_t lines = (offset_t(c) * stride + line - 1) / line;
  if (lines % 2 == 0) ++lines;
  return lines * line;
}

/// Calls f(o0, Ob) for the output-channel blocks of the convolution kernel, in order: blocks of
/// 8 channels, then one of 4, 2, 1 for the remainder (Ob a std::integral_constant).
template <class F>
NORMFLOW_ALWAYS_INLINE void for_each_out_block(index_t cout, F&& f) {
  index_t o0 = 0;
  for (; o0 + 8 <= cout; o0 += 8) f(o0, std::integral_constant<index_t, 8>{});
  if (cout - o0 >= 4) {
    f(o0, std::integral_constant<index_t, 4>{});
    o0 += 4;
  }
  if (cout - o0 >= 2) {
    f(o0, std::integral_constant<index_t, 2>{});
    o0 += 2;
  }
  if (cout - o0 >= 1) f(o0, std::integral_constant<index_t, 1>{});
}

/// Repacks weights w[o][i][t] (cout x cin x ntaps) for the convolution kernel: the block of
/// output channels [o0, o0 + Ob) (see for_each_out_block) starts at o0 cin ntaps and holds
///   packed[o0 cin ntaps + (t cin + i) Ob + (o - o0)] = w[o][i][t]
/// so a register block reads its Ob weights of one (t, i) at consecutive compile-time offsets
/// (with w[o][i][t] at runtime strides GCC precomputes all cin x Ob addresses of a tap and
/// spills them). flip_transpose: w holds the forward weights W[o'][i'][t] of a convolution
/// cin -> cout read as the adjoint's W^T[i][o][t] = W[o][i][ntaps - 1 - t] (so w is then
/// cin' = cout x cout' = cin x ntaps and this packs the input-adjoint convolution).
/// With a tap list (n_used >= 0 entries of taps_used, each in [0, ntaps)): only those taps, in that
/// order, as taps 0, ..., n_used - 1 of the packed layout (n_used in place of ntaps above), for
/// a kernel that reads a tap table of n_used rows (see ConvKernelArgs::ntaps_hi).
template <class T>
void pack_conv_weights(const T* w, T* packed, index_t cin, index_t cout, index_t ntaps, bool flip_transpose,
                       const index_t* taps_used = nullptr, index_t n_used = -1) noexcept {
  const index_t n = n_used >= 0 ? n_used : ntaps;
  for_each_out_block(cout, [&](index_t o0, auto ob) {
    constexpr index_t Ob = decltype(ob)::value;
    T* dst = packed + offset_t(o0) * cin * n;
    for (index_t j = 0; j < n; ++j) {
      const index_t t = n_used >= 0 ? taps_used[j] : j;
      for (index_t i = 0; i < cin; ++i)
        for (index_t o = 0; o < Ob; ++o)
          dst[(offset_t(j) * cin + i) * Ob + o] =
              flip_transpose ? w[(offset_t(i) * cout + o0 + o) * ntaps + (ntaps - 1 - t)]
                             : w[(offset_t(o0 + o) * cin + i) * ntaps + t];
    }
  });
}

/// One periodic convolution out[o](s) = bias[o] + sum_{t, i} w[o][i][t] in[i](taps[t][s]).
template <class T>
struct ConvKernelArgs {
  const T* in;          ///< [site][cin][stride]
  const T* weight;      ///< w packed by pack_conv_weights
  const T* bias;        ///< [cout], or nullptr for no bias
  const index_t* taps;  ///< [ntaps][volume]
  index_t cin, cout, ntaps, volume, stride;
  index_t site_begin = 0;  ///< output sites [site_begin, site_end) are computed (storage positions)
  index_t site_end = -1;   ///< -1: volume
  offset_t in_site = 0;    ///< distance between sites of in (0: cin * stride)
  offset_t out_site = 0;   ///< distance between sites of out, out_h, z, h (0: cout * stride)
  /// The position in out (and out_h) of output site s: out_pos[s], or s itself (nullptr). A ring
  /// buffer (see ConvRingPlan) holds only the sites still to be read; z and h stay at s.
  const index_t* out_pos = nullptr;
  /// The row blocks of a 2d lattice with a 3 x 3 kernel (see conv_row_blocks; nullptr: none):
  /// row_block_count blocks of conv_row_block_size entries for the parity in storage positions
  /// [0, volume / 2), then as many for [volume / 2, volume).
  const index_t* row_blocks = nullptr;
  index_t row_block_count = 0;
  /// Sites of one parity per row of blocks (two lattice rows, the last extent; blocks of a parity
  /// cover its storage positions in rows of row_block_span, row_block_span / 8 blocks each).
  index_t row_block_span = 0;
  /// Taps by storage half (ntaps_hi >= 0; a convolution whose input is zero on one half of an
  /// even/odd lattice, see ConvHalfTaps): output sites s < volume / 2 read rows [0, ntaps) of
  /// taps with the packed weights at weight, sites s >= volume / 2 rows [0, ntaps_hi) with those
  /// at weight + weight_hi. -1: every site reads ntaps taps at weight.
  index_t ntaps_hi = -1;
  offset_t weight_hi = 0;
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
/// Sum order of every value: bias, then t ascending, then i ascending (one output channel, Ob = 1:
/// i ascending, then t ascending, as conv_row_blocks). With taps by storage half
/// (ConvKernelArgs::ntaps_hi) t runs over the half's own tap rows (ConvHalfTaps: the taps that
/// reach the nonzero half, in ascending order), so the terms left out are exact zeros and every
/// value is the one of the whole tap table (up to the sign of a zero).
/// Cin > 0: the input channel count as a compile-time constant (a.cin == Cin). The i loop is then
/// unrolled, the tap loop is the innermost loop and GCC keeps the accumulators in registers across
/// it (with a runtime i loop it stores and reloads all Ob x Pb of them once per tap: the array is
/// too large for scalar replacement). Cin = 0: any a.cin.
template <class V, index_t Ob, index_t Pb, index_t Cin, class T>
NORMFLOW_ALWAYS_INLINE void conv_block_body(const ConvKernelArgs<T>& a, T* out, index_t s, index_t o0,
                                            index_t b0) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  // a's fields as locals, and the channel rows reached by adding the row distance in bytes: with
  // a's fields read where they are used and row i addressed as in + i stride, GCC re-read the
  // stride from a after every vector store (xsimd's stores may alias anything) and spent an add
  // and a lea per channel row; on 8x8 x 128 float (fractions of the FMA peak, medians of six
  // pairs of builds) 8 -> 8 0.798 -> 0.827, 2 -> 8 0.706 -> 0.755, 1 -> 8 0.583 -> 0.655. The sums
  // are unchanged.
  const offset_t stride = a.stride, in_site = a.in_site, volume = a.volume;
  // taps by storage half (ConvKernelArgs::ntaps_hi): the sites of the second half read their own
  // tap rows and packed weights
  const bool hi = a.ntaps_hi >= 0 && s >= volume / 2;
  const index_t cin = Cin > 0 ? Cin : a.cin, ntaps = hi ? a.ntaps_hi : a.ntaps;
  const offset_t row_bytes = stride * offset_t(sizeof(T));
  const T* NORMFLOW_RESTRICT bias = a.bias;
  V acc[Ob][Pb];
  if (bias) {
    const T* NORMFLOW_RESTRICT bo = bias + o0;
    for (index_t o = 0; o < Ob; ++o)
      for (index_t p = 0; p < Pb; ++p) acc[o][p] = V(bo[o]);
  } else {
    for (index_t o = 0; o < Ob; ++o)
      for (index_t p = 0; p < Pb; ++p) acc[o][p] = V(T(0));
  }
  // this block's packed weights
  const T* NORMFLOW_RESTRICT wp = a.weight + (hi ? a.weight_hi : 0) + offset_t(o0) * cin * ntaps;
  const index_t* NORMFLOW_RESTRICT tap = a.taps + s;
  const T* NORMFLOW_RESTRICT in = a.in + b0;
  auto step = [&](const T* NORMFLOW_RESTRICT xs, const T* NORMFLOW_RESTRICT wt) {
    V xv[Pb];
    for (index_t p = 0; p < Pb; ++p) xv[p] = simd::load<V>(xs + p * W);
    for (index_t o = 0; o < Ob; ++o) {
      const V w(wt[o]);
      for (index_t p = 0; p < Pb; ++p) acc[o][p] = simd::fma(w, xv[p], acc[o][p]);
    }
  };
  if constexpr (Ob == 1) {
    // one output channel: input channels outer, taps inner (the order of conv_row_blocks)
    for (index_t i = 0; i < cin; ++i) {
      const T* NORMFLOW_RESTRICT xi = in + offset_t(i) * stride;
      for (index_t t = 0; t < ntaps; ++t) step(xi + tap[offset_t(t) * volume] * in_site, wp + offset_t(t) * cin + i);
    }
  } else {
    for (index_t t = 0; t < ntaps; ++t) {
      const T* NORMFLOW_RESTRICT xs = in + tap[offset_t(t) * volume] * in_site;
      const T* NORMFLOW_RESTRICT wt = wp + offset_t(t) * cin * Ob;
      if constexpr (Cin > 0) {
        const char* xb = reinterpret_cast<const char*>(xs);
#pragma GCC unroll 16
        for (index_t i = 0; i < Cin; ++i) {
          step(reinterpret_cast<const T*>(xb), wt + i * Ob);
          xb += row_bytes;
        }
      } else {
        for (index_t i = 0; i < cin; ++i) step(xs + offset_t(i) * stride, wt + i * Ob);
      }
    }
  }
  const index_t so = a.out_pos ? a.out_pos[s] : s;
  char* db = reinterpret_cast<char*>(out + offset_t(so) * a.out_site + offset_t(o0) * stride + b0);
  for (index_t o = 0; o < Ob; ++o) {
    for (index_t p = 0; p < Pb; ++p) simd::store(reinterpret_cast<T*>(db) + p * W, acc[o][p]);
    db += row_bytes;
  }
}

/// conv_block_body, out of line for the wide blocks (GCC's code for them depends on where they
/// are inlined: measured 67% instead of 82% of the FMA peak for 8 -> 8 in one build), inline for
/// one input channel (short loops, where the call costs; two channels measured 0.66 inline and
/// 0.69 out of line in one process). (The sweeps use conv_sweep, with every block inline.)
template <class V, index_t Ob, index_t Pb, index_t Cin, class T>
NORMFLOW_NOINLINE void conv_block_outline(const ConvKernelArgs<T>& a, T* out, index_t s, index_t o0,
                                          index_t b0) noexcept {
  conv_block_body<V, Ob, Pb, Cin>(a, out, s, o0, b0);
}
/// nblk >= 1 consecutive blocks of Pb packs from b0 in one out-of-line call (one call per output
/// block and item instead of one per register block: 8 -> 8 from 70-73% to 74-77% of the peak).
template <class V, index_t Ob, index_t Pb, index_t Cin, class T>
NORMFLOW_NOINLINE void conv_blocks_outline(const ConvKernelArgs<T>& a, T* out, index_t s, index_t o0, index_t b0,
                                           index_t nblk) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  index_t k = 0;
  do {
    conv_block_body<V, Ob, Pb, Cin>(a, out, s, o0, b0 + k * Pb * W);
  } while (++k < nblk);
}
template <class V, index_t Ob, index_t Pb, index_t Cin, class T>
NORMFLOW_ALWAYS_INLINE void conv_block(const ConvKernelArgs<T>& a, T* out, index_t s, index_t o0, index_t b0) noexcept {
  if constexpr (Cin == 1)
    conv_block_body<V, Ob, Pb, Cin>(a, out, s, o0, b0);
  else
    conv_block_outline<V, Ob, Pb, Cin>(a, out, s, o0, b0);
}

/// out[o0, o0 + Ob) at s over np packs from b0: blocks of Pb = min(accumulators / Ob, chunk)
/// packs, then halving block widths for the remainder.
template <class V, index_t Ob, index_t Cin, index_t Pb = std::min(conv_accumulators<V> / Ob, conv_chunk_packs<V>),
          class T>
inline void conv_rows(const ConvKernelArgs<T>& a, T* out, index_t s, index_t o0, index_t b0, index_t np) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  index_t p = 0;
  if constexpr (Cin == 1) {
    for (; p + Pb <= np; p += Pb) conv_block<V, Ob, Pb, Cin>(a, out, s, o0, b0 + p * W);
  } else if (np >= Pb) {
    conv_blocks_outline<V, Ob, Pb, Cin>(a, out, s, o0, b0, np / Pb);
    p = np / Pb * Pb;
  }
  if constexpr (Pb > 1) {
    if (p < np) conv_rows<V, Ob, Cin, Pb / 2>(a, out, s, o0, b0 + p * W, np - p);
  }
}

/// The epilogue of one work item: channels [0, C) of output site s, at position so of out and
/// out_h and at s of z and h (see ConvKernelArgs::out_pos), np packs from b0 (data in L1 by now).
template <class V, class T>
inline void conv_epilogue(const ConvOutput<T>& e, index_t cout, index_t stride, offset_t site, index_t s,
                          index_t so, index_t b0, index_t np) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  const offset_t base = offset_t(so) * site + b0, tape = offset_t(s) * site + b0;
  // the pointers as locals, each row's start computed once (see conv_block_body: the stores may
  // alias e, and the tanh epilogue re-read e's fields and the loop bounds for every pack; copied
  // again inside the lambda, whose captures are members of its closure). out_h may be out itself
  // (h = f(z) in place).
  if (e.mode == ConvEpilogue::activate) {
    T* const out_h = e.out_h + base;
    const T* const out = e.out + base;
    with_activation(e.act, [=]<class Op>(Op) {
      T* const dst = out_h;
      const T* const src = out;
      const index_t nc = cout, npk = np;
      const offset_t rows = stride;
      for (index_t c = 0; c < nc; ++c) {
        const offset_t row = offset_t(c) * rows;
        for (index_t p = 0; p < npk; ++p) simd::store(dst + row + p * W, Op::f(simd::load<V>(src + row + p * W)));
      }
    });
  } else if (e.mode == ConvEpilogue::derivative) {
    T* const out = e.out + base;
    const T* const z = e.z + tape;
    const T* const h = e.h + tape;
    with_activation(e.act, [=]<class Op>(Op) {
      T* const g = out;
      const T* const zz = z;
      const T* const hh = h;
      const index_t nc = cout, npk = np;
      const offset_t rows = stride;
      for (index_t c = 0; c < nc; ++c) {
        const offset_t row = offset_t(c) * rows;
        for (index_t p = 0; p < npk; ++p) {
          const offset_t k = row + p * W;
          simd::store(g + k, simd::load<V>(g + k) * Op::df(simd::load<V>(zz + k), simd::load<V>(hh + k)));
        }
      }
    });
  }
}

/// Items ahead of the current one whose stored activation a derivative epilogue will read are
/// prefetched (see prefetch_tape).
inline constexpr index_t conv_tape_prefetch_distance = 4;

/// Prefetches into L2 what the derivative epilogue (e.mode == derivative) of output site s reads
/// from the stored forward pass: h (and z where it is kept apart), every channel and lane, one
/// prefetch per cache line; nothing for the other epilogues. Once a chunk's stored activations
/// outgrow the last-level cache (32x32 x 64 float samples: 88 MB of tape) the backward pass reads
/// them from memory, and the hardware prefetchers do not follow: a site's rows (2-4 KiB) are a
/// different 4 KiB page every site or two, and the item order alternates between the two halves
/// of the storage range. Issued conv_tape_prefetch_distance items ahead: the 32x32 float step
/// went from 125.6-128.0 to 117.2-119.4 ms, on two threads 64.1 -> 59.8 ms, in double 275 -> 259
/// ms (one process switching it every round; distances 2 to 8 measured alike).
/// GCC 12 finds a function that only prefetches free of side effects (__builtin_prefetch counts as
/// none) and deletes the calls to it unless it is inlined first: hence always_inline, and no
/// helper lambda inside. (A prefetch of each output site's front input sites, prefetch_front,
/// was deleted that way since it was written; made to run, it cost 4-7% on 8x8 to 32x32.)
/// Lanes [b0, b1) of every channel (b1 = -1: all of them; b0, b1 multiples of the line).
template <class T>
NORMFLOW_ALWAYS_INLINE void prefetch_tape(const ConvOutput<T>& e, offset_t site, index_t cout, index_t stride,
                                          index_t s, index_t b0 = 0, index_t b1 = -1) noexcept {
  if (e.mode != ConvEpilogue::derivative) return;
  constexpr index_t line = index_t(64 / sizeof(T));
  const offset_t at = offset_t(s) * site;
  const index_t end = b1 < 0 ? stride : b1;
  const T* const bases[2] = {e.h, e.z != e.h ? e.z : nullptr};
  for (const T* base : bases) {  // (not through a helper function: see above)
    if (base == nullptr) continue;
    for (index_t c = 0; c < cout; ++c)
      for (index_t b = b0; b < end; b += line) __builtin_prefetch(base + at + offset_t(c) * stride + b, 0, 2);
  }
}

/// All output channels at storage position s, lanes [b0, b0 + np * width): blocks of 8 output
/// channels, then 4, 2, 1; then the epilogue.
template <class V, index_t Cin, class T>
inline void conv_item(const ConvKernelArgs<T>& a, const ConvOutput<T>& e, index_t s, index_t b0,
                      index_t np) noexcept {
  for_each_out_block(a.cout, [&](index_t o0, auto ob) {
    conv_rows<V, decltype(ob)::value, Cin>(a, e.out, s, o0, b0, np);
  });
  conv_epilogue<V>(e, a.cout, a.stride, a.out_site, s, a.out_pos ? a.out_pos[s] : s, b0, np);
}

/// The order of conv_forward's work items over the whole lattice: item k is storage position
/// conv_item_site(k, volume). With an even volume the items alternate between the two halves of
/// the storage range (site k / 2 of the first half, then of the second), else k itself.
inline index_t conv_item_site(index_t k, index_t volume) noexcept {
  return volume % 2 == 0 ? (k % 2) * (volume / 2) + k / 2 : k;
}
/// The inverse of conv_item_site: the item of storage position s.
inline index_t conv_site_item(index_t s, index_t volume) noexcept {
  if (volume % 2 != 0) return s;
  const index_t half = volume / 2;
  return s < half ? 2 * s : 2 * (s - half) + 1;
}

/// conv_rows with every register block inline (for conv_sweep).
template <class V, index_t Ob, index_t Cin, index_t Pb = std::min(conv_accumulators<V> / Ob, conv_chunk_packs<V>),
          class T>
NORMFLOW_ALWAYS_INLINE void conv_rows_inline(const ConvKernelArgs<T>& a, T* out, index_t s, index_t o0, index_t b0,
                                             index_t np) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  index_t p = 0;
  for (; p + Pb <= np; p += Pb) conv_block_body<V, Ob, Pb, Cin>(a, out, s, o0, b0 + p * W);
  if constexpr (Pb > 1) {
    if (p < np) conv_rows_inline<V, Ob, Cin, Pb / 2>(a, out, s, o0, b0 + p * W, np - p);
  }
}

/// A sweep of conv_item over the sites k0 <= k < k1 of a site order (whole: storage position
/// conv_item_site(k); else s0 + k; n sites in all), lanes [b0, b0 + np W), with the tape prefetch
/// conv_tape_prefetch_distance sites ahead, in one out-of-line call with every register block
/// inline (per site and block calls, conv_item, measured the same for 8 -> 8 in one process: 0.91
/// of the FMA peak either way). conv_forward, the fused backward sweep and the wavefront's
/// whole-lattice runs share it.
template <class V, index_t Cin, class T>
NORMFLOW_NOINLINE void conv_sweep(const ConvKernelArgs<T>& a, const ConvOutput<T>& e, index_t k0, index_t k1,
                                  index_t s0, index_t n, bool whole, index_t b0, index_t np) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  // the epilogue's mode tested once, not per site: with the store epilogue (which does nothing
  // after the kernel's own stores) the per-site calls cost 8 -> 8 3-5% (0.80 -> 0.83-0.84 of the
  // FMA peak, in one process)
  const bool prefetch = e.mode == ConvEpilogue::derivative, epilogue = e.mode != ConvEpilogue::store;
  for (index_t k = k0; k < k1; ++k) {
    if (prefetch && k + conv_tape_prefetch_distance < n) {
      const index_t ahead = k + conv_tape_prefetch_distance;
      prefetch_tape(e, a.out_site, a.cout, a.stride, whole ? conv_item_site(ahead, a.volume) : s0 + ahead, b0,
                    b0 + np * W);
    }
    const index_t s = whole ? conv_item_site(k, a.volume) : s0 + k;
    for_each_out_block(a.cout, [&](index_t o0, auto ob) {
      conv_rows_inline<V, decltype(ob)::value, Cin>(a, e.out, s, o0, b0, np);
    });
    if (epilogue) conv_epilogue<V>(e, a.cout, a.stride, a.out_site, s, a.out_pos ? a.out_pos[s] : s, b0, np);
  }
}

/// Calls f(std::integral_constant<index_t, Cin>{}) with Cin = cin for the common channel counts
/// 1, 2, 4, 8, 16 (kernels specialised for them), else Cin = 0 (any count).
template <class F>
NORMFLOW_ALWAYS_INLINE void with_channels(index_t cin, F&& f) {
  switch (cin) {
    case 1: f(std::integral_constant<index_t, 1>{}); return;
    case 2: f(std::integral_constant<index_t, 2>{}); return;
    case 4: f(std::integral_constant<index_t, 4>{}); return;
    case 8: f(std::integral_constant<index_t, 8>{}); return;
    case 16: f(std::integral_constant<index_t, 16>{}); return;
    default: f(std::integral_constant<index_t, 0>{}); return;
  }
}

/// Entries per row block: 8 output sites, then the 4 x 10 input sites they read.
inline constexpr index_t conv_row_block_size = 48;

/// A convolution onto one output channel over row blocks of a 2d lattice with a 3 x 3 kernel (taps
/// t = 3 (dy + 1) + (dx + 1), dx along the last axis). A block holds the output sites of one parity
/// in rows y, y + 1 (y even) and columns base .. base + 7: four per row, at columns base + c0 + 2m
/// in row y and base + 1 - c0 + 2m in row y + 1 (C0 = c0: the parity's column offset in row y);
/// then the input sites of rows y - 1 .. y + 2, columns base - 1 .. base + 8 (periodic), row by row.
/// Each loaded input pack serves every output of the block that reads it (2 FMAs per load on
/// average, where a single output site needs one load per FMA): 8 -> 1 on half of 8x8 x 128 float
/// 0.44 -> 0.68 of the FMA peak in a prototype, 0.41 -> 0.50-0.56 in the library (W1_conv). Every
/// output is computed as by conv_block_body with Ob = 1: bias, then input channels ascending, then
/// taps ascending, so the bits are the same. conv_forward and conv_backward_fused use the blocks
/// for the input adjoint onto one parity (the conditioner's first convolution reads one parity of
/// a one-channel field); the wavefront keeps the per-site kernel (W1 step with the blocks against
/// without, one process switching every step: 8x8 -1%, 16x16 -0.3%, 32x32 unchanged).
/// Blocks [k0, k1) of `blocks`, lanes [b0, b0 + np W); then each output site's epilogue.
template <class V, index_t Cin, int C0, class T>
NORMFLOW_NOINLINE void conv_row_blocks(const ConvKernelArgs<T>& a, const ConvOutput<T>& e, const index_t* blocks,
                                       index_t k0, index_t k1, index_t b0, index_t np) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  // a's fields as locals (see conv_block_body), and each block's 40 input offsets scaled once
  const index_t cin = Cin > 0 ? Cin : a.cin;
  const offset_t in_site = a.in_site, stride = a.stride, out_site = a.out_site;
  const T* NORMFLOW_RESTRICT in = a.in;
  const T* NORMFLOW_RESTRICT weight = a.weight;
  T* NORMFLOW_RESTRICT out = e.out;
  const T bias = a.bias ? a.bias[0] : T(0);
  const bool epilogue = e.mode != ConvEpilogue::store;
  for (index_t k = k0; k < k1; ++k) {
    const index_t* NORMFLOW_RESTRICT bl = blocks + offset_t(k) * conv_row_block_size;
    offset_t off[40], dst[8];
    for (index_t j = 0; j < 40; ++j) off[j] = bl[8 + j] * in_site;
    for (index_t r = 0; r < 8; ++r) dst[r] = bl[r] * out_site;
    for (index_t p = 0; p < np; ++p) {
      const index_t b = b0 + p * W;
      V acc[8];
#pragma GCC unroll 8
      for (index_t r = 0; r < 8; ++r) acc[r] = V(bias);
      for (index_t i = 0; i < cin; ++i) {
        V wt[9];
#pragma GCC unroll 9
        for (index_t t = 0; t < 9; ++t) wt[t] = V(weight[offset_t(t) * cin + i]);
        const T* NORMFLOW_RESTRICT base = in + offset_t(i) * stride + b;
#pragma GCC unroll 4
        for (index_t row = 0; row < 4; ++row) {
          V v[10];
#pragma GCC unroll 10
          for (index_t j = 0; j < 10; ++j) v[j] = simd::load<V>(base + off[row * 10 + j]);
#pragma GCC unroll 8
          for (index_t r = 0; r < 8; ++r) {
            const index_t h = r / 4, c = (h == 0 ? C0 : 1 - C0) + 2 * (r % 4), dy = row - h - 1;
            if (dy < -1 || dy > 1) continue;
#pragma GCC unroll 3
            for (index_t dx = -1; dx <= 1; ++dx)
              acc[r] = simd::fma(wt[(dy + 1) * 3 + dx + 1], v[c + dx + 1], acc[r]);
          }
        }
      }
#pragma GCC unroll 8
      for (index_t r = 0; r < 8; ++r) simd::store(out + dst[r] + b, acc[r]);
    }
    if (epilogue)
      for (index_t r = 0; r < 8; ++r) conv_epilogue<V>(e, 1, stride, out_site, bl[r], bl[r], b0, np);
  }
}

/// Packs per lane chunk of the layer-by-layer sweeps (conv_forward, conv_backward_fused's
/// adjoint), which run over the sites once per lane chunk (lane chunks outer): with AVX-512, 2 (the
/// register block's width) for convolutions onto whole blocks of 8 output channels from 4 or more
/// inputs, 4 onto one output channel, else conv_chunk_packs (then one chunk holds 128 float lanes:
/// the sweep runs over the sites once). A chunk of 8 -> 8 at 8x8 x 128 float then reads 1 KiB per
/// site, and the three lattice rows around an output row (24 KiB) stay in L1 while the sweep
/// passes, where a whole site's 128 lanes (36 KiB for the 9 taps) did not: 8 -> 8 from 0.85 to
/// 0.89-0.90 of the FMA peak, 8 -> 1 on half the sites 0.40 -> 0.43 (in one process, each order in
/// turn). 8 -> 2 and the 1- and 2-channel inputs measured best with whole sites (2 packs: 8 -> 2
/// 0.67 -> 0.50). The lane chunk changes no value: each lane's arithmetic is the same.
template <class V>
constexpr index_t conv_lane_packs(index_t cin, index_t cout) noexcept {
  if constexpr (sizeof(V) >= 64) {
    if (cin >= 4 && cout % 8 == 0) return 2;
    if (cin >= 4 && cout == 1) return 4;
  }
  return conv_chunk_packs<V>;
}

/// True when a with e runs in row blocks onto one parity (conv_row_blocks): one output channel, a
/// 3 x 3 kernel on a lattice with row blocks, the store epilogue, no ring buffer.
template <class T>
bool conv_row_blocks_apply(const ConvKernelArgs<T>& a, const ConvOutput<T>& e) noexcept {
  return a.row_blocks && a.row_block_span > 0 && a.cout == 1 && a.ntaps == 9 && a.ntaps_hi < 0 && !a.out_pos &&
         e.mode == ConvEpilogue::store;
}
/// Row blocks [k0, k1) of parity h (storage half), lanes [b0, b0 + np W).
template <class V, index_t Cin, class T>
NORMFLOW_ALWAYS_INLINE void conv_row_blocks_of(const ConvKernelArgs<T>& a, const ConvOutput<T>& e, index_t h,
                                               index_t k0, index_t k1, index_t b0, index_t np) noexcept {
  const index_t* blocks = a.row_blocks + offset_t(h) * a.row_block_count * conv_row_block_size;
  if (h == 0)
    conv_row_blocks<V, Cin, 0>(a, e, blocks, k0, k1, b0, np);
  else
    conv_row_blocks<V, Cin, 1>(a, e, blocks, k0, k1, b0, np);
}
/// The row blocks of parity h whose output sites are the parity's storage positions [r0, r1)
/// (relative to the half's start), lanes [b0, b0 + np W); false (nothing done) where [r0, r1) is
/// not made of whole rows of blocks.
template <class V, index_t Cin, class T>
NORMFLOW_ALWAYS_INLINE bool conv_row_blocks_range(const ConvKernelArgs<T>& a, const ConvOutput<T>& e, index_t h,
                                                  index_t r0, index_t r1, index_t b0, index_t np) noexcept {
  const index_t span = a.row_block_span;
  if (r0 % span != 0 || r1 % span != 0) return false;
  conv_row_blocks_of<V, Cin>(a, e, h, r0 / span * (span / 8), r1 / span * (span / 8), b0, np);
  return true;
}

/// The convolution a followed by the epilogue e, over every site and lane. The sites are split
/// into one part per thread (contiguous runs of conv_item_site's order); a work item is one part
/// and one lane chunk of conv_lane_packs packs, and sweeps the part's sites in order (conv_sweep).
/// Items write disjoint outputs, so the split changes no bit.
template <class T, class Exec>
void conv_forward(Exec exec, ConvKernelArgs<T> a, const ConvOutput<T>& e) {
  if (a.in_site == 0) a.in_site = offset_t(a.cin) * a.stride;
  if (a.out_site == 0) a.out_site = offset_t(a.cout) * a.stride;
  using V = simd::native_pack<T>;
  constexpr index_t W = simd::pack_size<V>;
  const index_t C = conv_lane_packs<V>(a.cin, a.cout);
  const index_t packs = a.stride / W;
  const index_t chunks = (packs + C - 1) / C;
  const index_t s0 = a.site_begin, s1 = a.site_end < 0 ? a.volume : a.site_end, n = s1 - s0;
  if (n <= 0) return;
  const index_t threads = std::is_same_v<Exec, exec::Serial> ? 1 : index_t(exec::max_threads());
  const index_t parts = std::clamp<index_t>(threads, 1, n);
  // Over the whole lattice with even/odd storage, the threads' parts should be regions of the
  // lattice, not parities: a thread that computes the even sites reads the odd ones, which the
  // other thread wrote. The sweep therefore alternates between the two halves of the storage range
  // (site k / 2 of the first half, then of the second), so a run of consecutive sites covers the
  // same rows of both parities. (Any order gives the same bits: sites write disjoint outputs.)
  const bool whole = s0 == 0 && s1 == a.volume;
  // one output channel on one parity of a lattice with row blocks (see conv_row_blocks)
  const index_t half = a.volume / 2;
  const int parity = s0 == 0 && s1 == half ? 0 : s0 == half && s1 == a.volume ? 1 : -1;
  if (parity >= 0 && conv_row_blocks_apply(a, e)) {
    const index_t nb = a.row_block_count, bparts = std::clamp<index_t>(threads, 1, nb);
    with_channels(a.cin, [&]<index_t Cin>(std::integral_constant<index_t, Cin>) {
      exec::parallel_for(exec, offset_t(bparts) * chunks, [=](offset_t item) {
        const index_t p = index_t(item / chunks), c = index_t(item % chunks);
        const index_t k0 = index_t(offset_t(nb) * p / bparts), k1 = index_t(offset_t(nb) * (p + 1) / bparts);
        conv_row_blocks_of<V, Cin>(a, e, parity, k0, k1, c * C * W, std::min(C, packs - c * C));
      });
    });
    return;
  }
  with_channels(a.cin, [&]<index_t Cin>(std::integral_constant<index_t, Cin>) {
    exec::parallel_for(exec, offset_t(parts) * chunks, [=](offset_t item) {
      const index_t p = index_t(item / chunks), c = index_t(item % chunks);
      const index_t k0 = index_t(offset_t(n) * p / parts), k1 = index_t(offset_t(n) * (p + 1) / parts);
      conv_sweep<V, Cin>(a, e, k0, k1, s0, n, whole, c * C * W, std::min(C, packs - c * C));
    });
  });
}

/// One step of a wavefront schedule: convolution `layer` computes the items [k0, k1) (see
/// conv_item_site) of its output.
struct WaveRun {
  index_t layer, k0, k1;
};

/// A schedule for the convolutions 0, ..., L - 1 of a stack (convolution l + 1 reads the output of
/// convolution l through the taps) that interleaves them over the lattice, so that each layer's
/// output is read by the next one while it is still in L2, instead of after the whole lattice (on
/// 32x32 x 128 float one 8-channel activation is 4 MiB, twice L2; reading it back from L3 cost a
/// fifth of the forward pass, measured by pointing the 8-channel inputs at an L2-sized region).
/// Every item of every layer appears exactly once, and after all the items it reads:
/// - item k of layer l >= 1 reads the items p = conv_site_item(taps[t][site(k)]) of layer l - 1;
/// - it is deferred (run after all non-deferred items, layers in order) if one of them lies more
///   than half the lattice ahead of it in the item order (periodic wrap: the first rows read the
///   last) or is itself deferred (so layer l defers about l rows);
/// - the others run in item order as soon as layer l - 1 has done every one they read: after each
///   block of `block` items of layer 0, every later layer runs as far as it can.
/// Each output is computed by the same code whatever the order (items write disjoint outputs and
/// read only finished ones), so results are bitwise those of the layer-by-layer sweep.
/// lag[l] (l < L - 1): the largest number of items layer l is ahead of layer l + 1 before layer 0
/// finishes, about the items of layer l's output that must stay in cache (3 lattice rows for a
/// 3 x 3 kernel on a square lattice: the rows y - 1 to y + 1 that layer l + 1 reads, and the next
/// block).
struct WaveSchedule {
  std::vector<WaveRun> runs;
  std::vector<index_t> lag;
};
inline WaveSchedule conv_wavefront_schedule(const index_t* taps, index_t ntaps, index_t volume, index_t layers,
                                            index_t block) {
  WaveSchedule out;
  std::vector<WaveRun>& runs = out.runs;
  if (layers <= 0 || volume <= 0) return out;
  out.lag.assign(std::size_t(layers - 1), 0);
  const std::size_t V = std::size_t(volume);
  // deferred[l][k], and for the non-deferred items of layer l in item order: the item, and `need`,
  // the number of non-deferred items of layer l - 1 that must be done first (a running maximum)
  std::vector<std::vector<char>> deferred(static_cast<std::size_t>(layers), std::vector<char>(V, 0));
  std::vector<std::vector<index_t>> items(static_cast<std::size_t>(layers)), need(static_cast<std::size_t>(layers));
  std::vector<index_t> rank(V), prev_rank(V);
  for (index_t l = 0; l < layers; ++l) {
    auto& def = deferred[std::size_t(l)];
    index_t running = 0;
    for (index_t k = 0; k < volume; ++k) {
      index_t n = 0;
      if (l > 0) {
        const index_t s = conv_item_site(k, volume);
        for (index_t t = 0; t < ntaps && !def[std::size_t(k)]; ++t) {
          const index_t p = conv_site_item(taps[offset_t(t) * volume + s], volume);
          if (p - k > volume / 2 || deferred[std::size_t(l - 1)][std::size_t(p)])
            def[std::size_t(k)] = 1;
          else
            n = std::max(n, prev_rank[std::size_t(p)] + 1);
        }
      }
      if (def[std::size_t(k)]) continue;
      running = std::max(running, n);
      rank[std::size_t(k)] = index_t(items[std::size_t(l)].size());
      items[std::size_t(l)].push_back(k);
      need[std::size_t(l)].push_back(running);
    }
    std::swap(rank, prev_rank);
  }
  // emit runs of consecutive items
  auto emit = [&](index_t l, const std::vector<index_t>& list, index_t j0, index_t j1) {
    for (index_t j = j0; j < j1; ++j) {
      const index_t k = list[std::size_t(j)];
      if (!runs.empty() && runs.back().layer == l && runs.back().k1 == k)
        ++runs.back().k1;
      else
        runs.push_back({l, k, k + 1});
    }
  };
  std::vector<index_t> done(std::size_t(layers), 0);
  const index_t n0 = index_t(items[0].size());
  const index_t step = std::max<index_t>(1, block);
  for (bool progress = true; progress;) {
    progress = false;
    if (done[0] < n0) {
      const index_t j1 = std::min(n0, done[0] + step);
      emit(0, items[0], done[0], j1);
      done[0] = j1;
      progress = true;
    }
    for (index_t l = 1; l < layers; ++l) {
      const auto& lst = items[std::size_t(l)];
      index_t j = done[std::size_t(l)];
      while (j < index_t(lst.size()) && need[std::size_t(l)][std::size_t(j)] <= done[std::size_t(l - 1)]) ++j;
      if (j > done[std::size_t(l)]) {
        emit(l, lst, done[std::size_t(l)], j);
        done[std::size_t(l)] = j;
        progress = true;
      }
    }
    if (done[0] < n0)
      for (index_t l = 0; l + 1 < layers; ++l)
        out.lag[std::size_t(l)] = std::max(out.lag[std::size_t(l)], done[std::size_t(l)] - done[std::size_t(l + 1)]);
  }
  for (index_t l = 1; l < layers; ++l) {
    std::vector<index_t> rest;
    for (index_t k = 0; k < volume; ++k)
      if (deferred[std::size_t(l)][std::size_t(k)]) rest.push_back(k);
    emit(l, rest, 0, index_t(rest.size()));
  }
  return out;
}

/// The convolutions a[l] with epilogues e[l] (l < L, convolution l + 1 reading the output of l)
/// in the order of a wavefront schedule (conv_wavefront_schedule of the same taps), on one
/// thread. Every layer's output sites are a's [site_begin, site_end) (items outside are skipped:
/// only the last layer may have a sub-range, as no later layer reads it). Bitwise the results of
/// conv_forward(a[l], e[l]) for l = 0, ..., L - 1.
template <class T>
void conv_wavefront_run(ConvKernelArgs<T> args, const ConvOutput<T>& out, const WaveRun& r) {
  using V = simd::native_pack<T>;
  constexpr index_t W = simd::pack_size<V>;
  constexpr index_t C = conv_chunk_packs<V>;
  if (args.in_site == 0) args.in_site = offset_t(args.cin) * args.stride;
  if (args.out_site == 0) args.out_site = offset_t(args.cout) * args.stride;
  const index_t packs = args.stride / W, chunks = (packs + C - 1) / C;
  const index_t s0 = args.site_begin, s1 = args.site_end < 0 ? args.volume : args.site_end;
  with_channels(args.cin, [&]<index_t Cin>(std::integral_constant<index_t, Cin>) {
    if (s0 == 0 && s1 == args.volume) {  // the whole lattice: one sweep per lane chunk
      for (index_t c = 0; c < chunks; ++c)
        conv_sweep<V, Cin>(args, out, r.k0, r.k1, 0, args.volume, true, c * C * W, std::min(C, packs - c * C));
      return;
    }
    for (index_t k = r.k0; k < r.k1; ++k) {
      const index_t s = conv_item_site(k, args.volume);
      if (k + conv_tape_prefetch_distance < args.volume) {  // (also into the layer's next run)
        const index_t ahead = conv_item_site(k + conv_tape_prefetch_distance, args.volume);
        if (ahead >= s0 && ahead < s1) prefetch_tape(out, args.out_site, args.cout, args.stride, ahead);
      }
      if (s < s0 || s >= s1) continue;
      for (index_t c = 0; c < chunks; ++c) conv_item<V, Cin>(args, out, s, c * C * W, std::min(C, packs - c * C));
    }
  });
}
template <class T>
void conv_forward_wavefront(std::span<const ConvKernelArgs<T>> a, std::span<const ConvOutput<T>> e,
                            std::span<const WaveRun> runs) {
  for (const WaveRun& r : runs) conv_wavefront_run(a[std::size_t(r.layer)], e[std::size_t(r.layer)], r);
}

/// Ring buffers for the intermediate outputs of a wavefront (conv_wavefront_schedule) whose
/// outputs are read only by the next layer: the cotangents of ConvStack's input adjoint. Layer
/// l < L - 1 writes site s at position out_pos[l][s] of its ring of slots[l] sites, and layer
/// l + 1 reads it through taps[l + 1][t][s] = out_pos[l][taps[t][s]] (taps[0] is unused: layer 0
/// reads a whole buffer). A slot is taken when its item runs and given back after the last run
/// that reads it (most recently freed first, so the slots in use stay in cache); items that a
/// deferred item reads hold theirs to the end. On 32x32 the two 8-channel rings of the reference
/// conditioner hold 160 and 192 sites (0.7 and 0.8 MB in float, batch 128) instead of 1024 each;
/// 160 and 224 where the weight gradient reads them too (conv_backward_plan).
struct ConvRingPlan {
  std::vector<index_t> slots;
  std::vector<std::vector<index_t>> out_pos;
  std::vector<std::vector<index_t>> taps;
};
/// run_of[l][k]: the index in w.runs of the run in which layer l computes item k.
inline std::vector<std::vector<index_t>> wave_run_of(const WaveSchedule& w, index_t volume, index_t layers) {
  std::vector<std::vector<index_t>> run_of(std::size_t(layers), std::vector<index_t>(std::size_t(volume), -1));
  for (std::size_t r = 0; r < w.runs.size(); ++r)
    for (index_t k = w.runs[r].k0; k < w.runs[r].k1; ++k) run_of[std::size_t(w.runs[r].layer)][std::size_t(k)] = index_t(r);
  return run_of;
}
/// extra (optional): extra[l][k], a run after which item k of layer l is read too (-1: none).
inline ConvRingPlan conv_ring_plan(const WaveSchedule& w, const index_t* taps, index_t ntaps, index_t volume,
                                   index_t layers, const std::vector<std::vector<index_t>>* extra = nullptr) {
  ConvRingPlan plan;
  if (layers < 2) return plan;
  const std::size_t V = std::size_t(volume), L = std::size_t(layers), nruns = w.runs.size();
  const std::vector<std::vector<index_t>> run_of = wave_run_of(w, volume, layers);
  // frees[r]: the items (layer l, item p) whose last reader is run r
  std::vector<std::vector<std::pair<index_t, index_t>>> frees(nruns);
  for (std::size_t l = 0; l + 1 < L; ++l) {
    std::vector<index_t> last(V, -1);
    for (index_t k = 0; k < volume; ++k) {
      const index_t s = conv_item_site(k, volume), r = run_of[l + 1][std::size_t(k)];
      for (index_t t = 0; t < ntaps; ++t) {
        const index_t p = conv_site_item(taps[offset_t(t) * volume + s], volume);
        last[std::size_t(p)] = std::max(last[std::size_t(p)], r);
      }
    }
    if (extra)
      for (index_t p = 0; p < volume; ++p) last[std::size_t(p)] = std::max(last[std::size_t(p)], (*extra)[l][std::size_t(p)]);
    for (index_t p = 0; p < volume; ++p)
      if (last[std::size_t(p)] >= 0) frees[std::size_t(last[std::size_t(p)])].push_back({index_t(l), p});
  }
  plan.slots.assign(L - 1, 0);
  plan.out_pos.assign(L - 1, std::vector<index_t>(V, 0));
  std::vector<std::vector<index_t>> free_list(L - 1);  // a stack: the most recently freed slot first
  for (std::size_t r = 0; r < nruns; ++r) {
    const WaveRun& run = w.runs[r];
    if (std::size_t(run.layer) + 1 < L)
      for (index_t k = run.k0; k < run.k1; ++k) {
        auto& fl = free_list[std::size_t(run.layer)];
        index_t slot;
        if (fl.empty()) {
          slot = plan.slots[std::size_t(run.layer)]++;
        } else {
          slot = fl.back();
          fl.pop_back();
        }
        plan.out_pos[std::size_t(run.layer)][std::size_t(conv_item_site(k, volume))] = slot;
      }
    for (const auto& [l, p] : frees[r])
      free_list[std::size_t(l)].push_back(plan.out_pos[std::size_t(l)][std::size_t(conv_item_site(p, volume))]);
  }
  plan.taps.assign(L, {});
  for (std::size_t l = 1; l < L; ++l) {
    plan.taps[l].resize(std::size_t(ntaps) * V);
    for (std::size_t i = 0; i < std::size_t(ntaps) * V; ++i) plan.taps[l][i] = plan.out_pos[l - 1][std::size_t(taps[i])];
  }
  return plan;
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
  offset_t gz_site = 0;    ///< distance between sites of gz (0: cout * stride)
  offset_t in_site = 0;    ///< distance between sites of in (0: cin * stride)
  T* scratch = nullptr;    ///< conv_param_grad_scratch(...) elements, 64-byte aligned
  /// The position in gz of output site s: gz_pos[s], or s itself (nullptr): a ring buffer (see
  /// ConvRingPlan). Only the weight gradient reads it (bias_grad needs the whole gz: none then).
  const index_t* gz_pos = nullptr;
  /// Taps by storage half (an input zero outside one half, see ConvHalfTaps): bit t of
  /// tap_mask[h] set when tap t of the output sites in half h reads the nonzero half; the other
  /// taps of those sites add exact zeros and are skipped (wgrad_unit, where a tile lies in one
  /// half and the weight gradient is not transposed). nullptr: every tap.
  const std::uint64_t* tap_mask = nullptr;
};

/// Sites per tile of the weight-gradient sweep (4, 8 and 16 measured alike on 8x8 and 16x16),
/// and taps per weight-gradient work item.
inline constexpr index_t wgrad_tile_sites = 8;
inline constexpr index_t wgrad_group_taps = 12;
/// Input channels per weight-gradient work item.
inline constexpr index_t wgrad_group_channels = 4;
/// Register blocking of the weight gradient with Ob rows: Jmax taps at most per block (Ob x Jb
/// accumulators): with 32 vector registers (AVX-512) Ob = 4: 5, Ob = 2: 9, Ob = 1: 8; else
/// (16 registers) 2, 2, 4. Measured choices: GCC 12 keeps about 20 accumulators plus the
/// gradient and input packs in registers; with more it spills inside the loop. Ob = 2 with the 9
/// taps of a 3 x 3 kernel in one block (18 accumulators, 11 loads per 18 FMAs, no spill in the
/// loop) instead of three blocks of 3 (5 loads per 6 FMAs): the 8 -> 2 weight gradient on half of
/// 8x8 x 128 float 0.47-0.50 -> 0.52-0.58 of the FMA peak (three interleaved pairs). The blocking
/// changes no sum: each entry adds its sites and packs in order.
template <class V>
constexpr index_t wgrad_max_taps(index_t ob) noexcept {
  if (sizeof(V) >= 64) return ob >= 4 ? 5 : ob == 2 ? 9 : 8;
  return ob >= 4 ? 2 : ob == 2 ? 2 : 4;
}

/// One register block of the weight gradient: for o < Ob, j < Jb
///   part[o * pstride + j] += sum_{k < n} sum_{b < lanes} g[o](k, b) x(off[j * tile + k], b)
/// (one pack per entry: lane l sums the lanes l, l + W, ...; the lanes are summed at the end),
/// with g[o](k, .) at g + goff[k] + o g_ch. The lanes are the inner loop: each gathered input
/// address (j, k) is read once per site and serves all packs (gathering it per pack costs a
/// scalar load per input pack and ran at 45-50% of the FMA peak instead of 57-64%). Sum order:
/// sites ascending, packs ascending, onto the running partial. do-while loops: the bodies always
/// run, so GCC keeps acc in registers across both loops.
template <class V, index_t Ob, index_t Jb, class T>
NORMFLOW_NOINLINE void wgrad_block(const T* NORMFLOW_RESTRICT g0, const offset_t* NORMFLOW_RESTRICT goff, offset_t g_ch,
                                   const T* NORMFLOW_RESTRICT x, const offset_t* NORMFLOW_RESTRICT off, index_t tile,
                                   index_t n, index_t lanes, T* NORMFLOW_RESTRICT part, index_t pstride) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  V acc[Ob][Jb];
  for (index_t o = 0; o < Ob; ++o)
    for (index_t j = 0; j < Jb; ++j) acc[o][j] = simd::load<V>(part + (offset_t(o) * pstride + j) * W);
  index_t k = 0;
  do {
    const T* NORMFLOW_RESTRICT xj[Jb];
    for (index_t j = 0; j < Jb; ++j) xj[j] = x + off[offset_t(j) * tile + k];
    const T* NORMFLOW_RESTRICT g = g0 + goff[k];
    index_t b = 0;
    do {
      V gv[Ob];
      for (index_t o = 0; o < Ob; ++o) gv[o] = simd::load<V>(g + offset_t(o) * g_ch + b);
      for (index_t j = 0; j < Jb; ++j) {
        const V xv = simd::load<V>(xj[j] + b);
        for (index_t o = 0; o < Ob; ++o) acc[o][j] = simd::fma(gv[o], xv, acc[o][j]);
      }
      b += W;
    } while (b < lanes);
  } while (++k < n);
  for (index_t o = 0; o < Ob; ++o)
    for (index_t j = 0; j < Jb; ++j) simd::store(part + (offset_t(o) * pstride + j) * W, acc[o][j]);
}

/// wgrad_block with the tap-block width jb (1 <= jb <= Jmax) as a template argument.
template <class V, index_t Ob, index_t Jmax, class T>
NORMFLOW_ALWAYS_INLINE void wgrad_block_n(index_t jb, const T* g, const offset_t* goff, offset_t g_ch, const T* x,
                                          const offset_t* off, index_t tile, index_t n, index_t lanes, T* part,
                                          index_t pstride) noexcept {
  if constexpr (Jmax >= 1) {
    if (jb == Jmax)
      wgrad_block<V, Ob, Jmax>(g, goff, g_ch, x, off, tile, n, lanes, part, pstride);
    else
      wgrad_block_n<V, Ob, Jmax - 1>(jb, g, goff, g_ch, x, off, tile, n, lanes, part, pstride);
  }
}

/// The weight gradient of a convolution from 8 input channels onto blocks of 8 output rows, with
/// AVX-512 (wgrad_transposed): the input is first copied into a transposed layout in which one
/// pack holds all 8 channels of E = W / 8 consecutive lanes (float: sample pairs; double: single
/// samples),
///   xt[u][q][i E + e] = x[i](u, q E + e)   (u an input site, q < stride / E, i < 8, e < E),
/// so that the accumulator of (o, t) is one pack of lanes (i, e) and a register block of 8 rows x 3
/// taps reads per E lanes of an output site 3 input packs and 8 gradient values broadcast 64 bits
/// at a time (vbroadcastsd; lane (i, e) gets g[o](s, q E + e)): 24 FMAs per 3 pack loads and 8
/// broadcasts, where the 4 x 5 block of wgrad_block needs 9 pack loads per 20 FMAs. (On this core
/// every 512-bit load costs FMA throughput and a 64-bit broadcast almost none: 8 -> 8 at 8x8 x 128
/// float, 0.96 of the FMA peak for the kernel alone against 0.70-0.79 for the 4 x 5 block, and
/// 0.81-0.83 with the transposition counted; broadcasting 8 floats (vbroadcastf32x8) instead cost
/// as much as a load: 0.84.) The transposition is an 8 x 8 transpose of 64-bit elements per 8
/// packs (three rounds of 8 shuffles). Each output entry sums, per lane (i, e), the sites and
/// packs in order, as wgrad_block; the lanes of one i are added at the end (wgrad_reduce).
template <class T>
constexpr bool wgrad_transposed(index_t cin, index_t cout) noexcept {
#if defined(__AVX512F__)
  if constexpr (sizeof(simd::native_pack<T>) == 64 && (std::is_same_v<T, float> || std::is_same_v<T, double>))
    return cin == 8 && cout > 0 && cout % 8 == 0;
#endif
  (void)cin, (void)cout;
  return false;
}

/// x (one site: channel i at x + i stride, stride lanes) into the layout of wgrad_transposed at
/// xt (8 stride elements).
template <class T>
NORMFLOW_ALWAYS_INLINE void wgrad_transpose_site(const T* NORMFLOW_RESTRICT x, index_t stride,
                                                 T* NORMFLOW_RESTRICT xt) noexcept {
#if defined(__AVX512F__)
  constexpr index_t W = index_t(64 / sizeof(T));
  for (index_t b0 = 0; b0 < stride; b0 += W) {
    // 8 packs of 8 64-bit elements (float: lane pairs) -> element e of every pack, for each e
    __m512d v[8], a[8], c[8];
    for (index_t i = 0; i < 8; ++i) v[i] = _mm512_load_pd(x + offset_t(i) * stride + b0);
    for (index_t i = 0; i < 4; ++i) {  // a[2i] = elements 0 2 4 6 of packs 2i, 2i + 1 interleaved
      a[2 * i] = _mm512_unpacklo_pd(v[2 * i], v[2 * i + 1]);
      a[2 * i + 1] = _mm512_unpackhi_pd(v[2 * i], v[2 * i + 1]);
    }
    for (index_t h = 0; h < 2; ++h)  // c[4h + 2p + q]: elements 2q + p and 2q + 4 + p of packs 4h..4h+3
      for (index_t p = 0; p < 2; ++p) {
        c[4 * h + 2 * p] = _mm512_shuffle_f64x2(a[4 * h + p], a[4 * h + 2 + p], 0x88);
        c[4 * h + 2 * p + 1] = _mm512_shuffle_f64x2(a[4 * h + p], a[4 * h + 2 + p], 0xDD);
      }
    T* out = xt + offset_t(b0) * 8;
    for (index_t p = 0; p < 2; ++p)
      for (index_t q = 0; q < 2; ++q) {
        _mm512_store_pd(out + (2 * q + p) * W, _mm512_shuffle_f64x2(c[2 * p + q], c[4 + 2 * p + q], 0x88));
        _mm512_store_pd(out + (2 * q + 4 + p) * W, _mm512_shuffle_f64x2(c[2 * p + q], c[4 + 2 * p + q], 0xDD));
      }
  }
#else
  (void)x, (void)stride, (void)xt;
#endif
}

/// One register block of the transposed weight gradient (see wgrad_transposed): for o < 8, j < Tb
///   part[o pstride + j] += sum_{k < n} sum_q g[o](k, q E + e) xt(off[j tile + k])[q][i E + e]
/// (one pack per entry, lanes (i, e)), g[o](k, .) at g + goff[k] + o stride. Sum order: sites
/// ascending, lane groups q ascending, onto the running partial.
template <class T, index_t Tb>
NORMFLOW_NOINLINE void wgrad_block_t(const T* NORMFLOW_RESTRICT g0, const offset_t* NORMFLOW_RESTRICT goff,
                                     const T* NORMFLOW_RESTRICT xt, const offset_t* NORMFLOW_RESTRICT off, index_t tile,
                                     index_t n, index_t stride, T* NORMFLOW_RESTRICT part, index_t pstride) noexcept {
#if defined(__AVX512F__)
  using V = simd::native_pack<T>;  // 64 bytes (wgrad_transposed)
  constexpr index_t W = simd::pack_size<V>, E = W / 8;
  auto bcast = [](const T* p) -> V {  // the 64 bits at p in every 64-bit element (vbroadcastsd)
    double d;
    std::memcpy(&d, p, sizeof d);
    if constexpr (std::is_same_v<T, float>) return V(_mm512_castpd_ps(_mm512_set1_pd(d))); else return V(_mm512_set1_pd(d));
  };
  V acc[8][Tb];
  for (index_t o = 0; o < 8; ++o)
    for (index_t j = 0; j < Tb; ++j) acc[o][j] = simd::load<V>(part + (offset_t(o) * pstride + j) * W);
  index_t k = 0;
  do {
    const T* NORMFLOW_RESTRICT xj[Tb];
    for (index_t j = 0; j < Tb; ++j) xj[j] = xt + off[offset_t(j) * tile + k];
    const T* NORMFLOW_RESTRICT g = g0 + goff[k];
    index_t q = 0;
    do {
      V xv[Tb];
      for (index_t j = 0; j < Tb; ++j) xv[j] = simd::load<V>(xj[j] + offset_t(q) * 8);
#pragma GCC unroll 8
      for (index_t o = 0; o < 8; ++o) {
        const V gv = bcast(g + offset_t(o) * stride + q);
        for (index_t j = 0; j < Tb; ++j) acc[o][j] = simd::fma(gv, xv[j], acc[o][j]);
      }
      q += E;
    } while (q < stride);
  } while (++k < n);
  for (index_t o = 0; o < 8; ++o)
    for (index_t j = 0; j < Tb; ++j) simd::store(part + (offset_t(o) * pstride + j) * W, acc[o][j]);
#else
  (void)g0, (void)goff, (void)xt, (void)off, (void)tile, (void)n, (void)stride, (void)part, (void)pstride;
#endif
}

/// Taps per register block of the transposed weight gradient (8 rows x 3 taps: 24 accumulators).
inline constexpr index_t wgrad_t_taps = 3;

/// Partial sums one weight-gradient work unit leaves (elements of T, an upper bound over the
/// row-block widths: Ob x channels x taps packs).
template <class T>
inline constexpr std::size_t wgrad_unit_partials =
    std::size_t(4 * wgrad_group_channels * wgrad_group_taps * simd::pack_size<simd::native_pack<T>>);

/// One weight-gradient work unit: rows [o0, o0 + Ob), input channels [i0, i1) (at most
/// wgrad_group_channels), taps [t0, t0 + nt) (nt <= wgrad_group_taps), output sites [s_begin,
/// s_end) (one chunk). The sites are swept in tiles of wgrad_tile_sites; per tile every (channel,
/// tap block) of the unit sweeps the tile's sites and all their lanes (wgrad_block), so the tile's
/// gradient rows (Ob x 8 sites x the lanes: 16 KiB for 4 rows of 128 floats) are reused from L1
/// by all blocks. Writes its partial sums to out: the pack of (o, c, t) at ((o nc + c) nt + t) W,
/// each summed in the fixed order tiles, sites, packs. A chunk may be done in several calls over
/// consecutive runs of its tiles ([s_begin, s_end) starting at a tile boundary of the chunk, in
/// order): the first with zero = true (it clears out), the others adding to out: the same sums.
/// Ob = 8: the transposed weight gradient (wgrad_transposed; i0 = 0, i1 = 8), reading the
/// transposed input xt (wgrad_transposed_input); the pack of (o, t) at (o nt + t) W.
/// With a.tap_mask (not transposed) a tile within one storage half sweeps only the taps of its
/// half's mask, in tap blocks over a compact copy of their partials; the skipped terms are exact
/// zeros, so every partial is the one of all taps (up to the sign of a zero). The 1 -> 8 weight
/// gradient of W1's conditioner: 5 or 4 of its 9 taps per tile.
template <class V, index_t Ob, class T>
void wgrad_unit(const ConvGradArgs<T>& a, index_t o0, index_t i0, index_t i1, index_t t0, index_t nt,
                index_t s_begin, index_t s_end, T* NORMFLOW_RESTRICT out, bool zero = true) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  constexpr bool transposed = Ob == 8;
  constexpr index_t Jmax = transposed ? wgrad_t_taps : wgrad_max_taps<V>(Ob);
  constexpr index_t tile = wgrad_tile_sites;
  alignas(64) offset_t off[wgrad_group_taps * tile];
  offset_t goff[tile];
  // transposed: all 8 channels in one pass over xt; partial (o, t) at (o nt + t) W
  const index_t nc = transposed ? 1 : i1 - i0, pstride = nc * nt;  // partial (o, c, t) at ((o nc + c) nt + t) W
  const T* in = transposed ? wgrad_transposed_input(a) : a.in;
  const offset_t in_site = transposed ? offset_t(8) * a.stride : a.in_site;
  if (zero) std::fill(out, out + Ob * pstride * W, T(0));
  // taps by half (ConvGradArgs::tap_mask): a tile in one half sweeps only its sites' taps into the
  // nonzero half, on a compact copy of their partials (the others would add exact zeros)
  alignas(64) T compact[transposed ? 1 : Ob * wgrad_group_channels * wgrad_group_taps * W];
  index_t used[wgrad_group_taps];
  const index_t half = a.volume / 2;
  for (index_t s0 = s_begin; s0 < s_end; s0 += tile) {
    const index_t n = std::min(tile, s_end - s0);
    index_t nu = nt;  // taps swept in this tile: used[0, nu), ascending
    for (index_t t = 0; t < nt; ++t) used[t] = t;
    const bool masked = !transposed && a.tap_mask && a.volume % 2 == 0 && (s0 >= half || s0 + n <= half);
    if (masked) {
      const std::uint64_t m = a.tap_mask[s0 >= half ? 1 : 0];
      nu = 0;
      for (index_t t = 0; t < nt; ++t)
        if ((m >> (t0 + t)) & 1u) used[nu++] = t;
      if (nu == 0) continue;
    }
    // the partials the blocks accumulate onto: out itself, or the used taps' copied to compact
    T* part = out;
    index_t ps = pstride;
    if (masked && nu < nt) {
      part = compact, ps = nc * nu;
      for (index_t o = 0; o < Ob; ++o)
        for (index_t c = 0; c < nc; ++c)
          for (index_t u = 0; u < nu; ++u)
            simd::store(part + ((offset_t(o) * nc + c) * nu + u) * W,
                        simd::load<V>(out + ((offset_t(o) * nc + c) * nt + used[u]) * W));
    }
    for (index_t u = 0; u < nu; ++u)
      for (index_t k = 0; k < n; ++k)
        off[u * tile + k] = a.taps[offset_t(t0 + used[u]) * a.volume + s0 + k] * in_site;
    for (index_t k = 0; k < n; ++k) goff[k] = offset_t(a.gz_pos ? a.gz_pos[s0 + k] : s0 + k) * a.gz_site;
    const T* g = a.gz + offset_t(o0) * a.stride;
    const index_t nblocks = (nu + Jmax - 1) / Jmax;  // balanced tap blocks: widths differ by <= 1
    for (index_t c = 0; c < nc; ++c) {
      const T* x = in + offset_t(i0 + c) * a.stride;
      for (index_t q = 0; q < nblocks; ++q) {
        const index_t j0 = q * nu / nblocks, j1 = (q + 1) * nu / nblocks;
        T* p = part + (offset_t(c) * nu + j0) * W;
        if constexpr (transposed) {
          switch (j1 - j0) {
            case 3: wgrad_block_t<T, 3>(g, goff, x, off + j0 * tile, tile, n, a.stride, p, ps); break;
            case 2: wgrad_block_t<T, 2>(g, goff, x, off + j0 * tile, tile, n, a.stride, p, ps); break;
            default: wgrad_block_t<T, 1>(g, goff, x, off + j0 * tile, tile, n, a.stride, p, ps); break;
          }
        } else {
          wgrad_block_n<V, Ob, Jmax>(j1 - j0, g, goff, a.stride, x, off + j0 * tile, tile, n, a.stride, p, ps);
        }
      }
    }
    if (part != out)  // the used taps' partials back in place
      for (index_t o = 0; o < Ob; ++o)
        for (index_t c = 0; c < nc; ++c)
          for (index_t u = 0; u < nu; ++u)
            simd::store(out + ((offset_t(o) * nc + c) * nt + used[u]) * W,
                        simd::load<V>(part + ((offset_t(o) * nc + c) * nu + u) * W));
  }
}

/// grad_weight[o][i][t] += the lanes of sum_{chunks} the partial pack of (o, i, t), for the
/// entries of one work item (chunks ascending, then the lanes: a fixed order).
template <class V, index_t Ob, class T>
void wgrad_reduce(const ConvGradArgs<T>& a, index_t o0, index_t i0, index_t i1, index_t t0, index_t nt,
                  const T* partials, std::size_t chunk_stride, index_t nchunks) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  const index_t nc = i1 - i0;
  const offset_t cols = offset_t(a.cin) * a.ntaps;
  if constexpr (Ob == 8) {  // transposed: the pack of (o, t) holds lanes (i, e), e < E
    constexpr index_t E = W / 8;
    for (index_t o = 0; o < 8; ++o)
      for (index_t t = 0; t < nt; ++t) {
        const std::size_t at = std::size_t((offset_t(o) * nt + t) * W);
        V sum(T(0));
        for (index_t ch = 0; ch < nchunks; ++ch) sum += simd::load<V>(partials + std::size_t(ch) * chunk_stride + at);
        alignas(64) T lanes[W];
        simd::store(lanes, sum);
        for (index_t i = 0; i < 8; ++i) {
          T v = lanes[i * E];
          for (index_t e = 1; e < E; ++e) v += lanes[i * E + e];
          a.grad_weight[(o0 + o) * cols + offset_t(i) * a.ntaps + t0 + t] += v;
        }
      }
    (void)nc, (void)i0;
    return;
  }
  for (index_t o = 0; o < Ob; ++o)
    for (index_t c = 0; c < nc; ++c)
      for (index_t t = 0; t < nt; ++t) {
        const std::size_t at = std::size_t(((offset_t(o) * nc + c) * nt + t) * W);
        V sum(T(0));
        for (index_t ch = 0; ch < nchunks; ++ch) sum += simd::load<V>(partials + std::size_t(ch) * chunk_stride + at);
        a.grad_weight[(o0 + o) * cols + offset_t(i0 + c) * a.ntaps + t0 + t] += horizontal_sum(sum);
      }
}

/// Bias gradient of output channel o (sites ascending, packs ascending, then the lanes).
template <class V, class T>
inline void bias_grad(const ConvGradArgs<T>& a, index_t o) noexcept {
  constexpr index_t W = simd::pack_size<V>;
  V acc(T(0));
  const index_t s1 = a.site_end < 0 ? a.volume : a.site_end;
  for (index_t s = a.site_begin; s < s1; ++s) {
    const T* g = a.gz + offset_t(s) * a.gz_site + offset_t(o) * a.stride;
    for (index_t b = 0; b < a.stride; b += W) acc += simd::load<V>(g + b);
  }
  a.grad_bias[o] += horizontal_sum(acc);
}

/// Row blocks of the weight gradient: blocks of 4 rows, then one of 2 and one of 1 for the
/// remainder of cout.
struct WgradRows {
  index_t o0, ob;
};
inline index_t wgrad_nrows(index_t cout) noexcept { return cout / 4 + (cout % 4 >= 2) + (cout % 2); }
inline WgradRows wgrad_row(index_t cout, index_t k) noexcept {
  const index_t full = cout / 4;
  if (k < full) return {4 * k, 4};
  if (k == full && cout % 4 >= 2) return {4 * full, 2};
  return {cout - 1, 1};
}

/// Sites per chunk of the weight gradient (see conv_param_grad) and of the fused backward sweep
/// (conv_backward_fused). 64 rather than 128: on 16x16 each parity then has two chunks, so two
/// threads can run the fused sweep with each thread's units covering both parities (16x16
/// two-thread speedup 1.71 -> 1.85 in one run); larger lattices measured alike. The chunk is
/// part of the weight gradient's fixed summation order, so results depend on it (not on threads).
inline constexpr index_t wgrad_chunk_sites = 64;

/// The work decomposition of one weight gradient: items (row block, input-channel group, tap
/// group) x chunks of output sites.
/// Chunks: the output sites [s_begin, s_end) in runs of wgrad_chunk_sites; over the whole lattice
/// (even volume) the chunks alternate between the two halves of the storage range, as the items of
/// conv_forward do, so that a thread's consecutive chunks cover the same rows of both parities.
/// transposed (wgrad_transposed): items of 8 rows and all 8 input channels.
struct WgradPlan {
  index_t nrows, nchan, ngroups, nitems, nchunks;
  index_t s_begin, s_end, half;
  bool alternate, transposed;
  WgradPlan(index_t cin, index_t cout, index_t ntaps, index_t begin, index_t end, index_t volume,
            bool transposed_ = false) noexcept
      : nrows(transposed_ ? cout / 8 : wgrad_nrows(cout)),
        nchan(transposed_ ? 1 : (cin + wgrad_group_channels - 1) / wgrad_group_channels),
        ngroups((ntaps + wgrad_group_taps - 1) / wgrad_group_taps),
        nitems(nrows * nchan * ngroups),
        nchunks(0),
        s_begin(begin),
        s_end(end),
        half(volume / 2),
        alternate(begin == 0 && end == volume && volume % 2 == 0 && volume > 0),
        transposed(transposed_) {
    nchunks = alternate ? 2 * ((half + wgrad_chunk_sites - 1) / wgrad_chunk_sites)
                        : std::max<index_t>(1, (end - begin + wgrad_chunk_sites - 1) / wgrad_chunk_sites);
  }
  /// Chunk c's sites [c0, c1).
  void chunk(index_t c, index_t& c0, index_t& c1) const noexcept {
    if (alternate) {
      const index_t h = c % 2, j = c / 2;
      c0 = h * half + j * wgrad_chunk_sites;
      c1 = std::min((h + 1) * half, c0 + wgrad_chunk_sites);
    } else {
      c0 = s_begin + c * wgrad_chunk_sites;
      c1 = std::min(s_end, c0 + wgrad_chunk_sites);
    }
  }
  /// Item k's rows, channels [i0, i1) and taps [t0, t1) (balanced groups).
  void item(index_t k, index_t cin, index_t cout, index_t ntaps, WgradRows& r, index_t& i0, index_t& i1, index_t& t0,
            index_t& t1) const noexcept {
    const index_t per_row = nchan * ngroups;
    r = transposed ? WgradRows{8 * (k / per_row), 8} : wgrad_row(cout, k / per_row);
    const index_t ci = k % per_row / ngroups, q = k % ngroups;
    i0 = index_t(offset_t(ci) * cin / nchan), i1 = index_t(offset_t(ci + 1) * cin / nchan);
    t0 = index_t(offset_t(q) * ntaps / ngroups), t1 = index_t(offset_t(q + 1) * ntaps / ngroups);
  }
};

/// The plan of a weight gradient of T (transposed where wgrad_transposed<T>).
template <class T>
WgradPlan wgrad_plan(index_t cin, index_t cout, index_t ntaps, index_t begin, index_t end, index_t volume) noexcept {
  return WgradPlan(cin, cout, ntaps, begin, end, volume, wgrad_transposed<T>(cin, cout));
}
/// Elements of the partial sums at the start of the scratch (an upper bound for any sub-range).
template <class T>
std::size_t wgrad_partials_size(index_t cin, index_t cout, index_t ntaps, index_t sites) noexcept {
  const WgradPlan plan = wgrad_plan<T>(cin, cout, ntaps, 0, sites, sites);
  return std::size_t(plan.nitems) * std::size_t(plan.nchunks) * wgrad_unit_partials<T>;
}
/// Scratch (elements of T) conv_param_grad needs for a convolution cin -> cout with ntaps taps on
/// `sites` sites and `stride` lanes: the partial sums, then for a transposed weight gradient the
/// transposed input (sites x 8 x stride; see wgrad_transposed).
/// (And after it one flag per site, for the wavefront's transposition on demand.)
template <class T>
std::size_t conv_param_grad_scratch(index_t cin, index_t cout, index_t ntaps, index_t sites, index_t stride) noexcept {
  constexpr std::size_t W = std::size_t(simd::pack_size<simd::native_pack<T>>);
  return wgrad_partials_size<T>(cin, cout, ntaps, sites) +
         (wgrad_transposed<T>(cin, cout) ? std::size_t(sites) * 8 * std::size_t(stride) + (std::size_t(sites) + W - 1) / W * W
                                         : 0);
}
/// Where the transposed input of a's weight gradient lies in a.scratch.
template <class T>
T* wgrad_transposed_input(const ConvGradArgs<T>& a) noexcept {
  return a.scratch + wgrad_partials_size<T>(a.cin, a.cout, a.ntaps, a.volume);
}
/// Transposes a's input at site u into xt = wgrad_transposed_input(a) (a transposed plan).
template <class T>
NORMFLOW_ALWAYS_INLINE void wgrad_transpose_input(const ConvGradArgs<T>& a, T* xt, index_t u) noexcept {
  wgrad_transpose_site(a.in + offset_t(u) * a.in_site, a.stride, xt + offset_t(u) * 8 * a.stride);
}
/// Transposes a's input at every site (the taps of any output site may reach any site).
template <class T, class Exec>
void wgrad_transpose_all(Exec exec, const ConvGradArgs<T>& a) {
  T* xt = wgrad_transposed_input(a);
  exec::parallel_for(exec, a.volume, [&](offset_t u) { wgrad_transpose_input(a, xt, index_t(u)); });
}
/// The wavefront's flags (one T per site, 0 or 1) of the sites already transposed.
template <class T>
T* wgrad_transposed_flags(const ConvGradArgs<T>& a) noexcept {
  return wgrad_transposed_input(a) + offset_t(a.volume) * 8 * a.stride;
}
/// Transposes the input sites that the taps of the output sites [s0, s1) read and that are not
/// yet flagged (a transposed plan; one thread): the wavefront transposes each input site when the
/// first weight-gradient tile that reads it runs, so the copy is read back from L2 (transposed all
/// at once, on 32x32 the copy of 2 MB per chunk of 64 float samples had left L2 by then).
template <class T>
void wgrad_transpose_taps(const ConvGradArgs<T>& a, index_t s0, index_t s1) noexcept {
  T* xt = wgrad_transposed_input(a);
  T* done = wgrad_transposed_flags(a);
  for (index_t s = s0; s < s1; ++s)
    for (index_t t = 0; t < a.ntaps; ++t) {
      const index_t u = a.taps[offset_t(t) * a.volume + s];
      if (done[u] == T(0)) {
        wgrad_transpose_input(a, xt, u);
        done[u] = T(1);
      }
    }
}

/// Adds the weight and bias gradients of one convolution. The output sites are split into chunks
/// of wgrad_chunk_sites (a fixed split, whatever the thread count); work units (chunk, item),
/// chunk-major, each write their partial sums to their own slot of a.scratch (so one thread's
/// consecutive units share the chunk's data in L2); then one work item per weight-gradient item
/// sums the chunks' partials in chunk order onto grad_weight, and one per bias entry adds the bias
/// gradient. Every entry is summed in a fixed order: bitwise the same for any thread count.
/// Calls f(integral_constant<Ob>, o0, i0, i1, t0, nt) for weight-gradient item k of plan.
template <class T, class F>
NORMFLOW_ALWAYS_INLINE void wgrad_dispatch(const ConvGradArgs<T>& a, const WgradPlan& plan, index_t k, F&& f) {
  WgradRows r;
  index_t i0, i1, t0, t1;
  plan.item(k, a.cin, a.cout, a.ntaps, r, i0, i1, t0, t1);
  if (r.ob == 8)
    f(std::integral_constant<index_t, 8>{}, r.o0, i0, i1, t0, t1 - t0);
  else if (r.ob == 4)
    f(std::integral_constant<index_t, 4>{}, r.o0, i0, i1, t0, t1 - t0);
  else if (r.ob == 2)
    f(std::integral_constant<index_t, 2>{}, r.o0, i0, i1, t0, t1 - t0);
  else
    f(std::integral_constant<index_t, 1>{}, r.o0, i0, i1, t0, t1 - t0);
}

/// Weight-gradient work unit (chunk ch, item k) of plan: its partial sums into its scratch slot.
template <class T>
inline void wgrad_chunk_item(const ConvGradArgs<T>& a, const WgradPlan& plan, index_t ch, index_t k) noexcept {
  using V = simd::native_pack<T>;
  index_t c0, c1;
  plan.chunk(ch, c0, c1);
  const std::size_t chunk_stride = std::size_t(plan.nitems) * wgrad_unit_partials<T>;
  T* out = a.scratch + std::size_t(ch) * chunk_stride + std::size_t(k) * wgrad_unit_partials<T>;
  wgrad_dispatch(a, plan, k, [&]<index_t Ob>(std::integral_constant<index_t, Ob>, index_t o0, index_t i0, index_t i1,
                                             index_t t0, index_t nt) {
    wgrad_unit<V, Ob>(a, o0, i0, i1, t0, nt, c0, c1, out);
  });
}

/// Weight-gradient work unit (chunk ch, item k) of plan over the sites [s0, s1) of the chunk only
/// (a run of its tiles; see wgrad_unit): zero for the chunk's first run.
template <class T>
inline void wgrad_tile_item(const ConvGradArgs<T>& a, const WgradPlan& plan, index_t ch, index_t k, index_t s0,
                            index_t s1, bool zero) noexcept {
  using V = simd::native_pack<T>;
  const std::size_t chunk_stride = std::size_t(plan.nitems) * wgrad_unit_partials<T>;
  T* out = a.scratch + std::size_t(ch) * chunk_stride + std::size_t(k) * wgrad_unit_partials<T>;
  wgrad_dispatch(a, plan, k, [&]<index_t Ob>(std::integral_constant<index_t, Ob>, index_t o0, index_t i0, index_t i1,
                                             index_t t0, index_t nt) {
    wgrad_unit<V, Ob>(a, o0, i0, i1, t0, nt, s0, s1, out, zero);
  });
}

/// The second phase of a weight gradient: one work item per weight-gradient item sums the chunks'
/// partials in chunk order onto grad_weight, one per bias entry adds the bias gradient.
template <class T, class Exec>
void wgrad_finish(Exec exec, const ConvGradArgs<T>& a, const WgradPlan& plan) {
  using V = simd::native_pack<T>;
  const index_t s_begin = a.site_begin, s_end = a.site_end < 0 ? a.volume : a.site_end;
  const std::size_t chunk_stride = std::size_t(plan.nitems) * wgrad_unit_partials<T>;
  const index_t nchunks = s_end > s_begin ? plan.nchunks : 0;
  const offset_t bias_items = a.grad_bias ? a.cout : 0;
  exec::parallel_for(exec, plan.nitems + bias_items, [&](offset_t item) {
    if (item >= plan.nitems) {
      bias_grad<V>(a, index_t(item - plan.nitems));
      return;
    }
    const index_t k = index_t(item);
    wgrad_dispatch(a, plan, k, [&]<index_t Ob>(std::integral_constant<index_t, Ob>, index_t o0, index_t i0, index_t i1,
                                               index_t t0, index_t nt) {
      wgrad_reduce<V, Ob>(a, o0, i0, i1, t0, nt, a.scratch + std::size_t(k) * wgrad_unit_partials<T>, chunk_stride,
                          nchunks);
    });
  });
}

/// Adds the weight and bias gradients of one convolution. The output sites are split into chunks
/// of wgrad_chunk_sites (a fixed split, whatever the thread count); work units (chunk, item),
/// chunk-major, each write their partial sums to their own slot of a.scratch (so one thread's
/// consecutive units share the chunk's data in L2); then wgrad_finish sums the chunks' partials in
/// chunk order. Every entry is summed in a fixed order: bitwise the same for any thread count.
template <class T, class Exec>
void conv_param_grad(Exec exec, ConvGradArgs<T> a) {
  if (a.gz_site == 0) a.gz_site = offset_t(a.cout) * a.stride;
  if (a.in_site == 0) a.in_site = offset_t(a.cin) * a.stride;
  const index_t s_begin = a.site_begin, s_end = a.site_end < 0 ? a.volume : a.site_end;
  const WgradPlan plan = wgrad_plan<T>(a.cin, a.cout, a.ntaps, s_begin, s_end, a.volume);
  NORMFLOW_ASSERT(a.scratch != nullptr);
  if (s_end > s_begin) {
    if (plan.transposed) wgrad_transpose_all(exec, a);
    exec::parallel_for(exec, offset_t(plan.nchunks) * plan.nitems, [&](offset_t u) {
      wgrad_chunk_item(a, plan, index_t(u / plan.nitems), index_t(u % plan.nitems));
    });
  }
  wgrad_finish(exec, a, plan);
}

/// A whole-parity or whole-lattice site range [b, e) of a lattice of `volume` sites (even):
/// the parities it covers (bit 0: the first half, bit 1: the second), or 0 if it is neither.
inline int parity_blocks(index_t b, index_t e, index_t volume) noexcept {
  const index_t half = volume / 2;
  if (b == 0 && e == volume) return 3;
  if (b == 0 && e == half) return 1;
  if (b == half && e == volume) return 2;
  return 0;
}

/// True when conv_backward_fused applies to the pair (see there) under `exec`: both site ranges
/// are a whole parity or the whole lattice (even volume), and with several threads each parity
/// has at least as many chunks as there are threads. (With fewer, a thread's static share of the
/// units is one parity: it reads the other parity's input that another core wrote, measured as a
/// 16x16 two-thread speedup of 1.64 instead of 1.8, and a one-parity range leaves one thread
/// with both kernels' work and the other with one kernel's.)
template <class T, class Exec>
bool conv_backward_fusable(Exec, const ConvGradArgs<T>& g, const ConvKernelArgs<T>& a) noexcept {
  if (g.volume % 2 != 0 || g.volume != a.volume || g.volume == 0) return false;
  const index_t ge = g.site_end < 0 ? g.volume : g.site_end, ae = a.site_end < 0 ? a.volume : a.site_end;
  if (parity_blocks(g.site_begin, ge, g.volume) == 0 || parity_blocks(a.site_begin, ae, a.volume) == 0) return false;
  const index_t threads = std::is_same_v<Exec, exec::Serial> ? 1 : index_t(exec::max_threads());
  const index_t per_half = (g.volume / 2 + wgrad_chunk_sites - 1) / wgrad_chunk_sites;
  return threads == 1 || per_half >= threads;
}

/// One layer of a convolution stack's backward pass in one sweep: the weight gradient g (as
/// conv_param_grad) and the input adjoint a with its epilogue e (as conv_forward), which read the
/// same data: the cotangent gz (= a.in) and the layer input (g.in, whose own sites the derivative
/// epilogue reads as e.h). Separately, on lattices whose activations exceed L2 each reads both
/// from L3 or memory; here each work unit is one chunk of wgrad_chunk_sites sites of one parity
/// (chunks alternating between the parities, as everywhere): the adjoint's items of the chunk's
/// sites, then the weight gradient's units of the chunk, which find gz and the layer input in L2.
/// The results are bitwise those of the two separate calls (the same partial sums in the same
/// order; the adjoint's items write disjoint outputs). Requires conv_backward_fusable(exec, g, a).
template <class T, class Exec>
void conv_backward_fused(Exec exec, ConvGradArgs<T> g, ConvKernelArgs<T> a, const ConvOutput<T>& e) {
  if (g.gz_site == 0) g.gz_site = offset_t(g.cout) * g.stride;
  if (g.in_site == 0) g.in_site = offset_t(g.cin) * g.stride;
  if (a.in_site == 0) a.in_site = offset_t(a.cin) * a.stride;
  if (a.out_site == 0) a.out_site = offset_t(a.cout) * a.stride;
  NORMFLOW_ASSERT(g.scratch != nullptr && conv_backward_fusable(exec, g, a));
  using V = simd::native_pack<T>;
  constexpr index_t W = simd::pack_size<V>;
  const index_t C = conv_lane_packs<V>(a.cin, a.cout);
  const index_t volume = g.volume, half = volume / 2;
  const index_t g_end = g.site_end < 0 ? volume : g.site_end, a_end = a.site_end < 0 ? volume : a.site_end;
  const int g_par = parity_blocks(g.site_begin, g_end, volume), a_par = parity_blocks(a.site_begin, a_end, volume);
  const WgradPlan plan = wgrad_plan<T>(g.cin, g.cout, g.ntaps, g.site_begin, g_end, volume);
  if (plan.transposed && g_end > g.site_begin) wgrad_transpose_all(exec, g);
  const index_t per_half = (half + wgrad_chunk_sites - 1) / wgrad_chunk_sites;
  const index_t packs = a.stride / W, lane_chunks = (packs + C - 1) / C;
  const bool rows = conv_row_blocks_apply(a, e);
  with_channels(a.cin, [&]<index_t Cin>(std::integral_constant<index_t, Cin>) {
    exec::parallel_for(exec, offset_t(2) * per_half, [&](offset_t u) {
      const index_t h = index_t(u % 2), j = index_t(u / 2);  // parity h, chunk j of it
      const index_t c0 = h * half + j * wgrad_chunk_sites, c1 = std::min((h + 1) * half, c0 + wgrad_chunk_sites);
      if (a_par & (1 << h))
        for (index_t c = 0; c < lane_chunks; ++c) {  // lane chunks outer, as in conv_forward
          const index_t b0 = c * C * W, np = std::min(C, packs - c * C);
          // onto one channel in row blocks where the chunk holds whole rows of them (the same bits)
          if (!(rows && conv_row_blocks_range<V, Cin>(a, e, h, c0 - h * half, c1 - h * half, b0, np)))
            conv_sweep<V, Cin>(a, e, 0, c1 - c0, c0, c1 - c0, false, b0, np);
        }
      if (g_par & (1 << h)) {
        // the plan's chunk of these sites: alternating over the lattice, or chunk j of one parity
        const index_t ch = plan.alternate ? index_t(u) : j;
        for (index_t k = 0; k < plan.nitems; ++k) wgrad_chunk_item(g, plan, ch, k);
      }
    });
  });
  wgrad_finish(exec, g, plan);
}

/// One run of a weight gradient's tiles: the weight gradient read by adjoint layer `layer` of a
/// wavefront backward pass (convolution L - 1 - layer), chunk `chunk` of its whole-lattice
/// WgradPlan, sites [s0, s1) of that chunk (whole tiles, from the chunk's start when first).
struct WgradTiles {
  index_t layer, chunk, s0, s1;
  bool first;
};

/// The backward pass with weight gradients as a wavefront (conv_backward_wavefront): the input
/// adjoint's schedule and rings, and where each weight gradient's tiles run. The weight gradient of
/// adjoint layer j >= 1 reads ring j - 1 (its gz) at the sites of a tile: the tile runs after the
/// run that completes them, and never before the tile before it in its chunk (the partial sums of
/// a chunk add its tiles in order: the same sums as conv_param_grad), and the ring keeps those
/// sites until then. Adjoint layer 0's weight gradient reads the whole cotangent of y: its tiles
/// run in order as adjoint layer 0 passes them and their taps (run_of0), whatever its site range.
struct ConvBackwardPlan {
  ConvRingPlan ring;
  std::vector<WgradTiles> tiles;     ///< sorted by the run they follow
  std::vector<index_t> tiles_after;  ///< tiles after run r: [tiles_after[r], tiles_after[r + 1])
  std::vector<index_t> run_of0;      ///< the run of item k of adjoint layer 0
};
inline ConvBackwardPlan conv_backward_plan(const WaveSchedule& w, const index_t* taps, index_t ntaps, index_t volume,
                                           index_t layers) {
  ConvBackwardPlan plan;
  if (layers < 2) return plan;
  const std::size_t V = std::size_t(volume), L = std::size_t(layers), nruns = w.runs.size();
  const std::vector<std::vector<index_t>> run_of = wave_run_of(w, volume, layers);
  plan.run_of0 = run_of[0];
  std::vector<std::vector<index_t>> extra(L, std::vector<index_t>(V, -1));
  std::vector<std::pair<index_t, WgradTiles>> placed;
  const WgradPlan chunks(1, 1, ntaps, 0, volume, volume);
  for (index_t j = 1; j < layers; ++j) {
    for (index_t ch = 0; ch < chunks.nchunks; ++ch) {
      index_t c0, c1, prev = -1;
      chunks.chunk(ch, c0, c1);
      for (index_t t0 = c0; t0 < c1; t0 += wgrad_tile_sites) {
        const index_t t1 = std::min(c1, t0 + wgrad_tile_sites);
        index_t ready = prev;
        for (index_t s = t0; s < t1; ++s) ready = std::max(ready, run_of[std::size_t(j - 1)][std::size_t(conv_site_item(s, volume))]);
        for (index_t s = t0; s < t1; ++s) {
          index_t& e = extra[std::size_t(j - 1)][std::size_t(conv_site_item(s, volume))];
          e = std::max(e, ready);
        }
        placed.push_back({ready, WgradTiles{j, ch, t0, t1, t0 == c0}});
        prev = ready;
      }
    }
  }
  std::stable_sort(placed.begin(), placed.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  plan.tiles_after.assign(nruns + 1, 0);
  for (const auto& [r, t] : placed) {
    plan.tiles.push_back(t);
    ++plan.tiles_after[std::size_t(r) + 1];
  }
  for (std::size_t r = 0; r < nruns; ++r) plan.tiles_after[r + 1] += plan.tiles_after[r];
  plan.ring = conv_ring_plan(w, taps, ntaps, volume, layers, &extra);
  return plan;
}

/// The backward pass of a convolution stack as a wavefront, on one thread: the input adjoint's
/// convolutions a[j], e[j] (j = 0: the last convolution's adjoint) in the runs of w, and the weight
/// gradient g[j] of each (without bias: a bias gradient sums the sites in storage order), its tiles
/// placed by plan. g[j] for j >= 1 reads its gz through gz_pos (ring j - 1) over the whole
/// lattice; g[0] may have any site range. Bitwise the results of conv_param_grad(g[j]) and
/// conv_forward(a[j], e[j]) for j = 0, 1, ...: every adjoint item and every partial sum is computed
/// by the same code in the same order.
template <class T>
void conv_backward_wavefront(std::span<const ConvKernelArgs<T>> a, std::span<const ConvOutput<T>> e,
                             std::span<const ConvGradArgs<T>> g, const WaveSchedule& w, const ConvBackwardPlan& plan) {
  const index_t L = index_t(a.size());
  // layer 0's tiles, in order: chunk by chunk, each from its start
  const ConvGradArgs<T>& g0 = g[0];
  const index_t g0_end = g0.site_end < 0 ? g0.volume : g0.site_end;
  const WgradPlan p0 = wgrad_plan<T>(g0.cin, g0.cout, g0.ntaps, g0.site_begin, g0_end, g0.volume);
  for (index_t j = 0; j < L; ++j) {  // no input site transposed yet (see wgrad_transpose_taps)
    const ConvGradArgs<T>& gj = g[std::size_t(j)];
    if (wgrad_transposed<T>(gj.cin, gj.cout)) std::fill_n(wgrad_transposed_flags(gj), gj.volume, T(0));
  }
  index_t ch0 = 0, t0 = 0;  // next tile of layer 0: chunk ch0, from site t0 (or the chunk's start)
  const index_t nch0 = g0_end > g0.site_begin ? p0.nchunks : 0;
  auto layer0_tiles = [&](index_t run) {  // the tiles adjoint layer 0 has passed by `run` (all: run < 0)
    for (; ch0 < nch0; ++ch0, t0 = -1) {
      index_t c0, c1;
      p0.chunk(ch0, c0, c1);
      t0 = std::max(t0, c0);
      for (; t0 < c1; t0 += wgrad_tile_sites) {
        const index_t t1 = std::min(c1, t0 + wgrad_tile_sites);
        if (run >= 0)
          for (index_t s = t0; s < t1; ++s) {
            const index_t k = conv_site_item(s, g0.volume);
            if (plan.run_of0[std::size_t(k)] > run) return;
            // and its taps (but those across the periodic wrap): the tile's input rows are then
            // the ones adjoint layer 0's derivative epilogue has just read (and prefetched), in
            // cache. 32x32 float step, three pairs of runs: 118.9-120.6 -> 116.0-117.9 ms.
            for (index_t t = 0; t < g0.ntaps; ++t) {
              const index_t p = conv_site_item(g0.taps[offset_t(t) * g0.volume + s], g0.volume);
              if (p - k <= g0.volume / 2 && plan.run_of0[std::size_t(p)] > run) return;
            }
          }
        if (p0.transposed) wgrad_transpose_taps(g0, t0, t1);
        for (index_t k = 0; k < p0.nitems; ++k) wgrad_tile_item(g0, p0, ch0, k, t0, t1, t0 == c0);
      }
    }
  };
  for (std::size_t r = 0; r < w.runs.size(); ++r) {
    const WaveRun& run = w.runs[r];
    conv_wavefront_run(a[std::size_t(run.layer)], e[std::size_t(run.layer)], run);
    for (index_t i = plan.tiles_after[r]; i < plan.tiles_after[r + 1]; ++i) {
      const WgradTiles& t = plan.tiles[std::size_t(i)];
      const ConvGradArgs<T>& gj = g[std::size_t(t.layer)];
      const WgradPlan pj = wgrad_plan<T>(gj.cin, gj.cout, gj.ntaps, 0, gj.volume, gj.volume);
      if (pj.transposed) wgrad_transpose_taps(gj, t.s0, t.s1);
      for (index_t k = 0; k < pj.nitems; ++k) wgrad_tile_item(gj, pj, t.chunk, k, t.s0, t.s1, t.first);
    }
    if (run.layer == 0) layer0_tiles(index_t(r));
  }
  layer0_tiles(-1);
  for (index_t j = 0; j < L; ++j) {
    const ConvGradArgs<T>& gj = g[std::size_t(j)];
    const index_t end = gj.site_end < 0 ? gj.volume : gj.site_end;
    wgrad_finish(exec::Serial{}, gj, wgrad_plan<T>(gj.cin, gj.cout, gj.ntaps, gj.site_begin, end, gj.volume));
  }
}

}  // namespace normflow::detail
