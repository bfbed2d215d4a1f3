// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file DenseNet<T>: a dense multi-layer perceptron on batched feature vectors (reference 3.4,
/// DenseBlock): in_features -> hidden[0] -> ... -> out_features, an activation after every layer
/// but the last. Its architecture is a runtime DenseNetConfig.
///
/// Maths. Layer l maps n_in = n_l features to n_out = n_{l+1}, with weights W^l (n_out x n_in) and
/// biases b^l (n_out), a^0 = x:
///   z^l_o(b) = b^l_o + sum_{i < n_in} W^l_{o,i} a^l_i(b)       (one matrix product Z = W A + b 1^T)
///   a^{l+1} = f(z^l) for l < L - 1,  y = z^{L-1}
/// This is PyTorch's nn.Linear (y = x W^T + b, weight[o][i]) stacked. Adjoint (vector-Jacobian
/// product) for a cotangent g^l = dL/dz^l (n_out x B):
///   dL/da^l      = W^{lT} g^l                                  (n_in x B)
///   dL/dW^l_{o,i} = sum_{b < batch} g^l_o(b) a^l_i(b)          (G A^T, over the real samples only)
///   dL/db^l_o     = sum_{b < batch} g^l_o(b)
///   g^{l-1} = dL/da^l * f'(z^{l-1})                           (f' of activation.hpp, from z and h = f(z))
/// Samples b are independent: column b of every output depends only on column b of the input.
///
/// Data layout (batch innermost, as Field): feature f of sample b at x[f * stride + b], for
/// f < in_features and b < stride (stride >= batch; lanes b >= batch are padding and are never
/// read). A Field<Lat, T, Site, Order> is such an array with in_features = volume * components
/// (feature f = s * components + c, s the storage position): the Field overloads apply the net to
/// the flattened field. A per-site MLP over the channels of one site s is the span form on the
/// slice [s * C * stride, (s + 1) * C * stride) of the field's flat data.
///
/// Parameters live in one caller-owned flat array, layer after layer; layer l holds
///   weight [n_out][n_in]   (row-major: PyTorch's weight tensor)
///   bias   [n_out]         (only with bias)
/// so num_params = sum_l n_out n_in (+ n_out). PyTorch's default initialisation of nn.Linear:
/// W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = n_in.
///
/// Products. Viewed column-major, the batch is the row index: A (B x n_in, leading dimension
/// stride), W^T (n_in x n_out, leading dimension n_in), so every product is a plain GEMM:
///   forward         Z (B x n_out)      = A W^T              on a chunk of batch rows
///   input gradient  dA (B x n_in)      = G W                on a chunk of batch rows
///   weight gradient dW^T (n_in x n_out) += A^T G            over the real rows, in tiles of dW
/// All three run Eigen 3.4's blocked GEMM kernel (general_matrix_matrix_product, the kernel
/// behind Eigen's own products) called directly, single-threaded, with its packing buffers in the
/// workspace. Eigen's high-level product would split large products over OpenMP threads by
/// itself (a split that depends on the thread count, and that changes the blocking), and would
/// allocate its packing buffers; calling the kernel bypasses both, without touching Eigen's global
/// thread setting. Threads come from the execution policy instead, over work items whose shapes
/// are fixed by the architecture and the batch only:
///   forward, input gradient   one item per chunk of chunk_lanes batch rows (all layers)
///   weight and bias gradient  one item per (layer, grad_tile x grad_tile tile of dW), one per
///                             layer for db; each entry is summed over the whole batch by one
///                             item, in a fixed order
/// Every output value and gradient entry is therefore computed by one item, by the same
/// single-threaded instruction sequence whatever the thread count: results are bitwise
/// independent of it (and exec::Serial gives the same bits as exec::OpenMP). Under
/// EIGEN_USE_BLAS, Eigen forwards these kernels to the BLAS, whose threading is its own.
///
/// Invariants: the forward pass copies the real lanes of x into the workspace; padding lanes of x
/// and of gy are never read, so they reach neither outputs nor gradients (NaN there is harmless);
/// padding lanes of y and gx are set to zero. backward adds into grads (the caller zeroes it once
/// per step) and overwrites gx. Outputs must not overlap inputs. A workspace is laid out by the
/// first forward pass and reused without allocation while the batch, the network and the thread
/// count stay the same.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <normflow/config.hpp>
#include <normflow/detail/aligned_allocator.hpp>
#include <normflow/errors.hpp>
#include <normflow/exec/host.hpp>
#include <normflow/field/field.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/lattice/site_order.hpp>
#include <normflow/layer/conditioner/activation.hpp>
#include <normflow/random/philox.hpp>
#include <normflow/simd/pack.hpp>

static_assert(EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4,
              "normflow/layer/conditioner/dense_net.hpp calls Eigen 3.4's internal GEMM kernel "
              "(general_matrix_matrix_product, level3_blocking); use Eigen 3.4.x");

namespace normflow {

template <class T = float>
class DenseNet;

/// Runtime architecture of a DenseNet: in_features -> hidden[0] -> ... -> out_features.
struct DenseNetConfig {
  index_t in_features = 1;        ///< features of the input x, >= 1
  std::vector<index_t> hidden{};  ///< hidden widths, each >= 1; empty: a single linear layer
  index_t out_features = 1;       ///< features of the output y, >= 1
  Activation activation = Activation::tanh;  ///< after every layer but the last
  bool bias = true;               ///< a bias per output feature of every layer
};

/// Parameter initialisation of DenseNet::init_params.
enum class DenseInit {
  uniform,    ///< PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weights and biases
  zero,       ///< every parameter zero
  zero_last,  ///< uniform, but the last layer zero (the network starts as y = 0)
};

namespace detail {

/// Eigen's GEMM blocking for one m x k times k x n product on one thread, with the packed
/// panels (mc x kc of the left factor, kc x nc of the right one) in caller-owned memory.
template <class T>
class DenseGemmBlocking : public Eigen::internal::level3_blocking<T, T> {
 public:
  /// The blocking Eigen itself computes for this shape on one thread.
  DenseGemmBlocking(Eigen::Index m, Eigen::Index n, Eigen::Index k) noexcept {
    this->m_mc = m;
    this->m_nc = n;
    this->m_kc = k;
    Eigen::internal::computeProductBlockingSizes<T, T, 1>(this->m_kc, this->m_mc, this->m_nc, Eigen::Index(1));
  }
  /// Elements of each packed panel, rounded up to whole 64-byte lines (so both stay aligned).
  std::size_t size_a() const noexcept { return round_up(std::size_t(this->m_mc) * std::size_t(this->m_kc)); }
  std::size_t size_b() const noexcept { return round_up(std::size_t(this->m_kc) * std::size_t(this->m_nc)); }
  std::size_t scratch_size() const noexcept { return size_a() + size_b(); }
  /// Uses scratch[0, scratch_size()) (64-byte aligned) for the packed panels.
  void attach(T* scratch) noexcept {
    this->m_blockA = scratch;
    this->m_blockB = scratch + size_a();
  }

 private:
  static std::size_t round_up(std::size_t n) noexcept {
    constexpr std::size_t line = batch_alignment_bytes / sizeof(T);
    return (n + line - 1) / line * line;
  }
};

/// Scratch elements dense_gemm needs for this shape.
template <class T>
std::size_t dense_gemm_scratch(index_t m, index_t n, index_t k) noexcept {
  if (m == 0 || n == 0 || k == 0) return 0;
  return DenseGemmBlocking<T>(m, n, k).scratch_size();
}

/// C += A B on the calling thread only: A is m x k (storage order OrderA, leading dimension lda),
/// B is k x n (OrderB, ldb), C is m x n column-major (ldc). Eigen's blocked kernel; the packed
/// panels go to scratch (dense_gemm_scratch<T>(m, n, k) elements, 64-byte aligned), so it
/// neither allocates nor spawns threads. The summation order depends on (m, n, k) only.
template <int OrderA, int OrderB, class T>
void dense_gemm(index_t m, index_t n, index_t k, const T* a, offset_t lda, const T* b, offset_t ldb, T* c,
                offset_t ldc, T* scratch) noexcept {
  if (m == 0 || n == 0 || k == 0) return;
  DenseGemmBlocking<T> blocking(m, n, k);
  blocking.attach(scratch);
  Eigen::internal::general_matrix_matrix_product<Eigen::Index, T, OrderA, false, T, OrderB, false, Eigen::ColMajor,
                                                 1>::run(m, n, k, a, lda, b, ldb, c, 1, ldc, T(1), blocking, nullptr);
}

}  // namespace detail

/// Caller-owned buffers of a DenseNet forward pass, kept for backward: laid out by the first
/// forward, reused (no allocation) while the batch size, the network and the thread count stay
/// the same.
/// \tparam T float or double
template <class T>
class DenseWorkspace {
 public:
  DenseWorkspace() = default;

  /// Batch of the stored forward pass (-1 before the first).
  index_t batch() const noexcept { return m_batch; }

 private:
  template <class>
  friend class DenseNet;
  using buffer = AlignedBuffer<T>;

  index_t m_batch = -1;
  index_t m_stride = 0;              // lanes per feature in the buffers below (batch padded to 64 bytes)
  index_t m_io_stride = 0;           // lanes per feature of the caller's x, y, gy, gx
  std::vector<index_t> m_widths;     // architecture the buffers were laid out for
  Activation m_activation = Activation::none;  // and its activation (whether m_h is kept)
  buffer m_x;                        // copy of the real lanes of the input
  std::vector<buffer> m_z, m_h, m_g; // per hidden layer: z, h = f(z) (not for none), dL/dz
  buffer m_scratch;                  // GEMM packing panels: one slot per concurrent work item
  std::size_t m_slot_size = 0;       // elements per slot (a multiple of 64 bytes)
};

/// A dense MLP (see the file comment for the maths, the layouts and the threading).
/// Immutable after construction; const member functions are thread-safe (state lives in the
/// caller's parameters and workspace).
/// \tparam T float or double
template <class T>
class DenseNet {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "DenseNet<T>: T must be float or double");

 public:
  using value_type = T;
  using Workspace = DenseWorkspace<T>;

  /// Batch rows per forward / input-gradient work item (a multiple of every SIMD width).
  static constexpr index_t chunk_lanes = 256;
  /// Rows and columns of one weight-gradient work item.
  static constexpr index_t grad_tile = 64;
  /// Largest feature count of a layer.
  static constexpr index_t max_features = index_t(1) << 24;

  /// Validates the configuration (ParameterError naming the parameter and its valid range).
  explicit DenseNet(DenseNetConfig config) : m_config(std::move(config)) {
    validate();
    const DenseNetConfig& c = m_config;
    m_widths.push_back(c.in_features);
    for (index_t h : c.hidden) m_widths.push_back(h);
    m_widths.push_back(c.out_features);
    std::size_t n = 0;
    for (index_t l = 0; l < num_layers(); ++l) {
      m_weight_offset.push_back(n);
      n += std::size_t(out_features(l)) * std::size_t(in_features(l));
      if (c.bias) n += std::size_t(out_features(l));
      // weight-gradient items: tiles of dW^T (rows i, columns o), then the bias item
      for (index_t i0 = 0; i0 < in_features(l); i0 += grad_tile)
        for (index_t o0 = 0; o0 < out_features(l); o0 += grad_tile)
          m_grad_items.push_back({l, i0, std::min(grad_tile, in_features(l) - i0), o0,
                                  std::min(grad_tile, out_features(l) - o0)});
      if (c.bias) m_grad_items.push_back({l, 0, 0, 0, out_features(l)});
    }
    m_num_params = n;
  }

  const DenseNetConfig& config() const noexcept { return m_config; }
  /// Number of linear layers: hidden.size() + 1.
  index_t num_layers() const noexcept { return index_t(m_widths.size()) - 1; }
  /// Input / output features of layer l.
  index_t in_features(index_t l) const noexcept { return m_widths[std::size_t(l)]; }
  index_t out_features(index_t l) const noexcept { return m_widths[std::size_t(l) + 1]; }
  /// Total parameter count (see the file comment).
  std::size_t num_params() const noexcept { return m_num_params; }
  /// Start of layer l's weights [n_out][n_in] in the flat parameter array.
  std::size_t weight_offset(index_t l) const noexcept { return m_weight_offset[std::size_t(l)]; }
  /// Start of layer l's biases [n_out] (meaningful only with config().bias).
  std::size_t bias_offset(index_t l) const noexcept {
    return weight_offset(l) + std::size_t(out_features(l)) * std::size_t(in_features(l));
  }

  /// Fills params (num_params() values). uniform: entry j of layer l's block (weights, then
  /// biases) is (2u - 1)/sqrt(n_in), u the (j mod 2)-th uniform of
  /// CounterRng{seed, 0}.uniform_pair(l, j / 2, 0), computed in double: float and double nets
  /// from one seed agree to float rounding (the same scheme as ConvStack::init_params).
  void init_params(std::span<T> params, std::uint64_t seed, DenseInit init = DenseInit::uniform) const {
    require_size(params.size(), "DenseNet::init_params", "params");
    const CounterRng rng{seed, 0};
    for (index_t l = 0; l < num_layers(); ++l) {
      const std::size_t begin = weight_offset(l);
      const std::size_t end = l + 1 < num_layers() ? weight_offset(l + 1) : m_num_params;
      const bool zero = init == DenseInit::zero || (init == DenseInit::zero_last && l + 1 == num_layers());
      const double bound = 1.0 / std::sqrt(double(in_features(l)));
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

  /// y = net(x) for `batch` samples: x[f * stride + b] (in_features * stride values), y likewise
  /// (out_features * stride values), stride >= batch. Stores what backward needs in ws (resized
  /// only when the batch or the network changes). Padding lanes of x are not read; those of y
  /// are set to zero.
  /// \tparam Exec exec::Serial or exec::OpenMP (threads over chunks of the batch)
  template <class Exec = exec::HostDefault>
  void forward(std::span<const T> params, std::span<const T> x, std::span<T> y, index_t batch, index_t stride,
               Workspace& ws, Exec exec = {}) const {
    static_assert(std::is_same_v<Exec, exec::Serial> || std::is_same_v<Exec, exec::OpenMP>,
                  "DenseNet::forward: use a host execution policy (exec::Serial or exec::OpenMP)");
    constexpr const char* where = "DenseNet::forward";
    require_size(params.size(), where, "params");
    require_layout(batch, stride, where);
    require_span(x.size(), m_config.in_features, stride, where, "x", "in_features");
    require_span(y.size(), m_config.out_features, stride, where, "y", "out_features");
    prepare(ws, batch, stride);
    const index_t slots = reserve_slots(ws, exec, num_chunks(batch));
    const T* p = params.data();
    const T* xp = x.data();
    T* yp = y.data();
    for_items(exec, ws, slots, num_chunks(batch), [&](offset_t item, T* scratch) {
      const index_t c0 = index_t(item) * chunk_lanes, c1 = std::min(batch, c0 + chunk_lanes);
      forward_chunk(p, xp, yp, ws, c0, c1, scratch);
    });
    zero_padding(yp, m_config.out_features, batch, stride);
  }

  /// Vector-Jacobian product of the forward pass stored in ws (run with the same params):
  /// gx = dL/dx (overwritten; zero in padding lanes) and grads += dL/dparams, from gy = dL/dy
  /// (its padding lanes are ignored). gy and gx have the forward pass's stride.
  template <class Exec = exec::HostDefault>
  void backward(std::span<const T> params, Workspace& ws, std::span<const T> gy, std::span<T> gx, std::span<T> grads,
                Exec exec = {}) const {
    static_assert(std::is_same_v<Exec, exec::Serial> || std::is_same_v<Exec, exec::OpenMP>,
                  "DenseNet::backward: use a host execution policy (exec::Serial or exec::OpenMP)");
    constexpr const char* where = "DenseNet::backward";
    require_size(params.size(), where, "params");
    require_size(grads.size(), where, "grads");
    if (ws.m_batch < 0 || ws.m_widths != m_widths || ws.m_activation != m_config.activation)
      throw ShapeError(detail::concat(where, ": the workspace holds no forward pass of this network; "
                                             "call forward(params, x, y, ..., ws) first"));
    const index_t batch = ws.m_batch, stride = ws.m_io_stride;
    require_span(gy.size(), m_config.out_features, stride, where, "gy", "out_features");
    require_span(gx.size(), m_config.in_features, stride, where, "gx", "in_features");
    const offset_t chunks = num_chunks(batch);
    const offset_t grad_items = batch > 0 ? offset_t(m_grad_items.size()) : 0;
    const index_t slots = reserve_slots(ws, exec, std::max(chunks, grad_items));
    const T* p = params.data();
    const T* gyp = gy.data();
    T* gxp = gx.data();
    T* gp = grads.data();
    for_items(exec, ws, slots, chunks, [&](offset_t item, T* scratch) {
      const index_t c0 = index_t(item) * chunk_lanes, c1 = std::min(batch, c0 + chunk_lanes);
      backward_chunk(p, gyp, gxp, ws, c0, c1, scratch);
    });
    for_items(exec, ws, slots, grad_items, [&](offset_t item, T* scratch) {
      param_grad_item(m_grad_items[std::size_t(item)], gyp, gp, ws, scratch);
    });
    zero_padding(gxp, m_config.in_features, batch, stride);
  }

  /// forward on fields: the flattened field is the feature vector, in_features = volume *
  /// components of x (feature s * components + c), out_features likewise for y.
  template <LatticeShape Lat, SiteType SiteIn, SiteType SiteOut, SiteOrder Order, class Exec = exec::HostDefault>
  void forward(std::span<const T> params, const Field<Lat, T, SiteIn, Order>& x, Field<Lat, T, SiteOut, Order>& y,
               Workspace& ws, Exec exec = {}) const {
    constexpr const char* where = "DenseNet::forward";
    require_features(Lat::volume, SiteIn::components, m_config.in_features, where, "x", "in_features");
    require_features(Lat::volume, SiteOut::components, m_config.out_features, where, "y", "out_features");
    if (y.batch() != x.batch())
      throw ShapeError(detail::concat(where, ": batch sizes differ (y: ", y.batch(), ", x: ", x.batch(), ")"));
    forward(params, x.flat(), y.flat(), x.batch(), x.padded_batch(), ws, exec);
  }

  /// backward on fields (see the field forward).
  template <LatticeShape Lat, SiteType SiteIn, SiteType SiteOut, SiteOrder Order, class Exec = exec::HostDefault>
  void backward(std::span<const T> params, Workspace& ws, const Field<Lat, T, SiteOut, Order>& gy,
                Field<Lat, T, SiteIn, Order>& gx, std::span<T> grads, Exec exec = {}) const {
    constexpr const char* where = "DenseNet::backward";
    require_features(Lat::volume, SiteIn::components, m_config.in_features, where, "gx", "in_features");
    require_features(Lat::volume, SiteOut::components, m_config.out_features, where, "gy", "out_features");
    if (gy.batch() != ws.m_batch || gx.batch() != ws.m_batch)
      throw ShapeError(detail::concat(where, ": batch sizes differ (gy: ", gy.batch(), ", gx: ", gx.batch(),
                                      ", the forward pass: ", ws.m_batch, ")"));
    backward(params, ws, gy.flat(), gx.flat(), grads, exec);
  }

 private:
  /// One weight-gradient item: the tile dW^T[i0, i0 + ni) x [o0, o0 + no) of layer l, or
  /// (ni == 0) the bias gradient of layer l.
  struct GradItem {
    index_t layer, i0, ni, o0, no;
  };

  /// Throws ParameterError for an invalid configuration.
  void validate() const {
    const DenseNetConfig& c = m_config;
    auto features = [](index_t v, const std::string& name) {
      if (v < 1 || v > max_features)
        throw ParameterError(detail::concat("DenseNet: ", name, " = ", v, " is outside the valid range [1, ",
                                            max_features, "]"));
    };
    features(c.in_features, "in_features");
    features(c.out_features, "out_features");
    for (std::size_t j = 0; j < c.hidden.size(); ++j) features(c.hidden[j], detail::concat("hidden[", j, "]"));
    if (activation_name(c.activation) == nullptr)
      throw ParameterError(detail::concat("DenseNet: activation = ", int(c.activation),
                                          " is invalid; valid: tanh, leaky_relu, silu, none"));
    index_t prev = c.in_features;
    for (std::size_t l = 0; l <= c.hidden.size(); ++l) {
      const index_t next = l < c.hidden.size() ? c.hidden[l] : c.out_features;
      if (std::int64_t(prev) * next >= (std::int64_t(1) << 31))
        throw ParameterError(detail::concat("DenseNet: layer ", l, " has ", std::int64_t(prev) * next,
                                            " weights; valid: n_in * n_out < 2^31"));
      prev = next;
    }
  }

  void require_size(std::size_t got, const char* where, const char* name) const {
    if (got != m_num_params)
      throw ShapeError(detail::concat(where, ": ", name, ".size() = ", got, " but num_params() = ", m_num_params));
  }
  static void require_layout(index_t batch, index_t stride, const char* where) {
    if (batch < 0 || batch >= (index_t(1) << 30))
      throw ShapeError(detail::concat(where, ": batch = ", batch, " is outside the valid range [0, 2^30)"));
    if (stride < batch || stride >= (index_t(1) << 30))
      throw ShapeError(detail::concat(where, ": stride = ", stride, " is invalid for batch = ", batch,
                                      "; valid: batch <= stride < 2^30 (e.g. Field::padded_batch())"));
  }
  static void require_span(std::size_t got, index_t features, index_t stride, const char* where, const char* name,
                           const char* feature_name) {
    if (got != std::size_t(features) * std::size_t(stride))
      throw ShapeError(detail::concat(where, ": ", name, ".size() = ", got, " but ", feature_name, " * stride = ",
                                      features, " * ", stride, " = ", std::size_t(features) * std::size_t(stride)));
  }
  static void require_features(index_t volume, index_t components, index_t want, const char* where,
                               const char* field, const char* name) {
    if (offset_t(volume) * components != want)
      throw ShapeError(detail::concat(where, ": ", field, " has volume * components = ", volume, " * ", components,
                                      " = ", offset_t(volume) * components, " features but ", name, " = ", want));
  }

  static offset_t num_chunks(index_t batch) noexcept { return (offset_t(batch) + chunk_lanes - 1) / chunk_lanes; }

  /// Lays out ws for this network and batch; allocates only when a size changes.
  void prepare(Workspace& ws, index_t batch, index_t io_stride) const {
    const index_t stride = padded_batch_size<T>(batch);
    const std::size_t hidden = m_widths.size() - 2;
    const bool keep_h = m_config.activation != Activation::none;
    ws.m_batch = batch;
    ws.m_stride = stride;
    ws.m_io_stride = io_stride;
    if (ws.m_widths != m_widths) ws.m_widths = m_widths;
    ws.m_activation = m_config.activation;
    ws.m_x.resize(std::size_t(m_config.in_features) * std::size_t(stride));
    ws.m_z.resize(hidden);
    ws.m_h.resize(keep_h ? hidden : 0);
    ws.m_g.resize(hidden);
    for (std::size_t l = 0; l < hidden; ++l) {
      const std::size_t n = std::size_t(m_widths[l + 1]) * std::size_t(stride);
      ws.m_z[l].resize(n);
      if (keep_h) ws.m_h[l].resize(n);
      ws.m_g[l].resize(n);
    }
    ws.m_slot_size = slot_size(batch);
  }

  /// Scratch elements of one work item: the largest packing need over every GEMM shape of a
  /// forward and backward pass at this batch.
  std::size_t slot_size(index_t batch) const {
    std::size_t need = 0;
    const index_t full = std::min(batch, chunk_lanes), last = batch % chunk_lanes;
    for (index_t l = 0; l < num_layers(); ++l) {
      const index_t n_in = in_features(l), n_out = out_features(l);
      for (index_t rows : {full, last}) {
        need = std::max(need, detail::dense_gemm_scratch<T>(rows, n_out, n_in));  // forward
        need = std::max(need, detail::dense_gemm_scratch<T>(rows, n_in, n_out));  // input gradient
      }
      for (index_t ni : {std::min(n_in, grad_tile), n_in % grad_tile})
        for (index_t no : {std::min(n_out, grad_tile), n_out % grad_tile})
          need = std::max(need, detail::dense_gemm_scratch<T>(ni, no, batch));  // weight gradient
    }
    return need;
  }

  /// Number of concurrent work items (scratch slots) for `items` items; grows the scratch only
  /// when the thread count needs more slots than it holds.
  template <class Exec>
  static index_t reserve_slots(Workspace& ws, Exec, offset_t items) {
    offset_t slots = 1;
    if constexpr (std::is_same_v<Exec, exec::OpenMP>)
      slots = std::max<offset_t>(1, std::min<offset_t>(exec::max_threads(), items));
    const std::size_t need = std::size_t(slots) * ws.m_slot_size;
    if (ws.m_scratch.size() < need) ws.m_scratch.resize(need);
    return index_t(slots);
  }

  /// f(item, scratch) for item < items: slot k runs items k, k + slots, ... with its own scratch.
  /// Which slot runs an item never changes the item's result.
  template <class Exec, class F>
  static void for_items(Exec exec, Workspace& ws, index_t slots, offset_t items, const F& f) {
    if (items == 0) return;
    T* scratch = ws.m_scratch.data();
    const std::size_t slot_size = ws.m_slot_size;
    exec::parallel_for(exec, slots, [&](offset_t slot) {
      for (offset_t item = slot; item < items; item += slots) f(item, scratch + std::size_t(slot) * slot_size);
    });
  }

  /// The activation a^{l+1} of hidden layer l (the input of layer l + 1), stride ws.m_stride.
  const T* layer_output(const Workspace& ws, index_t l) const noexcept {
    return m_config.activation == Activation::none ? ws.m_z[std::size_t(l)].data() : ws.m_h[std::size_t(l)].data();
  }

  /// Padding lanes [batch, stride) of every feature set to zero.
  static void zero_padding(T* out, index_t features, index_t batch, index_t stride) noexcept {
    for (index_t f = 0; f < features; ++f)
      std::fill(out + offset_t(f) * stride + batch, out + offset_t(f + 1) * stride, T(0));
  }

  /// c1 rounded up to whole SIMD packs (<= the workspace stride, a multiple of 64 bytes).
  static index_t pack_end(index_t c1) noexcept {
    constexpr index_t W = simd::pack_size<simd::native_pack<T>>;
    return (c1 + W - 1) / W * W;
  }

  /// The forward pass on batch rows [c0, c1): copy x, then every layer.
  void forward_chunk(const T* params, const T* x, T* y, Workspace& ws, index_t c0, index_t c1, T* scratch) const {
    const index_t S = ws.m_stride, io = ws.m_io_stride, rows = c1 - c0;
    for (index_t f = 0; f < m_config.in_features; ++f)
      std::copy_n(x + offset_t(f) * io + c0, rows, ws.m_x.data() + offset_t(f) * S + c0);
    for (index_t l = 0; l < num_layers(); ++l) {
      const index_t n_in = in_features(l), n_out = out_features(l);
      const bool last = l + 1 == num_layers();
      const T* a = l == 0 ? ws.m_x.data() : layer_output(ws, l - 1);
      T* z = last ? y : ws.m_z[std::size_t(l)].data();
      const offset_t ldz = last ? io : S;
      const T* bias = m_config.bias ? params + bias_offset(l) : nullptr;
      for (index_t o = 0; o < n_out; ++o) std::fill_n(z + o * ldz + c0, rows, bias ? bias[o] : T(0));
      // Z (rows x n_out, column-major) += A (rows x n_in, column-major) W^T (n_in x n_out, column-major)
      detail::dense_gemm<Eigen::ColMajor, Eigen::ColMajor>(rows, n_out, n_in, a + c0, S, params + weight_offset(l),
                                                           n_in, z + c0, ldz, scratch);
      if (!last && m_config.activation != Activation::none) activate(ws, l, c0, c1);
    }
  }

  /// h = f(z) of hidden layer l over whole packs of lanes [c0, c1); z's lanes beyond c1 in the
  /// last pack are zeroed first, so every h lane is finite.
  void activate(Workspace& ws, index_t l, index_t c0, index_t c1) const {
    using V = simd::native_pack<T>;
    constexpr index_t W = simd::pack_size<V>;
    const index_t S = ws.m_stride, c1p = pack_end(c1), n = out_features(l);
    T* z = ws.m_z[std::size_t(l)].data();
    T* h = ws.m_h[std::size_t(l)].data();
    detail::with_activation(m_config.activation, [&]<class Op>(Op) {
      for (index_t o = 0; o < n; ++o) {
        const offset_t row = offset_t(o) * S;
        std::fill(z + row + c1, z + row + c1p, T(0));
        for (index_t b = c0; b < c1p; b += W) simd::store(h + row + b, Op::f(simd::load<V>(z + row + b)));
      }
    });
  }

  /// The input-gradient chain on batch rows [c0, c1): g^{l-1} = (W^{lT} g^l) f'(z^{l-1}) for
  /// every layer, then gx = W^{0T} g^0.
  void backward_chunk(const T* params, const T* gy, T* gx, Workspace& ws, index_t c0, index_t c1, T* scratch) const {
    using V = simd::native_pack<T>;
    constexpr index_t W = simd::pack_size<V>;
    const index_t S = ws.m_stride, io = ws.m_io_stride, rows = c1 - c0, c1p = pack_end(c1);
    for (index_t l = num_layers() - 1; l >= 0; --l) {
      const index_t n_in = in_features(l), n_out = out_features(l);
      const bool last = l + 1 == num_layers();
      const T* g = last ? gy : ws.m_g[std::size_t(l)].data();
      const offset_t ldg = last ? io : S;
      T* d = l == 0 ? gx : ws.m_g[std::size_t(l - 1)].data();
      const offset_t ldd = l == 0 ? io : S;
      const index_t end = l == 0 ? c1 : c1p;  // workspace rows: whole packs, padding lanes zero
      for (index_t i = 0; i < n_in; ++i) std::fill(d + i * ldd + c0, d + i * ldd + end, T(0));
      // dA (rows x n_in, column-major) += G (rows x n_out, column-major) W (n_out x n_in, row-major)
      detail::dense_gemm<Eigen::ColMajor, Eigen::RowMajor>(rows, n_in, n_out, g + c0, ldg, params + weight_offset(l),
                                                           n_in, d + c0, ldd, scratch);
      if (l > 0 && m_config.activation != Activation::none) {
        const T* z = ws.m_z[std::size_t(l - 1)].data();
        const T* h = ws.m_h[std::size_t(l - 1)].data();
        detail::with_activation(m_config.activation, [&]<class Op>(Op) {
          for (index_t i = 0; i < n_in; ++i) {
            const offset_t row = offset_t(i) * S;
            for (index_t b = c0; b < c1p; b += W) {
              const offset_t k = row + b;
              simd::store(d + k, simd::load<V>(d + k) * Op::df(simd::load<V>(z + k), simd::load<V>(h + k)));
            }
          }
        });
      }
    }
  }

  /// One weight-gradient tile (dW^T += A^T G over the real rows) or one bias gradient
  /// (db_o += sum_b g_o(b), b ascending).
  void param_grad_item(const GradItem& it, const T* gy, T* grads, const Workspace& ws, T* scratch) const {
    const index_t l = it.layer, batch = ws.m_batch, S = ws.m_stride;
    const bool last = l + 1 == num_layers();
    const T* g = last ? gy : ws.m_g[std::size_t(l)].data();
    const offset_t ldg = last ? ws.m_io_stride : S;
    if (it.ni == 0) {
      T* db = grads + bias_offset(l);
      for (index_t o = 0; o < it.no; ++o) {
        const T* go = g + o * ldg;
        T acc = T(0);
        for (index_t b = 0; b < batch; ++b) acc += go[b];
        db[o] += acc;
      }
      return;
    }
    const index_t n_in = in_features(l);
    const T* a = l == 0 ? ws.m_x.data() : layer_output(ws, l - 1);
    // dW^T tile (ni x no, column-major, ld n_in) += A^T (ni x batch, row-major) G (batch x no, column-major)
    detail::dense_gemm<Eigen::RowMajor, Eigen::ColMajor>(it.ni, it.no, batch, a + offset_t(it.i0) * S, S,
                                                         g + it.o0 * ldg, ldg,
                                                         grads + weight_offset(l) + offset_t(it.o0) * n_in + it.i0,
                                                         n_in, scratch);
  }

  DenseNetConfig m_config;
  std::vector<index_t> m_widths;  // in, hidden..., out
  std::vector<std::size_t> m_weight_offset;
  std::size_t m_num_params = 0;
  std::vector<GradItem> m_grad_items;
};

}  // namespace normflow
