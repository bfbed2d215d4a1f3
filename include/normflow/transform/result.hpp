// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Return types of the element transforms: a value and its log-Jacobian, both of type V
/// (a scalar or an xsimd::batch). Plain aggregates: trivially copyable, device-safe.

namespace normflow {

/// Result of `forward(x, p)`: y = f(x) and log_jac = log|df/dx| at x.
template <class V>
struct ForwardResult {
  V y;        ///< the output f(x)
  V log_jac;  ///< log|df/dx| at x
};

/// Result of `reverse(y, p)`: x = f^{-1}(y) and log_jac = log|df^{-1}/dy| at y
/// (= minus the forward log_jac at x).
template <class V>
struct ReverseResult {
  V x;        ///< the input f^{-1}(y)
  V log_jac;  ///< log|df^{-1}/dy| at y
};

}  // namespace normflow
