// SPDX-License-Identifier: MIT
// AffineCoupling_ and AdditiveCoupling_: the layer contract in double, whole flows, symmetries.
#include <doctest/doctest.h>

#include <random>

#include "support/layer_checks.hpp"
#include <normflow/flow/flow.hpp>
#include <normflow/layer/coupling.hpp>

using namespace normflow;

namespace {
template <class Spec, class Lat>
using bound = typename Spec::template bind<Field<Lat, double>>;
}

TEST_CASE("AffineCoupling_ satisfies the layer contract (both parities, several lattices)") {
  using Net = ConvNet<Hidden<4>, Kernel<3>>;
  test::check_layer(bound<AffineCoupling_<Net>, Lattice<4, 4>>(0));
  test::check_layer(bound<AffineCoupling_<Net>, Lattice<4, 4>>(1));
  test::check_layer(bound<AffineCoupling_<Net>, Lattice<2, 2>>(1));
  test::check_layer(bound<AffineCoupling_<ConvNet<Hidden<3>, Act<Activation::leaky_relu>, Bias<true>>>,
                          Lattice<4, 2, 4>>(0));
  test::check_layer(bound<AffineCoupling_<>, Lattice<4, 4>>(0));  // the reference conditioner 1-8-8-2
  test::check_layer(bound<AdditiveCoupling_<ConvNet<Hidden<4>, Bias<true>>>, Lattice<4, 4>>(1));
}

TEST_CASE("A 16-layer affine coupling flow satisfies the layer contract") {
  using F = Field<Lattice<4, 4>, double>;
  using C = chain_t<Repeat<16, AffineCoupling_<>>, F>;
  const C chain;
  CHECK(chain.num_params() == 16 * (72 + 576 + 144));
  CHECK(chain.layer<0>().parity() == 0);
  CHECK(chain.layer<1>().parity() == 1);
  CHECK(chain.layer<15>().parity() == 1);
  test::LayerCheckOptions o;
  o.param_jitter = 0.05;
  test::check_layer(chain, o);
}

TEST_CASE("The reference 8x8 affine flow type compiles and has 12672 parameters") {
  Flow<Repeat<16, AffineCoupling_<ConvNet<Hidden<8, 8>, Kernel<3>>>>, Lattice<8, 8>, float> flow(1);
  CHECK(flow.num_params() == 12672);
  Flow<Repeat<16, AffineCoupling_<>>, Lattice<8, 8>> short_spelling;
  CHECK(short_spelling.num_params() == 12672);
}

TEST_CASE("Affine flow symmetries: Z2-equivariant without bias, commutes with translations by two sites") {
  using Lat = Lattice<4, 4>;
  using Fl = Flow<Repeat<4, AffineCoupling_<ConvNet<Hidden<4>>>>, Lat, double>;
  Fl flow(7);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  Fl::field_type x(3), xm(3), xs(3);
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < 3; ++b) x(s, b) = normal(rng), xm(s, b) = -x(s, b);
  const auto [y, ld] = flow.forward(x);
  const auto [ym, ldm] = flow.forward(xm);
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < 3; ++b) CHECK(ym(s, b) == doctest::Approx(-y(s, b)).epsilon(1e-13));
  for (index_t b = 0; b < 3; ++b) CHECK(ldm[b] == doctest::Approx(ld[b]).epsilon(1e-13));
  // translation by two sites along direction 1 keeps parities: f(T x) = T f(x)
  for (index_t site = 0; site < Lat::volume; ++site)
    for (index_t b = 0; b < 3; ++b) xs.at_site(Lat::shift(site, 1, 2), 0, b) = x.at_site(site, 0, b);
  const auto [ys, lds] = flow.forward(xs);
  for (index_t site = 0; site < Lat::volume; ++site)
    for (index_t b = 0; b < 3; ++b)
      CHECK(ys.at_site(Lat::shift(site, 1, 2), 0, b) == doctest::Approx(y.at_site(site, 0, b)).epsilon(1e-12));
  for (index_t b = 0; b < 3; ++b) CHECK(lds[b] == doctest::Approx(ld[b]).epsilon(1e-12));
}
