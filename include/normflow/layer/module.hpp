// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file The layer contract (`Module_`) every invertible layer satisfies.
///
/// A layer is a const, immutable object bound to one field type F = Field<Lat, T, Scalar, Order>.
/// Its parameters live in caller-owned flat storage (a span of num_params() values); what the
/// adjoints need is kept in a caller-owned tape (`tape_type`, allocated once and reused), so the
/// same layer object serves many threads and batches. With per-sample spans log_det and gl:
///
///   forward (p, x, y, log_det, tape)            y = f(x);      log_det[b] += log|det df/dx|
///   reverse (p, y, x, log_det, tape)            x = f^{-1}(y); log_det[b] += log|det df^{-1}/dy|
///       Both record the pair (x, y) in the tape.
///   backward(p, tape, gy, gl, gx, gp)           adjoint of forward at the recorded pair, for
///       L = <gy, y> + sum_b gl[b] log_det_f[b]:  gx = dL/dx (overwritten),  gp += dL/dp
///   reverse_backward(p, tape, gx, gl, gy, gp)   adjoint of reverse at the recorded pair, for
///       L = <gx, x> + sum_b gl[b] log_det_{f^{-1}}[b]:  gy = dL/dy (overwritten),  gp += dL/dp
///       (gp may be empty: then no parameter gradient is formed).
///
/// Path gradients (arXiv:2207.08219) need g_y = grad_y log q(y) with log q(y) = log r(f^{-1}(y))
/// + log|det df^{-1}/dy|. For a chain y = f_n o ... o f_1 (x) this is the forward-mode recursion
/// of arXiv:2403.15881: g_0 = grad_x log r(x), g_k = reverse_backward_k(g_{k-1}, gl = 1) with each
/// layer's own tape from the forward pass, in forward order; no separate reverse pass is needed.
/// Padding lanes (b >= batch) are processed like samples but never reach a real sample's result
/// or a parameter gradient (they may hold non-finite values, e.g. Logit_ of the zero padding).

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include <normflow/errors.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>

namespace normflow {

/// The layer contract (see the file comment). Seed vocabulary: the reference's `Module_`.
template <class L>
concept Module_ = requires(const L& l, std::span<const typename L::value_type> p,
                           std::span<typename L::value_type> gp, std::span<typename L::value_type> log_det,
                           std::span<const typename L::value_type> gl, const typename L::field_type& cf,
                           typename L::field_type& f, typename L::tape_type& tape, std::uint64_t seed) {
  typename L::field_type;
  typename L::value_type;
  typename L::tape_type;
  { l.num_params() } -> std::convertible_to<std::size_t>;
  l.init_params(gp, seed);
  l.forward(p, cf, f, log_det, tape);
  l.reverse(p, cf, f, log_det, tape);
  l.backward(p, tape, cf, gl, f, gp);
  l.reverse_backward(p, tape, cf, gl, f, gp);
};

namespace detail {
/// Checks the common arguments of a layer call before any kernel runs.
template <class F, class T>
void require_layer_args(const char* where, std::size_t num_params, std::span<const T> p, const F& in,
                        std::span<T> log_det) {
  if (p.size() != num_params)
    throw ShapeError(concat(where, ": got ", p.size(), " parameters, the layer has ", num_params));
  if (log_det.size() != std::size_t(in.batch()))
    throw ShapeError(concat(where, ": log_det has ", log_det.size(), " entries but the batch has ", in.batch(),
                            " samples"));
}

template <class F, class T>
void require_adjoint_args(const char* where, std::size_t num_params, std::span<const T> p, std::span<T> gp,
                          const F& g, std::span<const T> gl, index_t tape_batch, bool gp_optional) {
  if (p.size() != num_params)
    throw ShapeError(concat(where, ": got ", p.size(), " parameters, the layer has ", num_params));
  if (gp.size() != num_params && !(gp_optional && gp.empty()))
    throw ShapeError(concat(where, ": the gradient has ", gp.size(), " entries, the layer has ", num_params,
                            " parameters"));
  if (g.batch() != tape_batch)
    throw ShapeError(concat(where, ": the cotangent has batch ", g.batch(), " but the tape holds batch ",
                            tape_batch, " (run forward or reverse on this tape first)"));
  if (gl.size() != std::size_t(tape_batch))
    throw ShapeError(concat(where, ": gl has ", gl.size(), " entries but the batch has ", tape_batch, " samples"));
}

/// gl copied into an aligned, zero-padded buffer of padded_batch entries (kernels load it in packs).
template <class T, class Buf>
void padded_copy(std::span<const T> gl, index_t padded, Buf& buf) {
  buf.assign(std::size_t(padded), T(0));
  for (std::size_t b = 0; b < gl.size(); ++b) buf[b] = gl[b];
}
}  // namespace detail

/// The four entry points of the layer contract for a layer written as two private templates
/// (CRTP; Derived befriends this base and defines `static constexpr const char* layer_name`):
///   map<Reverse>(where, p, in, out, log_det, tape, exec)   forward (false) or reverse (true)
///   adjoint<Reverse>(where, p, tape, point, g_out, gl, g_in, gp, exec)
/// forward and reverse then record the pair (x, y) in tape.x and tape.y; the adjoints evaluate at
/// tape.x (backward) or tape.y (reverse_backward). forward_path (forward, then reverse_backward
/// at y while y is at hand) records x alone.
template <class Derived>
class MapAdjointLayer {
 public:
  /// The tape keeps the layer's input in tape.x, and recording it is no copy when the input is
  /// tape.x itself: Chain writes each layer's output straight into the next layer's tape.x
  /// (Chain::link, detail::keeps_input_in_tape).
  static constexpr bool input_in_tape = true;
  template <class F, class Tape, exec::Policy Exec = exec::HostDefault>
  void forward(std::span<const typename F::value_type> p, const F& x, F& y, std::span<typename F::value_type> log_det,
               Tape& tape, Exec exec = {}) const {
    static const std::string where = std::string(Derived::layer_name) + "::forward";
    self().template map<false>(where.c_str(), p, x, y, log_det, tape, exec);
    record(tape, x, y, exec);
  }
  template <class F, class Tape, exec::Policy Exec = exec::HostDefault>
  void reverse(std::span<const typename F::value_type> p, const F& y, F& x, std::span<typename F::value_type> log_det,
               Tape& tape, Exec exec = {}) const {
    static const std::string where = std::string(Derived::layer_name) + "::reverse";
    self().template map<true>(where.c_str(), p, y, x, log_det, tape, exec);
    record(tape, x, y, exec);
  }
  template <class F, class Tape, exec::Policy Exec = exec::HostDefault>
  void backward(std::span<const typename F::value_type> p, Tape& tape, const F& gy,
                std::span<const typename F::value_type> gl, F& gx, std::span<typename F::value_type> gp,
                Exec exec = {}) const {
    static const std::string where = std::string(Derived::layer_name) + "::backward";
    self().template adjoint<false>(where.c_str(), p, tape, tape.x, gy, gl, gx, gp, exec);
  }
  template <class F, class Tape, exec::Policy Exec = exec::HostDefault>
  void reverse_backward(std::span<const typename F::value_type> p, Tape& tape, const F& gx,
                        std::span<const typename F::value_type> gl, F& gy, std::span<typename F::value_type> gp,
                        Exec exec = {}) const {
    static const std::string where = std::string(Derived::layer_name) + "::reverse_backward";
    if (tape.y.batch() == 0 && tape.x.batch() > 0)
      throw ShapeError(where + ": the tape holds no forward output y (forward_path records x only; run forward or "
                               "reverse before reverse_backward)");
    self().template adjoint<true>(where.c_str(), p, tape, tape.y, gx, gl, gy, gp, exec);
  }
  /// forward, then reverse_backward without parameter gradients (one step of the path-gradient
  /// recursion, Chain::forward_path), with the same values as the two calls. The reverse adjoint
  /// reads y where forward has just written it, so the tape records x alone: one field copy less
  /// per layer (the W1 flow's training step on 32x32 x 128 float, one process switching between
  /// the two every step: 2-3% faster; on 8x8 within the noise). After it the tape serves backward
  /// as after forward, and reverse_backward throws until the next forward or reverse.
  template <class F, class Tape, exec::Policy Exec = exec::HostDefault>
  void forward_path(std::span<const typename F::value_type> p, const F& x, F& y, std::span<typename F::value_type> log_det,
                    Tape& tape, const F& gx, std::span<const typename F::value_type> gl, F& gy, Exec exec = {}) const {
    static const std::string where = std::string(Derived::layer_name) + "::forward_path";
    self().template map<false>(where.c_str(), p, x, y, log_det, tape, exec);
    record(tape, x, exec);
    if (tape.y.batch() != 0) tape.y = F{};
    self().template adjoint<true>(where.c_str(), p, tape, y, gx, gl, gy, std::span<typename F::value_type>{}, exec);
  }

 private:
  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }

  /// tape.x = x, tape.y = y (copied over the host threads when the sizes already match).
  template <class F, class Tape, class Exec>
  static void record(Tape& tape, const F& x, const F& y, Exec exec) {
    record(tape, x, exec);
    copy(tape.y, y, exec);
  }
  /// tape.x = x alone (nothing to do when x is tape.x).
  template <class F, class Tape, class Exec>
  static void record(Tape& tape, const F& x, Exec exec) {
    if (&tape.x != &x) copy(tape.x, x, exec);
  }
  template <class F, class Exec>
  static void copy(F& to, const F& from, Exec) {
    if constexpr (std::is_same_v<Exec, exec::OpenMP>) {
      if (to.batch() == from.batch()) {
        exec::parallel_copy(exec::OpenMP{}, from.data(), to.data(), from.size());
        return;
      }
    }
    to = from;
  }
};

}  // namespace normflow
