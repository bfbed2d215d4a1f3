// SPDX-License-Identifier: MIT
// The prior's SIMD sampler against the scalar (device) path, lane by lane. Built twice: into the
// main test runner (the machine's widest SIMD) and into a runner without -march flags (SSE2 on
// x86-64: packs of two doubles and no FMA instructions), where it must agree all the same.
#include <doctest/doctest.h>

#include <cstring>

#include "support/bits.hpp"
#include <normflow/prior/normal_prior.hpp>
#include <normflow/random/philox.hpp>
#include <normflow/random/philox_simd.hpp>

using namespace normflow;

TEST_CASE("The SIMD sampler gives CounterRng's bits and normals lane by lane, bit for bit") {
  INFO("SIMD: ", simd::arch_name());
  using VD = simd::native_pack<double>;
  constexpr int W = int(simd::pack_size<VD>), N = 3;
  const std::uint32_t b0s[] = {0, 8, 1000, 0xffffffffu - 5};  // the last wraps the counter
  for (std::uint64_t seed : {0ull, 0x299f31d0a4093822ull})
    for (std::uint32_t stream : {0u, 77u})
      for (std::uint32_t b0 : b0s)
        for (std::uint32_t site : {0u, 13u})
          for (std::uint32_t j : {0u, 2u}) {
            const CounterRng rng{seed, stream};
            typename detail::RngPacks<VD>::VU w[4][N];
            detail::philox_lanes<VD, N>(rng, b0, site, j, w);
            VD z1[N], z2[N];
            detail::normal_pair_lanes<VD, N>(rng, b0, site, j, z1, z2);
            int bad = 0;
            for (int n = 0; n < N; ++n)
              for (int l = 0; l < W; ++l) {
                const std::uint32_t b = b0 + std::uint32_t(n * W + l);
                const auto ref = rng.bits(b, site, j);
                for (int q = 0; q < 4; ++q) bad += w[q][n].get(std::size_t(l)) != ref[std::size_t(q)];
                const DoublePair z = rng.normal_pair(b, site, j);
                const double s1 = z1[n].get(std::size_t(l)), s2 = z2[n].get(std::size_t(l));
                bad += std::memcmp(&z.first, &s1, sizeof(double)) != 0;
                bad += std::memcmp(&z.second, &s2, sizeof(double)) != 0;
              }
            CHECK(bad == 0);
          }
}

TEST_CASE_TEMPLATE("NormalPrior's host sampler equals the per-element kernel, any components and padding", T, float,
                   double) {
  using Lat = Lattice<4, 6>;
  NormalPrior<Lat, T, Channels<3>> prior(0.25, 1.5, 11);
  Field<Lat, T, Channels<3>> host(37), elem(37);  // 37: a partial last pack and padding lanes
  prior.sample_into(host, exec::OpenMP{});
  const detail::NormalFillKernel<Lat, default_order_t<Lat>, T, 3> k{elem.view(), CounterRng{11, 0}, 0.25, 1.5};
  for (offset_t i = 0; i < offset_t(Lat::volume) * elem.padded_batch(); ++i) k(i);
  CHECK(test::same_bits(host, elem));
}
