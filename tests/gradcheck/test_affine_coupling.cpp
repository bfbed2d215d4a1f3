// SPDX-License-Identifier: MIT
// AffineCoupling_ and AdditiveCoupling_: the layer contract in double, whole flows, symmetries.
#include <doctest/doctest.h>

#include <random>
#include <span>
#include <vector>

#include "support/layer_checks.hpp"
#include <normflow/flow/flow.hpp>
#include <normflow/layer/coupling.hpp>
#include <normflow/layer/module_list.hpp>
#include <normflow/layer/dist_convertor_layer.hpp>

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

TEST_CASE("ModuleList_ of mixed layers satisfies the layer contract") {
  using F = Field<Lattice<4, 4>, double>;
  ModuleList_<F> net;
  net.append<Affine_>().append<AffineCoupling_<ConvNet<Hidden<4>>>>().append<AffineCoupling_<ConvNet<Hidden<4>>>>();
  net.push_back(Tanh_::bind<F>{}).append<AdditiveCoupling_<ConvNet<Hidden<3>>>>();
  CHECK(net.size() == 5);
  CHECK(net.num_params() == 2 + 2 * (36 + 72) + 0 + (27 + 27));
  test::check_layer(net);
  // the same layers in a compile-time Chain give the same output
  using C = chain_t<Sequence<Affine_, AffineCoupling_<ConvNet<Hidden<4>>>, AffineCoupling_<ConvNet<Hidden<4>>>, Tanh_,
                             AdditiveCoupling_<ConvNet<Hidden<3>>>>,
                    F>;
  const C chain;
  REQUIRE(chain.num_params() == net.num_params());
  std::vector<double> p(net.num_params());
  net.init_params(std::span<double>(p), 5);
  std::vector<double> p2(chain.num_params());
  chain.init_params(std::span<double>(p2), 5);
  CHECK(p == p2);
  F x(2), y1(2), y2(2);
  for (index_t s = 0; s < 16; ++s) x(s, 0) = 0.1 * s, x(s, 1) = -0.05 * s;
  std::vector<double> l1(2, 0.0), l2(2, 0.0);
  ModuleList_<F>::tape_type t1;
  C::tape_type t2;
  net.forward(std::span<const double>(p), x, y1, std::span<double>(l1), t1);
  chain.forward(std::span<const double>(p2), x, y2, std::span<double>(l2), t2);
  CHECK(test::max_abs_diff(y1, y2) == 0.0);
  CHECK(l1 == l2);
  F g(2);
  std::vector<double> gl(2, 1.0), gp(net.num_params());
  ModuleList_<F>::tape_type fresh;
  CHECK_THROWS_AS(net.backward(std::span<const double>(p), fresh, x, std::span<const double>(gl), g, std::span<double>(gp)),
                  ShapeError);
}

TEST_CASE("forward_path is forward followed by reverse_backward, bit for bit (Flow, Chain, ModuleList_)") {
  // a float flow with both parities, a nonzero log-det cotangent and a batch with padding lanes
  using Lat = Lattice<8, 8>;
  using Fl = Flow<Repeat<4, AffineCoupling_<ConvNet<Hidden<8, 8>, Kernel<3>>>>, Lat, float>;
  Fl flow(11);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  const index_t B = 37;
  Fl::field_type x(B), gx(B), y1(B), y2(B), gy1(B), gy2(B);
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < B; ++b) x(s, b) = normal(rng), gx(s, b) = normal(rng);
  std::vector<float> gl(static_cast<std::size_t>(B)), l1(static_cast<std::size_t>(B), 0.f), l2(l1);
  for (float& v : gl) v = normal(rng);
  Fl::tape_type t1, t2;
  flow.forward(x, y1, std::span<float>(l1), t1);
  flow.reverse_backward(t1, gx, std::span<const float>(gl), gy1, false);
  flow.forward_path(x, y2, std::span<float>(l2), t2, gx, std::span<const float>(gl), gy2);
  CHECK(test::max_abs_diff(y1, y2) == 0.0);
  CHECK(test::max_abs_diff(gy1, gy2) == 0.0);
  CHECK(l1 == l2);
  CHECK(test::max_abs_diff(gy1, gx) > 0.0);  // the adjoint did something
  // forward_path's tape records no y: backward on it is backward after forward, bit for bit, and
  // reverse_backward on it is refused
  Fl::field_type gyb(B), gxb1(B), gxb2(B);
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < B; ++b) gyb(s, b) = normal(rng);
  flow.zero_grads();
  flow.backward(t1, gyb, std::span<const float>(gl), gxb1);
  const std::vector<float> grads1(flow.grads().begin(), flow.grads().end());
  flow.zero_grads();
  flow.backward(t2, gyb, std::span<const float>(gl), gxb2);
  CHECK(test::max_abs_diff(gxb1, gxb2) == 0.0);
  CHECK(std::vector<float>(flow.grads().begin(), flow.grads().end()) == grads1);
  CHECK_THROWS_AS(flow.reverse_backward(t2, gx, std::span<const float>(gl), gy2, false), ShapeError);
  flow.forward(x, y2, std::span<float>(l2), t2);  // a forward records y again
  flow.reverse_backward(t2, gx, std::span<const float>(gl), gy2, false);
  CHECK(test::max_abs_diff(gy1, gy2) == 0.0);

  // a runtime list of mixed layers, whose reverse adjoints differ from their forward ones
  using F = Field<Lattice<4, 4>, double>;
  ModuleList_<F> net;
  net.append<Affine_>().append<AffineCoupling_<ConvNet<Hidden<4>>>>().append<AdditiveCoupling_<ConvNet<Hidden<3>>>>();
  net.push_back(Tanh_::bind<F>{});
  std::vector<double> p(net.num_params());
  net.init_params(std::span<double>(p), 9);
  F xd(3), gxd(3), a1(3), a2(3), g1(3), g2(3);
  for (index_t s = 0; s < 16; ++s)
    for (index_t b = 0; b < 3; ++b) xd(s, b) = 0.1 * double(s) - 0.3 * double(b), gxd(s, b) = std::cos(double(s + b));
  std::vector<double> gld = {0.5, -1.0, 2.0}, m1(3, 0.0), m2(3, 0.0);
  ModuleList_<F>::tape_type u1, u2;
  net.forward(std::span<const double>(p), xd, a1, std::span<double>(m1), u1);
  net.reverse_backward(std::span<const double>(p), u1, gxd, std::span<const double>(gld), g1, std::span<double>{});
  net.forward_path(std::span<const double>(p), xd, a2, std::span<double>(m2), u2, gxd, std::span<const double>(gld), g2);
  CHECK(test::max_abs_diff(a1, a2) == 0.0);
  CHECK(test::max_abs_diff(g1, g2) == 0.0);
  CHECK(m1 == m2);
}

TEST_CASE("Float flows agree with double flows to 1e-5") {
  using Lat = Lattice<8, 8>;
  auto compare = [](auto& fd, auto& ff) {
    for (std::size_t k = 0; k < fd.params().size(); ++k) ff.params()[k] = float(fd.params()[k]);
    std::mt19937_64 rng(9);
    std::normal_distribution<double> normal;
    typename std::remove_reference_t<decltype(fd)>::field_type xd(20);
    typename std::remove_reference_t<decltype(ff)>::field_type xf(20);
    for (index_t s = 0; s < Lat::volume; ++s)
      for (index_t b = 0; b < 20; ++b) {
        xf(s, b) = float(normal(rng));
        xd(s, b) = double(xf(s, b));
      }
    const auto rd = fd.forward(xd);
    const auto rf = ff.forward(xf);
    double max_rel = 0, max_rel_ld = 0;
    for (index_t s = 0; s < Lat::volume; ++s)
      for (index_t b = 0; b < 20; ++b)
        max_rel = std::max(max_rel, std::abs(double(rf.y(s, b)) - rd.y(s, b)) / std::max(1.0, std::abs(rd.y(s, b))));
    for (index_t b = 0; b < 20; ++b)
      max_rel_ld = std::max(max_rel_ld, std::abs(double(rf.log_det[b]) - rd.log_det[b]) / std::max(1.0, std::abs(rd.log_det[b])));
    CAPTURE(max_rel);
    CAPTURE(max_rel_ld);
    CHECK(max_rel < 1e-5);
    CHECK(max_rel_ld < 1e-5);
  };
  {
    Flow<Repeat<16, AffineCoupling_<>>, Lat, double> fd(4);
    Flow<Repeat<16, AffineCoupling_<>>, Lat, float> ff(4);
    compare(fd, ff);
  }
  {
    Flow<Repeat<4, RQSplineCoupling_<5>>, Lat, double> fd(4);
    Flow<Repeat<4, RQSplineCoupling_<5>>, Lat, float> ff(4);
    compare(fd, ff);
  }
}

TEST_CASE("Two flows of one type, interleaved on one thread, give what each gives alone (shared backward scratch)") {
  // the backward pass's transient buffers are per thread and shared by every layer of a type
  // (detail/thread_scratch.hpp); interleaving two flows with different batches and lattices of
  // the same type must not let one see the other's scratch
  using Lat = Lattice<6, 6>;
  using Fl = Flow<Repeat<4, AffineCoupling_<ConvNet<Hidden<5, 3>, Bias<true>>>>, Lat, double>;
  struct Result {
    std::vector<double> y, gx, grads;
  };
  Fl a(11), b(12);
  auto input = [](index_t batch, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal;
    Fl::field_type x(batch);
    for (index_t s = 0; s < Lat::volume; ++s)
      for (index_t k = 0; k < batch; ++k) x(s, k) = normal(rng);
    return x;
  };
  const Fl::field_type xa = input(5, 1), xb = input(19, 2);
  struct Pass {
    Fl* flow;
    const Fl::field_type* x;
    Fl::field_type y, gx;
    std::vector<double> ld, gl;
    Fl::tape_type tape;
    Pass(Fl& f, const Fl::field_type& in)
        : flow(&f), x(&in), y(in.batch()), gx(in.batch()), ld(std::size_t(in.batch()), 0.0),
          gl(std::size_t(in.batch()), 0.5) {}
    void forward() { flow->forward(*x, y, std::span<double>(ld), tape); }
    void backward() {
      flow->zero_grads();
      flow->backward(tape, y, std::span<const double>(gl), gx);  // cotangent gy = y
    }
    Result result() const {
      return {{y.flat().begin(), y.flat().end()}, {gx.flat().begin(), gx.flat().end()},
              {flow->grads().begin(), flow->grads().end()}};
    }
  };
  auto alone = [&](Fl& f, const Fl::field_type& x) {
    Pass p(f, x);
    p.forward();
    p.backward();
    return p.result();
  };
  const Result ra = alone(a, xa), rb = alone(b, xb);
  Pass pa(a, xa), pb(b, xb);
  pa.forward();
  pb.forward();
  pa.backward();
  const Result ia = pa.result();
  pb.backward();
  const Result ib = pb.result();
  auto same = [](const Result& u, const Result& v) { return u.y == v.y && u.gx == v.gx && u.grads == v.grads; };
  CHECK(same(ia, ra));
  CHECK(same(ib, rb));
  CHECK(ra.grads != rb.grads);
}

TEST_CASE("Couplings read their input in place where Chain hands them their tape's x: the bits of a copy") {
  using Lat = Lattice<8, 8>;
  using F = Field<Lat, float>;
  using C = chain_t<Repeat<3, AffineCoupling_<ConvNet<Hidden<8, 8>, Kernel<3>>>>, F>;
  const C chain;
  std::vector<float> p(chain.num_params()), gp1(p.size(), 0.f), gp2(p.size(), 0.f);
  chain.init_params(std::span<float>(p), 5);
  for (float& v : p) v *= 3.f;  // away from the identity
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal;
  const index_t B = 32;  // no padding lanes (any SIMD width here): the input can be read in place
  F x(B), gy(B), y1(B), y2(B), gx1(B), gx2(B), a(B), b(B), ga(B), gb(B);
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t k = 0; k < B; ++k) x(s, k) = normal(rng), gy(s, k) = normal(rng);
  std::vector<float> gl(static_cast<std::size_t>(B)), l1(gl.size(), 0.f), l2(gl.size(), 0.f);
  for (float& v : gl) v = normal(rng);
  auto slice = [&](std::vector<float>& v, std::size_t k) {
    return std::span<float>(v).subspan(chain.offset(k), chain.offset(k + 1) - chain.offset(k));
  };
  // the chain: layers 1 and 2 get their input in their tape's x (Chain::link) and read it there
  C::tape_type t;
  chain.forward(std::span<const float>(p), x, y1, std::span<float>(l1), t);
  CHECK_FALSE(std::get<0>(t.layers).ws.input_borrowed());  // the caller's x: copied
  CHECK(std::get<1>(t.layers).ws.input_borrowed());
  CHECK(std::get<2>(t.layers).ws.input_borrowed());
  chain.backward(std::span<const float>(p), t, gy, std::span<const float>(gl), gx1, std::span<float>(gp1));
  // layer by layer on fields of their own: every conditioner copies its input
  auto& L0 = chain.layer<0>();
  auto& L1 = chain.layer<1>();
  auto& L2 = chain.layer<2>();
  std::remove_cvref_t<decltype(L0)>::tape_type t0;
  std::remove_cvref_t<decltype(L1)>::tape_type t1;
  std::remove_cvref_t<decltype(L2)>::tape_type t2;
  L0.forward(slice(p, 0), x, a, std::span<float>(l2), t0);
  L1.forward(slice(p, 1), a, b, std::span<float>(l2), t1);
  L2.forward(slice(p, 2), b, y2, std::span<float>(l2), t2);
  CHECK_FALSE(t1.ws.input_borrowed());
  L2.backward(slice(p, 2), t2, gy, std::span<const float>(gl), gb, slice(gp2, 2));
  L1.backward(slice(p, 1), t1, gb, std::span<const float>(gl), ga, slice(gp2, 1));
  L0.backward(slice(p, 0), t0, ga, std::span<const float>(gl), gx2, slice(gp2, 0));
  CHECK(test::max_abs_diff(y1, y2) == 0.0);
  CHECK(l1 == l2);
  CHECK(test::max_abs_diff(gx1, gx2) == 0.0);
  CHECK(gp1 == gp2);
  CHECK(test::max_abs_diff(gx1, gy) > 0.0);
}
