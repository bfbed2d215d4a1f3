// SPDX-License-Identifier: MIT
// Execution policies: every index once, deterministic reductions, lane kernels.
#include <doctest/doctest.h>

#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "support/backends.hpp"
#include <normflow/exec/exec.hpp>
#include <normflow/simd/pack.hpp>

using namespace normflow;

namespace {
struct CountLanes {
  int* hits;
  index_t padded;
  template <class V>
  NORMFLOW_HOST_DEVICE void apply(index_t o, index_t b) const noexcept {
    for (index_t l = 0; l < simd::pack_size<V>; ++l) hits[o * padded + b + l] += 1;
  }
};
struct Term {
  NORMFLOW_HOST_DEVICE double operator()(offset_t i) const noexcept { return 1.0 / double(1 + i) + 1e-3 * double(i % 7); }
};
}  // namespace

TEST_CASE_TEMPLATE_DEFINE("parallel_for and parallel_for_lanes visit every index once", Exec, visit_id) {
  std::vector<int> hits(1000, 0);
  int* h = hits.data();
  exec::parallel_for(Exec{}, 1000, [=](offset_t i) { h[i] += 1; });
  CHECK(std::all_of(hits.begin(), hits.end(), [](int v) { return v == 1; }));

  const index_t outer = 5, padded = 64;
  std::vector<int> lanes(outer * padded, 0);
  exec::parallel_for_lanes<float>(Exec{}, outer, padded, CountLanes{lanes.data(), padded});
  CHECK(std::all_of(lanes.begin(), lanes.end(), [](int v) { return v == 1; }));
}
TEST_CASE_TEMPLATE_APPLY(visit_id, test::Backends);

TEST_CASE_TEMPLATE_DEFINE("parallel_reduce is bitwise reproducible across backends and thread counts", Exec, reduce_id) {
  const offset_t n = 100003;
  double serial = 0, other = 0;
  exec::parallel_reduce(exec::Serial{}, n, Term{}, serial);
  {
    test::ThreadCount two(2);
    exec::parallel_reduce(Exec{}, n, Term{}, other);
  }
  CHECK(serial == other);  // bitwise
  double plain = 0;
  for (offset_t i = 0; i < n; ++i) plain += Term{}(i);
  CHECK(serial == doctest::Approx(plain).epsilon(1e-12));
  double empty = 7;
  exec::parallel_reduce(Exec{}, 0, Term{}, empty);
  CHECK(empty == 0.0);
}
TEST_CASE_TEMPLATE_APPLY(reduce_id, test::Backends);

TEST_CASE("exec::Default is OpenMP on the host when compiled with OpenMP") {
#if defined(_OPENMP) && !defined(NORMFLOW_DEVICE_DEFAULT)
  CHECK(std::is_same_v<exec::HostDefault, exec::OpenMP>);
#endif
  static_assert(exec::Policy<exec::Serial> && exec::Policy<exec::OpenMP> && !exec::Policy<int>);
  CHECK(exec::max_threads() >= 1);
}

TEST_CASE("for_each_thread_block: contiguous blocks in thread order cover 0 to n once, and a block exception comes out") {
  for (int threads : {1, 2, 3}) {
    test::ThreadCount tc(threads);
    for (offset_t n : {0, 1, 2, 7, 100}) {
      CAPTURE(threads);
      CAPTURE(n);
      std::vector<int> hits(std::size_t(n), 0);
      std::vector<std::pair<offset_t, offset_t>> blocks(std::size_t(threads), {-1, -1});
      exec::for_each_thread_block(n, [&](offset_t lo, offset_t hi) {
        for (offset_t i = lo; i < hi; ++i) ++hits[std::size_t(i)];
#if defined(_OPENMP)
        blocks[std::size_t(omp_get_thread_num())] = {lo, hi};
#else
        blocks[0] = {lo, hi};
#endif
      });
      CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
      for (std::size_t t = 1; t < blocks.size(); ++t)
        if (blocks[t].first >= 0 && blocks[t - 1].first >= 0) CHECK(blocks[t].first == blocks[t - 1].second);
    }
    CHECK_THROWS_WITH_AS(exec::for_each_thread_block(10,
                                                     [](offset_t lo, offset_t) {
                                                       if (lo == 0) throw std::runtime_error("block 0 failed");
                                                     }),
                         "block 0 failed", std::runtime_error);
  }
}
