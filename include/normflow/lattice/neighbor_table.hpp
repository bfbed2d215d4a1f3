// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file NeighborTable<Lat, Order>: periodic nearest neighbours in storage positions, built once
/// on the heap.

#include <vector>

#include <normflow/config.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/lattice/site_order.hpp>

namespace normflow {

/// Trivially copyable view of a neighbour table, for kernels.
/// Layout: entry [s * 2 * rank + 2 * mu + 0] is the storage position of s + mu^,
///               [s * 2 * rank + 2 * mu + 1] that of s - mu^.
template <index_t Rank>
struct NeighborView {
  const index_t* data;
  NORMFLOW_HOST_DEVICE index_t fwd(index_t s, index_t mu) const noexcept {
    return data[offset_t(s) * 2 * Rank + 2 * mu];
  }
  NORMFLOW_HOST_DEVICE index_t bwd(index_t s, index_t mu) const noexcept {
    return data[offset_t(s) * 2 * Rank + 2 * mu + 1];
  }
};

/// Periodic neighbour table of a lattice in a site order: volume x 2 x rank entries on the heap.
template <LatticeShape Lat, SiteOrder Order = default_order_t<Lat>>
class NeighborTable {
 public:
  static constexpr index_t rank = Lat::rank;

  NeighborTable() : m_data(std::size_t(Lat::volume) * 2 * rank) {
    for (index_t site = 0; site < Lat::volume; ++site) {
      const index_t s = Order::template storage_index<Lat>(site);
      for (index_t mu = 0; mu < rank; ++mu) {
        m_data[std::size_t(s) * 2 * rank + 2 * mu] =
            Order::template storage_index<Lat>(Lat::shift(site, mu, +1));
        m_data[std::size_t(s) * 2 * rank + 2 * mu + 1] =
            Order::template storage_index<Lat>(Lat::shift(site, mu, -1));
      }
    }
  }

  /// Storage position of s + mu^ (s a storage position).
  index_t fwd(index_t s, index_t mu) const noexcept { return view().fwd(s, mu); }
  /// Storage position of s - mu^ (s a storage position).
  index_t bwd(index_t s, index_t mu) const noexcept { return view().bwd(s, mu); }

  NeighborView<rank> view() const noexcept { return {m_data.data()}; }

 private:
  std::vector<index_t> m_data;
};

/// The process-wide neighbour table of (Lat, Order), built on first use (thread-safe) and kept.
template <LatticeShape Lat, SiteOrder Order = default_order_t<Lat>>
const NeighborTable<Lat, Order>& neighbors() {
  static const NeighborTable<Lat, Order> table;
  return table;
}

}  // namespace normflow
