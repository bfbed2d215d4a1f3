// SPDX-License-Identifier: MIT
// Must not compile with NORMFLOW_SHOULD_FAIL_TO_BUILD: a checkerboard coupling on an odd lattice.
#include <normflow/normflow.hpp>
#ifdef NORMFLOW_SHOULD_FAIL_TO_BUILD
using Lat = normflow::Lattice<3, 4>;
#else
using Lat = normflow::Lattice<4, 4>;
#endif
int main() {
  normflow::Flow<normflow::Coupling<normflow::Affine>, Lat> flow;
  return flow.num_params() > 0 ? 0 : 1;
}
