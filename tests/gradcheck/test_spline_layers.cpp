// SPDX-License-Identifier: MIT
// RQSplineCoupling_, DistConvertor_ and spline flows: the layer contract in double.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "support/layer_checks.hpp"
#include <normflow/flow/flow.hpp>
#include <normflow/layer/coupling.hpp>
#include <normflow/layer/dist_convertor_layer.hpp>

using namespace normflow;

TEST_CASE("DistConvertor_ layer satisfies the layer contract (options)") {
  using F = Field<Lattice<2, 2>, double>;
  for (bool symmetric : {false, true})
    for (bool final_scale : {false, true})
      for (bool smooth : {false, true}) {
        CAPTURE(symmetric);
        CAPTURE(final_scale);
        CAPTURE(smooth);
        const DistConvertorLayer<6, F> layer(0, {.knots_len = 6, .symmetric = symmetric, .smooth = smooth,
                                                 .final_scale = final_scale});
        CHECK(layer.num_params() == std::size_t(3 * 6 - 2 + (final_scale ? 1 : 0)));
        test::check_layer(layer);
      }
  test::LayerCheckOptions one;
  one.batch = 19;
  test::check_layer(DistConvertorLayer<10, Field<Lattice<1>, double>>(0, {.knots_len = 10, .symmetric = true}), one);
}

TEST_CASE("DistConvertor_ net: the seed spelling, 28 parameters, odd when symmetric") {
  DistConvertor_<Lattice<1>> net_{{.knots_len = 10, .symmetric = true}};
  CHECK(net_.num_params() == 28);
  CHECK_THROWS_WITH_AS((DistConvertor_<Lattice<1>>{{.knots_len = 12}}), doctest::Contains("knots_len = 12"),
                       ParameterError);
  DistConvertor_<Lattice<1>, double> sym{{.symmetric = true}};
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  for (double& v : sym.params()) v = 0.5 * normal(rng);
  Field<Lattice<1>, double> x(9), xm(9);
  for (index_t b = 0; b < 9; ++b) x(0, b) = 0.7 * (b - 4), xm(0, b) = -x(0, b);
  const auto [y, ld] = sym.forward(x);
  const auto [ym, ldm] = sym.forward(xm);
  for (index_t b = 0; b < 9; ++b) {
    CHECK(ym(0, b) == doctest::Approx(-y(0, b)).epsilon(1e-12).scale(1e-12));
    CHECK(ldm[b] == doctest::Approx(ld[b]).epsilon(1e-12));
  }
}

namespace {
// large minimum bins and derivatives: the safeguards' own derivatives are exercised
struct Wide {
  template <index_t K>
  static RQSpline<K> make() {
    RQSpline<K> s = SplineLinearTails::make<K>();
    s.min_bin = 0.1;
    s.min_derivative = 0.2;
    return s;
  }
};
struct Bad {
  template <index_t K>
  static RQSpline<K> make() {
    RQSpline<K> s{};
    s.min_bin = 0.3;  // 4 bins of at least 0.3 do not fit
    return s;
  }
};
}  // namespace

TEST_CASE("RQSplineCoupling_ satisfies the layer contract") {
  using Net = ConvNet<Hidden<4>, Kernel<3>>;
  test::LayerCheckOptions o;
  o.param_jitter = 0.1;
  test::check_layer(RQSplineCoupling_<5, Net>::bind<Field<Lattice<4, 4>, double>>(0), o);
  test::check_layer(RQSplineCoupling_<5, Net>::bind<Field<Lattice<2, 2>, double>>(1), o);
  test::check_layer(RQSplineCoupling_<3, Net, SplineLinearTails>::bind<Field<Lattice<4, 4>, double>>(1), o);
  test::check_layer(RQSplineCoupling_<4, Net, OddSplineLinearTailsSafe>::bind<Field<Lattice<4, 4>, double>>(0), o);
  test::check_layer(RQSplineCoupling_<5, Net, Wide>::bind<Field<Lattice<2, 2>, double>>(1), o);
  CHECK_THROWS_WITH_AS((RQSplineCoupling_<5, Net, Bad>::bind<Field<Lattice<2, 2>, double>>(0)),
                       doctest::Contains("min_bin = 0.3"), ParameterError);
}

TEST_CASE("A 4-layer spline-coupling flow satisfies the layer contract: short spellings compile") {
  using F = Field<Lattice<4, 4>, double>;
  using C = chain_t<Repeat<4, Coupling<Spline<5>, ConvNet<Hidden<4>>>>, F>;
  const C chain;
  CHECK(chain.num_params() == 4 * (1 * 4 * 9 + 4 * 13 * 9));
  test::LayerCheckOptions o;
  o.param_jitter = 0.05;
  test::check_layer(chain, o);

  Flow<Coupling<Spline<10>>, Lattice<8, 8>> small;
  CHECK(small.num_params() == 72 + 576 + 8 * 28 * 9);
  Flow<Repeat<4, Coupling<Affine>>, Lattice<8, 8>> affine4;
  CHECK(affine4.num_params() == 4 * 792);
  // reference 6.5's coupling block: 4 ConvNets 1 -> 8 -> 8 -> 13, 6336 parameters
  Flow<Repeat<4, RQSplineCoupling_<5>>, Lattice<8, 8>> ref65;
  CHECK(ref65.num_params() == 6336);
}

TEST_CASE("Spline flows commute with translations by two sites") {
  // (A spline coupling is not Z2-equivariant even with an odd conditioner: the knots come from
  // softmax(w), and softmax(-w) is not the mirror of softmax(w). Only the affine flow is.)
  using Lat = Lattice<4, 4>;
  using Fl = Flow<Sequence<SplineConvertor_<6, true>, Repeat<2, RQSplineCoupling_<5, ConvNet<Hidden<4>, Bias<true>>>>>,
                  Lat, double>;
  Fl flow(11);
  std::mt19937_64 rng(1);
  std::normal_distribution<double> normal;
  for (double& v : flow.params()) v += 0.1 * normal(rng);
  Fl::field_type x(3), xs(3);
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < 3; ++b) x(s, b) = normal(rng);
  for (index_t dir = 0; dir < 2; ++dir) {
    for (index_t site = 0; site < Lat::volume; ++site)
      for (index_t b = 0; b < 3; ++b) xs.at_site(Lat::shift(site, dir, 2), 0, b) = x.at_site(site, 0, b);
    const auto [y, ld] = flow.forward(x);
    const auto [ys, lds] = flow.forward(xs);
    for (index_t site = 0; site < Lat::volume; ++site)
      for (index_t b = 0; b < 3; ++b)
        CHECK(ys.at_site(Lat::shift(site, dir, 2), 0, b) == doctest::Approx(y.at_site(site, 0, b)).epsilon(1e-12));
    for (index_t b = 0; b < 3; ++b) CHECK(lds[b] == doctest::Approx(ld[b]).epsilon(1e-12));
  }
}
