// SPDX-License-Identifier: MIT
// Elementwise_ layers and their composition (Chain, Flow): the layer contract in double.
#include <doctest/doctest.h>

#include "support/layer_checks.hpp"
#include <normflow/flow/flow.hpp>
#include <normflow/layer/elementwise_layer.hpp>

using namespace normflow;

namespace {
template <class Spec, class Lat>
using bound = typename Spec::template bind<Field<Lat, double>>;
}

TEST_CASE("Elementwise_ layers satisfy the layer contract") {
  test::check_layer(bound<Affine_, Lattice<4, 4>>{});
  test::check_layer(bound<Tanh_, Lattice<2, 2>>{});
  test::check_layer(bound<Expit_, Lattice<4, 4>>{});
  test::LayerCheckOptions unit;
  unit.draw_x = [](std::mt19937_64& r) { return std::uniform_real_distribution<double>(0.05, 0.95)(r); };
  test::check_layer(bound<Logit_, Lattice<2, 2>>{}, unit);
  test::LayerCheckOptions big;
  big.batch = 5;
  big.brute_force_log_det = false;
  test::check_layer(bound<Affine_, Lattice<3, 4, 5>>{}, big);
  test::LayerCheckOptions wide;
  wide.batch = 17;
  test::check_layer(bound<Affine_, Lattice<1>>{}, wide);
}

TEST_CASE("Chain of element-wise layers satisfies the layer contract") {
  using F = Field<Lattice<4, 4>, double>;
  using C = chain_t<Sequence<Affine_, Tanh_, Repeat<3, Affine_>, Expit_, Logit_>, F>;
  static_assert(C::size == 7);
  const C chain;
  CHECK(chain.num_params() == 8);
  test::check_layer(chain);
}

TEST_CASE("Flow owns its parameters: the allocating forward and reverse invert each other") {
  using Fl = Flow<Sequence<Affine_, Tanh_, Affine_>, Lattice<2, 2>, double>;
  Fl flow(3);
  CHECK(flow.num_params() == 4);
  for (double& v : flow.params()) v = 0.4;
  Fl::field_type x(5);
  for (index_t s = 0; s < 4; ++s)
    for (index_t b = 0; b < 5; ++b) x(s, b) = 0.3 * s - 0.2 * b;
  const auto [y, ld] = flow.forward(x);
  const auto [x2, ld2] = flow.reverse(y);
  CHECK(test::max_abs_diff(x, x2) < 1e-12);
  for (std::size_t b = 0; b < 5; ++b) CHECK(std::abs(ld[b] + ld2[b]) < 1e-12);
}
