// SPDX-License-Identifier: MIT
// Batched fields: layout, padding, alignment, views.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <type_traits>

#include <normflow/field/field.hpp>
#include <normflow/simd/pack.hpp>

#if defined(__linux__)
#include <unistd.h>
#endif

using namespace normflow;

TEST_CASE_TEMPLATE("Field: batch innermost, padded to 64 bytes and aligned", T, float, double) {
  using Lat = Lattice<4, 4>;
  for (index_t batch : {1, 3, 16, 17, 100}) {
    Field<Lat, T, Channels<3>> f(batch);
    CHECK(f.batch() == batch);
    CHECK(f.padded_batch() % lane_padding<T> == 0);
    CHECK(f.padded_batch() >= batch);
    CHECK(f.padded_batch() < batch + lane_padding<T>);
    CHECK(f.padded_batch() % simd::pack_size<simd::native_pack<T>> == 0);
    CHECK(f.size() == std::size_t(Lat::volume) * 3 * std::size_t(f.padded_batch()));
    for (index_t s = 0; s < Lat::volume; ++s)
      for (index_t c = 0; c < 3; ++c) {
        CHECK(reinterpret_cast<std::uintptr_t>(f.lanes(s, c)) % 64 == 0);
        CHECK(f.lanes(s, c) == f.data() + (std::size_t(s) * 3 + std::size_t(c)) * std::size_t(f.padded_batch()));
      }
    // zero-filled, padding included
    bool all_zero = true;
    for (T v : f.flat()) all_zero = all_zero && v == T(0);
    CHECK(all_zero);
    // fill leaves padding lanes at zero
    f.fill(T(2));
    CHECK(f(3, 2, batch - 1) == T(2));
    if (f.padded_batch() > batch) CHECK(f(3, 2, batch) == T(0));
    // view and owner address the same element
    auto v = f.view();
    v(5, 1, 0) = T(7);
    CHECK(f(5, 1, 0) == T(7));
    CHECK(f.cview().lanes(5, 1) == f.lanes(5, 1));
  }
}

TEST_CASE("Field: lexicographic site access through the even/odd order") {
  using Lat = Lattice<4, 4>;
  ScalarField<Lat, double> f(2);
  static_assert(std::is_same_v<ScalarField<Lat, double>::order, EvenOdd>);
  f.at_site(Lat::site({0, 1}), 0, 1) = 3.0;  // odd site: first odd storage position
  CHECK(f(Lat::volume / 2, 0, 1) == 3.0);
  CHECK(f(Lat::volume / 2, 1) == 3.0);
}

TEST_CASE("Field: views are trivially copyable, bad batch sizes are rejected") {
  static_assert(std::is_trivially_copyable_v<FieldView<const double, 3>>);
  static_assert(std::is_trivially_copyable_v<FieldView<float, 1>>);
  using F = ScalarField<Lattice<2, 2>>;
  CHECK_THROWS_AS(F(-1), ShapeError);
  CHECK_THROWS_WITH(F(-1), doctest::Contains("batch = -1"));
  ScalarField<Lattice<2, 2>> empty;
  CHECK(empty.batch() == 0);
  CHECK(empty.size() == 0);
}

TEST_CASE("AlignedBuffer: large buffers on their own 2 MiB-aligned mappings, small ones on the heap") {
  using Alloc = detail::AlignedAllocator<float, 64>;
  // small: 64-byte aligned
  {
    AlignedBuffer<float> small(1000, 1.5f);
    CHECK(reinterpret_cast<std::uintptr_t>(small.data()) % 64 == 0);
    CHECK(small[999] == 1.5f);
  }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // large: at the threshold and above, 2 MiB aligned, zero-filled by the vector, writable to the
  // last element, copyable, shrinkable
  for (std::size_t bytes : {Alloc::huge_threshold, Alloc::huge_threshold + 4, std::size_t(40) << 20}) {
    const std::size_t n = bytes / sizeof(float);
    AlignedBuffer<float> big(n);
    CHECK(reinterpret_cast<std::uintptr_t>(big.data()) % Alloc::huge_page == 0);
    CHECK(big.front() == 0.0f);
    CHECK(big.back() == 0.0f);
    big.back() = 3.0f;
    AlignedBuffer<float> copy = big;  // copies allocate through the same path
    CHECK(copy.back() == 3.0f);
    CHECK(reinterpret_cast<std::uintptr_t>(copy.data()) % Alloc::huge_page == 0);
    big.resize(n / 2);  // no reallocation when shrinking
    big.shrink_to_fit();
    CHECK(big.size() == n / 2);
  }
  // released: 50 rounds of 40 MB leave the resident set where it was (a leak would add 2 GB)
  auto resident_mb = [] {
    long pages = 0, rss = 0;
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (f) {
      if (std::fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
      std::fclose(f);
    }
    return double(rss) * double(sysconf(_SC_PAGESIZE)) / double(1 << 20);
  };
  const double before = resident_mb();
  for (int round = 0; round < 50; ++round) {
    AlignedBuffer<float> big((std::size_t(40) << 20) / sizeof(float));
    big[std::size_t(round)] = 1.0f;
    REQUIRE(big[std::size_t(round)] == 1.0f);
  }
  CHECK(resident_mb() - before < 200.0);
#endif
}
