// SPDX-License-Identifier: MIT
// Must not compile with NORMFLOW_SHOULD_FAIL_TO_BUILD: a lattice with a zero extent.
#include <normflow/normflow.hpp>
#ifdef NORMFLOW_SHOULD_FAIL_TO_BUILD
using Lat = normflow::Lattice<4, 0>;
#else
using Lat = normflow::Lattice<4, 1>;
#endif
int main() { return Lat::volume == 4 ? 0 : 1; }
