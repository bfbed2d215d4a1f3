// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
// IWYU pragma: private
/// \file Helpers shared by kernels that produce one number per sample.

#include <span>
#include <vector>

#include <normflow/config.hpp>
#include <normflow/errors.hpp>
#include <normflow/lattice/lattice.hpp>
#include <normflow/simd/pack.hpp>

namespace normflow::detail {

/// Writes the lanes of v that hold real samples (b + l < batch) to out[b + l]; padding lanes are
/// dropped, so `out` needs only `batch` entries.
template <class V>
NORMFLOW_ALWAYS_INLINE void store_samples(simd::scalar_t<V>* out, const V& v, index_t b, index_t batch) noexcept {
  for (index_t l = 0; l < simd::pack_size<V>; ++l)
    if (b + l < batch) out[b + l] = simd::lane(v, l);
}

/// Throws ShapeError unless out.size() == batch.
template <class T>
void require_output_size(std::span<T> out, index_t batch, const char* where) {
  if (out.size() != std::size_t(batch))
    throw ShapeError(concat(where, ": the output has ", out.size(), " entries but the batch has ", batch,
                            " samples; give one entry per sample"));
}

/// Throws ParameterError unless 1 <= n < 2^30 (a batch size requested from a sampler).
inline void require_batch_size(long long n, const char* where) {
  if (n < 1 || n >= (1ll << 30))
    throw ParameterError(concat(where, ": batch size n = ", n, " is outside the valid range [1, 2^30)"));
}

}  // namespace normflow::detail
