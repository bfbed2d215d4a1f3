// SPDX-License-Identifier: MIT
// normflow-demo: samples the Gaussian prior on an 8x8 lattice and prints statistics of the
// reference phi^4 action (kappa = 0.67, m_sq = -2.68, lambd = 0.5) over the samples, the prior's
// log-density, and the ESS of the prior as a (bad) proposal for exp(-S).
//
//   normflow-demo [--batch N] [--seed S] [--threads T]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <normflow/normflow.hpp>

namespace {
long long parse_int(const char* flag, const char* text, long long lo, long long hi) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v < lo || v > hi) {
    std::fprintf(stderr, "normflow-demo: %s expects an integer in [%lld, %lld], got '%s'\n", flag, lo, hi, text);
    std::exit(2);
  }
  return v;
}
}  // namespace

int main(int argc, char** argv) {
  using namespace normflow;
  using Lat = Lattice<8, 8>;
  long long batch = 4096, seed = 1, threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: normflow-demo [--batch N] [--seed S] [--threads T]\n"
                  "Samples N(0,1) on an 8x8 lattice and prints phi^4 action statistics.\n");
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "normflow-demo: unknown option or missing value: '%s' (see --help)\n", a.c_str());
      return 2;
    }
    if (a == "--batch") batch = parse_int("--batch", argv[++i], 2, 1 << 24);
    else if (a == "--seed") seed = parse_int("--seed", argv[++i], 0, (1ll << 62));
    else if (a == "--threads") threads = parse_int("--threads", argv[++i], 1, 1024);
    else {
      std::fprintf(stderr, "normflow-demo: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (threads > 0) exec::set_num_threads(int(threads));

  NormalPrior<Lat, double> prior(0.0, 1.0, std::uint64_t(seed));
  const ScalarPhi4Action action{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};

  const auto t0 = std::chrono::steady_clock::now();
  const auto [phi, log_r] = prior.sample_(batch);
  const auto S = action.action(phi);
  const auto t1 = std::chrono::steady_clock::now();

  std::vector<double> log_p(S.size()), mag(S.size());
  for (std::size_t b = 0; b < S.size(); ++b) {
    log_p[b] = -S[b];
    double m = 0;
    for (index_t s = 0; s < Lat::volume; ++s) m += phi(s, index_t(b));
    mag[b] = std::abs(m) / Lat::volume;
  }
  const MeanStd s = mean_std(S), lr = mean_std(log_r), m = mean_std(mag);
  const double n = double(batch);
  std::printf("normflow %s: Gaussian prior N(0,1) on an 8x8 lattice, %lld samples, seed %lld, %d threads, %s\n",
              version_string, batch, seed, exec::max_threads(), simd::arch_name());
  std::printf("phi^4 action (kappa = 0.67, m_sq = -2.68, lambd = 0.5):\n");
  std::printf("  <S>        = %.4f +- %.4f   (exact under the prior: 64 * 3 * 0.5 = 96)\n", s.mean, s.std / std::sqrt(n));
  std::printf("  std(S)     = %.4f\n", s.std);
  std::printf("  <log r>    = %.4f +- %.4f   (exact: -32 (1 + ln 2 pi) = %.4f)\n", lr.mean, lr.std / std::sqrt(n),
              -32.0 * (1.0 + std::log(2.0 * 3.14159265358979323846)));
  std::printf("  <|M|>/V    = %.4f +- %.4f\n", m.mean, m.std / std::sqrt(n));
  std::printf("  ESS of the prior as a proposal for exp(-S): %.3e\n", ess(log_r, log_p));
  std::printf("  time: %.3f ms for sampling, log r and S\n",
              std::chrono::duration<double, std::milli>(t1 - t0).count());
  return 0;
}
