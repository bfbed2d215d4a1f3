// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file ConvStack<Lat, T, Order>: the runtime conditioner network of the coupling layers
/// (reference 3.4, ConvBlock): a stack of periodic ('circular', same-size, stride 1) convolutions
/// on a lattice of any rank d, on batched fields, with an activation after every convolution but
/// the last. Its architecture is a runtime ConvNetConfig; the compile-time spec ConvNet<...> of
/// conv_net_spec.hpp produces one.
///
/// Maths. Layer l maps c_in channels to c_out with a kernel of odd size k, r = k / 2, taps
/// delta in [-r, r]^d (K = k^d of them), weights W_{o,i,delta} and biases b_o:
///   z_o(x) = b_o + sum_{i < c_in} sum_delta W_{o,i,delta} a_i(x + delta)       (x + delta periodic)
///   a^{l+1} = f(z^l) for l < L - 1 (a^0 = x),  y = z^{L-1}
/// This is a cross-correlation, as PyTorch's Conv_nd with padding_mode='circular': W_{o,i,delta}
/// is PyTorch's weight[o][i][delta_0 + r][delta_1 + r]... with lattice direction 0 as the first
/// spatial axis. When k > L along a direction, several taps reach the same site (they add).
/// Adjoint (vector-Jacobian product) for a cotangent g^l = dL/dz^l:
///   dL/da_i(x)       = sum_{o, delta} W_{o,i,delta} g_o(x - delta)
///                      (a correlation with the flipped kernel W^T_{i,o,delta} = W_{o,i,-delta})
///   dL/dW_{o,i,delta} = sum_{x, b} g_o(x, b) a_i(x + delta, b)
///   dL/db_o           = sum_{x, b} g_o(x, b)
///   g^{l-1} = dL/da^l * f'(z^{l-1})       (f' of activation.hpp, from z and a = f(z))
/// Samples b are independent: lane b of every output depends only on lane b of the input, and
/// the parameter gradients sum over the real samples b < batch only.
///
/// Parameters live in one caller-owned flat array, layer after layer; layer l holds
///   weight [c_out][c_in][K]  (tap t = sum_{dir < d} (delta_dir + r) k^(d-1-dir), the
///                             last direction fastest: the flat order of PyTorch's weight tensor;
///                             tap K - 1 - t is -delta_t)
///   bias   [c_out]           (only with bias)
/// so num_params = sum_l c_out c_in K (+ c_out). PyTorch's default initialisation:
/// W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = c_in K.
///
/// Invariants: the forward pass reads x through a copy whose padding lanes are zero, so every
/// padding lane of y and of the stored activations is finite whatever x holds there; backward
/// zeroes the padding lanes of gy, so padding lanes never reach the parameter gradients and gx is
/// zero there. Every output value and gradient entry is computed by one work item in a fixed
/// order, so results are bitwise independent of the thread count.
///
/// Zero halves. A coupling's conditioner reads x with its active half zero (zero_in_sites), and
/// its backward starts from a cotangent that is zero outside the active half (out_sites). With
/// even/odd storage and even extents a tap delta joins the two halves exactly when sum_dir
/// delta_dir is odd, so the first convolution, its weight gradient and the last one's adjoint
/// read only the taps that reach the nonzero half (detail::ConvHalfTaps; 5 or 4 of 9 with a 3 x 3
/// kernel): half the work of those three kernels, the same values (the terms left out are exact
/// zeros). Measured with the switch (ConvWorkspace::half_taps) flipped every round in one
/// process: the W1 step 8x8 -5 to -6%, 16x16 -3 to -5%, 32x32 -2 to -5%; the spline flow of W2
/// -11%, W3 sampling -3%.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/detail/aligned_allocator.hpp>
#include <normflow/detail/thread_scratch.hpp>
#include <normflow/errors.hpp>
#include <normflow/exec/host.hpp>
#include <normflow/field/field.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/lattice/site_order.hpp>
#include <normflow/layer/conditioner/activation.hpp>
#include <normflow/layer/conditioner/conv_kernels.hpp>
#include <normflow/random/philox.hpp>

namespace normflow {

template <LatticeShape Lat, class T = float, SiteOrder Order = default_order_t<Lat>>
class ConvStack;

namespace detail {
/// The taps of a convolution whose input is zero outside one half of the storage range (a
/// coupling's conditioner input, x with its active half masked, and the adjoint of its last
/// convolution, whose cotangent lives on the active half only). With even/odd storage and even
/// extents the halves are the two parities, and tap delta reaches the other parity exactly when
/// sum_dir delta_dir is odd: with a 3 x 3 kernel the sites of the nonzero half read 5 of the 9
/// taps, the other sites 4. Reading only those halves the kernel's work (ConvKernelArgs::ntaps_hi).
struct ConvHalfTaps {
  /// list[h]: the taps (ascending) whose neighbour of every site of half h lies in the nonzero half
  std::array<std::vector<index_t>, 2> list;
  std::array<std::uint64_t, 2> mask{};  ///< mask[h]: bit t set for the taps of list[h]
  index_t rows = 0;           ///< max(list[0].size(), list[1].size())
  std::vector<index_t> taps;  ///< [rows][storage position s]: taps[list[h][j]][s] for s in half h
};

/// What a ConvStack's convolutions need of the lattice (see ConvStack::geometry).
struct ConvGeometry {
  std::vector<index_t> taps;  ///< [t][storage position]: storage position of site + delta_t
  WaveSchedule wave;          ///< the wavefront schedule (two or more convolutions)
  ConvBackwardPlan back;      ///< the backward pass in that schedule: ring buffers, weight-gradient tiles
  /// The row blocks of conv_row_blocks, both parities (2d, kernel 3, even/odd storage, the last
  /// extent a multiple of 8; else empty), and the count per parity.
  std::vector<index_t> row_blocks;
  index_t row_block_count = 0;
  index_t row_block_span = 0;  ///< sites of one parity per row of blocks (the last extent)
  /// half[q]: the taps of a convolution whose input is nonzero on storage half q only; empty
  /// (rows 0, no list) where the halves are not a checkerboard of the taps (see make_half_taps).
  std::array<ConvHalfTaps, 2> half;
  /// Sets a's row-block fields.
  template <class T>
  void attach(ConvKernelArgs<T>& a) const noexcept {
    a.row_blocks = row_blocks.empty() ? nullptr : row_blocks.data();
    a.row_block_count = row_block_count;
    a.row_block_span = row_blocks.empty() ? 0 : row_block_span;
  }
};
}  // namespace detail

/// A block [begin, end) of storage positions (end = -1: to the end of the lattice). Couplings use
/// it to compute only the sites they read: with even/odd storage a parity is one block.
struct SiteRange {
  index_t begin = 0;
  index_t end = -1;
};

/// Runtime architecture of a ConvStack: in_channels -> hidden[0] -> ... -> out_channels.
struct ConvNetConfig {
  index_t in_channels = 1;        ///< channels per site of the input x, >= 1
  std::vector<index_t> hidden{};  ///< hidden channel counts, each >= 1; empty: a single convolution
  index_t out_channels = 1;       ///< channels per site of the output y, >= 1
  index_t kernel_size = 3;        ///< odd, >= 1 (same-size output, periodic)
  Activation activation = Activation::tanh;  ///< after every convolution but the last
  bool bias = true;               ///< a bias per output channel of every convolution
};

/// Parameter initialisation of ConvStack::init_params.
enum class ConvInit {
  uniform,    ///< PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
  zero,       ///< every parameter zero
  zero_last,  ///< uniform, but the last convolution zero (the network starts as y = 0)
};

/// The order in which ConvStack runs the convolutions of its forward and backward passes. Every
/// order gives the same bits. (A backward pass with parameter gradients of a network with biases
/// always runs layer by layer: the bias gradient sums the sites in storage order.)
enum class ConvSchedule {
  /// wavefront where it pays: one thread, two or more convolutions, a hidden activation of more
  /// than conv_wavefront_min_bytes (on 8x8 x 128 float the whole pass fits in L2 anyway), a
  /// wavefront window of at most conv_wavefront_max_window_bytes (else it does not stay in L2),
  /// and a lattice at least four times the sites the layers keep live in all (the sum of
  /// detail::WaveSchedule::lag: 64 of 256 on 16x16, 145 of 1024 on 32x32, but 32 of 64 on 8x8,
  /// where at batch 1024 the wavefront measured a 7% slower step: 69-72 -> 75-78 ms)
  automatic,
  /// each convolution over the whole lattice, then the next
  layer_by_layer,
  /// the convolutions interleaved over the lattice (detail::conv_wavefront_schedule), so each one
  /// reads its input while it is still in L2; in backward the cotangents live in ring buffers and
  /// the weight gradients run tile by tile behind them (detail::ConvBackwardPlan); on one thread
  /// only (with more, layer by layer)
  wavefront,
};

/// ConvSchedule::automatic takes the wavefront when one hidden activation (all sites, channels and
/// lanes) is larger than this: 512 KiB. On 16x16 an 8-channel activation of a training step's
/// chunk (64 float or 32 double samples) is 0.54 MB; with it the one-thread step of the W1 flow
/// took 3.0-4.5% less time in float, 2.3% in double, and 4.8% (float) and 3.9% (double) on two
/// threads (each runs its chunks with the wavefront), switched every round in one process. (1
/// MiB before session 16, set before the step ran in chunks.)
inline constexpr std::size_t conv_wavefront_min_bytes = std::size_t(512) << 10;
/// ConvSchedule::automatic takes the wavefront only when the hidden activations it keeps live
/// (detail::WaveSchedule::lag items of each, in bytes) total at most this: 2 MiB, the L2 of the
/// cores measured. The reference conditioner's window is 0.4 MB on 16x16 x 128 in float, 0.8 MB on
/// 32x32, 1.6 MB on 64x64 (where the training step still went 702-711 -> 645-658 ms) and on 32x32
/// in double (where it measured the same as layer by layer), 3.2 MB on 128x128.
inline constexpr std::size_t conv_wavefront_max_window_bytes = std::size_t(2) << 20;

/// Caller-owned buffers of a ConvStack forward pass, kept for backward: allocated by the first
/// forward, reused (no allocation) while the batch size and the network stay the same.
/// \tparam T float or double
template <class T>
class ConvWorkspace {
 public:
  ConvWorkspace() = default;

  /// The order of the convolutions of forward and backward (the results do not depend on it; see
  /// ConvSchedule).
  ConvSchedule schedule = ConvSchedule::automatic;

  /// Where the input of a convolution is zero outside one storage half (the first convolution's
  /// and its weight gradient's with zero_in_sites a half, the last one's adjoint with out_sites a
  /// half), read only the taps that reach the other half (detail::ConvHalfTaps: 4 or 5 of 9 with
  /// a 3 x 3 kernel on an even/odd lattice). The same values either way (the terms left out are
  /// exact zeros; up to the sign of a zero); false: every tap (for tests and benchmarks).
  bool half_taps = true;

  /// forward may keep a pointer to its input x in place of a copy, where the copy adds nothing:
  /// x has no padding lanes (batch a whole number of SIMD packs) and zero_in_sites is a half that
  /// the first convolution and its weight gradient skip (half_taps, and two or more convolutions
  /// or out_sites a half or everything). x must then stay alive and unchanged until the last
  /// backward of that forward pass. Couplings set it where x is their tape's own copy of the
  /// input: one field copy and V sizeof(T) of stored activations less per layer and sample.
  bool borrow_input = false;

  /// Batch of the stored forward pass (-1 before the first).
  index_t batch() const noexcept { return m_batch; }
  /// True when the stored forward pass read its input in place (borrow_input took effect).
  bool input_borrowed() const noexcept { return m_batch >= 0 && m_in != nullptr && m_in != m_x.data(); }

 private:
  template <LatticeShape, class, SiteOrder>
  friend class ConvStack;
  using buffer = AlignedBuffer<T>;

  index_t m_batch = -1;
  index_t m_stride = 0;
  std::vector<index_t> m_channels;  // architecture the buffers were laid out for
  buffer m_x;                       // copy of the input, padding lanes zero (empty while borrowing)
  const T* m_in = nullptr;          // the input the stored forward pass read: m_x or the borrowed x
  offset_t m_in_site = 0;           // its distance between sites
  std::vector<buffer> m_z, m_h;     // per hidden layer: pre-activation z (see keeps_z) and h = f(z)
  std::size_t m_g_size = 0;         // backward: elements of each cotangent buffer (thread scratch)
  std::size_t m_wscratch_size = 0;  // backward: elements of conv_param_grad's partials (thread scratch)
  buffer m_wt;                      // every layer's weights packed for the kernel (pack_conv_weights, layer
                                    // l at packed_offset(l)); the layer-by-layer backward: one layer's at 0
  std::vector<detail::ConvKernelArgs<T>> m_args;  // each convolution's arguments (wavefront passes)
  std::vector<detail::ConvOutput<T>> m_outs;      // each convolution's output (wavefront passes)
  std::vector<detail::ConvGradArgs<T>> m_gargs;   // each weight gradient (wavefront backward)
  SiteRange m_out{};                // output sites of the last convolution in the stored forward pass
  index_t m_zero_half = -1;         // the storage half of the input read as zero (-1: none, or no taps by half)
};

/// A stack of periodic convolutions (see the file comment for the maths and the layouts).
/// Immutable after construction; const member functions are thread-safe (state lives in the
/// caller's parameters and workspace).
/// \tparam Lat   the lattice (any rank)
/// \tparam T     float or double
/// \tparam Order site order of the fields it reads and writes
template <LatticeShape Lat, class T, SiteOrder Order>
class ConvStack {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "ConvStack<Lat, T, ...>: T must be float or double");

 public:
  using lattice = Lat;
  using value_type = T;
  using order = Order;
  using Workspace = ConvWorkspace<T>;
  static constexpr index_t volume = Lat::volume;
  static constexpr index_t rank = Lat::rank;

  /// Validates the configuration (ParameterError naming the parameter and its valid range) and
  /// takes the lattice's tap table (num_taps() x volume storage positions) and wavefront plans,
  /// shared by every ConvStack of this type with the same kernel size and depth (see geometry).
  explicit ConvStack(ConvNetConfig config) : m_config(std::move(config)) {
    m_taps_count = validate();
    const ConvNetConfig& c = m_config;
    m_channels.push_back(c.in_channels);
    for (index_t h : c.hidden) m_channels.push_back(h);
    m_channels.push_back(c.out_channels);
    m_weight_offset.resize(std::size_t(num_layers()));
    std::size_t n = 0;
    for (index_t l = 0; l < num_layers(); ++l) {
      m_weight_offset[std::size_t(l)] = n;
      n += std::size_t(out_channels(l)) * std::size_t(in_channels(l)) * std::size_t(m_taps_count);
      if (c.bias) n += std::size_t(out_channels(l));
    }
    m_num_params = n;
    m_geo = geometry(c.kernel_size, m_taps_count, num_layers());
  }

  const ConvNetConfig& config() const noexcept { return m_config; }
  /// Number of convolutions: hidden.size() + 1.
  index_t num_layers() const noexcept { return index_t(m_channels.size()) - 1; }
  /// Input / output channels of convolution l.
  index_t in_channels(index_t l) const noexcept { return m_channels[std::size_t(l)]; }
  index_t out_channels(index_t l) const noexcept { return m_channels[std::size_t(l) + 1]; }
  /// K = kernel_size^rank taps per (output, input) channel pair.
  index_t num_taps() const noexcept { return m_taps_count; }
  /// Total parameter count (see the file comment).
  std::size_t num_params() const noexcept { return m_num_params; }
  /// Start of layer l's weights [c_out][c_in][K] in the flat parameter array.
  std::size_t weight_offset(index_t l) const noexcept { return m_weight_offset[std::size_t(l)]; }
  /// Start of layer l's biases [c_out] (meaningful only with config().bias).
  std::size_t bias_offset(index_t l) const noexcept {
    return weight_offset(l) + std::size_t(out_channels(l)) * std::size_t(in_channels(l)) * std::size_t(m_taps_count);
  }
  /// The offset of tap t along each direction, in [-r, r] (r = kernel_size / 2).
  typename Lat::coord_type tap_offset(index_t t) const noexcept { return tap_offset(t, m_config.kernel_size); }
  /// Storage position of site(s) + delta_t, s a storage position.
  index_t tap_neighbor(index_t t, index_t s) const noexcept {
    return m_geo->taps[std::size_t(t) * std::size_t(volume) + std::size_t(s)];
  }
  /// Points a, a convolution whose input is zero outside storage half q (or with flip_transpose
  /// an input adjoint whose cotangent is), at this lattice's taps by half (detail::ConvHalfTaps,
  /// ConvKernelArgs::ntaps_hi) and packs the weights w as pack_conv_weights(w, packed, a.cin,
  /// a.cout, num_taps(), flip_transpose) would, for those taps only: half 0's, then half 1's
  /// (a.cin a.cout num_taps() values at most). False where the lattice has none (nothing changed).
  bool attach_half_taps(detail::ConvKernelArgs<T>& a, index_t q, const T* w, T* packed,
                        bool flip_transpose) const noexcept {
    const detail::ConvHalfTaps& ht = m_geo->half[std::size_t(q)];
    if (ht.taps.empty()) return false;
    const index_t n0 = index_t(ht.list[0].size()), n1 = index_t(ht.list[1].size());
    detail::pack_conv_weights(w, packed, a.cin, a.cout, m_taps_count, flip_transpose, ht.list[0].data(), n0);
    a.weight_hi = offset_t(a.cin) * a.cout * n0;
    detail::pack_conv_weights(w, packed + a.weight_hi, a.cin, a.cout, m_taps_count, flip_transpose,
                              ht.list[1].data(), n1);
    a.weight = packed;
    a.taps = ht.taps.data();
    a.ntaps = n0;
    a.ntaps_hi = n1;
    return true;
  }
  /// The tap masks of a weight gradient whose input is zero outside storage half q
  /// (detail::ConvGradArgs::tap_mask: two masks, one per half of the output sites), or nullptr
  /// where the lattice has no taps by half.
  const std::uint64_t* half_tap_mask(index_t q) const noexcept {
    const detail::ConvHalfTaps& ht = m_geo->half[std::size_t(q)];
    return ht.taps.empty() ? nullptr : ht.mask.data();
  }
  /// The storage half (0 or 1) that r is exactly, or -1.
  static index_t half_of(SiteRange r) noexcept {
    const index_t end = r.end < 0 ? volume : r.end;
    if (volume % 2 != 0) return -1;
    return r.begin == 0 && end == volume / 2 ? 0 : r.begin == volume / 2 && end == volume ? 1 : -1;
  }

  /// Gives kernel arguments this lattice's row blocks (detail::conv_row_blocks), as every
  /// convolution of the stack has them (for benchmarks of the kernels alone).
  void attach_row_blocks(detail::ConvKernelArgs<T>& a) const noexcept { m_geo->attach(a); }

  /// Fills params (num_params() values). uniform: entry j of layer l's block (weights, then
  /// biases) is (2u - 1)/sqrt(c_in K), u the (j mod 2)-th uniform of
  /// CounterRng{seed, 0}.uniform_pair(l, j / 2, 0), computed in double: float and double nets
  /// from one seed agree to float rounding.
  void init_params(std::span<T> params, std::uint64_t seed, ConvInit init = ConvInit::uniform) const {
    require_size(params.size(), "ConvStack::init_params", "params");
    const CounterRng rng{seed, 0};
    for (index_t l = 0; l < num_layers(); ++l) {
      const std::size_t begin = weight_offset(l);
      const std::size_t end = l + 1 < num_layers() ? weight_offset(l + 1) : m_num_params;
      const bool zero = init == ConvInit::zero || (init == ConvInit::zero_last && l + 1 == num_layers());
      const double bound = 1.0 / std::sqrt(double(in_channels(l)) * double(m_taps_count));
      for (std::size_t j = 0; j < end - begin; ++j) {
        if (zero) {
          params[begin + j] = T(0);
          continue;
        }
        const DoublePair u = rng.uniform_pair(std::uint32_t(l), std::uint32_t(j / 2), 0);
        params[begin + j] = T(bound * (2.0 * (j % 2 ? u.second : u.first) - 1.0));
      }
    }
  }

  /// y = net(x). Stores what backward needs in ws (resized only when the batch or the network
  /// changes). x has in_channels components, y out_channels; both have the same batch.
  /// Only the sites in `out_sites` of y are computed (the others are left as they were); backward
  /// then treats gy as zero outside them. The input sites in `zero_in_sites` (storage positions;
  /// default: none) are read as zero (a coupling's masked half, without a masked copy of x).
  /// \tparam Exec exec::Serial or exec::OpenMP (threads over sites and batch chunks)
  template <SiteType SiteIn, SiteType SiteOut, class Exec = exec::HostDefault>
  void forward(std::span<const T> params, const Field<Lat, T, SiteIn, Order>& x, Field<Lat, T, SiteOut, Order>& y,
               Workspace& ws, Exec exec = {}, SiteRange out_sites = {}, SiteRange zero_in_sites = {0, 0}) const {
    static_assert(std::is_same_v<Exec, exec::Serial> || std::is_same_v<Exec, exec::OpenMP>,
                  "ConvStack::forward: use a host execution policy (exec::Serial or exec::OpenMP)");
    constexpr const char* where = "ConvStack::forward";
    require_size(params.size(), where, "params");
    require_channels(SiteIn::components, m_config.in_channels, where, "x", "in_channels");
    require_channels(SiteOut::components, m_config.out_channels, where, "y", "out_channels");
    require_batch(y.batch(), x.batch(), where, "y", "x");
    require_range(out_sites, where, "out_sites");
    require_range(zero_in_sites, where, "zero_in_sites");
    prepare(ws, x.batch(), x.padded_batch());
    const index_t stride = ws.m_stride;
    // x itself or a copy (see ConvWorkspace::borrow_input): the copy's zeros on zero_in_sites and in
    // the padding lanes are never read where the taps by half skip that half and there are no
    // padding lanes; the weight gradient's tiles lie in one half when its sites are all of the
    // lattice or a half (detail::wgrad_unit)
    const index_t o_end = out_sites.end < 0 ? volume : out_sites.end;
    const bool borrow = ws.borrow_input && ws.half_taps && half_of(zero_in_sites) >= 0 &&
                        !m_geo->half[0].taps.empty() && x.batch() == x.padded_batch() &&
                        (num_layers() >= 2 || half_of(out_sites) >= 0 || (out_sites.begin == 0 && o_end == volume));
    if (borrow) {
      if (ws.m_x.size() != 0) decltype(ws.m_x){}.swap(ws.m_x);  // (its memory too)
      ws.m_in = x.data();
      ws.m_in_site = offset_t(m_config.in_channels) * stride;  // Field's layout
    } else {
      ws.m_x.resize(std::size_t(volume) * std::size_t(site_stride(m_config.in_channels, stride)));
      copy_real_lanes(exec, x.data(), offset_t(m_config.in_channels) * stride, ws.m_x.data(),
                      site_stride(m_config.in_channels, stride), m_config.in_channels, x.batch(), stride,
                      zero_in_sites);
      ws.m_in = ws.m_x.data();
      ws.m_in_site = site_stride(m_config.in_channels, stride);
    }
    ws.m_out = out_sites;

    const T* in = ws.m_in;
    for (index_t l = 0; l < num_layers(); ++l) {
      T* packed = ws.m_wt.data() + packed_offset(l);
      detail::pack_conv_weights(params.data() + weight_offset(l), packed, in_channels(l), out_channels(l),
                                m_taps_count, false);
      detail::ConvKernelArgs<T> args = layer_args(params, packed, l, in, stride);
      if (l == 0) {
        ws.m_zero_half = -1;
        if (ws.half_taps && half_of(zero_in_sites) >= 0 &&  // x nonzero on the other half only
            attach_half_taps(args, 1 - half_of(zero_in_sites), params.data() + weight_offset(l), packed, false))
          ws.m_zero_half = half_of(zero_in_sites);
        NORMFLOW_ASSERT(!borrow || ws.m_zero_half >= 0);
      }
      const bool last = l + 1 == num_layers();
      args.in_site = l == 0 ? ws.m_in_site : site_stride(in_channels(l), stride);
      if (last)
        args.site_begin = out_sites.begin, args.site_end = out_sites.end;  // y: Field's layout
      else
        args.out_site = site_stride(out_channels(l), stride);
      detail::ConvOutput<T> out{detail::ConvEpilogue::store, m_config.activation, nullptr, nullptr, nullptr, nullptr};
      if (last) {
        out.out = y.data();
      } else if (m_config.activation == Activation::none) {
        out.out = ws.m_z[std::size_t(l)].data();
        in = out.out;
      } else {
        out.mode = detail::ConvEpilogue::activate;
        // h = f(z) in place over z unless f' needs z (keeps_z)
        out.out_h = ws.m_h[std::size_t(l)].data();
        out.out = keeps_z() ? ws.m_z[std::size_t(l)].data() : out.out_h;
        in = out.out_h;
      }
      ws.m_args[std::size_t(l)] = args;
      ws.m_outs[std::size_t(l)] = out;
    }
    if (use_wavefront(ws, exec)) {
      detail::conv_forward_wavefront<T>(ws.m_args, ws.m_outs, m_geo->wave.runs);
    } else {
      for (index_t l = 0; l < num_layers(); ++l)
        detail::conv_forward(exec, ws.m_args[std::size_t(l)], ws.m_outs[std::size_t(l)]);
    }
  }

  /// True when forward(..., ws, exec) interleaves its convolutions, and so does backward (with
  /// parameter gradients only without bias; see ConvSchedule).
  template <class Exec>
  bool use_wavefront(const Workspace& ws, Exec) const noexcept {
    const bool one_thread = std::is_same_v<Exec, exec::Serial> || exec::max_threads() == 1;
    if (!one_thread || m_geo->wave.runs.empty() || ws.schedule == ConvSchedule::layer_by_layer) return false;
    if (ws.schedule == ConvSchedule::wavefront) return true;
    std::size_t largest = 0, window = 0, lag = 0;
    for (index_t l = 0; l + 1 < num_layers(); ++l) {
      const std::size_t site = std::size_t(site_stride(out_channels(l), ws.m_stride)) * sizeof(T);
      largest = std::max(largest, std::size_t(volume) * site);
      window += std::size_t(m_geo->wave.lag[std::size_t(l)]) * site;
      lag += std::size_t(m_geo->wave.lag[std::size_t(l)]);
    }
    return largest > conv_wavefront_min_bytes && window <= conv_wavefront_max_window_bytes &&
           4 * lag <= std::size_t(volume);
  }

  /// Vector-Jacobian product of the forward pass stored in ws (run with the same params):
  /// gx = dL/dx (overwritten; zero in padding lanes) and grads += dL/dparams, from gy = dL/dy
  /// (its padding lanes are ignored). An empty grads skips the weight gradient (input adjoint only,
  /// one third less work: what the path gradient's reverse adjoint needs).
  /// Only the sites in `in_sites` of gx are computed (the others are left as they were).
  template <SiteType SiteIn, SiteType SiteOut, class Exec = exec::HostDefault>
  void backward(std::span<const T> params, Workspace& ws, const Field<Lat, T, SiteOut, Order>& gy,
                Field<Lat, T, SiteIn, Order>& gx, std::span<T> grads, Exec exec = {}, SiteRange in_sites = {}) const {
    static_assert(std::is_same_v<Exec, exec::Serial> || std::is_same_v<Exec, exec::OpenMP>,
                  "ConvStack::backward: use a host execution policy (exec::Serial or exec::OpenMP)");
    constexpr const char* where = "ConvStack::backward";
    require_size(params.size(), where, "params");
    if (!grads.empty()) require_size(grads.size(), where, "grads");
    require_channels(SiteIn::components, m_config.in_channels, where, "gx", "in_channels");
    require_channels(SiteOut::components, m_config.out_channels, where, "gy", "out_channels");
    if (ws.m_batch < 0 || ws.m_channels != m_channels)
      throw ShapeError(detail::concat(where, ": the workspace holds no forward pass of this network; "
                                             "call forward(params, x, y, ws) first"));
    require_batch(gy.batch(), ws.m_batch, where, "gy", "the forward pass");
    require_batch(gx.batch(), ws.m_batch, where, "gx", "the forward pass");

    // cotangents of two consecutive layers and the weight gradient's partial sums: transient, from
    // the thread's scratch (shared by all layers; see detail/thread_scratch.hpp)
    T* g = detail::thread_scratch<T>(detail::ScratchSlot::conv_cotangent_a, ws.m_g_size);
    T* g_next = detail::thread_scratch<T>(detail::ScratchSlot::conv_cotangent_b, ws.m_g_size);
    T* wscratch = detail::thread_scratch<T>(detail::ScratchSlot::conv_wgrad, ws.m_wscratch_size);
    require_range(in_sites, where, "in_sites");
    const index_t stride = ws.m_stride;
    {  // g = gy in the sites the forward pass computed, zero elsewhere and in the padding lanes
      const offset_t site = site_stride(m_config.out_channels, stride);
      copy_real_lanes(exec, gy.data(), offset_t(m_config.out_channels) * stride, g, site, m_config.out_channels,
                      gy.batch(), stride);
      const index_t o0 = ws.m_out.begin, o1 = ws.m_out.end < 0 ? volume : ws.m_out.end;
      exec::parallel_fill(exec, g, std::size_t(offset_t(o0) * site), T(0));
      exec::parallel_fill(exec, g + offset_t(o1) * site, std::size_t(offset_t(volume - o1) * site), T(0));
    }
    if ((grads.empty() || !m_config.bias) && use_wavefront(ws, exec)) {
      backward_wavefront(params, ws, g, gx, grads, in_sites);
      return;
    }
    for (index_t l = num_layers() - 1; l >= 0; --l) {
      const index_t cin = in_channels(l), cout = out_channels(l);
      const T* in = l == 0 ? ws.m_in : layer_output(ws, l - 1);
      std::optional<detail::ConvGradArgs<T>> wgrad;  // this layer's weight gradient, if formed
      if (!grads.empty()) {
        detail::ConvGradArgs<T> gargs = grad_args(ws, l, g, in, grads, stride, wscratch, m_config.bias);
        if (l + 1 == num_layers()) gargs.site_begin = ws.m_out.begin, gargs.site_end = ws.m_out.end;
        wgrad = gargs;
      }

      // The adjoint convolution cout -> cin with W^T[i][o][t] = W[o][i][K - 1 - t] (tap K - 1 - t
      // is -delta_t), packed for the kernel.
      T* wt = ws.m_wt.data();
      detail::pack_conv_weights(params.data() + weight_offset(l), wt, cout, cin, m_taps_count, true);
      detail::ConvKernelArgs<T> args{g,
                                           wt,
                                           nullptr,
                                           m_geo->taps.data(),
                                           cout,
                                           cin,
                                           m_taps_count,
                                           volume,
                                           stride,
                                           l == 0 ? in_sites.begin : 0,
                                           l == 0 ? in_sites.end : -1,
                                           site_stride(cout, stride),
                                           l == 0 ? offset_t(0) : site_stride(cin, stride)};  // gx: Field's layout
      m_geo->attach(args);
      if (l + 1 == num_layers() && ws.half_taps && half_of(ws.m_out) >= 0)  // g nonzero on m_out only
        attach_half_taps(args, half_of(ws.m_out), params.data() + weight_offset(l), wt, true);
      detail::ConvOutput<T> out{detail::ConvEpilogue::store, m_config.activation, nullptr, nullptr, nullptr, nullptr};
      if (l == 0) {
        out.out = gx.data();
      } else {
        out.out = g_next;
        if (m_config.activation != Activation::none) {
          out.mode = detail::ConvEpilogue::derivative;
          out.h = ws.m_h[std::size_t(l - 1)].data();
          out.z = keeps_z() ? ws.m_z[std::size_t(l - 1)].data() : out.h;  // f'(z) from h alone otherwise
        }
      }
      // the weight gradient and the adjoint read the same g and layer input: one sweep where the
      // site ranges allow (bitwise the same results as the two calls)
      if (wgrad && detail::conv_backward_fusable(exec, *wgrad, args)) {
        detail::conv_backward_fused(exec, *wgrad, args, out);
      } else {
        if (wgrad) detail::conv_param_grad(exec, *wgrad);
        detail::conv_forward(exec, args, out);
      }
      std::swap(g, g_next);
    }
  }

 private:
  /// Throws ParameterError for an invalid configuration; returns the tap count K.
  index_t validate() const {
    const ConvNetConfig& c = m_config;
    auto channels = [](index_t v, const char* name) {
      if (v < 1 || v > max_channels)
        throw ParameterError(detail::concat("ConvStack: ", name, " = ", v, " is outside the valid range [1, ",
                                            max_channels, "]"));
    };
    channels(c.in_channels, "in_channels");
    channels(c.out_channels, "out_channels");
    for (std::size_t j = 0; j < c.hidden.size(); ++j)
      channels(c.hidden[j], detail::concat("hidden[", j, "]").c_str());
    if (c.kernel_size < 1 || c.kernel_size % 2 == 0)
      throw ParameterError(detail::concat("ConvStack: kernel_size = ", c.kernel_size,
                                          " is invalid; valid: an odd value >= 1 (1, 3, 5, ...)"));
    if (activation_name(c.activation) == nullptr)
      throw ParameterError(detail::concat("ConvStack: activation = ", int(c.activation),
                                          " is invalid; valid: tanh, leaky_relu, silu, none"));
    std::int64_t taps = 1;
    for (index_t d = 0; d < rank; ++d) {
      taps *= c.kernel_size;
      if (taps * volume > max_tap_entries)
        throw ParameterError(detail::concat("ConvStack: kernel_size = ", c.kernel_size, " gives ", c.kernel_size,
                                            "^", rank, " taps on ", volume,
                                            " sites: too many; valid: kernel_size^rank * volume <= 2^28"));
    }
    index_t prev = c.in_channels;
    for (std::size_t l = 0; l <= c.hidden.size(); ++l) {
      const index_t next = l < c.hidden.size() ? c.hidden[l] : c.out_channels;
      if (std::int64_t(prev) * next * taps >= (std::int64_t(1) << 31))
        throw ParameterError(detail::concat("ConvStack: layer ", l, " has ", std::int64_t(prev) * next * taps,
                                            " weights; valid: c_in * c_out * kernel_size^rank < 2^31"));
      prev = next;
    }
    return index_t(taps);
  }

  static typename Lat::coord_type tap_offset(index_t t, index_t k) noexcept {
    typename Lat::coord_type delta{};
    const index_t r = k / 2;
    for (index_t d = rank - 1; d >= 0; --d) {
      delta[std::size_t(d)] = t % k - r;
      t /= k;
    }
    return delta;
  }

  /// The row blocks of detail::conv_row_blocks (2d, kernel 3, even/odd storage, the last extent a
  /// multiple of 8), each checked against the tap table (none if one entry disagrees).
  static void make_row_blocks(detail::ConvGeometry& g, index_t kernel_size) {
    if constexpr (rank == 2 && std::is_same_v<Order, EvenOdd>) {
      constexpr index_t L0 = Lat::extents[0], L1 = Lat::extents[1];
      if (kernel_size != 3 || L1 % 8 != 0) return;
      auto pos = [](index_t y, index_t c) {
        return EvenOdd::template storage_index<Lat>(Lat::site({(y % L0 + L0) % L0, (c % L1 + L1) % L1}));
      };
      const index_t count = (L0 / 2) * (L1 / 8);
      std::vector<index_t> blocks;
      blocks.reserve(std::size_t(2 * count * detail::conv_row_block_size));
      for (index_t p = 0; p < 2; ++p)
        for (index_t y = 0; y < L0; y += 2)
          for (index_t base = 0; base < L1; base += 8) {
            const std::size_t at = blocks.size();
            for (index_t r = 0; r < 8; ++r) {
              const index_t h = r / 4, c = base + (h == 0 ? p : 1 - p) + 2 * (r % 4);
              blocks.push_back(pos(y + h, c));
            }
            for (index_t row = 0; row < 4; ++row)
              for (index_t j = 0; j < 10; ++j) blocks.push_back(pos(y - 1 + row, base - 1 + j));
            for (index_t r = 0; r < 8; ++r) {  // every tap of every output against the tap table
              const index_t h = r / 4, c = (h == 0 ? p : 1 - p) + 2 * (r % 4), s = blocks[at + std::size_t(r)];
              // and its storage position within the block's row of blocks (conv_row_blocks_range)
              const index_t row0 = p * (volume / 2) + y / 2 * L1;
              if (s < row0 || s >= row0 + L1) return;
              for (index_t t = 0; t < 9; ++t) {
                const index_t dy = t / 3 - 1, dx = t % 3 - 1;
                const index_t in = blocks[at + 8 + std::size_t((h + dy + 1) * 10 + c + dx + 1)];
                if (in != g.taps[std::size_t(t) * std::size_t(volume) + std::size_t(s)] || s / (volume / 2) != p) return;
              }
            }
          }
      g.row_blocks = std::move(blocks);
      g.row_block_count = count;
      g.row_block_span = L1;
    } else {
      (void)g, (void)kernel_size;
    }
  }

  /// The taps by storage half (detail::ConvHalfTaps), where every site of a half has the same taps
  /// into each half (checked on the tap table: true for even/odd storage with even extents) and
  /// the two halves' lists of a nonzero half q together hold at most ntaps taps; else none.
  static void make_half_taps(detail::ConvGeometry& g, index_t ntaps) {
    if (volume % 2 != 0 || ntaps > 64) return;
    const index_t hv = volume / 2;
    std::uint64_t same[2] = {0, 0};  // per half h: bit t set when tap t of its sites stays in h
    for (index_t h = 0; h < 2; ++h)
      for (index_t s = h * hv; s < (h + 1) * hv; ++s) {
        std::uint64_t m = 0;
        for (index_t t = 0; t < ntaps; ++t)
          if (g.taps[std::size_t(t) * std::size_t(volume) + std::size_t(s)] / hv == h) m |= std::uint64_t(1) << t;
        if (s == h * hv)
          same[h] = m;
        else if (m != same[h])
          return;
      }
    for (index_t q = 0; q < 2; ++q) {
      detail::ConvHalfTaps& ht = g.half[std::size_t(q)];
      for (index_t h = 0; h < 2; ++h)
        for (index_t t = 0; t < ntaps; ++t)
          if (((same[h] >> t) & 1) == (h == q ? 1u : 0u)) {
            ht.list[std::size_t(h)].push_back(t);
            ht.mask[std::size_t(h)] |= std::uint64_t(1) << t;
          }
      if (ht.list[0].size() + ht.list[1].size() > std::size_t(ntaps)) {
        g.half = {};
        return;
      }
      ht.rows = index_t(std::max(ht.list[0].size(), ht.list[1].size()));
      ht.taps.assign(std::size_t(ht.rows) * std::size_t(volume), 0);
      for (index_t s = 0; s < volume; ++s) {
        const std::vector<index_t>& list = ht.list[std::size_t(s / hv)];
        for (index_t j = 0; j < ht.rows; ++j)  // (rows past the list's end: unread, the site itself)
          ht.taps[std::size_t(j) * std::size_t(volume) + std::size_t(s)] =
              j < index_t(list.size()) ? g.taps[std::size_t(list[std::size_t(j)]) * std::size_t(volume) + std::size_t(s)]
                                       : s;
      }
    }
  }

  /// The tap table and wavefront plans of this lattice and site order for a kernel size (ntaps =
  /// kernel_size^rank taps) and a depth. They depend on nothing else, so every ConvStack of this
  /// type with the same two shares one immutable copy (the 16 conditioners of a flow hold one: on a
  /// 32^3 lattice with kernel 3 and two hidden layers it is about 11 MB), released with the last of
  /// them. Thread-safe.
  static std::shared_ptr<const detail::ConvGeometry> geometry(index_t kernel_size, index_t ntaps, index_t layers) {
    static std::mutex mutex;
    static std::map<std::pair<index_t, index_t>, std::weak_ptr<const detail::ConvGeometry>> cache;
    const std::lock_guard<std::mutex> lock(mutex);
    std::weak_ptr<const detail::ConvGeometry>& slot = cache[{kernel_size, layers}];
    if (std::shared_ptr<const detail::ConvGeometry> g = slot.lock()) return g;
    auto g = std::make_shared<detail::ConvGeometry>();
    g->taps.resize(std::size_t(ntaps) * std::size_t(volume));
    for (index_t t = 0; t < ntaps; ++t) {
      const typename Lat::coord_type delta = tap_offset(t, kernel_size);
      for (index_t site = 0; site < volume; ++site) {
        index_t n = site;
        for (index_t d = 0; d < rank; ++d) n = Lat::shift(n, d, delta[std::size_t(d)]);
        g->taps[std::size_t(t) * std::size_t(volume) + std::size_t(Order::template storage_index<Lat>(site))] =
            Order::template storage_index<Lat>(n);
      }
    }
    make_row_blocks(*g, kernel_size);
    make_half_taps(*g, ntaps);
    if (layers >= 2) {
      g->wave = detail::conv_wavefront_schedule(g->taps.data(), ntaps, volume, layers, wave_block);
      g->back = detail::conv_backward_plan(g->wave, g->taps.data(), ntaps, volume, layers);
    }
    slot = g;
    return g;
  }

  /// The backward pass as a wavefront: the convolutions of backward's layer loop, layer L - 1
  /// first, interleaved by the wavefront schedule, each cotangent but the last in a ring buffer that
  /// holds only the sites still to be read (geometry().back.ring), so that it is written and read in L2 (on 32x32 x 128
  /// float each full cotangent is 4.3 MB: written to L3 and read back); with grads, each layer's
  /// weight gradient tile by tile as its cotangent's sites are done (geometry().back; no bias: a bias
  /// gradient sums the sites in storage order). g: the cotangent of y, as backward lays it out.
  /// Bitwise the layer-by-layer results. Measured (ConvStack 1 -> 8 -> 8 -> 2, batch 128, one
  /// thread, a coupling's site ranges), input adjoint alone: 32x32 float 1.66-1.71 -> 1.59-1.60 ms,
  /// 32x32 double 4.3-4.6 -> 3.98-3.99 ms.
  template <SiteType SiteIn>
  void backward_wavefront(std::span<const T> params, Workspace& ws, const T* g, Field<Lat, T, SiteIn, Order>& gx,
                          std::span<T> grads, SiteRange in_sites) const {
    const index_t L = num_layers(), stride = ws.m_stride;
    const detail::ConvRingPlan& rp = m_geo->back.ring;
    std::size_t ring_total = 0, wgrad_total = 0;
    for (index_t j = 0; j < L; ++j) {
      const index_t l = L - 1 - j;
      if (j + 1 < L) ring_total += std::size_t(rp.slots[std::size_t(j)]) * std::size_t(site_stride(in_channels(l), stride));
      wgrad_total += detail::conv_param_grad_scratch<T>(in_channels(l), out_channels(l), m_taps_count, volume, stride);
    }
    T* ring = detail::thread_scratch<T>(detail::ScratchSlot::conv_ring, ring_total);
    T* wscratch = grads.empty() ? nullptr : detail::thread_scratch<T>(detail::ScratchSlot::conv_wgrad, wgrad_total);
    const T* in = g;  // the cotangent adjoint layer j reads
    const index_t* in_pos = nullptr;
    for (index_t j = 0; j < L; ++j) {  // adjoint layer j: convolution l = L - 1 - j, cout -> cin
      const index_t l = L - 1 - j, cin = in_channels(l), cout = out_channels(l);
      T* packed = ws.m_wt.data() + packed_offset(l);
      detail::pack_conv_weights(params.data() + weight_offset(l), packed, cout, cin, m_taps_count, true);
      detail::ConvKernelArgs<T> args{in, packed, nullptr, j == 0 ? m_geo->taps.data() : rp.taps[std::size_t(j)].data(),
                                     cout, cin, m_taps_count, volume, stride};
      args.in_site = site_stride(cout, stride);
      if (j == 0 && ws.half_taps && half_of(ws.m_out) >= 0)  // g nonzero on m_out only
        attach_half_taps(args, half_of(ws.m_out), params.data() + weight_offset(l), packed, true);
      if (!grads.empty()) {
        detail::ConvGradArgs<T> gargs =
            grad_args(ws, l, in, l == 0 ? ws.m_in : layer_output(ws, l - 1), grads, stride, wscratch, false);
        gargs.gz_pos = in_pos;
        if (j == 0) gargs.site_begin = ws.m_out.begin, gargs.site_end = ws.m_out.end;
        wscratch += detail::conv_param_grad_scratch<T>(cin, cout, m_taps_count, volume, stride);
        ws.m_gargs[std::size_t(j)] = gargs;
      }
      detail::ConvOutput<T> out{detail::ConvEpilogue::store, m_config.activation, nullptr, nullptr, nullptr, nullptr};
      if (l == 0) {
        args.site_begin = in_sites.begin, args.site_end = in_sites.end;  // gx: Field's layout
        out.out = gx.data();
      } else {
        args.out_site = site_stride(cin, stride);
        args.out_pos = rp.out_pos[std::size_t(j)].data();
        out.out = ring;
        if (m_config.activation != Activation::none) {
          out.mode = detail::ConvEpilogue::derivative;
          out.h = ws.m_h[std::size_t(l - 1)].data();
          out.z = keeps_z() ? ws.m_z[std::size_t(l - 1)].data() : out.h;
        }
        in = ring;
        in_pos = args.out_pos;
        ring += std::size_t(rp.slots[std::size_t(j)]) * std::size_t(args.out_site);
      }
      ws.m_args[std::size_t(j)] = args;
      ws.m_outs[std::size_t(j)] = out;
    }
    if (grads.empty())
      detail::conv_forward_wavefront<T>(ws.m_args, ws.m_outs, m_geo->wave.runs);
    else
      detail::conv_backward_wavefront<T>(ws.m_args, ws.m_outs, ws.m_gargs, m_geo->wave, m_geo->back);
  }

  void require_size(std::size_t got, const char* where, const char* name) const {
    if (got != m_num_params)
      throw ShapeError(detail::concat(where, ": ", name, ".size() = ", got, " but num_params() = ", m_num_params));
  }
  static void require_channels(index_t got, index_t want, const char* where, const char* field, const char* name) {
    if (got != want)
      throw ShapeError(detail::concat(where, ": ", field, " has ", got, " channels per site but ", name, " = ", want));
  }
  static void require_batch(index_t got, index_t want, const char* where, const char* a, const char* b) {
    if (got != want)
      throw ShapeError(detail::concat(where, ": batch sizes differ (", a, ": ", got, ", ", b, ": ", want, ")"));
  }

  /// Distance between sites in the workspace's buffers of c channels (detail::conv_site_stride).
  static offset_t site_stride(index_t c, index_t stride) noexcept { return detail::conv_site_stride<T>(c, stride); }

  /// Lays out ws for this network and batch; allocates only when a size changes.
  void prepare(Workspace& ws, index_t batch, index_t stride) const {
    const std::size_t hidden = m_channels.size() - 2;
    auto sites = [&](index_t c) { return std::size_t(volume) * std::size_t(site_stride(c, stride)); };
    std::size_t max_g = 0, max_scratch = 0;
    index_t max_w = 0;
    for (index_t l = 0; l < num_layers(); ++l) {
      max_g = std::max({max_g, sites(in_channels(l)), sites(out_channels(l))});
      max_w = std::max(max_w, in_channels(l) * out_channels(l) * m_taps_count);
      max_scratch = std::max(max_scratch, detail::conv_param_grad_scratch<T>(in_channels(l), out_channels(l),
                                                                              m_taps_count, volume, stride));
    }
    ws.m_batch = batch;
    ws.m_stride = stride;
    if (ws.m_channels != m_channels) ws.m_channels = m_channels;
    const bool none = m_config.activation == Activation::none;
    ws.m_z.resize(none || keeps_z() ? hidden : 0);
    ws.m_h.resize(none ? 0 : hidden);
    for (std::size_t l = 0; l < ws.m_z.size(); ++l) ws.m_z[l].resize(sites(m_channels[l + 1]));
    for (std::size_t l = 0; l < ws.m_h.size(); ++l) ws.m_h[l].resize(sites(m_channels[l + 1]));
    ws.m_g_size = max_g;
    ws.m_wt.resize(std::max(std::size_t(max_w), packed_offset(num_layers())));
    ws.m_args.resize(std::size_t(num_layers()));
    ws.m_gargs.resize(std::size_t(num_layers()));
    ws.m_outs.resize(std::size_t(num_layers()));
    ws.m_wscratch_size = max_scratch;
  }

  /// dst = src in the real lanes b < batch, 0 in the padding lanes (c channels; sites src_site
  /// and dst_site apart).
  template <class Exec>
  static void copy_real_lanes(Exec exec, const T* src, offset_t src_site, T* dst, offset_t dst_site, index_t c,
                              index_t batch, index_t stride, SiteRange zero = {0, 0}) {
    const index_t z0 = zero.begin, z1 = zero.end < 0 ? volume : zero.end;
    // sites in the order of conv_forward's items (alternating between the halves of the storage
    // range when the volume is even), so each thread writes the rows its convolution items read
    // (a plain split would give one thread all of one parity: measured as no speedup of this copy
    // on two threads, 16x16 x 128)
    exec::parallel_for(exec, volume, [=](offset_t k) {
      const offset_t s = detail::conv_item_site(index_t(k), volume);
      const bool zeroed = s >= z0 && s < z1;
      for (index_t k = 0; k < c; ++k) {
        const T* from = src + s * src_site + offset_t(k) * stride;
        T* to = dst + s * dst_site + offset_t(k) * stride;
        if (zeroed) {
          std::fill(to, to + stride, T(0));
        } else {
          std::copy_n(from, batch, to);
          std::fill(to + batch, to + stride, T(0));
        }
      }
    });
  }

  /// The weight gradient (and with_bias the bias gradient) of convolution l into grads, from the
  /// cotangent gz of its output and its input `in` (ConvStack's layouts), over every site; the
  /// partial sums in scratch.
  detail::ConvGradArgs<T> grad_args(const Workspace& ws, index_t l, const T* gz, const T* in, std::span<T> grads,
                                    index_t stride, T* scratch, bool with_bias) const {
    const index_t cin = in_channels(l), cout = out_channels(l);
    detail::ConvGradArgs<T> a{gz,
            in,
            m_geo->taps.data(),
            cin,
            cout,
            m_taps_count,
            volume,
            stride,
            grads.data() + weight_offset(l),
            with_bias ? grads.data() + bias_offset(l) : nullptr,
            0,
            -1,
            site_stride(cout, stride),
            site_stride(cin, stride),
            scratch};
    // the first convolution's input is zero on ws.m_zero_half: its taps by half (the mask of the
    // nonzero half)
    if (l == 0 && ws.m_zero_half >= 0) a.tap_mask = half_tap_mask(1 - ws.m_zero_half);
    if (l == 0) a.in_site = ws.m_in_site;  // ConvStack's copy or the borrowed x
    return a;
  }

  detail::ConvKernelArgs<T> layer_args(std::span<const T> params, const T* packed, index_t l, const T* in,
                                       index_t stride) const {
    detail::ConvKernelArgs<T> a{in,
            packed,
            m_config.bias ? params.data() + bias_offset(l) : nullptr,
            m_geo->taps.data(),
            in_channels(l),
            out_channels(l),
            m_taps_count,
            volume,
            stride,
            0,
            -1};
    m_geo->attach(a);
    return a;
  }

  static void require_range(SiteRange r, const char* where, const char* name) {
    const index_t end = r.end < 0 ? volume : r.end;
    if (r.begin < 0 || r.begin > end || end > volume)
      throw ShapeError(detail::concat(where, ": ", name, " = [", r.begin, ", ", r.end, ") is not a block of [0, ",
                                      volume, ")"));
  }

  /// True when the workspace keeps the pre-activations z besides h = f(z): only where f' needs z
  /// (silu; see derivative_from_output). Otherwise h is computed in place and the tape is 2 sum_j
  /// H_j V smaller per sample.
  bool keeps_z() const noexcept {
    return m_config.activation != Activation::none && !detail::derivative_from_output(m_config.activation);
  }

  /// The activation a^{l+1} = f(z^l) of hidden layer l, the input of convolution l + 1.
  const T* layer_output(const Workspace& ws, index_t l) const noexcept {
    return m_config.activation == Activation::none ? ws.m_z[std::size_t(l)].data() : ws.m_h[std::size_t(l)].data();
  }

  /// Start of layer l's packed weights in the forward pass's ws.m_wt (l = num_layers(): the total),
  /// each layer rounded up to 64 bytes.
  std::size_t packed_offset(index_t l) const noexcept {
    constexpr std::size_t align = 64 / sizeof(T);
    std::size_t n = 0;
    for (index_t j = 0; j < l; ++j)
      n += (std::size_t(in_channels(j)) * std::size_t(out_channels(j)) * std::size_t(m_taps_count) + align - 1) /
           align * align;
    return n;
  }

  /// Items of the first convolution per step of the wavefront schedule.
  static constexpr index_t wave_block = 16;
  static constexpr index_t max_channels = index_t(1) << 16;
  static constexpr std::int64_t max_tap_entries = std::int64_t(1) << 28;

  ConvNetConfig m_config;
  index_t m_taps_count = 1;          // K = kernel_size^rank
  std::vector<index_t> m_channels;   // in, hidden..., out
  std::vector<std::size_t> m_weight_offset;
  std::size_t m_num_params = 0;
  std::shared_ptr<const detail::ConvGeometry> m_geo;  // tap table and wavefront plans (see geometry)
};

}  // namespace normflow
