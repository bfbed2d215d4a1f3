// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Site orders: how lattice sites map to storage positions (a layout policy, like
/// mdspan's LayoutPolicy). Fields, neighbour tables and kernels work in storage positions.

#include <type_traits>

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>

namespace normflow {

/// Storage position = lexicographic site index.
struct Lexicographic {
  template <LatticeShape Lat>
  NORMFLOW_HOST_DEVICE static constexpr index_t storage_index(index_t site) noexcept {
    return site;
  }
  template <LatticeShape Lat>
  NORMFLOW_HOST_DEVICE static constexpr index_t site_of(index_t storage) noexcept {
    return storage;
  }
};

/// Even sites first, then odd sites, each block in lexicographic order, so that a coupling's
/// two halves are contiguous: storage positions [0, V/2) are the even sites, [V/2, V) the odd.
/// Invariant used: with every extent even, lexicographic sites 2k and 2k+1 differ only in the
/// last coordinate, by one, so they have opposite parities and k is each one's rank within its
/// parity block.
struct EvenOdd {
  template <LatticeShape Lat>
  NORMFLOW_HOST_DEVICE static constexpr index_t storage_index(index_t site) noexcept {
    static_assert(Lat::all_extents_even,
                  "EvenOdd site order needs every lattice extent even (the checkerboard must be "
                  "periodic); use Lexicographic order or an even lattice such as Lattice<8, 8>");
    return Lat::parity(site) * (Lat::volume / 2) + site / 2;
  }
  template <LatticeShape Lat>
  NORMFLOW_HOST_DEVICE static constexpr index_t site_of(index_t storage) noexcept {
    static_assert(Lat::all_extents_even,
                  "EvenOdd site order needs every lattice extent even (the checkerboard must be "
                  "periodic); use Lexicographic order or an even lattice such as Lattice<8, 8>");
    const index_t half = Lat::volume / 2;
    const index_t p = storage >= half ? 1 : 0;
    const index_t k = storage - p * half;
    return Lat::parity(2 * k) == p ? 2 * k : 2 * k + 1;
  }
};

template <class T>
inline constexpr bool is_site_order_v = std::is_same_v<T, Lexicographic> || std::is_same_v<T, EvenOdd>;

/// Satisfied by the site orders Lexicographic and EvenOdd.
template <class T>
concept SiteOrder = is_site_order_v<T>;

/// EvenOdd where the lattice allows it (every extent even), else Lexicographic.
template <LatticeShape Lat>
using default_order_t = std::conditional_t<Lat::all_extents_even, EvenOdd, Lexicographic>;

static_assert(EvenOdd::storage_index<Lattice<4, 4>>(0) == 0);
static_assert(EvenOdd::storage_index<Lattice<4, 4>>(1) == 8);  // site (0,1) is odd
static_assert(EvenOdd::site_of<Lattice<4, 4>>(8) == 1);
static_assert(EvenOdd::storage_index<Lattice<4, 4>>(4) == 10);  // site (1,0): odd, rank 2

}  // namespace normflow
