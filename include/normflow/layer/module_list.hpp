// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file ModuleList_<F>: a runtime list of layers (the reference's ModuleList_), itself a Module_.
///
/// Layers of any type satisfying Module_ for the field type F are held behind a small virtual
/// interface (host level only: the kernels inside each layer are the layers' own). Forward runs
/// them in order, reverse in reverse order, log-dets add; the adjoints are those of Chain (see
/// flow/flow.hpp). The compile-time Sequence<...>/Chain<...> is the zero-overhead equivalent.

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include <normflow/errors.hpp>
#include <normflow/exec/exec.hpp>
#include <normflow/field/field.hpp>
#include <normflow/layer/module.hpp>

namespace normflow {

template <class F>
class ModuleList_ {
 public:
  using field_type = F;
  using value_type = typename F::value_type;
  using T = value_type;

 private:
  struct TapeBase {
    virtual ~TapeBase() = default;
  };
  struct Entry {
    virtual ~Entry() = default;
    virtual std::size_t num_params() const = 0;
    virtual void init_params(std::span<T> p, std::uint64_t seed) const = 0;
    virtual std::unique_ptr<TapeBase> make_tape() const = 0;
    virtual void forward(std::span<const T> p, const F& x, F& y, std::span<T> ld, TapeBase& t) const = 0;
    virtual void reverse(std::span<const T> p, const F& y, F& x, std::span<T> ld, TapeBase& t) const = 0;
    virtual void backward(std::span<const T> p, TapeBase& t, const F& gy, std::span<const T> gl, F& gx,
                          std::span<T> gp) const = 0;
    virtual void reverse_backward(std::span<const T> p, TapeBase& t, const F& gx, std::span<const T> gl, F& gy,
                                  std::span<T> gp) const = 0;
  };
  template <class L>
  struct Holder final : Entry {
    struct Tape final : TapeBase {
      typename L::tape_type t;
    };
    L layer;
    explicit Holder(L l) : layer(std::move(l)) {}
    static typename L::tape_type& get(TapeBase& t) { return static_cast<Tape&>(t).t; }
    std::size_t num_params() const override { return layer.num_params(); }
    void init_params(std::span<T> p, std::uint64_t seed) const override { layer.init_params(p, seed); }
    std::unique_ptr<TapeBase> make_tape() const override { return std::make_unique<Tape>(); }
    void forward(std::span<const T> p, const F& x, F& y, std::span<T> ld, TapeBase& t) const override {
      layer.forward(p, x, y, ld, get(t));
    }
    void reverse(std::span<const T> p, const F& y, F& x, std::span<T> ld, TapeBase& t) const override {
      layer.reverse(p, y, x, ld, get(t));
    }
    void backward(std::span<const T> p, TapeBase& t, const F& gy, std::span<const T> gl, F& gx,
                  std::span<T> gp) const override {
      layer.backward(p, get(t), gy, gl, gx, gp);
    }
    void reverse_backward(std::span<const T> p, TapeBase& t, const F& gx, std::span<const T> gl, F& gy,
                          std::span<T> gp) const override {
      layer.reverse_backward(p, get(t), gx, gl, gy, gp);
    }
  };

 public:
  /// Per-layer tapes (made on first use) and the intermediate fields.
  struct tape_type {
    std::vector<std::unique_ptr<TapeBase>> layers;
    std::array<F, 2> mid;  // forward/reverse intermediates, ping-pong (layers record their own (x, y))
    F g0, g1;
  };

  ModuleList_() = default;

  /// Appends a layer (any Module_ over F); returns *this for chaining.
  template <Module_ L>
  ModuleList_& push_back(L layer) {
    static_assert(std::is_same_v<typename L::field_type, F>, "ModuleList_::push_back: the layer's field type differs");
    m_entries.push_back(std::make_shared<Holder<L>>(std::move(layer)));
    m_offset.push_back(m_offset.back() + m_entries.back()->num_params());
    return *this;
  }
  /// Appends the layer of a spec (e.g. AffineCoupling_<>), constructed with its index in the list.
  template <class Spec>
  ModuleList_& append() {
    return push_back(typename Spec::template bind<F>(index_t(m_entries.size())));
  }

  std::size_t size() const noexcept { return m_entries.size(); }
  std::size_t num_params() const noexcept { return m_offset.back(); }
  std::size_t offset(std::size_t k) const noexcept { return m_offset[k]; }

  void init_params(std::span<T> p, std::uint64_t seed) const {
    require(p.size(), "ModuleList_::init_params");
    for (std::size_t k = 0; k < size(); ++k) m_entries[k]->init_params(slice(p, k), seed * 0x9E3779B97F4A7C15ull + k);
  }

  template <exec::Policy Exec = exec::HostDefault>
  void forward(std::span<const T> p, const F& x, F& y, std::span<T> log_det, tape_type& tape, Exec = {}) const {
    require(p.size(), "ModuleList_::forward");
    prepare(tape);
    if (size() == 0) {
      y = x;
      return;
    }
    for (std::size_t k = 0; k < size(); ++k) {
      const F& in = k == 0 ? x : tape.mid[(k - 1) % 2];
      F& out = k + 1 == size() ? y : tape.mid[k % 2];
      m_entries[k]->forward(slice(p, k), in, out, log_det, *tape.layers[k]);
    }
  }

  /// forward fused with the path-gradient recursion (as Chain::forward_path): each entry's reverse
  /// adjoint (no parameter gradients) right after its forward.
  template <exec::Policy Exec = exec::HostDefault>
  void forward_path(std::span<const T> p, const F& x, F& y, std::span<T> log_det, tape_type& tape, const F& gx,
                    std::span<const T> gl, F& gy, Exec = {}) const {
    require(p.size(), "ModuleList_::forward_path");
    prepare(tape);
    if (size() == 0) {
      y = x;
      gy = gx;
      return;
    }
    for (std::size_t k = 0; k < size(); ++k) {
      const F& in = k == 0 ? x : tape.mid[(k - 1) % 2];
      F& out = k + 1 == size() ? y : tape.mid[k % 2];
      m_entries[k]->forward(slice(p, k), in, out, log_det, *tape.layers[k]);
      const F& g_in = k == 0 ? gx : (k % 2 ? tape.g0 : tape.g1);
      F& g_out = k + 1 == size() ? gy : (k % 2 ? tape.g1 : tape.g0);
      m_entries[k]->reverse_backward(slice(p, k), *tape.layers[k], g_in, gl, g_out, std::span<T>{});
    }
  }

  template <exec::Policy Exec = exec::HostDefault>
  void reverse(std::span<const T> p, const F& y, F& x, std::span<T> log_det, tape_type& tape, Exec = {}) const {
    require(p.size(), "ModuleList_::reverse");
    prepare(tape);
    if (size() == 0) {
      x = y;
      return;
    }
    for (std::size_t j = 0; j < size(); ++j) {
      const std::size_t k = size() - 1 - j;
      const F& in = k + 1 == size() ? y : tape.mid[k % 2];
      F& out = k == 0 ? x : tape.mid[(k - 1) % 2];
      m_entries[k]->reverse(slice(p, k), in, out, log_det, *tape.layers[k]);
    }
  }

  template <exec::Policy Exec = exec::HostDefault>
  void backward(std::span<const T> p, tape_type& tape, const F& gy, std::span<const T> gl, F& gx, std::span<T> gp,
                Exec = {}) const {
    require(p.size(), "ModuleList_::backward");
    require(gp.size(), "ModuleList_::backward (gradient)");
    require_tape(tape, "ModuleList_::backward");
    if (size() == 0) {
      gx = gy;
      return;
    }
    for (std::size_t j = 0; j < size(); ++j) {
      const std::size_t k = size() - 1 - j;
      const F& g_out = j == 0 ? gy : (j % 2 ? tape.g0 : tape.g1);
      F& g_in = k == 0 ? gx : (j % 2 ? tape.g1 : tape.g0);
      m_entries[k]->backward(slice(p, k), *tape.layers[k], g_out, gl, g_in, slice(gp, k));
    }
  }

  template <exec::Policy Exec = exec::HostDefault>
  void reverse_backward(std::span<const T> p, tape_type& tape, const F& gx, std::span<const T> gl, F& gy,
                        std::span<T> gp, Exec = {}) const {
    require(p.size(), "ModuleList_::reverse_backward");
    if (!gp.empty()) require(gp.size(), "ModuleList_::reverse_backward (gradient)");
    require_tape(tape, "ModuleList_::reverse_backward");
    if (size() == 0) {
      gy = gx;
      return;
    }
    for (std::size_t k = 0; k < size(); ++k) {
      const F& g_in = k == 0 ? gx : (k % 2 ? tape.g0 : tape.g1);
      F& g_out = k + 1 == size() ? gy : (k % 2 ? tape.g1 : tape.g0);
      m_entries[k]->reverse_backward(slice(p, k), *tape.layers[k], g_in, gl, g_out,
                                     gp.empty() ? gp : slice(gp, k));
    }
  }

 private:
  void prepare(tape_type& tape) const {
    if (tape.layers.size() != size()) {
      tape.layers.clear();
      for (const auto& e : m_entries) tape.layers.push_back(e->make_tape());
    }
  }
  void require_tape(const tape_type& tape, const char* where) const {
    if (tape.layers.size() != size())
      throw ShapeError(detail::concat(where, ": the tape holds no forward or reverse pass of this list; run one first"));
  }
  void require(std::size_t n, const char* where) const {
    if (n != num_params())
      throw ShapeError(detail::concat(where, ": got ", n, " values, the list has ", num_params(), " parameters"));
  }
  template <class S>
  S slice_impl(S p, std::size_t k) const {
    return p.subspan(m_offset[k], m_offset[k + 1] - m_offset[k]);
  }
  std::span<const T> slice(std::span<const T> p, std::size_t k) const { return slice_impl(p, k); }
  std::span<T> slice(std::span<T> p, std::size_t k) const { return slice_impl(p, k); }

  std::vector<std::shared_ptr<const Entry>> m_entries;  // immutable layers: copies share them
  std::vector<std::size_t> m_offset{0};
};

}  // namespace normflow
