// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
#pragma once
/// \file Exceptions thrown at the host boundary, before any kernel runs. Kernels never throw.

#include <sstream>
#include <stdexcept>
#include <string>

namespace normflow {

/// A runtime shape (batch size, lattice, channel count) does not fit. The message names the
/// function and both values.
struct ShapeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A parameter value is outside its valid range. The message names the parameter and the range.
struct ParameterError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

namespace detail {
/// Streams every part into one string (no <format> on GCC 12).
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  os.precision(12);
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

/// Throws ParameterError "<where>: <name> = <value> is not finite" unless v is finite.
template <class T>
void require_finite(T v, const char* where, const char* name) {
  if (!(v == v) || v - v != v - v)  // NaN, or +-inf (inf - inf is NaN)
    throw ParameterError(detail::concat(where, ": ", name, " = ", v, " is not finite; give a finite value"));
}

}  // namespace normflow
