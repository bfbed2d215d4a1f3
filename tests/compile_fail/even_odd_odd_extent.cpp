// SPDX-License-Identifier: MIT
// Must not compile with NORMFLOW_SHOULD_FAIL_TO_BUILD: an even/odd split of a lattice with an odd
// extent (the checkerboard would not be periodic).
#include <normflow/normflow.hpp>
#ifdef NORMFLOW_SHOULD_FAIL_TO_BUILD
using Lat = normflow::Lattice<7, 8>;
#else
using Lat = normflow::Lattice<8, 8>;
#endif
int main() {
  normflow::Field<Lat, double, normflow::Scalar, normflow::EvenOdd> f(1);
  return int(f.batch()) - 1;
}
