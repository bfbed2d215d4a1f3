// SPDX-License-Identifier: MIT
// Lattice geometry: coordinates, neighbours against brute force, site orders.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <vector>

#include <normflow/lattice/lattice.hpp>
#include <normflow/lattice/neighbor_table.hpp>
#include <normflow/lattice/site_order.hpp>

using namespace normflow;

namespace {
// Brute force: enumerate all coordinates with nested counters, compare the table with coordinate
// arithmetic done independently of Lattice::shift.
template <class Lat, class Order>
void check_neighbours_brute_force() {
  const auto& table = neighbors<Lat, Order>();
  std::array<index_t, Lat::rank> x{};
  index_t count = 0;
  for (;;) {
    index_t lex = 0;
    for (index_t d = 0; d < Lat::rank; ++d) lex = lex * Lat::extents[d] + x[d];
    CHECK(Lat::site(x) == lex);
    CHECK(Lat::coord(lex) == x);
    const index_t s = Order::template storage_index<Lat>(lex);
    for (index_t mu = 0; mu < Lat::rank; ++mu) {
      auto up = x, dn = x;
      up[mu] = x[mu] + 1 == Lat::extents[mu] ? 0 : x[mu] + 1;
      dn[mu] = x[mu] == 0 ? Lat::extents[mu] - 1 : x[mu] - 1;
      index_t lup = 0, ldn = 0;
      for (index_t d = 0; d < Lat::rank; ++d) {
        lup = lup * Lat::extents[d] + up[d];
        ldn = ldn * Lat::extents[d] + dn[d];
      }
      CHECK(table.fwd(s, mu) == Order::template storage_index<Lat>(lup));
      CHECK(table.bwd(s, mu) == Order::template storage_index<Lat>(ldn));
      CHECK(Lat::shift(lex, mu, +1) == lup);
      CHECK(Lat::shift(lex, mu, -1) == ldn);
    }
    index_t p = 0;
    for (index_t d = 0; d < Lat::rank; ++d) p += x[d];
    CHECK(Lat::parity(lex) == p % 2);
    ++count;
    index_t d = Lat::rank - 1;  // odometer increment
    while (d >= 0 && ++x[d] == Lat::extents[d]) x[d--] = 0;
    if (d < 0) break;
  }
  CHECK(count == Lat::volume);
}

template <class Lat>
void check_even_odd_permutation() {
  std::vector<int> seen(Lat::volume, 0);
  for (index_t site = 0; site < Lat::volume; ++site) {
    const index_t k = EvenOdd::storage_index<Lat>(site);
    REQUIRE(k >= 0);
    REQUIRE(k < Lat::volume);
    seen[k] += 1;
    CHECK(EvenOdd::site_of<Lat>(k) == site);
    // contiguous halves: even sites in [0, V/2), odd sites in [V/2, V)
    CHECK((k < Lat::volume / 2) == (Lat::parity(site) == 0));
  }
  CHECK(std::all_of(seen.begin(), seen.end(), [](int v) { return v == 1; }));
  // within each half the lexicographic order is kept
  for (index_t k = 1; k < Lat::volume; ++k)
    if (k != Lat::volume / 2) CHECK(EvenOdd::site_of<Lat>(k - 1) < EvenOdd::site_of<Lat>(k));
}
}  // namespace

TEST_CASE("Lattice: neighbour tables match brute force") {
  SUBCASE("Lattice<4, 6>, even/odd") { check_neighbours_brute_force<Lattice<4, 6>, EvenOdd>(); }
  SUBCASE("Lattice<4, 6>, lexicographic") { check_neighbours_brute_force<Lattice<4, 6>, Lexicographic>(); }
  SUBCASE("Lattice<3, 4, 5> (no even/odd split)") {
    static_assert(std::is_same_v<default_order_t<Lattice<3, 4, 5>>, Lexicographic>);
    check_neighbours_brute_force<Lattice<3, 4, 5>, Lexicographic>();
  }
  SUBCASE("Lattice<8, 8>, even/odd") { check_neighbours_brute_force<Lattice<8, 8>, EvenOdd>(); }
  SUBCASE("Lattice<8, 8>, lexicographic") { check_neighbours_brute_force<Lattice<8, 8>, Lexicographic>(); }
  SUBCASE("Lattice<2, 2, 2, 2>, even/odd") { check_neighbours_brute_force<Lattice<2, 2, 2, 2>, EvenOdd>(); }
  SUBCASE("Lattice<1> and Lattice<5, 1>: a one-site direction is its own neighbour") {
    check_neighbours_brute_force<Lattice<1>, Lexicographic>();
    check_neighbours_brute_force<Lattice<5, 1>, Lexicographic>();
    CHECK(neighbors<Lattice<1>, Lexicographic>().fwd(0, 0) == 0);
  }
}

TEST_CASE("EvenOdd: a permutation with contiguous even and odd halves") {
  check_even_odd_permutation<Lattice<4, 6>>();
  check_even_odd_permutation<Lattice<8, 8>>();
  check_even_odd_permutation<Lattice<2, 4, 6>>();
  check_even_odd_permutation<Lattice<4, 4, 4, 4>>();
}

TEST_CASE("Lattice: compile-time properties") {
  static_assert(Lattice<8, 8>::volume == 64 && Lattice<8, 8>::rank == 2);
  static_assert(Lattice<1>::volume == 1 && Lattice<1>::rank == 1);
  static_assert(Lattice<4, 4, 4>::all_extents_even && !Lattice<3, 4>::all_extents_even);
  static_assert(is_lattice_v<Lattice<2, 2>> && !is_lattice_v<int>);
  static_assert(std::is_same_v<default_order_t<Lattice<8, 8>>, EvenOdd>);
  static_assert(std::is_same_v<default_order_t<Lattice<1>>, Lexicographic>);
  CHECK(Lattice<3, 4, 5>::extent(2) == 5);
}
