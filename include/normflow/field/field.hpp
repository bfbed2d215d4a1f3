// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Field<Lat, T, Site, Order>: a batch of lattice fields, batch innermost, padded and
/// aligned; FieldView, its trivially copyable kernel view.
///
/// Storage: offset(s, c, b) = (s * components + c) * padded_batch + b, with s the storage
/// position of the site (Order), c < components the real component, b the sample. SIMD lanes and
/// GPU threads hold independent samples, so neighbour shifts never permute lanes. padded_batch is
/// the batch rounded up to 64 bytes (16 floats, 8 doubles): a multiple of every host SIMD width up
/// to AVX-512, whatever the compile flags, and the data start 64-byte aligned, so each
/// (s, c) run is a whole number of aligned SIMD packs. Padding lanes are kept finite (zero
/// at construction); kernels process them and every reduction over samples skips them.

#include <algorithm>
#include <cstddef>
#include <span>
#include <type_traits>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/detail/aligned_allocator.hpp>
#include <normflow/errors.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/lattice/site_order.hpp>

namespace normflow {

/// Per-site content: one real number (a real scalar field).
struct Scalar {
  static constexpr index_t components = 1;
};
/// Per-site content: C real channels (conditioner activations, per-site transform parameters).
template <index_t C>
struct Channels {
  static_assert(C >= 1, "Channels<C>: C must be at least 1");
  static constexpr index_t components = C;
};

template <class S>
concept SiteType = requires {
  { S::components } -> std::convertible_to<index_t>;
} && (S::components >= 1);

/// Bytes per padded batch run: 64 (a cache line, an AVX-512 register).
inline constexpr std::size_t batch_alignment_bytes = 64;

/// Number of T lanes that padded_batch is a multiple of.
template <class T>
inline constexpr index_t lane_padding = index_t(batch_alignment_bytes / sizeof(T));

/// Contiguous storage whose start is 64-byte aligned (fields, tapes, parameters, workspaces).
template <class T>
using AlignedBuffer = std::vector<T, detail::AlignedAllocator<T, batch_alignment_bytes>>;

/// batch rounded up to a multiple of lane_padding<T>.
template <class T>
constexpr index_t padded_batch_size(index_t batch) noexcept {
  return (batch + lane_padding<T> - 1) / lane_padding<T> * lane_padding<T>;
}

/// Trivially copyable view of field storage, captured by value in kernels.
/// \tparam T value type (const-qualified for read-only views)
/// \tparam C real components per site
template <class T, index_t C = 1>
struct FieldView {
  T* data;
  index_t stride;  ///< padded batch
  index_t batch;   ///< samples in use (lanes >= batch are padding)

  static constexpr index_t components = C;

  NORMFLOW_HOST_DEVICE T& operator()(index_t s, index_t c, index_t b) const noexcept {
    return data[(offset_t(s) * C + c) * stride + b];
  }
  /// Start of the padded run of samples of (s, c).
  NORMFLOW_HOST_DEVICE T* lanes(index_t s, index_t c = 0) const noexcept {
    return data + (offset_t(s) * C + c) * stride;
  }
};

/// An owning batch of fields on Lat.
/// \tparam Lat   the lattice (normflow::Lattice<...>)
/// \tparam T     float or double
/// \tparam Site  per-site content: Scalar (1 real) or Channels<C>; later link types
/// \tparam Order site order: EvenOdd (default where all extents are even) or Lexicographic
template <LatticeShape Lat, class T = float, SiteType Site = Scalar, SiteOrder Order = default_order_t<Lat>>
class Field {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "Field<Lat, T, ...>: T must be float or double");
  static_assert(!std::is_same_v<Order, EvenOdd> || Lat::all_extents_even,
                "EvenOdd site order needs every lattice extent even (the checkerboard must be "
                "periodic); use Lexicographic order or an even lattice such as Lattice<8, 8>");

 public:
  using lattice = Lat;
  using value_type = T;
  using site_type = Site;
  using order = Order;
  static constexpr index_t components = Site::components;
  static constexpr index_t volume = Lat::volume;

  /// An empty field (batch 0).
  Field() = default;

  /// A zero-filled batch of `batch` fields; batch must be in [0, 2^30).
  explicit Field(index_t batch) { resize(batch); }

  /// Changes the batch size; contents become zero. Reuses the allocation when it is large enough.
  void resize(index_t batch) {
    if (batch < 0 || batch >= (index_t(1) << 30))
      throw ShapeError(detail::concat("Field: batch = ", batch, " is outside the valid range [0, 2^30)"));
    m_batch = batch;
    m_stride = padded_batch_size<T>(batch);
    m_data.assign(std::size_t(volume) * components * std::size_t(m_stride), T(0));
  }

  index_t batch() const noexcept { return m_batch; }
  index_t padded_batch() const noexcept { return m_stride; }
  /// Number of stored reals, padding included.
  std::size_t size() const noexcept { return m_data.size(); }

  T* data() noexcept { return m_data.data(); }
  const T* data() const noexcept { return m_data.data(); }
  std::span<T> flat() noexcept { return {m_data.data(), m_data.size()}; }
  std::span<const T> flat() const noexcept { return {m_data.data(), m_data.size()}; }

  /// Element at storage position s, component c, sample b.
  T& operator()(index_t s, index_t c, index_t b) noexcept { return m_data[offset(s, c, b)]; }
  const T& operator()(index_t s, index_t c, index_t b) const noexcept { return m_data[offset(s, c, b)]; }
  /// Element at storage position s, sample b (first component).
  T& operator()(index_t s, index_t b) noexcept { return m_data[offset(s, 0, b)]; }
  const T& operator()(index_t s, index_t b) const noexcept { return m_data[offset(s, 0, b)]; }

  /// Element at lexicographic site `site` (Lat::site(coords)), component c, sample b.
  T& at_site(index_t site, index_t c, index_t b) noexcept {
    return (*this)(Order::template storage_index<Lat>(site), c, b);
  }
  const T& at_site(index_t site, index_t c, index_t b) const noexcept {
    return (*this)(Order::template storage_index<Lat>(site), c, b);
  }

  /// The aligned run of padded_batch() samples of (storage position s, component c).
  T* lanes(index_t s, index_t c = 0) noexcept { return m_data.data() + offset(s, c, 0); }
  const T* lanes(index_t s, index_t c = 0) const noexcept { return m_data.data() + offset(s, c, 0); }

  FieldView<T, components> view() noexcept { return {m_data.data(), m_stride, m_batch}; }
  FieldView<const T, components> view() const noexcept { return {m_data.data(), m_stride, m_batch}; }
  FieldView<const T, components> cview() const noexcept { return {m_data.data(), m_stride, m_batch}; }

  /// Sets every sample (padding lanes stay zero).
  void fill(T value) noexcept {
    for (index_t s = 0; s < volume; ++s)
      for (index_t c = 0; c < components; ++c) std::fill_n(lanes(s, c), m_batch, value);
  }

  /// Zeroes the padding lanes (kernels keep them finite; this restores exact zeros).
  void zero_padding() noexcept {
    for (index_t s = 0; s < volume; ++s)
      for (index_t c = 0; c < components; ++c)
        std::fill(lanes(s, c) + m_batch, lanes(s, c) + m_stride, T(0));
  }

 private:
  std::size_t offset(index_t s, index_t c, index_t b) const noexcept {
    return (std::size_t(s) * components + std::size_t(c)) * std::size_t(m_stride) + std::size_t(b);
  }

  index_t m_batch = 0;
  index_t m_stride = 0;
  AlignedBuffer<T> m_data;
};

/// A batch of real scalar fields (one real per site).
template <LatticeShape Lat, class T = float, SiteOrder Order = default_order_t<Lat>>
using ScalarField = Field<Lat, T, Scalar, Order>;

template <class F>
inline constexpr bool is_field_v = false;
template <class Lat, class T, class S, class O>
inline constexpr bool is_field_v<Field<Lat, T, S, O>> = true;

static_assert(std::is_trivially_copyable_v<FieldView<const double, 3>>);
static_assert(padded_batch_size<float>(1) == 16 && padded_batch_size<double>(9) == 16);

}  // namespace normflow
