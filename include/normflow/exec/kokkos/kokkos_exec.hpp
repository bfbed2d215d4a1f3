// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file exec::KokkosExec<Space>: the Kokkos backend (reached through <normflow/kokkos.hpp> or the
/// CMake target normflow::kokkos, which defines NORMFLOW_HAS_KOKKOS=1).
///
/// Kernels run as Kokkos::parallel_for over RangePolicy<Space>; the lane kernels run with V = T
/// (one sample per work item), which is device-safe and lane-for-lane the same arithmetic as the
/// host SIMD path. Kokkos must be initialised (Kokkos::ScopeGuard in main). Rules kept here:
/// Kokkos is never dispatched inside an OpenMP parallel region (Kokkos 3.4 Serial shares one work
/// buffer), Kokkos::Serial is never named, layouts are always written (LayoutRight).
/// With a host-only Kokkos (Debian's: Serial only), host threads come from OpenMP and
/// exec::Default stays exec::OpenMP.

#include <type_traits>

#include <Kokkos_Core.hpp>

#include <normflow/config.hpp>
#include <normflow/exec/host.hpp>
#include <normflow/field/field.hpp>

namespace normflow::exec {

/// Runs kernels on a Kokkos execution space (default: Kokkos::DefaultExecutionSpace).
template <class Space = ::Kokkos::DefaultExecutionSpace>
struct KokkosExec {
  using space = Space;
};

/// The spelling of KokkosExec. Inside namespace normflow::exec, write ::Kokkos for the
/// Kokkos library itself.
template <class Space = ::Kokkos::DefaultExecutionSpace>
using Kokkos = KokkosExec<Space>;

template <class Space, class F>
void parallel_for(KokkosExec<Space>, offset_t n, const F& f) {
  ::Kokkos::parallel_for("normflow::parallel_for",
                         ::Kokkos::RangePolicy<Space, ::Kokkos::IndexType<offset_t>>(0, n), f);
  ::Kokkos::fence();
}


/// result = sum_{i < n} f(i), in the same blocked order as the host backends (bitwise equal).
template <class Space, class F, class T>
void parallel_reduce(KokkosExec<Space>, offset_t n, const F& f, T& result) {
  const offset_t blocks = (n + reduce_block_size - 1) / reduce_block_size;
  ::Kokkos::View<T*, ::Kokkos::LayoutRight, typename Space::memory_space> partial(
      "normflow::reduce_partial", std::size_t(blocks > 0 ? blocks : 1));
  ::Kokkos::parallel_for(
      "normflow::parallel_reduce", ::Kokkos::RangePolicy<Space, ::Kokkos::IndexType<offset_t>>(0, blocks),
      KOKKOS_LAMBDA(offset_t k) {
        const offset_t lo = k * reduce_block_size, hi = lo + reduce_block_size < n ? lo + reduce_block_size : n;
        T acc = T(0);
        for (offset_t i = lo; i < hi; ++i) acc += f(i);
        partial(k) = acc;
      });
  auto host = ::Kokkos::create_mirror_view_and_copy(::Kokkos::HostSpace(), partial);
  T acc = T(0);
  for (offset_t k = 0; k < blocks; ++k) acc += host(k);
  result = acc;
}

/// Lane kernels with V = T: one work item per (outer index, sample).
template <class T, class Space, class K>
void parallel_for_lanes(KokkosExec<Space>, index_t n_outer, index_t padded_batch, const K& k) {
  const offset_t n = offset_t(n_outer) * padded_batch;
  ::Kokkos::parallel_for(
      "normflow::parallel_for_lanes", ::Kokkos::RangePolicy<Space, ::Kokkos::IndexType<offset_t>>(0, n),
      KOKKOS_LAMBDA(offset_t i) { k.template apply<T>(index_t(i / padded_batch), index_t(i % padded_batch)); });
  ::Kokkos::fence();
}

/// Block kernels with V = T: one work item per sample.
template <class T, class Space, class K>
void parallel_for_lane_blocks(KokkosExec<Space>, index_t padded_batch, const K& k) {
  ::Kokkos::parallel_for(
      "normflow::parallel_for_lane_blocks", ::Kokkos::RangePolicy<Space, ::Kokkos::IndexType<index_t>>(0, padded_batch),
      KOKKOS_LAMBDA(index_t b) { k.template apply_block<T>(b, b + 1); });
  ::Kokkos::fence();
}

/// An unmanaged Kokkos::View (volume x components x padded_batch, LayoutRight) over a field's
/// host storage: usable with host-accessible execution spaces.
template <LatticeShape Lat, class T, SiteType Site, SiteOrder Order>
auto as_kokkos_view(Field<Lat, T, Site, Order>& f) {
  return ::Kokkos::View<T***, ::Kokkos::LayoutRight, ::Kokkos::HostSpace, ::Kokkos::MemoryUnmanaged>(
      f.data(), std::size_t(Lat::volume), std::size_t(Site::components), std::size_t(f.padded_batch()));
}

}  // namespace normflow::exec
