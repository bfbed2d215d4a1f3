// SPDX-License-Identifier: MIT
// Counter-based RNG: published test vectors, independence of threads, chunking and backends.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "support/backends.hpp"
#include "support/bits.hpp"
#include <normflow/prior/normal_prior.hpp>
#include <normflow/prior/uniform_prior.hpp>
#include <normflow/random/philox.hpp>

using namespace normflow;

TEST_CASE("Philox4x32-10 reproduces the Random123 known-answer vectors") {
  // kat_vectors of Random123 (Salmon et al., SC11): ctr, key -> output.
  using P = r123::Philox4x32_R<10>;
  struct Kat {
    P::ctr_type ctr;
    P::key_type key;
    P::ctr_type out;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, {{0, 0}}, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, {{0xffffffff, 0xffffffff}},
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, {{0xa4093822, 0x299f31d0}},
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& k : kats) CHECK(P{}(k.ctr, k.key) == k.out);
  // CounterRng maps (seed, stream, b, site, j) onto (key, ctr) as documented.
  const CounterRng rng{0x299f31d0a4093822ull, 0x03707344u};
  CHECK(rng.bits(0x243f6a88, 0x85a308d3, 0x13198a2e) == kats[2].out);
}

TEST_CASE("CounterRng: uniforms in (0, 1), normals with the right moments") {
  const CounterRng rng{12345, 0};
  double s1 = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n / 2; ++i) {
    const auto u = rng.uniform_pair(std::uint32_t(i), 0, 0);
    CHECK_UNARY(u.first > 0.0 && u.first < 1.0 && u.second > 0.0 && u.second < 1.0);
    const auto z = rng.normal_pair(std::uint32_t(i), 1, 0);
    s1 += z.first + z.second;
    s2 += z.first * z.first + z.second * z.second;
  }
  // mean 0 (sd 1/sqrt n), variance 1 (sd sqrt(2/n)): 5 sigma
  CHECK(std::abs(s1 / n) < 5 / std::sqrt(double(n)));
  CHECK(std::abs(s2 / n - 1) < 5 * std::sqrt(2.0 / n));
  CHECK(CounterRng::to_open_unit(0, 0) > 0.0);
  CHECK(CounterRng::to_open_unit(0xffffffffu, 0xffffffffu) < 1.0);
  CHECK(CounterRng::to_open_unit(0xffffffffu, 0xffffffffu) == 1.0 - 0x1.0p-53);
  CHECK(CounterRng::to_open_unit(0, 0) == 0x1.0p-53);
}

TEST_CASE_TEMPLATE("NormalPrior samples are bitwise identical with 1 and 2 OpenMP threads", T, float, double) {
  using Lat = Lattice<8, 8>;
  auto draw = [](int threads) {
    test::ThreadCount guard(threads);
    NormalPrior<Lat, T> prior(0.5, 2.0, 2024);
    auto a = prior.sample(100, exec::OpenMP{});
    auto b = prior.sample(37, exec::OpenMP{});  // second stream
    return std::pair{std::move(a), std::move(b)};
  };
  const auto one = draw(1), two = draw(2);
  CHECK(test::same_bits(one.first, two.first));
  CHECK(test::same_bits(one.second, two.second));
  CHECK_FALSE(test::same_bits(one.first, draw(1).second));
}

TEST_CASE("Sample b at site x does not depend on the batch size or the site order") {
  using Lat = Lattice<4, 6>;
  NormalPrior<Lat, double, Scalar, EvenOdd> p1(0, 1, 99);
  NormalPrior<Lat, double, Scalar, Lexicographic> p2(0, 1, 99);
  const auto small = p1.sample(3);
  const auto big = p2.sample(70);
  for (index_t site = 0; site < Lat::volume; ++site)
    for (index_t b = 0; b < 3; ++b) CHECK(small.at_site(site, 0, b) == big.at_site(site, 0, b));
  // padding lanes stay zero
  CHECK(small(0, 0, small.batch()) == 0.0);
}

TEST_CASE("Box-Muller's elementary functions: ln within 1 ulp, sin and cos of 2 pi u within 2^-52") {
  // detail::log_open_unit and detail::sincos_turn against libm (long double for the turns) on the
  // uniforms CounterRng makes: the extremes, both sides of every quadrant boundary, random ones
  std::vector<std::uint64_t> ks = {0, 1, 2, (1ull << 52) - 1, (1ull << 52) - 2, 1ull << 51, (1ull << 51) - 1};
  for (std::uint64_t q = 1; q < 4; ++q)
    for (std::uint64_t d = 0; d < 3; ++d) ks.push_back((q << 50) - 1 - d), ks.push_back((q << 50) + d);
  std::mt19937_64 gen(3);
  for (int i = 0; i < 200000; ++i) ks.push_back(gen() >> 12);
  double worst_log = 0, worst_sin = 0, worst_cos = 0;
  for (std::uint64_t k : ks) {
    const double u = (double(k) + 0.5) * 0x1.0p-52;
    const double l = detail::log_open_unit(u), le = std::log(u);
    if (le != 0) worst_log = std::max(worst_log, std::abs(l - le) / std::abs(std::nextafter(le, 0.0) - le));
    double sn, cs;
    detail::sincos_turn(u, sn, cs);
    const long double phi = 2.0L * 3.141592653589793238462643383279502884L * static_cast<long double>(u);
    worst_sin = std::max(worst_sin, double(std::abs(static_cast<long double>(sn) - std::sin(phi))));
    worst_cos = std::max(worst_cos, double(std::abs(static_cast<long double>(cs) - std::cos(phi))));
  }
  CHECK(worst_log <= 1.0);
  CHECK(worst_sin <= 0x1.0p-52);
  CHECK(worst_cos <= 0x1.0p-52);
}

TEST_CASE("float samples are the double samples rounded to float") {
  using Lat = Lattice<4, 4>;
  NormalPrior<Lat, float> pf(0, 1, 7);
  NormalPrior<Lat, double> pd(0, 1, 7);
  const auto f = pf.sample(20);
  const auto d = pd.sample(20);
  for (index_t s = 0; s < Lat::volume; ++s)
    for (index_t b = 0; b < 20; ++b) CHECK(f(s, 0, b) == float(d(s, 0, b)));
}

TEST_CASE_TEMPLATE_DEFINE("Priors draw bitwise identical fields on every backend", Exec, rng_backend_id) {
  using Lat = Lattice<8, 8>;
  NormalPrior<Lat, float> ref(0, 1, 5), other(0, 1, 5);
  const auto a = ref.sample(50, exec::Serial{});
  const auto b = other.sample(50, Exec{});
  CHECK(test::same_bits(a, b));
  UniformPrior<Lat, double, Channels<3>> uref(-1, 2, 6), uother(-1, 2, 6);
  CHECK(test::same_bits(uref.sample(9, exec::Serial{}), uother.sample(9, Exec{})));
}
TEST_CASE_TEMPLATE_APPLY(rng_backend_id, test::Backends);
