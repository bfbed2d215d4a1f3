// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
// IWYU pragma: private
/// \file Per-thread scratch for buffers that live only during one call of a layer.
///
/// A layer's backward pass needs buffers whose contents do not outlive the call (the
/// conditioner's cotangents of two consecutive convolutions, the weight gradient's partial sums).
/// Held per layer, a flow of L layers would keep L copies of them, and on lattices whose
/// activations exceed the cache each layer's backward would write its own cold copy. (Measured
/// on 32x32 x 128 in float with the reference conditioner: the per-layer copies were 19 of the
/// 42 V per sample and layer; sharing the ConvStack buffers took a training step from 191 to
/// 167 ms, sharing the coupling's from 165 to 160 ms.) So they come from a pool per thread and element type, shared by
/// every layer and model that runs on the thread (the calling thread: the host threads of a
/// parallel region write through the caller's pointers). The pool grows to the largest request
/// and is released when the thread ends (the same policy as oneDNN's library-managed scratchpad).
///
/// Contract for users of a slot: the contents are undefined on entry (write before reading), and
/// a slot is used by one call at a time on a thread (no call that holds a slot calls, directly or
/// through a layer, another user of the same slot).

#include <array>
#include <cstddef>

#include <normflow/field/field.hpp>

namespace normflow::detail {

/// The slots of the per-thread scratch.
enum class ScratchSlot : int {
  conv_cotangent_a,  ///< ConvStack::backward: the cotangent of one layer's output
  conv_cotangent_b,  ///< ConvStack::backward: the cotangent of the next layer's output
  conv_wgrad,        ///< ConvStack::backward: conv_param_grad's partial sums
  conv_ring,         ///< ConvStack::backward: the wavefront's ring buffers of the cotangents
  count
};

/// At least n elements of T, 64-byte aligned, contents undefined, valid until the next request
/// of the same slot on this thread with a larger n.
template <class T>
T* thread_scratch(ScratchSlot slot, std::size_t n) {
  static thread_local std::array<AlignedBuffer<T>, std::size_t(ScratchSlot::count)> pool;
  AlignedBuffer<T>& b = pool[std::size_t(slot)];
  if (b.size() < n) {
    AlignedBuffer<T>().swap(b);  // release first: the old contents need not be kept
    b.resize(n);
  }
  return b.data();
}

/// A default-constructed Obj per thread, shared by every caller on the thread that names the same
/// type (the slots' contract applies: write before reading, one user at a time). For scratch
/// that is not a flat buffer, e.g. a coupling's transient fields (whose type is private to the
/// coupling, so each coupling type has its own).
template <class Obj>
Obj& thread_scratch_object() {
  static thread_local Obj obj;
  return obj;
}

}  // namespace normflow::detail
