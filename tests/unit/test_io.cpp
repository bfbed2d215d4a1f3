// SPDX-License-Identifier: MIT
// Checkpoint and .npy files: bitwise round trips, truncation and corruption caught, atomic
// replacement under SIGKILL, NumPy's exact header bytes, lattice axis order of saved fields.
#include <doctest/doctest.h>

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <normflow/io/checkpoint.hpp>
#include <normflow/io/npy.hpp>

using namespace normflow;
namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system temporary directory, removed with its contents.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "normflow_io_XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  fs::path operator/(const char* name) const { return path / name; }
  /// Names of the entries, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

using Bytes = std::vector<unsigned char>;

Bytes read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& p, const Bytes& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  REQUIRE(out.good());
}

Bytes to_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// The message of the Error that f() throws; fails the check (and returns "") if it throws
/// nothing or something else.
template <class Error, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("threw another exception: " << e.what());
    return {};
  }
  FAIL("did not throw");
  return {};
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

float f32_bits(std::uint32_t u) { return std::bit_cast<float>(u); }
double f64_bits(std::uint64_t u) { return std::bit_cast<double>(u); }

const std::string arch =
    "Flow<Repeat<16,AffineCoupling_<ConvNet<Hidden<8,8>>>>>,Lattice<8,8>,float";

/// A checkpoint with awkward contents: NaN payloads, signed zeros, subnormals, empty arrays and
/// names, NULs and newlines in strings.
Checkpoint awkward_checkpoint() {
  Checkpoint c;
  c.architecture = arch;
  c.scalar_size = sizeof(float);
  c.num_params = 7;
  c.epoch = 1234567890123ull;
  c.rng_seed = 0xfedcba9876543210ull;
  c.rng_stream = 0xdeadbeefu;
  c.adam_step = 4242;
  c.arrays_f32["params"] = {1.5f,
                            -0.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            f32_bits(0x7fc12345u),   // quiet NaN with a payload
                            f32_bits(0xff800001u),   // negative signalling NaN
                            f32_bits(0x00000001u)};  // smallest subnormal
  c.arrays_f32["adam_m"] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
  c.arrays_f32["adam_v"] = {1e-30f, 1e-20f, 1e-10f, 1.f, 1e10f, 1e20f, 1e30f};
  c.arrays_f32["empty32"] = {};
  c.arrays_f64["master"] = {f64_bits(0x7ff0000000000001ull),
                            f64_bits(0xfff8deadbeef0001ull),
                            -0.0,
                            f64_bits(1ull),
                            std::numeric_limits<double>::max(),
                            3.141592653589793};
  c.arrays_f64["empty64"] = {};
  c.arrays_f64[""] = {2.0};
  c.meta["notes"] = std::string("line 1\nline 2\0after a NUL\r\n\xff", 28);
  c.meta[std::string("key\0with NUL", 12)] = "";
  c.meta[""] = "empty key";
  c.meta["lattice"] = "8x8";
  return c;
}

template <class Map>
void check_same_arrays(const Map& a, const Map& b) {
  REQUIRE(a.size() == b.size());
  for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
    CAPTURE(ia->first);
    CHECK(ia->first == ib->first);
    CHECK(same_bits(ia->second, ib->second));
  }
}

void check_same(const Checkpoint& a, const Checkpoint& b) {
  CHECK(a.architecture == b.architecture);
  CHECK(a.scalar_size == b.scalar_size);
  CHECK(a.num_params == b.num_params);
  CHECK(a.epoch == b.epoch);
  CHECK(a.rng_seed == b.rng_seed);
  CHECK(a.rng_stream == b.rng_stream);
  CHECK(a.adam_step == b.adam_step);
  check_same_arrays(a.arrays_f64, b.arrays_f64);
  check_same_arrays(a.arrays_f32, b.arrays_f32);
  CHECK(a.meta == b.meta);
}

std::uint64_t le64(const Bytes& b, std::size_t at) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | b[at + std::size_t(i)];
  return v;
}
void put_le32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + std::size_t(i)] = std::uint8_t(v >> (8 * i));
}
void put_le64(Bytes& b, std::size_t at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + std::size_t(i)] = std::uint8_t(v >> (8 * i));
}
/// Recomputes the trailing CRC-32 after an edit.
void reseal(Bytes& b) { put_le32(b, b.size() - 4, crc32(b.data(), b.size() - 4)); }

}  // namespace

TEST_CASE(
    "crc32: the standard check value and chaining (slicing-by-8 matches the byte-wise form)") {
  CHECK(crc32("123456789", 9) == 0xCBF43926u);
  CHECK(crc32(std::string_view("")) == 0u);
  std::string s;
  for (int i = 0; i < 1000; ++i) s += char((i * 131 + 7) % 256);
  const std::uint32_t whole = crc32(s.data(), s.size());
  CHECK(whole == crc32(std::string_view(s)));  // constexpr byte-wise form
  for (std::size_t cut :
       {std::size_t(0), std::size_t(1), std::size_t(7), std::size_t(8), std::size_t(333), s.size()})
    CHECK(crc32(s.data() + cut, s.size() - cut, crc32(s.data(), cut)) == whole);
}

TEST_CASE("checkpoint: the byte layout of an empty checkpoint") {
  TempDir dir;
  const auto path = dir / "empty.ckpt";
  Checkpoint c;
  c.epoch = 3;
  save_checkpoint(path, c);
  const Bytes b = read_bytes(path);
  // header 20 + 5 section heads of 12 + INFO 40 + 3 empty counts of 8 + CRC 4
  REQUIRE(b.size() == 20 + 5 * 12 + 40 + 3 * 8 + 4);
  CHECK(Bytes(b.begin(), b.begin() + 8) == Bytes{'N', 'F', 'C', 'K', 'P', 'T', 0, 1});
  CHECK(Bytes(b.begin() + 8, b.begin() + 12) == Bytes{1, 0, 0, 0});  // version 1, little-endian
  CHECK(le64(b, 12) == b.size());
  CHECK(Bytes(b.begin() + 20, b.begin() + 24) == to_bytes("ARCH"));
  CHECK(le64(b, 24) == 0);
  CHECK(Bytes(b.begin() + 32, b.begin() + 36) == to_bytes("INFO"));
  CHECK(le64(b, 36) == 40);
  CHECK(b[44] == 4);             // scalar_size
  CHECK(le64(b, 44 + 16) == 3);  // epoch after scalar_size, rng_stream, num_params
  Bytes crc(4);
  put_le32(crc, 0, crc32(b.data(), b.size() - 4));
  CHECK(Bytes(b.end() - 4, b.end()) == crc);
  check_same(load_checkpoint(path), c);
}

TEST_CASE("checkpoint: save/load round trip is bitwise") {
  TempDir dir;
  const auto path = dir / "run.ckpt";
  SUBCASE("float model: NaN payloads, signed zeros, subnormals, empty arrays, NULs in strings") {
    const Checkpoint c = awkward_checkpoint();
    save_checkpoint(path, c);
    check_same(load_checkpoint(path, arch), c);
    const Bytes first = read_bytes(path);
    save_checkpoint(path, load_checkpoint(path));  // deterministic: same bytes again
    CHECK(read_bytes(path) == first);
    CHECK(dir.entries() == std::vector<std::string>{"run.ckpt"});  // no temporary file left
  }
  SUBCASE("double model with a large parameter vector") {
    Checkpoint c;
    c.architecture = "Flow<AffineCoupling_<ConvNet<Hidden<4>>>>,Lattice<4,4>,double";
    c.scalar_size = sizeof(double);
    c.num_params = 300001;  // odd, and beyond the 1 MiB I/O buffers
    std::mt19937_64 rng(5);
    auto& p = c.arrays_f64["params"];
    for (std::uint64_t i = 0; i < c.num_params; ++i)
      p.push_back(f64_bits(rng()));  // any bits, NaNs too
    c.arrays_f64["adam_m"] = p;
    c.arrays_f64["adam_v"].assign(c.num_params, 0.25);
    c.adam_step = 17;
    save_checkpoint(path, c);
    check_same(load_checkpoint(path, c.architecture, c.num_params), c);
  }
}

TEST_CASE("checkpoint: another architecture fails with a message naming both") {
  TempDir dir;
  const auto path = dir / "run.ckpt";
  save_checkpoint(path, awkward_checkpoint());
  const std::string other =
      "Flow<Repeat<8,AffineCoupling_<ConvNet<Hidden<8,8>>>>>,Lattice<8,8>,float";
  const std::string msg = error_of<CheckpointError>([&] { load_checkpoint(path, other); });
  CAPTURE(msg);
  CHECK(contains(msg, "architecture mismatch"));
  CHECK(contains(msg, "\"" + arch + "\""));
  CHECK(contains(msg, "\"" + other + "\""));
  CHECK(contains(msg, path.string()));
  const std::string count = error_of<CheckpointError>([&] { load_checkpoint(path, arch, 8); });
  CAPTURE(count);
  CHECK(contains(count, "(7 float parameters)"));
  CHECK(contains(count, "(8 parameters)"));
  CHECK(load_checkpoint(path, arch, 7).epoch == 1234567890123ull);
  CHECK(load_checkpoint(path).architecture == arch);  // empty: no check
}

TEST_CASE("checkpoint: a file cut short fails with a truncated message") {
  TempDir dir;
  const auto path = dir / "run.ckpt";
  save_checkpoint(path, awkward_checkpoint());
  const Bytes full = read_bytes(path);
  const auto cut_path = dir / "cut.ckpt";
  for (std::size_t cut :
       {std::size_t(0), std::size_t(1), std::size_t(5), std::size_t(8), std::size_t(12),
        std::size_t(19), std::size_t(20), std::size_t(23), std::size_t(24), std::size_t(57),
        full.size() / 2, full.size() - 5, full.size() - 4, full.size() - 1}) {
    CAPTURE(cut);
    write_bytes(cut_path, Bytes(full.begin(), full.begin() + std::ptrdiff_t(cut)));
    const std::string msg = error_of<CheckpointError>([&] { load_checkpoint(cut_path); });
    CAPTURE(msg);
    CHECK(contains(msg, "truncated"));
    CHECK(contains(msg, cut_path.string()));
  }
}

TEST_CASE("checkpoint: a flipped byte anywhere fails") {
  TempDir dir;
  const auto path = dir / "run.ckpt";
  save_checkpoint(path, awkward_checkpoint());
  const Bytes good = read_bytes(path);
  const auto bad_path = dir / "bad.ckpt";
  int failures = 0;
  for (std::size_t at = 0; at < good.size(); ++at) {  // every offset of this small file
    for (const unsigned char mask : {std::uint8_t(0x01), std::uint8_t(0x80), std::uint8_t(0xff)}) {
      Bytes b = good;
      b[at] ^= mask;
      write_bytes(bad_path, b);
      std::string msg;
      try {
        load_checkpoint(bad_path);
      } catch (const CheckpointError& e) {
        msg = e.what();
      }
      const bool ok = at < 8    ? contains(msg, "not a normflow checkpoint")
                      : at < 12 ? contains(msg, "checksum mismatch: the file is corrupt")
                      : at < 20 ? contains(msg, "truncated") || contains(msg, "more than")
                                : contains(msg, "checksum mismatch: the file is corrupt");
      if (!ok) {
        ++failures;
        CAPTURE(at);
        CAPTURE(msg);
        CHECK(ok);
      }
    }
  }
  CHECK(failures == 0);
}

TEST_CASE("checkpoint: a newer format version fails clearly") {
  TempDir dir;
  const auto path = dir / "run.ckpt";
  save_checkpoint(path, awkward_checkpoint());
  Bytes b = read_bytes(path);
  put_le32(b, 8, 2);
  reseal(b);
  write_bytes(path, b);
  const std::string msg = error_of<CheckpointError>([&] { load_checkpoint(path); });
  CAPTURE(msg);
  CHECK(contains(msg, "format version 2, newer than version 1"));
  CHECK(contains(msg, "newer normflow"));

  put_le32(b, 8, 0);
  reseal(b);
  write_bytes(path, b);
  CHECK(
      contains(error_of<CheckpointError>([&] { load_checkpoint(path); }), "version 0 is invalid"));
}

TEST_CASE("checkpoint: an unknown section is skipped (room for later additions)") {
  TempDir dir;
  const auto path = dir / "run.ckpt";
  const Checkpoint c = awkward_checkpoint();
  save_checkpoint(path, c);
  Bytes b = read_bytes(path);
  b.resize(b.size() - 4);  // drop the CRC, append a section, reseal
  const Bytes extra = {'X', 'T', 'R', 'A', 3, 0, 0, 0, 0, 0, 0, 0, 'a', 'b', 'c'};
  b.insert(b.end(), extra.begin(), extra.end());
  b.resize(b.size() + 4);
  put_le64(b, 12, b.size());
  reseal(b);
  write_bytes(path, b);
  check_same(load_checkpoint(path, arch), c);
}

TEST_CASE("checkpoint: a well-sealed but malformed file is reported as malformed") {
  TempDir dir;
  const auto path = dir / "run.ckpt";
  save_checkpoint(path, awkward_checkpoint());
  Bytes b = read_bytes(path);
  put_le64(b, 24, 1u << 30);  // ARCH claims more bytes than the file has
  reseal(b);
  write_bytes(path, b);
  const std::string msg = error_of<CheckpointError>([&] { load_checkpoint(path); });
  CAPTURE(msg);
  CHECK(contains(msg, "malformed although its checksum matches"));
  CHECK(contains(msg, "\"ARCH\""));
}

TEST_CASE("checkpoint: failures leave the previous file untouched and no temporary file") {
  TempDir dir;
  const auto path = dir / "run.ckpt";
  save_checkpoint(path, awkward_checkpoint());
  const Bytes before = read_bytes(path);

  SUBCASE("an invariant fails before any file is touched") {
    Checkpoint c = awkward_checkpoint();
    c.arrays_f32["adam_v"].pop_back();
    const std::string msg = error_of<CheckpointError>([&] { save_checkpoint(path, c); });
    CAPTURE(msg);
    CHECK(contains(msg, "\"adam_v\" has 6 elements but num_params = 7"));
    c = awkward_checkpoint();
    c.scalar_size = 2;
    CHECK(
        contains(error_of<CheckpointError>([&] { save_checkpoint(path, c); }), "scalar_size = 2"));
  }
  SUBCASE("the rename fails: the target is a non-empty directory") {
    const auto target = dir / "occupied";
    fs::create_directories(target / "inside");
    const std::string msg =
        error_of<CheckpointError>([&] { save_checkpoint(target, awkward_checkpoint()); });
    CAPTURE(msg);
    CHECK(contains(msg, "save_checkpoint: cannot write '" + target.string() + "'"));
    CHECK(contains(msg, "rename"));
    CHECK((contains(msg, "Is a directory") || contains(msg, "Directory not empty")));
    CHECK(dir.entries() == std::vector<std::string>{"occupied", "run.ckpt"});
  }
  SUBCASE("the directory does not exist") {
    const auto target = dir / "missing/run.ckpt";
    const std::string msg =
        error_of<CheckpointError>([&] { save_checkpoint(target, awkward_checkpoint()); });
    CAPTURE(msg);
    CHECK(contains(msg, target.string()));
    CHECK(contains(msg, "No such file or directory"));
  }
  CHECK(read_bytes(path) == before);
  CHECK(load_checkpoint(path, arch).epoch == 1234567890123ull);
}

TEST_CASE("checkpoint: missing files and other files fail clearly") {
  TempDir dir;
  const std::string missing =
      error_of<CheckpointError>([&] { load_checkpoint(dir / "none.ckpt"); });
  CHECK(contains(missing, "No such file or directory"));
  CHECK(contains(missing, "none.ckpt"));
  write_bytes(dir / "text.ckpt", to_bytes("this is a text file, not a checkpoint at all\n"));
  CHECK(contains(error_of<CheckpointError>([&] { load_checkpoint(dir / "text.ckpt"); }),
                 "not a normflow checkpoint"));
  CHECK(contains(error_of<CheckpointError>([&] { load_checkpoint(dir.path); }),
                 "not a regular file"));
}

TEST_CASE(
    "checkpoint: SIGKILL at a random moment of repeated saves leaves the old or the new file") {
  // A child process saves ~8 MB checkpoints to one path in a loop, reporting each finished epoch
  // through a pipe; the parent kills it with SIGKILL at a random moment. The path must then hold
  // a complete checkpoint whose epoch is the last reported one or the one being written.
  TempDir dir;
  const auto path = dir / "run.ckpt";
  const std::uint64_t n = std::uint64_t(1) << 19;
  Checkpoint c;
  c.architecture = "kill-test";
  c.scalar_size = sizeof(double);
  c.num_params = n;
  c.arrays_f64["params"].resize(n);
  c.arrays_f64["adam_m"].resize(n);
  const auto set_epoch = [&](std::uint64_t epoch) {  // contents are a function of the epoch
    c.epoch = epoch;
    c.adam_step = epoch * 3;
    auto& p = c.arrays_f64["params"];
    auto& m = c.arrays_f64["adam_m"];
    for (std::uint64_t k = 0; k < n; ++k) {
      p[k] = double(epoch) + double(k) / double(n);  // exact in double
      m[k] = -p[k];
    }
  };
  set_epoch(0);
  const auto t0 = std::chrono::steady_clock::now();
  save_checkpoint(path, c);
  const auto period = std::chrono::steady_clock::now() - t0;
  const auto expected_size = fs::file_size(path);

  std::mt19937_64 rng(20240607);
  std::uint64_t on_disk = 0;
  int mid_write = 0;
  const int rounds = 12;
  for (int round = 0; round < rounds; ++round) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const ::pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {  // child: save forever; only async-signal-safe exits
      ::close(fds[0]);
      for (std::uint64_t epoch = on_disk + 1;; ++epoch) {
        try {
          set_epoch(epoch);
          save_checkpoint(path, c);
        } catch (...) {
          ::_exit(3);
        }
        if (::write(fds[1], &epoch, sizeof epoch) != ::ssize_t(sizeof epoch)) ::_exit(4);
      }
    }
    ::close(fds[1]);
    std::uint64_t reported = on_disk, e = 0;
    if (round % 2 == 1) {  // odd rounds: wait until a save completed, then kill the next one
      REQUIRE(::read(fds[0], &reported, sizeof reported) == ::ssize_t(sizeof reported));
    }
    const auto delay = period * std::uniform_real_distribution<double>(0.0, 2.5)(rng);
    std::this_thread::sleep_for(delay);
    REQUIRE(::kill(pid, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    while (::read(fds[0], &e, sizeof e) == ::ssize_t(sizeof e)) reported = e;
    ::close(fds[0]);

    for (const auto& entry : dir.entries()) mid_write += entry != "run.ckpt";
    CHECK(fs::file_size(path) == expected_size);
    const Checkpoint got = load_checkpoint(path, "kill-test", n);  // complete and checksummed
    CAPTURE(round);
    CAPTURE(reported);
    CHECK((got.epoch == reported || got.epoch == reported + 1));
    const auto& p = got.arrays_f64.at("params");
    const auto& m = got.arrays_f64.at("adam_m");
    bool consistent = got.adam_step == got.epoch * 3;
    for (std::uint64_t k = 0; k < n && consistent; ++k)
      consistent = p[k] == double(got.epoch) + double(k) / double(n) && m[k] == -p[k];
    CHECK(consistent);
    on_disk = got.epoch;
    for (const auto& entry : dir.entries())  // remove stale temporary files of killed writers
      if (entry != "run.ckpt") fs::remove(dir.path / entry);
  }
  MESSAGE("kill test: ", rounds, " rounds, ", mid_write,
          " killed mid-write (temporary file left), final epoch ", on_disk, ", one save took ",
          std::chrono::duration<double, std::milli>(period).count(), " ms");
}

// ---------------------------------------------------------------------------------------------
// .npy

TEST_CASE("npy: the header bytes are numpy.save's") {
  TempDir dir;
  SUBCASE("double, shape (2, 3)") {
    const double data[6] = {0, 1, 2, 3, 4.5, -1};
    save_npy(dir / "a.npy", data, {2, 3});
    std::string expected("\x93NUMPY\x01\x00\x76\x00", 10);  // magic, version 1.0, header length 118
    expected += "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
    expected += std::string(58, ' ');  // 20 spare for the growth axis + 38 to reach 128 bytes
    expected += '\n';
    REQUIRE(expected.size() == 128);
    const Bytes b = read_bytes(dir / "a.npy");
    REQUIRE(b.size() == 128 + 6 * 8);
    CHECK(Bytes(b.begin(), b.begin() + 128) == to_bytes(expected));
    CHECK(std::memcmp(b.data() + 128, data, sizeof data) == 0);  // little-endian host
  }
  SUBCASE("float, shape (5,)") {
    const float data[5] = {1, 2, 3, 4, 5};
    save_npy(dir / "b.npy", data, {5});
    std::string expected("\x93NUMPY\x01\x00\x76\x00", 10);
    expected += "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }";
    expected += std::string(60, ' ');
    expected += '\n';
    CHECK(Bytes(read_bytes(dir / "b.npy")).size() == 128 + 20);
    const Bytes b = read_bytes(dir / "b.npy");
    CHECK(Bytes(b.begin(), b.begin() + 128) == to_bytes(expected));
  }
  SUBCASE("int64, rank 0") {
    const std::int64_t v = -7;
    save_npy(dir / "c.npy", &v, {});
    std::string expected("\x93NUMPY\x01\x00\x76\x00", 10);
    expected += "{'descr': '<i8', 'fortran_order': False, 'shape': (), }";
    expected += std::string(62, ' ');
    expected += '\n';
    const Bytes b = read_bytes(dir / "c.npy");
    REQUIRE(b.size() == 136);
    CHECK(Bytes(b.begin(), b.begin() + 128) == to_bytes(expected));
    const auto back = load_npy<std::int64_t>(dir / "c.npy");
    CHECK(back.shape.empty());
    CHECK(back.data == std::vector<std::int64_t>{-7});
  }
}

TEST_CASE("npy: save/load round trips") {
  TempDir dir;
  const auto path = dir / "x.npy";
  std::vector<float> f = {1.f, f32_bits(0x7fc00abcu), -0.f, 3.25f};
  save_npy(path, std::span<const float>(f), {4});
  auto rf = load_npy<float>(path);
  CHECK(rf.shape == std::vector<std::size_t>{4});
  CHECK(same_bits(rf.data, f));

  std::vector<double> d(3 * 7);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = double(i) * 0.5 - 3;
  save_npy(path, d.data(), {3, 7});
  auto rd = load_npy<double>(path);
  CHECK(rd.shape == std::vector<std::size_t>{3, 7});
  CHECK(same_bits(rd.data, d));

  std::vector<std::int64_t> i64 = {std::numeric_limits<std::int64_t>::min(), -1, 0, 1,
                                   std::numeric_limits<std::int64_t>::max(), 42};
  save_npy(path, i64.data(), {2, 3});
  auto ri = load_npy<std::int64_t>(path);
  CHECK(ri.shape == std::vector<std::size_t>{2, 3});
  CHECK(ri.data == i64);

  save_npy(path, static_cast<const double*>(nullptr), {0});
  auto re = load_npy<double>(path);
  CHECK(re.shape == std::vector<std::size_t>{0});
  CHECK(re.data.empty());

  const std::vector<std::size_t> wrong_shape = {4, 7};
  CHECK_THROWS_AS(save_npy(path, std::span<const double>(d), wrong_shape), ShapeError);
  CHECK(dir.entries() == std::vector<std::string>{"x.npy"});
}

TEST_CASE("npy: a field is written batch first with lattice axes in lexicographic order") {
  using Lat = Lattice<4, 6>;
  TempDir dir;
  const auto path = dir / "phi.npy";
  SUBCASE("scalar field, EvenOdd storage: [b, x0, x1] = at_site(site({x0, x1}), 0, b)") {
    Field<Lat, double, Scalar, EvenOdd> phi(3);
    for (index_t s = 0; s < Lat::volume; ++s)  // storage position s, sample b
      for (index_t b = 0; b < 3; ++b) phi(s, 0, b) = 1000.0 * b + s + 0.25;
    save_npy(path, phi);
    const auto a = load_npy<double>(path);
    REQUIRE(a.shape == std::vector<std::size_t>{3, 4, 6});
    CHECK(read_bytes(path).size() == 128 + 3 * 24 * 8);
    int wrong = 0;
    for (index_t b = 0; b < 3; ++b)
      for (index_t x0 = 0; x0 < 4; ++x0)
        for (index_t x1 = 0; x1 < 6; ++x1)
          wrong +=
              a.data[std::size_t((b * 4 + x0) * 6 + x1)] != phi.at_site(Lat::site({x0, x1}), 0, b);
    CHECK(wrong == 0);
    // the order really differs from storage: site (0, 1) is odd, stored at position V/2
    CHECK(a.data[1] == phi(Lat::volume / 2, 0, 0));
  }
  SUBCASE("Channels<2> float field: a trailing channel axis") {
    Field<Lat, float, Channels<2>, EvenOdd> t(2);
    for (index_t s = 0; s < Lat::volume; ++s)
      for (index_t c = 0; c < 2; ++c)
        for (index_t b = 0; b < 2; ++b) t(s, c, b) = float(100 * b + 10 * s + c);
    save_npy(path, t);
    const auto a = load_npy<float>(path);
    REQUIRE(a.shape == std::vector<std::size_t>{2, 4, 6, 2});
    int wrong = 0;
    for (index_t b = 0; b < 2; ++b)
      for (index_t x0 = 0; x0 < 4; ++x0)
        for (index_t x1 = 0; x1 < 6; ++x1)
          for (index_t c = 0; c < 2; ++c)
            wrong += a.data[std::size_t(((b * 4 + x0) * 6 + x1) * 2 + c)] !=
                     t.at_site(Lat::site({x0, x1}), c, b);
    CHECK(wrong == 0);
  }
}

TEST_CASE("npy: load_npy rejects other dtypes and Fortran order and truncated files clearly") {
  TempDir dir;
  const auto path = dir / "y.npy";
  const auto write_with_header =
      [&](const std::string& descr, const std::vector<std::size_t>& shape, std::size_t data_bytes) {
        std::string h = detail::io::npy_header(descr, shape);
        h.append(data_bytes, '\0');
        write_bytes(path, to_bytes(h));
      };
  write_with_header("<i4", {3}, 12);
  std::string msg = error_of<NpyError>([&] { load_npy<float>(path); });
  CAPTURE(msg);
  CHECK(contains(msg, "unsupported dtype '<i4'"));
  CHECK(contains(msg, path.string()));

  const float f[2] = {1, 2};
  save_npy(path, f, {2});
  msg = error_of<NpyError>([&] { load_npy<double>(path); });
  CHECK(contains(msg, "dtype '<f4' (float), not '<f8'; read it with load_npy<float>"));

  std::string fortran = detail::io::npy_header("<f8", std::vector<std::size_t>{2, 2});
  const auto at = fortran.find("False");
  fortran.replace(at, 5, "True ");
  fortran.append(32, '\0');
  write_bytes(path, to_bytes(fortran));
  CHECK(contains(error_of<NpyError>([&] { load_npy<double>(path); }), "Fortran order"));

  write_with_header("<f8", {2, 3}, 47);  // one byte short
  CHECK(contains(error_of<NpyError>([&] { load_npy<double>(path); }), "truncated"));
  write_bytes(path, to_bytes("\x93NUM"));
  CHECK(contains(error_of<NpyError>([&] { load_npy<double>(path); }), "truncated"));
  write_bytes(path, to_bytes("PK\x03\x04 a zip file"));
  CHECK(contains(error_of<NpyError>([&] { load_npy<double>(path); }), "not a .npy file"));
  CHECK(contains(error_of<NpyError>([&] { load_npy<double>(dir / "none.npy"); }),
                 "No such file or directory"));
}
