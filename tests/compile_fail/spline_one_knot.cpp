// SPDX-License-Identifier: MIT
// Must not compile with NORMFLOW_SHOULD_FAIL_TO_BUILD: a spline coupling with one knot.
#include <normflow/normflow.hpp>
#ifdef NORMFLOW_SHOULD_FAIL_TO_BUILD
using Spec = normflow::Coupling<normflow::Spline<1>>;
#else
using Spec = normflow::Coupling<normflow::Spline<2>>;
#endif
int main() {
  normflow::Flow<Spec, normflow::Lattice<2, 2>> flow;
  return flow.num_params() > 0 ? 0 : 1;
}
