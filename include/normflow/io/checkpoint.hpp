// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Checkpoint, save_checkpoint, load_checkpoint: the versioned binary file that holds a
/// training run's state (parameters, Adam moments, epoch, RNG state, metadata).
///
/// File layout, format version 1. Every integer and float is little-endian; floats keep their
/// exact bits (NaN payloads included). Strings are raw bytes (any byte, NUL included), never
/// terminated. "u32"/"u64" are unsigned integers, "f32"/"f64" IEEE-754 binary32/binary64.
///
/// | offset  | size  | field                                                                      |
/// |---------|-------|----------------------------------------------------------------------------|
/// | 0       | 8     | magic: 'N' 'F' 'C' 'K' 'P' 'T' 0x00 0x01                                   |
/// | 8       | 4     | u32 format version (1)                                                     |
/// | 12      | 8     | u64 file length L in bytes, the trailing checksum included                 |
/// | 20      | ...   | sections, each: 4-byte ASCII tag, u64 payload length n, n payload bytes    |
/// | L - 4   | 4     | u32 CRC-32 (ISO-HDLC, as zlib; see crc32.hpp) of bytes [0, L - 4)          |
///
/// Sections, written in this order (a reader skips tags it does not know; each known tag at most
/// once; ARCH and INFO are required):
///
/// | tag    | payload                                                                             |
/// |--------|-------------------------------------------------------------------------------------|
/// | "ARCH" | the architecture string (n bytes)                                                   |
/// | "INFO" | u32 scalar_size, u32 rng_stream, u64 num_params, u64 epoch, u64 rng_seed,           |
/// |        | u64 adam_step (n = 40)                                                              |
/// | "AF64" | u64 count, then count x { u32 name length k, k name bytes, u64 m, m x f64 }         |
/// | "AF32" | u64 count, then count x { u32 name length k, k name bytes, u64 m, m x f32 }         |
/// | "META" | u64 count, then count x { u32 key length k, k key bytes, u64 value length v,        |
/// |        | v value bytes }                                                                     |
///
/// Named arrays and map entries are written in ascending byte order of their names (std::map).
/// The frame (magic, version, length, trailing CRC-32) is frozen across versions, so a file of a
/// newer version is recognised as such (and told apart from a corrupt one) by any reader.
///
/// Invariants checked on save and on load: scalar_size is 4 (float) or 8 (double); the arrays
/// named "params", "adam_m" and "adam_v" (in either map) hold num_params elements each.
///
/// Loading checks, in order: the magic; the length against the file size ("truncated"); for a
/// version other than 1, the checksum, then "newer version"; the sections, each length against
/// the bytes left; the checksum ("checksum mismatch: the file is corrupt"); last, the caller's
/// expected architecture. The loader reads the file once, in 1 MiB blocks, and allocates no array
/// larger than the bytes that remain, so a corrupt length cannot exhaust memory.
///
/// Saving is atomic (AtomicFile): after a crash or SIGKILL at any moment the path holds the old
/// checkpoint or the new one, never a partial file.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <normflow/errors.hpp>
#include <normflow/io/atomic_file.hpp>
#include <normflow/io/byte_io.hpp>
#include <normflow/io/crc32.hpp>

namespace normflow {

/// Saving or loading a checkpoint failed. The message names the function, the path and the reason
/// ("truncated", "checksum mismatch: the file is corrupt", an errno text, ...).
struct CheckpointError : IoError {
  using IoError::IoError;
};

/// The state of a training run, as one file. Conventional array names: "params" (the flat
/// parameter vector, in the map of the model's scalar type), "adam_m" and "adam_v" (Adam's first
/// and second moments); any other names may be added.
struct Checkpoint {
  /// The format version save_checkpoint writes and the newest load_checkpoint reads.
  static constexpr std::uint32_t format_version = 1;

  /// The caller's identity of the model, compared on load, e.g.
  /// "Flow<Repeat<16,AffineCoupling_<ConvNet<Hidden<8,8>>>>>,Lattice<8,8>,float".
  std::string architecture;
  /// sizeof the model's scalar: 4 (float) or 8 (double).
  std::uint32_t scalar_size = sizeof(float);
  /// Number of model parameters; "params", "adam_m" and "adam_v" must have this length.
  std::uint64_t num_params = 0;
  /// Completed training epochs (or steps: the caller's counter).
  std::uint64_t epoch = 0;
  /// Random number generator state: the seed (e.g. of normflow's Philox streams) ...
  std::uint64_t rng_seed = 0;
  /// ... and the stream.
  std::uint32_t rng_stream = 0;
  /// Adam's step counter t (its bias corrections use beta^t).
  std::uint64_t adam_step = 0;
  /// Named double arrays.
  std::map<std::string, std::vector<double>> arrays_f64;
  /// Named float arrays.
  std::map<std::string, std::vector<float>> arrays_f32;
  /// Free metadata: key/value byte strings.
  std::map<std::string, std::string> meta;
};

namespace detail::io {

inline constexpr unsigned char checkpoint_magic[8] = {'N', 'F', 'C', 'K', 'P', 'T', 0x00, 0x01};
inline constexpr std::uint64_t checkpoint_header_size = 20;  // magic, version, length
inline constexpr std::uint64_t checkpoint_min_size = checkpoint_header_size + 4;
inline constexpr std::uint64_t checkpoint_info_size = 40;

/// A structural error inside the checksummed region (reported as corruption when the checksum
/// also fails).
struct MalformedCheckpoint : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string hex32(std::uint32_t v) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s = "0x00000000";
  for (int i = 0; i < 8; ++i) s[std::size_t(9 - i)] = digits[(v >> (4 * i)) & 0xfu];
  return s;
}

inline const char* scalar_name(std::uint32_t scalar_size) {
  return scalar_size == 4 ? "float" : scalar_size == 8 ? "double" : "unknown";
}

/// Empty when the invariants hold, else the reason.
inline std::string checkpoint_invariant_error(const Checkpoint& c) {
  if (c.scalar_size != 4 && c.scalar_size != 8)
    return concat("scalar_size = ", c.scalar_size, " must be 4 (float) or 8 (double)");
  const auto check = [&](const auto& arrays) -> std::string {
    for (const char* name : {"params", "adam_m", "adam_v"}) {
      const auto it = arrays.find(name);
      if (it != arrays.end() && it->second.size() != c.num_params)
        return concat("array \"", name, "\" has ", it->second.size(),
                      " elements but num_params = ", c.num_params, "; they must agree");
    }
    return {};
  };
  if (auto e = check(c.arrays_f64); !e.empty()) return e;
  return check(c.arrays_f32);
}

template <class Map>
std::uint64_t named_arrays_payload(const Map& arrays) {
  std::uint64_t n = 8;
  for (const auto& [name, v] : arrays)
    n += 4 + name.size() + 8 + std::uint64_t(v.size()) * sizeof(v[0]);
  return n;
}

inline std::uint64_t meta_payload(const std::map<std::string, std::string>& meta) {
  std::uint64_t n = 8;
  for (const auto& [k, v] : meta) n += 4 + k.size() + 8 + v.size();
  return n;
}

/// Writes through an AtomicFile, accumulating the CRC-32.
class ChecksummedWriter {
 public:
  explicit ChecksummedWriter(AtomicFile& file) : m_file(file) {}

  void bytes(const void* p, std::size_t n) {
    m_crc = crc32(p, n, m_crc);
    m_file.write(p, n);
  }
  template <class T>
  void scalar(T v) {
    unsigned char b[sizeof(T)];
    store_le(b, v);
    bytes(b, sizeof(T));
  }
  void section(const char (&tag)[5], std::uint64_t payload) {
    bytes(tag, 4);
    scalar<std::uint64_t>(payload);
  }
  template <class T>
  void array(const std::vector<T>& v) {
    scalar<std::uint64_t>(v.size());
    if constexpr (std::endian::native == std::endian::little) {
      bytes(v.data(), v.size() * sizeof(T));
    } else {
      std::vector<T> chunk;
      for (std::size_t i = 0; i < v.size(); i += 65536) {
        chunk.assign(v.begin() + std::ptrdiff_t(i),
                     v.begin() + std::ptrdiff_t(std::min(v.size(), i + 65536)));
        swap_to_from_le(chunk.data(), chunk.size());
        bytes(chunk.data(), chunk.size() * sizeof(T));
      }
    }
  }
  template <class Map>
  void named_arrays(const Map& arrays) {
    scalar<std::uint64_t>(arrays.size());
    for (const auto& [name, v] : arrays) {
      scalar<std::uint32_t>(std::uint32_t(name.size()));
      bytes(name.data(), name.size());
      array(v);
    }
  }
  std::uint32_t crc() const noexcept { return m_crc; }

 private:
  AtomicFile& m_file;
  std::uint32_t m_crc = 0;
};

/// Reads the checksummed region [0, limit) of a file in 1 MiB blocks, accumulating its CRC-32;
/// every read is bounds-checked against the limit (MalformedCheckpoint past it).
class ChecksummedReader {
 public:
  ChecksummedReader(InputFile& file, std::uint64_t limit)
      : m_file(file),
        m_limit(limit),
        m_buf(std::size_t(std::min<std::uint64_t>(limit + 4, std::uint64_t(1) << 20))) {}

  std::uint64_t position() const noexcept { return m_pos; }
  std::uint64_t remaining() const noexcept { return m_limit - m_pos; }
  std::uint32_t crc() const noexcept { return m_crc; }

  void read(void* dst, std::uint64_t n) {
    require(n);
    raw(dst, std::size_t(n));
    m_crc = crc32(dst, std::size_t(n), m_crc);
    m_pos += n;
  }
  template <class T>
  T get() {
    unsigned char b[sizeof(T)];
    read(b, sizeof(T));
    return load_le<T>(b);
  }
  /// Bytes left before `end` (a section end), 0 once past it.
  std::uint64_t left_before(std::uint64_t end) const noexcept {
    return end > m_pos ? end - m_pos : 0;
  }
  std::string string(std::uint64_t n) {
    require(n);  // before allocating
    std::string s(std::size_t(n), '\0');
    read(s.data(), n);
    return s;
  }
  /// A u64 element count, then that many T; `end` bounds the section.
  template <class T>
  std::vector<T> array(std::uint64_t end, std::string_view name) {
    const auto m = get<std::uint64_t>();
    if (m > left_before(end) / sizeof(T))
      throw MalformedCheckpoint(concat("array \"", name, "\" declares ", m,
                                       " elements but its section has only ", left_before(end),
                                       " bytes left"));
    std::vector<T> v(static_cast<std::size_t>(m));
    read(v.data(), m * sizeof(T));
    swap_to_from_le(v.data(), v.size());
    return v;
  }
  void require(std::uint64_t n) const {
    if (n > remaining())
      throw MalformedCheckpoint(concat("a field of ", n, " bytes at offset ", m_pos,
                                       " extends past the data (", remaining(), " bytes left)"));
  }
  /// Reads (and checksums) whatever is left of the region.
  void skip_rest() {
    std::vector<unsigned char> tmp(std::size_t(1) << 16);
    while (remaining() > 0) read(tmp.data(), std::min<std::uint64_t>(remaining(), tmp.size()));
  }
  /// The 4 bytes after the region: the stored CRC-32. Call after the region is consumed.
  std::uint32_t stored_crc() {
    unsigned char b[4];
    raw(b, 4);
    return load_le<std::uint32_t>(b);
  }

 private:
  void raw(void* dst, std::size_t n) {
    auto* out = static_cast<unsigned char*>(dst);
    while (n > 0) {
      if (m_head == m_tail) {
        if (n >= m_buf.size()) {  // large reads bypass the buffer
          if (m_file.read_full(out, n) != n) shrank();
          return;
        }
        m_head = 0;
        m_tail = m_file.read_some(m_buf.data(), m_buf.size());
        if (m_tail == 0) shrank();
      }
      const std::size_t k = std::min(n, m_tail - m_head);
      std::memcpy(out, m_buf.data() + m_head, k);
      m_head += k;
      out += k;
      n -= k;
    }
  }
  [[noreturn]] void shrank() const {
    throw IoError(concat(quoted(m_file.path()), " is truncated: it ended before the ",
                         m_file.size(),
                         " bytes it had when opened (was it cut while being read?)"));
  }

  InputFile& m_file;
  std::uint64_t m_limit;
  std::uint64_t m_pos = 0;
  std::uint32_t m_crc = 0;
  std::vector<unsigned char> m_buf;
  std::size_t m_head = 0, m_tail = 0;
};

template <class T>
void read_named_arrays(ChecksummedReader& in, std::uint64_t end,
                       std::map<std::string, std::vector<T>>& out, const char* tag) {
  const auto count = in.get<std::uint64_t>();
  for (std::uint64_t i = 0; i < count; ++i) {
    const auto k = in.get<std::uint32_t>();
    if (k > in.left_before(end))
      throw MalformedCheckpoint(
          concat("section ", tag, ": a name of ", k, " bytes runs past the section"));
    std::string name = in.string(k);
    auto v = in.array<T>(end, name);
    if (!out.emplace(std::move(name), std::move(v)).second)
      throw MalformedCheckpoint(concat("section ", tag, ": an array name occurs twice"));
  }
}

inline void read_sections(ChecksummedReader& in, Checkpoint& c) {
  static constexpr const char* tags[] = {"ARCH", "INFO", "AF64", "AF32", "META"};
  bool seen[5] = {};
  while (in.remaining() > 0) {
    char tag[5] = {};
    in.read(tag, 4);
    const auto n = in.get<std::uint64_t>();
    if (n > in.remaining())
      throw MalformedCheckpoint(concat("section \"", tag, "\" declares ", n, " bytes but only ",
                                       in.remaining(), " remain"));
    const std::uint64_t end = in.position() + n;
    int which = -1;
    for (int i = 0; i < 5; ++i)
      if (std::memcmp(tag, tags[i], 4) == 0) which = i;
    if (which >= 0 && seen[which])
      throw MalformedCheckpoint(concat("section \"", tag, "\" occurs twice"));
    if (which >= 0) seen[which] = true;
    switch (which) {
      case 0:
        c.architecture = in.string(n);
        break;
      case 1:
        if (n != checkpoint_info_size)
          throw MalformedCheckpoint(
              concat("section \"INFO\" has ", n, " bytes, not ", checkpoint_info_size));
        c.scalar_size = in.get<std::uint32_t>();
        c.rng_stream = in.get<std::uint32_t>();
        c.num_params = in.get<std::uint64_t>();
        c.epoch = in.get<std::uint64_t>();
        c.rng_seed = in.get<std::uint64_t>();
        c.adam_step = in.get<std::uint64_t>();
        break;
      case 2:
        read_named_arrays(in, end, c.arrays_f64, "AF64");
        break;
      case 3:
        read_named_arrays(in, end, c.arrays_f32, "AF32");
        break;
      case 4: {
        const auto count = in.get<std::uint64_t>();
        for (std::uint64_t i = 0; i < count; ++i) {
          const auto k = in.get<std::uint32_t>();
          if (k > in.left_before(end))
            throw MalformedCheckpoint("section META: a key runs past the section");
          std::string key = in.string(k);
          const auto v = in.get<std::uint64_t>();
          if (v > in.left_before(end))
            throw MalformedCheckpoint("section META: a value runs past the section");
          if (!c.meta.emplace(std::move(key), in.string(v)).second)
            throw MalformedCheckpoint("section META: a key occurs twice");
        }
        break;
      }
      default: {  // a section of a later minor addition: skipped, still checksummed
        std::vector<unsigned char> tmp(std::size_t(1) << 16);
        for (std::uint64_t left = n; left > 0;) {
          const auto k = std::min<std::uint64_t>(left, tmp.size());
          in.read(tmp.data(), k);
          left -= k;
        }
      }
    }
    if (in.position() != end)
      throw MalformedCheckpoint(concat("section \"", tag, "\" declares ", n,
                                       " bytes but its contents take ", in.position() - (end - n)));
  }
  if (!seen[0] || !seen[1]) throw MalformedCheckpoint("the ARCH or INFO section is missing");
  if (auto e = checkpoint_invariant_error(c); !e.empty()) throw MalformedCheckpoint(e);
}

inline Checkpoint load_checkpoint_impl(const std::filesystem::path& path,
                                       std::string_view expected_architecture,
                                       const std::uint64_t* expected_num_params) {
  const auto fail = [&](const std::string& why) -> CheckpointError {
    return CheckpointError(concat("load_checkpoint: ", quoted(path), ": ", why));
  };
  const auto corrupt = [&](std::uint32_t stored, std::uint32_t computed) -> CheckpointError {
    return fail(concat("checksum mismatch: the file is corrupt (stored CRC-32 ", hex32(stored),
                       ", computed ", hex32(computed), ")"));
  };
  return rethrow_as<CheckpointError>("load_checkpoint", [&] {
    InputFile file(path);
    const std::uint64_t size = file.size();
    if (size < checkpoint_min_size) {
      unsigned char head[checkpoint_min_size] = {};
      const std::size_t got = file.read_full(head, std::size_t(size));
      if (std::memcmp(head, checkpoint_magic, std::min<std::size_t>(got, 8)) != 0)
        throw fail(
            "not a normflow checkpoint (it does not start with the magic bytes \"NFCKPT\\0\\1\")");
      throw fail(concat("truncated: the file has ", size, " bytes, fewer than the ",
                        checkpoint_min_size, " of the smallest checkpoint"));
    }
    ChecksummedReader in(file, size - 4);
    unsigned char head[checkpoint_header_size];
    in.read(head, checkpoint_header_size);
    if (std::memcmp(head, checkpoint_magic, 8) != 0)
      throw fail(
          "not a normflow checkpoint (it does not start with the magic bytes \"NFCKPT\\0\\1\")");
    const auto version = load_le<std::uint32_t>(head + 8);
    const auto declared = load_le<std::uint64_t>(head + 12);
    if (declared > size)
      throw fail(concat("truncated: the file has ", size, " bytes but its header declares ",
                        declared, " (an interrupted copy, or a full disk?)"));
    if (declared < size)
      throw fail(concat("the file has ", size, " bytes, more than the ", declared,
                        " its header declares: it is corrupt or has data appended"));
    if (version != Checkpoint::format_version) {
      in.skip_rest();
      if (const auto stored = in.stored_crc(); stored != in.crc()) throw corrupt(stored, in.crc());
      if (version > Checkpoint::format_version)
        throw fail(concat("written in checkpoint format version ", version, ", newer than version ",
                          Checkpoint::format_version,
                          ", the newest this build of normflow reads; load it with a "
                          "newer normflow"));
      throw fail(concat("format version ", version, " is invalid: the file is corrupt"));
    }
    Checkpoint c;
    std::optional<std::string> malformed;
    try {
      read_sections(in, c);
    } catch (const MalformedCheckpoint& e) {
      malformed = e.what();
      in.skip_rest();
    }
    if (const auto stored = in.stored_crc(); stored != in.crc()) throw corrupt(stored, in.crc());
    if (malformed)
      throw fail(
          concat("malformed although its checksum matches (a faulty writer?): ", *malformed));
    const bool arch_ok = expected_architecture.empty() || c.architecture == expected_architecture;
    const bool count_ok = !expected_num_params || c.num_params == *expected_num_params;
    if (!arch_ok || !count_ok)
      throw fail(concat(
          "architecture mismatch: the checkpoint was saved by \"", c.architecture, "\" (",
          c.num_params, " ", scalar_name(c.scalar_size), " parameters) but the caller expects \"",
          expected_architecture.empty() ? std::string_view(c.architecture) : expected_architecture,
          "\"",
          expected_num_params ? concat(" (", *expected_num_params, " parameters)") : std::string(),
          "; load it into the model it was saved from, or start a new run"));
    return c;
  });
}

}  // namespace detail::io

/// Writes `checkpoint` to `path` atomically (see the file comment): the previous file at `path`
/// is replaced only by a complete, fsynced new one. Throws CheckpointError (naming the path and
/// the reason) when an invariant fails (before any file is touched) or a file operation fails;
/// the temporary file is then removed and the previous checkpoint is untouched.
inline void save_checkpoint(const std::filesystem::path& path, const Checkpoint& checkpoint) {
  using namespace detail::io;
  if (const auto e = checkpoint_invariant_error(checkpoint); !e.empty())
    throw CheckpointError(detail::concat("save_checkpoint: ", quoted(path), ": ", e));
  const auto long_name = [](const auto& map) {
    for (const auto& entry : map)
      if (entry.first.size() > 0xffffffffu) return true;
    return false;
  };
  if (long_name(checkpoint.arrays_f64) || long_name(checkpoint.arrays_f32) ||
      long_name(checkpoint.meta))
    throw CheckpointError(detail::concat("save_checkpoint: ", quoted(path),
                                         ": an array name or meta key exceeds 2^32 - 1 bytes"));

  const std::uint64_t arch = checkpoint.architecture.size();
  const std::uint64_t f64 = named_arrays_payload(checkpoint.arrays_f64);
  const std::uint64_t f32 = named_arrays_payload(checkpoint.arrays_f32);
  const std::uint64_t meta = meta_payload(checkpoint.meta);
  const std::uint64_t length =
      checkpoint_header_size + 5 * 12 + arch + checkpoint_info_size + f64 + f32 + meta + 4;

  rethrow_as<CheckpointError>("save_checkpoint", [&] {
    AtomicFile file(path);
    ChecksummedWriter w(file);
    w.bytes(checkpoint_magic, 8);
    w.scalar<std::uint32_t>(Checkpoint::format_version);
    w.scalar<std::uint64_t>(length);
    w.section("ARCH", arch);
    w.bytes(checkpoint.architecture.data(), checkpoint.architecture.size());
    w.section("INFO", checkpoint_info_size);
    w.scalar<std::uint32_t>(checkpoint.scalar_size);
    w.scalar<std::uint32_t>(checkpoint.rng_stream);
    w.scalar<std::uint64_t>(checkpoint.num_params);
    w.scalar<std::uint64_t>(checkpoint.epoch);
    w.scalar<std::uint64_t>(checkpoint.rng_seed);
    w.scalar<std::uint64_t>(checkpoint.adam_step);
    w.section("AF64", f64);
    w.named_arrays(checkpoint.arrays_f64);
    w.section("AF32", f32);
    w.named_arrays(checkpoint.arrays_f32);
    w.section("META", meta);
    w.scalar<std::uint64_t>(checkpoint.meta.size());
    for (const auto& [k, v] : checkpoint.meta) {
      w.scalar<std::uint32_t>(std::uint32_t(k.size()));
      w.bytes(k.data(), k.size());
      w.scalar<std::uint64_t>(v.size());
      w.bytes(v.data(), v.size());
    }
    const std::uint32_t crc = w.crc();
    unsigned char b[4];
    store_le(b, crc);
    file.write(b, 4);
    file.commit();
  });
}

/// Reads the checkpoint at `path`. With a non-empty `expected_architecture`, a checkpoint saved
/// under another architecture string throws CheckpointError naming both. Throws CheckpointError
/// for a missing or unreadable file, a file that is not a checkpoint, "truncated", "checksum
/// mismatch: the file is corrupt", or a newer format version.
inline Checkpoint load_checkpoint(const std::filesystem::path& path,
                                  std::string_view expected_architecture = {}) {
  return detail::io::load_checkpoint_impl(path, expected_architecture, nullptr);
}

/// As above, and the checkpoint must also hold `expected_num_params` parameters.
inline Checkpoint load_checkpoint(const std::filesystem::path& path,
                                  std::string_view expected_architecture,
                                  std::uint64_t expected_num_params) {
  return detail::io::load_checkpoint_impl(path, expected_architecture, &expected_num_params);
}

}  // namespace normflow
