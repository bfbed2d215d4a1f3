// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Private helpers of the io/ headers: little-endian encoding, errno text, a read-only
/// POSIX file, and the IoError exception they throw.
// IWYU pragma: private, include <normflow/io/checkpoint.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include <normflow/errors.hpp>

namespace normflow {

/// A file-system operation failed (open, read, write, fsync, rename). The message names the path,
/// the operation and the reason (the errno text).
struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail::io {

static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big,
              "normflow io: mixed-endian hosts are not supported");

/// The unsigned integer type of the same size as T (T: an unsigned integer, int64, float, double).
template <class T>
using uint_of = std::conditional_t<
    sizeof(T) == 1, std::uint8_t,
    std::conditional_t<sizeof(T) == 2, std::uint16_t,
                       std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>>;

template <class U>
constexpr U byteswap(U v) noexcept {
  U r = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) r = U((r << 8) | ((v >> (8 * i)) & U(0xff)));
  return r;
}
static_assert(byteswap(std::uint32_t(0x01020304)) == 0x04030201u);

/// Stores v at `out` as sizeof(T) little-endian bytes (bit pattern kept: NaN payloads survive).
template <class T>
void store_le(unsigned char* out, T v) noexcept {
  auto u = std::bit_cast<uint_of<T>>(v);
  if constexpr (std::endian::native == std::endian::big) u = byteswap(u);
  std::memcpy(out, &u, sizeof(u));
}

/// Loads a T from sizeof(T) little-endian bytes at `in`.
template <class T>
T load_le(const unsigned char* in) noexcept {
  uint_of<T> u;
  std::memcpy(&u, in, sizeof(u));
  if constexpr (std::endian::native == std::endian::big) u = byteswap(u);
  return std::bit_cast<T>(u);
}

/// Converts n values in place between host order and little-endian (a no-op on little-endian
/// hosts; an involution, so the same call encodes and decodes).
template <class T>
void swap_to_from_le(T* data, std::size_t n) noexcept {
  if constexpr (std::endian::native == std::endian::big)
    for (std::size_t i = 0; i < n; ++i)
      data[i] = std::bit_cast<T>(byteswap(std::bit_cast<uint_of<T>>(data[i])));
  else
    (void)data, (void)n;
}

/// The message of an errno value ("No such file or directory"); thread-safe, unlike strerror.
inline std::string errno_text(int e) { return std::generic_category().message(e); }

/// "'<path>'", for messages.
inline std::string quoted(const std::filesystem::path& p) { return concat("'", p.string(), "'"); }

/// Runs f(); an IoError that is not already an Error is rethrown as Error("<who>: <message>").
template <class Error, class F>
decltype(auto) rethrow_as(std::string_view who, F&& f) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const IoError& e) {
    throw Error(concat(who, ": ", e.what()));
  }
}

/// A regular file opened read-only (POSIX). Throws IoError naming the path and errno text.
class InputFile {
 public:
  explicit InputFile(const std::filesystem::path& path) : m_path(path) {
    do m_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    while (m_fd < 0 && errno == EINTR);
    if (m_fd < 0) fail("open", errno);
    struct stat st {};
    if (::fstat(m_fd, &st) != 0) fail("fstat", errno);
    if (!S_ISREG(st.st_mode))
      throw IoError(concat("cannot read ", quoted(m_path), ": not a regular file"));
    m_size = std::uint64_t(st.st_size);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() {
    if (m_fd >= 0) ::close(m_fd);
  }

  /// File size in bytes when it was opened.
  std::uint64_t size() const noexcept { return m_size; }
  const std::filesystem::path& path() const noexcept { return m_path; }

  /// Reads up to n bytes; returns the count, 0 only at the end of the file.
  std::size_t read_some(void* dst, std::size_t n) {
    for (;;) {
      const ::ssize_t r = ::read(m_fd, dst, n);
      if (r >= 0) return std::size_t(r);
      if (errno != EINTR) fail("read", errno);
    }
  }

  /// Reads n bytes unless the file ends first; returns the count read.
  std::size_t read_full(void* dst, std::size_t n) {
    auto* p = static_cast<unsigned char*>(dst);
    std::size_t done = 0;
    while (done < n) {
      const std::size_t r = read_some(p + done, n - done);
      if (r == 0) break;
      done += r;
    }
    return done;
  }

 private:
  [[noreturn]] void fail(const char* op, int e) const {
    throw IoError(concat("cannot read ", quoted(m_path), ": ", op, " failed: ", errno_text(e)));
  }

  std::filesystem::path m_path;
  int m_fd = -1;
  std::uint64_t m_size = 0;
};

}  // namespace detail::io
}  // namespace normflow
