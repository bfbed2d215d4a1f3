// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Lattice<L0, L1, ...>: the compile-time geometry of a periodic hypercubic lattice.

#include <array>
#include <cstdint>
#include <type_traits>

namespace normflow {

using index_t = std::int32_t;   ///< sites, directions, components, batch
using offset_t = std::int64_t;  ///< flat offsets: 64^4 sites x 4096 samples overflow 32 bits

/// A periodic lattice with extents L0 x L1 x ... (any rank >= 1). The type *is* the geometry.
/// Sites are numbered lexicographically with the last direction fastest (mdspan's layout_right):
///   site(x) = ((x0 * L1 + x1) * L2 + x2) ...
/// Extent 1 is allowed (a direction of one site is its own neighbour; the 1-dof model is
/// Lattice<1>). An even/odd split additionally needs every extent even (see EvenOdd).
/// \tparam Extents the number of sites along each direction, each >= 1
template <index_t... Extents>
struct Lattice {
  static_assert(sizeof...(Extents) >= 1,
                "Lattice<...>: give at least one extent, e.g. Lattice<8, 8> or Lattice<1>");
  static_assert(((Extents >= 1) && ...),
                "Lattice<...>: every extent must be at least 1 (a zero or negative extent has no sites)");
  static_assert((std::int64_t(1) * ... * std::int64_t(Extents)) < (std::int64_t(1) << 30),
                "Lattice<...>: the volume must stay below 2^30 sites");

  static constexpr index_t rank = index_t(sizeof...(Extents));
  static constexpr std::array<index_t, sizeof...(Extents)> extents{Extents...};
  static constexpr index_t volume = (index_t(1) * ... * Extents);
  using coord_type = std::array<index_t, sizeof...(Extents)>;

  /// Number of sites along direction `dir`.
  static constexpr index_t extent(index_t dir) noexcept { return extents[std::size_t(dir)]; }

  /// Lexicographic site index of coordinates x (each 0 <= x[d] < extent(d)).
  static constexpr index_t site(const coord_type& x) noexcept {
    index_t s = 0;
    for (index_t d = 0; d < rank; ++d) s = s * extents[std::size_t(d)] + x[std::size_t(d)];
    return s;
  }

  /// Coordinates of lexicographic site s (inverse of site()).
  static constexpr coord_type coord(index_t s) noexcept {
    coord_type x{};
    for (index_t d = rank - 1; d >= 0; --d) {
      x[std::size_t(d)] = s % extents[std::size_t(d)];
      s /= extents[std::size_t(d)];
    }
    return x;
  }

  /// Periodic neighbour of lexicographic site s, `step` sites along direction `dir`.
  static constexpr index_t shift(index_t s, index_t dir, index_t step) noexcept {
    coord_type x = coord(s);
    const index_t L = extents[std::size_t(dir)];
    x[std::size_t(dir)] = ((x[std::size_t(dir)] + step) % L + L) % L;
    return site(x);
  }

  /// Parity of a site: the sum of its coordinates mod 2 (0 = even, 1 = odd).
  static constexpr index_t parity(index_t s) noexcept {
    index_t p = 0;
    for (index_t d = rank - 1; d >= 0; --d) {
      p += s % extents[std::size_t(d)];
      s /= extents[std::size_t(d)];
    }
    return p & 1;
  }

  /// True when every extent is even, so that the checkerboard is periodic.
  static constexpr bool all_extents_even = ((Extents % 2 == 0) && ...);
};

template <class T>
inline constexpr bool is_lattice_v = false;
template <index_t... E>
inline constexpr bool is_lattice_v<Lattice<E...>> = true;

/// Satisfied by every normflow::Lattice<...>.
template <class T>
concept LatticeShape = is_lattice_v<T>;

// The maths is checked where it is written.
static_assert(Lattice<4, 4>::site({1, 2}) == 6);
static_assert(Lattice<4, 4>::coord(6) == Lattice<4, 4>::coord_type{1, 2});
static_assert(Lattice<4, 4>::shift(3, 1, +1) == 0);   // periodic wrap in the last direction
static_assert(Lattice<4, 4>::shift(0, 0, -1) == 12);  // periodic wrap in the first direction
static_assert(Lattice<3, 4, 5>::volume == 60 && Lattice<3, 4, 5>::rank == 3);
static_assert(Lattice<4, 4>::parity(5) == 0 && Lattice<4, 4>::parity(4) == 1);

}  // namespace normflow
