// SPDX-License-Identifier: MIT
// normflow: normalizing flows for lattice field theory (header-only C++20).
// simd::fma is one rounding on scalars and packs (xsimd 8.1's fma is not on AVX-512), and the
// float tanh of the conditioners (a rational approximation) is accurate, odd and saturates.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include <normflow/layer/conditioner/activation.hpp>
#include <normflow/simd/pack.hpp>

namespace {

using namespace normflow;

/// a = c0 = 1 + 2^-k with 2k > digits: a * a = 1 + 2^(1-k) + 2^-2k is not representable; rounded
/// once (fused) a * a - (1 + 2^(1-k)) is 2^-2k, rounded twice it is 0.
template <class T>
struct FusedCase {
  static constexpr int k = std::numeric_limits<T>::digits / 2 + 1;
  const T a = T(1) + std::ldexp(T(1), -k);
  const T c = -(T(1) + std::ldexp(T(1), 1 - k));
  const T fused = std::ldexp(T(1), -2 * k);
};

template <class T>
void check_fused() {
  const FusedCase<T> f;
  CHECK(simd::fma(f.a, f.a, f.c) == f.fused);
  using V = simd::native_pack<T>;
  const V r = simd::fma(V(f.a), V(f.a), V(f.c));
  for (index_t i = 0; i < simd::pack_size<V>; ++i) CHECK(simd::lane(r, i) == f.fused);
}

/// Units in the last place of float at the correctly rounded value of tanh(x).
double ulp_error(float got, double x) {
  const double exact = std::tanh(x);
  const float rounded = float(exact);
  const float next = std::nextafter(std::fabs(rounded), 2.0f);
  const double ulp = double(next) - double(std::fabs(rounded));
  return std::fabs(double(got) - exact) / ulp;
}

}  // namespace

TEST_CASE("simd::fma rounds once, on scalars and on the native packs, float and double") {
  check_fused<float>();
  check_fused<double>();
}

TEST_CASE("The float tanh of float packs is within 5 ulp, odd, exact near 0 and saturates") {
  using V = simd::native_pack<float>;
  constexpr index_t W = simd::pack_size<V>;
  double worst = 0;
  bool odd = true;
  alignas(64) float xs[W];
  for (int n = -400000; n < 400000; n += W) {
    for (index_t i = 0; i < W; ++i) xs[i] = float(n + i) * 3e-5f;  // [-12, 12]
    const V x = simd::load<V>(xs);
    const V y = detail::TanhActivation::f(x);
    const V ym = detail::TanhActivation::f(V(0.0f) - x);
    for (index_t i = 0; i < W; ++i) {
      worst = std::max(worst, ulp_error(simd::lane(y, i), double(xs[i])));
      odd = odd && simd::lane(ym, i) == -simd::lane(y, i);
    }
  }
  CAPTURE(worst);
  CHECK(worst <= 5.0);
  CHECK(odd);
  const V big = detail::TanhActivation::f(V(30.0f)), tiny = detail::TanhActivation::f(V(1e-5f));
  CHECK(simd::lane(big, 0) == 1.0f);
  CHECK(simd::lane(tiny, 0) == 1e-5f);
}
