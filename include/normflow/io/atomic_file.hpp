// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file AtomicFile: writes a file all-or-nothing, so a crash, SIGKILL or full disk never leaves
/// a partial file at the target path (POSIX).
///
/// Protocol (the one that survives a crash at any instruction, and a power failure on a journaling
/// file system):
///   1. create a temporary file "<target>.tmp.<pid>.<n>.<clock>" in the target's directory
///      (O_CREAT | O_EXCL, mode 0666 less the umask), so the rename below stays in one file system;
///   2. write the contents through a 1 MiB buffer;
///   3. fsync the temporary file, close it;
///   4. rename it over the target: POSIX rename() replaces the directory entry atomically, so a
///      reader sees either the old file or the new one, never a mixture;
///   5. fsync the directory, so the rename itself is durable.
/// Any failure before step 4 (and destruction without commit()) closes and unlinks the temporary
/// file and leaves the target untouched. A process killed before step 4 leaves its temporary file
/// behind (nothing can run after SIGKILL); such "*.tmp.*" files are never read and may be removed.
/// A symbolic link at the target is replaced by the file, not followed.

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <normflow/errors.hpp>
#include <normflow/io/byte_io.hpp>

namespace normflow {
namespace detail::io {
/// Distinguishes the temporary files of concurrent writers within one process.
inline std::atomic<std::uint64_t> atomic_file_counter{0};
}  // namespace detail::io

/// A file written all-or-nothing: write() the contents, then commit(). Throws IoError naming the
/// target, the failed step and the errno text; after any throw the temporary file is gone and the
/// target is as before (except a failed directory fsync, which is reported after the rename).
class AtomicFile {
 public:
  /// Creates the temporary file beside `target`.
  explicit AtomicFile(std::filesystem::path target) : m_target(std::move(target)) {
    if (m_target.filename().empty())
      throw IoError(detail::concat("cannot write ", detail::io::quoted(m_target),
                                   ": the path names no file"));
    m_dir = m_target.parent_path();
    if (m_dir.empty()) m_dir = ".";
    m_buffer.resize(std::size_t(1) << 20);
    for (int attempt = 0;; ++attempt) {
      const auto tick = std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
      m_temp = m_target;
      m_temp +=
          detail::concat(".tmp.", ::getpid(), ".", detail::io::atomic_file_counter.fetch_add(1),
                         ".", tick % 1000000007u);
      do m_fd = ::open(m_temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      while (m_fd < 0 && errno == EINTR);
      if (m_fd >= 0) break;
      const int e = errno;
      if (e != EEXIST || attempt >= 100) {
        m_temp.clear();
        fail(detail::concat("creating a temporary file in ", detail::io::quoted(m_dir)), e);
      }
    }
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Without commit(): closes and removes the temporary file; the target stays as it was.
  ~AtomicFile() { abandon(); }

  /// Appends n bytes.
  void write(const void* data, std::size_t n) {
    if (n == 0) return;
    const auto* p = static_cast<const unsigned char*>(data);
    if (m_used + n > m_buffer.size()) {
      flush();
      if (n >= m_buffer.size()) {  // large blocks bypass the buffer
        write_fd(p, n);
        return;
      }
    }
    std::memcpy(m_buffer.data() + m_used, p, n);
    m_used += n;
  }
  void write(std::span<const std::byte> bytes) { write(bytes.data(), bytes.size()); }

  /// Flushes, fsyncs and closes the temporary file, renames it over the target and fsyncs the
  /// directory. Call once; afterwards write() must not be called.
  void commit() {
    if (m_fd < 0)
      throw IoError(detail::concat("cannot write ", detail::io::quoted(m_target),
                                   ": commit() after failure or twice"));
    flush();
    while (::fsync(m_fd) != 0)
      if (errno != EINTR) fail("fsync of the temporary file", errno);
    const int fd = m_fd;
    m_fd = -1;
    if (::close(fd) != 0 && errno != EINTR) fail("close of the temporary file", errno);
    if (::rename(m_temp.c_str(), m_target.c_str()) != 0)
      fail("rename of the temporary file", errno);
    m_temp.clear();  // committed: nothing to remove any more
    sync_directory();
  }

  const std::filesystem::path& target() const noexcept { return m_target; }
  /// The temporary file being written (empty after commit()).
  const std::filesystem::path& temp_path() const noexcept { return m_temp; }

 private:
  void flush() {
    if (m_used > 0) write_fd(m_buffer.data(), m_used);
    m_used = 0;
  }

  void write_fd(const unsigned char* p, std::size_t n) {
    if (m_fd < 0)
      throw IoError(
          detail::concat("cannot write ", detail::io::quoted(m_target), ": write after failure"));
    while (n > 0) {
      const ::ssize_t w = ::write(m_fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("write of the temporary file", errno);
      }
      p += w;
      n -= std::size_t(w);
    }
  }

  void sync_directory() {
    int dfd;
    do dfd = ::open(m_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (dfd < 0 && errno == EINTR);
    int e = 0;
    if (dfd < 0) {
      e = errno;
    } else {
      while (::fsync(dfd) != 0 && (e = errno) == EINTR) e = 0;
      ::close(dfd);
    }
    if (e != 0 && e != EINVAL && e != ENOTSUP)  // some file systems cannot fsync a directory
      throw IoError(
          detail::concat("wrote ", detail::io::quoted(m_target), " but fsync of its directory ",
                         detail::io::quoted(m_dir), " failed: ", detail::io::errno_text(e),
                         "; the new file is in place but may not survive a power failure"));
  }

  void abandon() noexcept {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = -1;
    if (!m_temp.empty()) ::unlink(m_temp.c_str());
    m_temp.clear();
  }

  [[noreturn]] void fail(std::string_view step, int e) {
    const std::filesystem::path temp = m_temp;
    abandon();
    throw IoError(
        detail::concat("cannot write ", detail::io::quoted(m_target), ": ", step,
                       temp.empty() ? std::string() : detail::concat(" ", detail::io::quoted(temp)),
                       " failed: ", detail::io::errno_text(e), "; the target is unchanged"));
  }

  std::filesystem::path m_target;
  std::filesystem::path m_dir;
  std::filesystem::path m_temp;
  int m_fd = -1;
  std::vector<unsigned char> m_buffer;
  std::size_t m_used = 0;
};

/// Writes `bytes` to `path` all-or-nothing (see AtomicFile). Throws IoError.
inline void write_file_atomically(const std::filesystem::path& path,
                                  std::span<const std::byte> bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

}  // namespace normflow
