// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
// IWYU pragma: private
/// \file A standard-library-only aligned allocator (so that field/ need not include xsimd).

#include <cstddef>
#include <new>

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
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), alignment)); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, alignment); }
  template <class U>
  bool operator==(const AlignedAllocator<U, Align>&) const noexcept {
    return true;
  }
};

}  // namespace normflow::detail
