// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file save_npy, load_npy: NumPy .npy files (format version 1.0) for fields and plain arrays,
/// for analysis in Python (numpy.load).
///
/// File layout (NumPy's NEP 1 / numpy.lib.format, version 1.0):
///
/// | offset | size | field                                                                     |
/// |--------|------|---------------------------------------------------------------------------|
/// | 0      | 6    | magic "\x93NUMPY"                                                         |
/// | 6      | 2    | format version: major 1, minor 0                                          |
/// | 8      | 2    | u16 little-endian header length H                                         |
/// | 10     | H    | ASCII dict, e.g. {'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), } |
/// |        |      | then spaces and one '\n', so that 10 + H is a multiple of 64               |
/// | 10 + H | ...  | the elements, little-endian, C order (last axis fastest)                  |
///
/// The writer reproduces numpy.save byte for byte (NumPy >= 1.23): after the dict it reserves
/// 21 - len(str(shape[0])) spaces for in-place growth of the first axis, then pads with 1 to 64
/// spaces and the newline (checked against NumPy 1.24). Element types: float ('<f4'), double
/// ('<f8'), std::int64_t ('<i8'). load_npy also reads versions 2.0 and 3.0 (u32 header length).
///
/// A field Field<Lat, T, Site, Order> with batch B is written with shape (B, L0, L1, ...), and a
/// trailing axis of C for Site = Channels<C>: element [b, x0, x1, ..., c] is
/// field.at_site(Lat::site({x0, x1, ...}), c, b), whatever the storage order (EvenOdd storage is
/// unscrambled); padding lanes are not written.
///
/// Writes are atomic (AtomicFile). Errors throw NpyError naming the function, the path and the
/// reason.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <normflow/errors.hpp>
#include <normflow/field/field.hpp>
#include <normflow/io/atomic_file.hpp>
#include <normflow/io/byte_io.hpp>

namespace normflow {

/// Writing or reading a .npy file failed; the message names the function, the path and the reason.
struct NpyError : IoError {
  using IoError::IoError;
};

/// The element types of .npy files read and written here: float, double, std::int64_t.
template <class T>
inline constexpr bool is_npy_scalar_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int64_t>;

template <class T>
concept NpyScalar = is_npy_scalar_v<T>;

/// An array read from a .npy file: its shape and its elements in C order.
template <NpyScalar T>
struct NpyArray {
  /// Extent of each axis (empty for a 0-d array).
  std::vector<std::size_t> shape;
  /// prod(shape) elements, C order (last axis fastest).
  std::vector<T> data;
};

namespace detail::io {

/// NumPy's dtype string of T.
template <NpyScalar T>
constexpr std::string_view npy_descr() noexcept {
  if constexpr (std::is_same_v<T, float>)
    return "<f4";
  else if constexpr (std::is_same_v<T, double>)
    return "<f8";
  else
    return "<i8";
}

inline const char* npy_type_name(std::string_view descr) noexcept {
  return descr == "<f4"   ? "float"
         : descr == "<f8" ? "double"
         : descr == "<i8" ? "std::int64_t"
                          : nullptr;
}

/// The bytes before the data: magic, version, header length, dict, padding, '\n' (as numpy.save).
inline std::string npy_header(std::string_view descr, std::span<const std::size_t> shape) {
  std::string dict = concat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (");
  for (std::size_t i = 0; i < shape.size(); ++i) dict += concat(i ? ", " : "", shape[i]);
  dict += shape.size() == 1 ? ",), }" : "), }";
  if (!shape.empty()) dict.append(21 - std::to_string(shape[0]).size(), ' ');  // growth-axis spare
  const std::size_t hlen = dict.size() + 1;                                    // + '\n'
  const std::size_t pad = 64 - (10 + hlen) % 64;  // 1..64 spaces, as numpy's _wrap_header
  const std::size_t total = hlen + pad;
  if (total > 65535)  // only for ranks in the thousands; NumPy itself stops at 64
    throw ShapeError(
        concat("save_npy: a shape of rank ", shape.size(), " does not fit a version 1.0 header"));
  std::string out("\x93NUMPY\x01\x00", 8);
  out += char(total & 0xffu);
  out += char(total >> 8);
  out += dict;
  out.append(pad, ' ');
  out += '\n';
  return out;
}

/// Sets n to the element count of `shape`; false if it overflows size_t.
inline bool npy_count(std::span<const std::size_t> shape, std::size_t& n) noexcept {
  n = 1;
  for (const std::size_t e : shape) {
    if (e != 0 && n > SIZE_MAX / e) return false;
    n *= e;
  }
  return true;
}

/// The element count of `shape`; ShapeError if it overflows size_t.
inline std::size_t npy_count_or_throw(std::span<const std::size_t> shape, std::string_view where) {
  std::size_t n = 0;
  if (!npy_count(shape, n))
    throw ShapeError(concat(where, ": the shape's element count overflows size_t"));
  return n;
}

/// Writes little-endian copies of n values of T through `file`, in blocks.
template <class T>
void npy_write_values(AtomicFile& file, const T* data, std::size_t n) {
  if constexpr (std::endian::native == std::endian::little) {
    file.write(data, n * sizeof(T));
  } else {
    std::vector<T> block;
    for (std::size_t i = 0; i < n; i += 65536) {
      block.assign(data + i, data + std::min(n, i + 65536));
      swap_to_from_le(block.data(), block.size());
      file.write(block.data(), block.size() * sizeof(T));
    }
  }
}

/// Minimal parser of the header dict that numpy.save writes (keys in any order, either quote).
class NpyDictParser {
 public:
  NpyDictParser(std::string_view text, std::string_view where) : m_text(text), m_where(where) {}

  /// The text right after "'key':" (whitespace skipped).
  std::string_view value_of(std::string_view key) const {
    for (const char q : {'\'', '"'}) {
      const std::string pattern = concat(q, key, q);
      if (const auto at = m_text.find(pattern); at != std::string_view::npos) {
        std::size_t i = skip(at + pattern.size());
        if (i < m_text.size() && m_text[i] == ':') return m_text.substr(skip(i + 1));
      }
    }
    throw NpyError(concat(m_where, "the header has no '", key, "' entry: ", m_text));
  }
  std::string descr() const {
    const auto v = value_of("descr");
    if (v.empty() || (v[0] != '\'' && v[0] != '"')) bad("descr");
    const auto end = v.find(v[0], 1);
    if (end == std::string_view::npos) bad("descr");
    return std::string(v.substr(1, end - 1));
  }
  bool fortran_order() const {
    const auto v = value_of("fortran_order");
    if (v.starts_with("False")) return false;
    if (v.starts_with("True")) return true;
    bad("fortran_order");
  }
  std::vector<std::size_t> shape() const {
    const auto v = value_of("shape");
    if (v.empty() || v[0] != '(') bad("shape");
    std::vector<std::size_t> out;
    for (std::size_t i = 1;;) {
      i = skip_in(v, i);
      if (i >= v.size()) bad("shape");
      if (v[i] == ')') return out;
      std::size_t e = 0, digits = 0;
      for (; i < v.size() && v[i] >= '0' && v[i] <= '9'; ++i, ++digits) {
        if (e > (SIZE_MAX - 9) / 10) bad("shape");
        e = e * 10 + std::size_t(v[i] - '0');
      }
      if (digits == 0) bad("shape");
      out.push_back(e);
      i = skip_in(v, i);
      if (i < v.size() && v[i] == ',') ++i;
    }
  }

 private:
  std::size_t skip(std::size_t i) const { return skip_in(m_text, i); }
  static std::size_t skip_in(std::string_view s, std::size_t i) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    return i;
  }
  [[noreturn]] void bad(std::string_view key) const {
    throw NpyError(concat(m_where, "cannot parse the header's '", key, "' entry: ", m_text));
  }

  std::string_view m_text;
  std::string_view m_where;
};

}  // namespace detail::io

/// Writes `data` (C order, prod(shape) elements) as a .npy array of that shape, atomically.
/// Any rank works (rank 0: one scalar). Throws NpyError on file errors.
/// \tparam T float, double or std::int64_t
template <NpyScalar T>
void save_npy(const std::filesystem::path& path, const T* data,
              const std::vector<std::size_t>& shape) {
  using namespace detail::io;
  const std::size_t n = npy_count_or_throw(shape, "save_npy");
  const std::string header = npy_header(npy_descr<T>(), shape);
  rethrow_as<NpyError>("save_npy", [&] {
    AtomicFile file(path);
    file.write(header.data(), header.size());
    npy_write_values(file, data, n);
    file.commit();
  });
}

/// As above, from a span whose size must equal prod(shape) (else ShapeError).
template <NpyScalar T>
void save_npy(const std::filesystem::path& path, std::span<const T> data,
              const std::vector<std::size_t>& shape) {
  const std::size_t n = detail::io::npy_count_or_throw(shape, "save_npy");
  if (data.size() != n)
    throw ShapeError(detail::concat("save_npy: ", detail::io::quoted(path), ": the data have ",
                                    data.size(), " elements but the shape needs ", n));
  save_npy(path, data.data(), shape);
}

/// Writes a batch of fields with shape (batch, L0, L1, ...) and, unless Site is Scalar, a trailing
/// axis of Site::components; lattice axes in lexicographic site order (see the file comment).
template <LatticeShape Lat, class T, SiteType Site, SiteOrder Order>
void save_npy(const std::filesystem::path& path, const Field<Lat, T, Site, Order>& field) {
  using namespace detail::io;
  constexpr index_t C = Site::components;
  std::vector<std::size_t> shape{std::size_t(field.batch())};
  for (const index_t e : Lat::extents) shape.push_back(std::size_t(e));
  if constexpr (!std::is_same_v<Site, Scalar>) shape.push_back(std::size_t(C));
  const std::string header = npy_header(npy_descr<T>(), shape);
  // storage[s]: the storage position of lexicographic site s
  std::vector<index_t> storage(static_cast<std::size_t>(Lat::volume));
  for (index_t s = 0; s < Lat::volume; ++s)
    storage[std::size_t(s)] = Order::template storage_index<Lat>(s);
  rethrow_as<NpyError>("save_npy", [&] {
    AtomicFile file(path);
    file.write(header.data(), header.size());
    std::vector<T> sample(std::size_t(Lat::volume) * std::size_t(C));  // one sample, C order
    for (index_t b = 0; b < field.batch(); ++b) {
      for (index_t s = 0; s < Lat::volume; ++s)
        for (index_t c = 0; c < C; ++c)
          sample[std::size_t(s) * std::size_t(C) + std::size_t(c)] =
              field(storage[std::size_t(s)], c, b);
      npy_write_values(file, sample.data(), sample.size());
    }
    file.commit();
  });
}

/// Reads a .npy file (format 1.0, 2.0 or 3.0, C order) whose dtype is T's ('<f4' float, '<f8'
/// double, '<i8' std::int64_t). Other dtypes, Fortran order, a malformed header or a truncated
/// file throw NpyError with the reason.
template <NpyScalar T>
NpyArray<T> load_npy(const std::filesystem::path& path) {
  using namespace detail::io;
  const std::string where =
      detail::concat("load_npy<", npy_type_name(npy_descr<T>()), ">: ", quoted(path), ": ");
  return rethrow_as<NpyError>(detail::concat("load_npy<", npy_type_name(npy_descr<T>()), ">"), [&] {
    InputFile file(path);
    unsigned char pre[12] = {};
    const std::size_t got = file.read_full(pre, 10);
    if (got < 8 || std::memcmp(pre, "\x93NUMPY", 6) != 0)
      throw NpyError(detail::concat(
          where, got < 8 && std::memcmp(pre, "\x93NUMPY", std::min<std::size_t>(got, 6)) == 0
                     ? "truncated: the file ends inside the magic string"
                     : "not a .npy file (it does not start with \"\\x93NUMPY\")"));
    const int major = pre[6], minor = pre[7];
    if (major < 1 || major > 3 || minor != 0)
      throw NpyError(detail::concat(where, ".npy format version ", major, ".", minor,
                                    " is not supported (1.0, 2.0, 3.0 are)"));
    if (got < 10 || (major >= 2 && file.read_full(pre + 10, 2) != 2))
      throw NpyError(detail::concat(where, "truncated: the file ends inside the header length"));
    const std::size_t prefix = major == 1 ? 10 : 12;
    const std::size_t hlen =
        major == 1 ? load_le<std::uint16_t>(pre + 8) : load_le<std::uint32_t>(pre + 8);
    if (prefix + hlen > file.size())
      throw NpyError(detail::concat(where, "truncated: the header needs ", prefix + hlen,
                                    " bytes but the file has ", file.size()));
    std::string text(hlen, '\0');
    if (file.read_full(text.data(), hlen) != hlen)
      throw NpyError(detail::concat(where, "truncated inside the header"));
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    const NpyDictParser dict(text, where);
    const std::string descr = dict.descr();
    if (descr != npy_descr<T>()) {
      if (const char* other = npy_type_name(descr))
        throw NpyError(detail::concat(where, "the file holds dtype '", descr, "' (", other,
                                      "), not '", npy_descr<T>(), "'; read it with load_npy<",
                                      other, ">"));
      throw NpyError(detail::concat(
          where, "unsupported dtype '", descr,
          "'; load_npy reads '<f4' (float), '<f8' (double) and '<i8' (std::int64_t)"));
    }
    if (dict.fortran_order())
      throw NpyError(detail::concat(where,
                                    "the array is in Fortran order; save a C-ordered array "
                                    "(numpy.ascontiguousarray) instead"));
    NpyArray<T> out;
    out.shape = dict.shape();
    std::size_t n = 0;
    if (!npy_count(out.shape, n))
      throw NpyError(detail::concat(where, "the shape's element count overflows size_t"));
    const std::uint64_t left = file.size() - prefix - hlen;
    if (n > left / sizeof(T))
      throw NpyError(detail::concat(where, "truncated: the shape needs ", n, " elements of ",
                                    sizeof(T), " bytes but the file has ", left, " bytes of data"));
    out.data.resize(n);
    if (file.read_full(out.data.data(), n * sizeof(T)) != n * sizeof(T))
      throw NpyError(detail::concat(where, "truncated inside the data"));
    swap_to_from_le(out.data.data(), n);
    return out;
  });
}

}  // namespace normflow
