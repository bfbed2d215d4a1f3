// SPDX-License-Identifier: MIT
#pragma once
// Bitwise comparison of two containers (fields, vectors): same size and the same bytes.
#include <cstring>

namespace normflow::test {

template <class C>
bool same_bits(const C& a, const C& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(*a.data())) == 0;
}

}  // namespace normflow::test
