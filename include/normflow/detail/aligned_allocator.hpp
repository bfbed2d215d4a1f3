// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
// IWYU pragma: private
/// \file A standard-library-only aligned allocator (so that field/ need not include xsimd).

#include <cstddef>
#include <cstdint>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace normflow::detail {

/// Allocator whose storage starts on an `Align`-byte boundary (64 = one cache line = one AVX-512
/// register).
template <class T, std::size_t Align = 64>
struct AlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t alignment{Align};
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U, Align>;
  };
  AlignedAllocator() noexcept = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U, Align>&) noexcept {}
  T* allocate(std::size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (n * sizeof(T) >= huge_threshold) return static_cast<T*>(allocate_huge(n * sizeof(T)));
#endif
    return static_cast<T*>(::operator new(n * sizeof(T), alignment));
  }
  void deallocate(T* p, std::size_t n) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (n * sizeof(T) >= huge_threshold) {
      ::munmap(p, round_huge(n * sizeof(T)));
      return;
    }
#endif
    ::operator delete(p, alignment);
  }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  /// Buffers of at least this many bytes (one huge page) get their own mapping, 2 MiB aligned, and
  /// their whole 2 MiB pages are advised for transparent huge pages: the activations and tapes of
  /// large lattices (tens of MB) otherwise span thousands of 4 KiB pages, beyond the second-level
  /// TLB, and a sweep over sites (one site of an 8-channel activation is 2-4 KiB at 64-128 lanes)
  /// walks the page tables on every site. (2 MiB rather than 4 MiB since the training step runs in
  /// chunks of 64 samples: an 8-channel activation of 32x32 x 64 floats is 2.2 MB; measured on that
  /// step, 143.9-144.8 -> 136.1-139.1 ms on one thread, 70.3-71.0 -> 67.3-69.0 ms on two.)
  static constexpr std::size_t huge_page = std::size_t(2) << 20;
  static constexpr std::size_t huge_threshold = std::size_t(2) << 20;
  static std::size_t round_huge(std::size_t bytes) noexcept { return (bytes + huge_page - 1) / huge_page * huge_page; }
  static void* allocate_huge(std::size_t bytes) {
    const std::size_t len = round_huge(bytes);
    // over-map by one huge page, then trim to a 2 MiB-aligned range of len bytes
    void* raw = ::mmap(nullptr, len + huge_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const auto base = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = (base + huge_page - 1) / huge_page * huge_page;
    if (aligned > base) ::munmap(raw, aligned - base);
    const std::uintptr_t end = base + len + huge_page;
    if (end > aligned + len) ::munmap(reinterpret_cast<void*>(aligned + len), end - (aligned + len));
    // huge pages for the whole 2 MiB pages of the buffer only: a partly used last page stays in
    // 4 KiB pages (as a huge page it would take up to 2 MiB of memory that nothing uses)
    const std::size_t whole = bytes / huge_page * huge_page;
    if (whole > 0) ::madvise(reinterpret_cast<void*>(aligned), whole, MADV_HUGEPAGE);
    return reinterpret_cast<void*>(aligned);
  }
#endif
  template <class U>
  bool operator==(const AlignedAllocator<U, Align>&) const noexcept {
    return true;
  }
};

}  // namespace normflow::detail
