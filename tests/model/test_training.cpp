// SPDX-License-Identifier: MIT
// Model, trainer, posterior and MCMC: the seed's 1-dof example, the path-gradient estimator,
// reproducibility and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include <unistd.h>
#include <vector>

#include "support/backends.hpp"
#include <normflow/normflow.hpp>

using namespace normflow;

TEST_CASE("The seed's 1-dof example: ESS >= 0.995 and MCMC acceptance >= 0.98 for three seeds") {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    CAPTURE(seed);
    NormalPrior<Lattice<1>> prior(0, 1, seed);
    ScalarPhi4Action action{.kappa = 0, .m_sq = -2.0, .lambd = 0.2};
    DistConvertor_<Lattice<1>> net_{{.knots_len = 10, .symmetric = true}};
    Model model{prior, net_, action};
    model.trainer.run_training({.n_epochs = 1000, .batch_size = 64, .lr = 0.01, .progress = Progress::never});
    const auto m = model.compute_metrics(4096);
    CHECK(m.ess >= 0.995);
    for (int k = 0; k < 16; ++k) model.mcmc.sample(1024);
    CHECK(model.mcmc.acceptance_rate() >= 0.98);
    CHECK(model.trainer.current_epoch() == 1000);
  }
}

namespace {
// Gaussian target S = (m^2/2) phi^2 per site (kappa = 0, lambd = 0): p = N(0, 1/m^2) per site.
// The flow y = softplus(w_s) x + w_b with softplus(w_s) = 1/m, w_b = 0 maps N(0, 1) onto it exactly.
double softplus_inverse(double a) { return std::log(std::expm1(a * std::log(2.0))) / std::log(2.0); }
}  // namespace

TEST_CASE("Path gradient: zero for every sample when q = p, while the total gradient is not") {
  using Lat = Lattice<2, 2>;
  const double m_sq = 2.5;
  NormalPrior<Lat, double> prior(0, 1, 9);
  const ScalarPhi4Action action{.kappa = 0, .m_sq = m_sq, .lambd = 0};
  Flow<Affine_, Lat, double> net_;
  net_.params()[0] = softplus_inverse(1 / std::sqrt(m_sq));
  net_.params()[1] = 0;
  Model model{prior, net_, action};
  using Tr = Trainer<decltype(model)>;
  for (int rep = 0; rep < 5; ++rep) {
    Tr::Buffers buf(1);  // one sample: the per-sample gradient
    TrainConfig c{.batch_size = 1};
    c.path_gradient = true;
    model.trainer.step(c, 1.0, buf);
    for (double g : model.net_.grads()) CHECK(std::abs(g) < 1e-12);
    c.path_gradient = false;
    model.trainer.step(c, 1.0, buf, false);  // same x
    double norm = 0;
    for (double g : model.net_.grads()) norm += g * g;
    CHECK(std::sqrt(norm) > 1e-3);
  }
}

TEST_CASE("Path and total gradient agree in expectation when q != p (4 sigma)") {
  using Lat = Lattice<2, 2>;
  NormalPrior<Lat, double> prior(0, 1, 21);
  const ScalarPhi4Action action{.kappa = 0.3, .m_sq = -0.5, .lambd = 0.4};
  Flow<Sequence<Affine_, SplineConvertor_<4>>, Lat, double> net_(3);
  std::mt19937_64 rng(4);
  std::normal_distribution<double> normal;
  for (double& v : net_.params()) v = 0.3 * normal(rng);
  Model model{prior, net_, action};
  using Tr = Trainer<decltype(model)>;
  const std::size_t P = model.net_.num_params();
  const int batches = 400;
  std::vector<double> sum(P, 0.0), sum2(P, 0.0), sum_plain(P, 0.0);
  Tr::Buffers buf(32);
  TrainConfig c{.batch_size = 32};
  for (int k = 0; k < batches; ++k) {
    c.path_gradient = true;
    model.trainer.step(c, 1.0, buf);
    const std::vector<double> gpath(model.net_.grads().begin(), model.net_.grads().end());
    c.path_gradient = false;
    model.trainer.step(c, 1.0, buf, false);
    for (std::size_t i = 0; i < P; ++i) {
      const double d = gpath[i] - model.net_.grads()[i];
      sum[i] += d;
      sum2[i] += d * d;
      sum_plain[i] += model.net_.grads()[i];
    }
  }
  int nonzero = 0;
  for (std::size_t i = 0; i < P; ++i) {
    const double mean = sum[i] / batches, var = sum2[i] / batches - mean * mean;
    const double se = std::sqrt(var / (batches - 1));
    CAPTURE(i);
    CAPTURE(mean);
    CAPTURE(se);
    CHECK(std::abs(mean) <= 4 * se + 1e-12);
    if (std::abs(sum_plain[i] / batches) > 4 * se) ++nonzero;
  }
  CHECK(nonzero > 0);  // the gradient itself is not trivially zero
}

TEST_CASE("Training is bitwise reproducible with 1 and 2 threads") {
  auto run = [](int threads) {
    test::ThreadCount tc(threads);
    NormalPrior<Lattice<4, 4>> prior(0, 1, 5);
    ScalarPhi4Action action{.kappa = 0.5, .m_sq = -1.0, .lambd = 0.5};
    Flow<Repeat<2, AffineCoupling_<ConvNet<Hidden<4>>>>, Lattice<4, 4>> net_(2);
    Model model{prior, net_, action};
    model.trainer.run_training({.n_epochs = 20, .batch_size = 40, .lr = 0.01, .progress = Progress::never});
    std::vector<float> p(model.net_.params().begin(), model.net_.params().end());
    std::vector<double> loss;
    for (const auto& r : model.trainer.history()) loss.push_back(r.loss);
    return std::pair{p, loss};
  };
  const auto a = run(1), b = run(2);
  CHECK(a.first == b.first);
  CHECK(a.second == b.second);
}

TEST_CASE("Chunked steps: the same bits with 1, 2, 3 and 8 threads, the gradient of one chunk within rounding") {
  // batch 100 in chunks of 32: 32, 32, 32, 4 samples. 2 and 3 threads take whole chunks each, 8
  // threads (more than the chunks) run them one after another with every thread on each.
  using Lat = Lattice<4, 4>;
  using Net = Flow<Repeat<2, AffineCoupling_<ConvNet<Hidden<4>>>>, Lat, double>;
  auto gradient = [](int threads, long long chunk, long long batch) {
    test::ThreadCount tc(threads);
    NormalPrior<Lat, double> prior(0, 1, 5);
    ScalarPhi4Action action{.kappa = 0.5, .m_sq = -1.0, .lambd = 0.5};
    Net net_(2);
    Model model{prior, net_, action};
    using Tr = Trainer<decltype(model)>;
    Tr::Buffers buf{static_cast<index_t>(batch)};
    TrainConfig c{.batch_size = batch};
    c.chunk_size = chunk;
    std::vector<double> out;
    for (bool path : {true, false}) {
      c.path_gradient = path;
      const auto r = model.trainer.step(c, path ? 1.0 : 0.7, buf, path);  // the same x for both
      out.insert(out.end(), model.net_.grads().begin(), model.net_.grads().end());
      out.push_back(r.loss);
    }
    return out;
  };
  const std::vector<double> one = gradient(1, 32, 100);
  for (int threads : {2, 3, 8}) {
    CAPTURE(threads);
    CHECK(gradient(threads, 32, 100) == one);
  }
  // one chunk of the whole batch: the same gradient up to the order of the sum over samples
  const std::vector<double> whole = gradient(2, 100, 100);
  REQUIRE(whole.size() == one.size());
  double norm = 0, diff = 0;
  for (std::size_t i = 0; i < one.size(); ++i) {
    norm = std::max(norm, std::abs(whole[i]));
    diff = std::max(diff, std::abs(whole[i] - one[i]));
  }
  CAPTURE(norm);
  CAPTURE(diff);
  CHECK(norm > 1e-3);
  CHECK(diff <= 1e-12 * norm);
  CHECK(diff > 0);  // a different order of the sum: not the same bits (the chunks ran)
  NormalPrior<Lat, double> prior(0, 1, 5);
  Model model{prior, Net(2), ScalarPhi4Action{}};
  TrainConfig bad{.n_epochs = 1, .batch_size = 8, .progress = Progress::never};
  bad.chunk_size = -1;
  CHECK_THROWS_WITH_AS(model.trainer.run_training(bad), doctest::Contains("chunk_size = -1"), ParameterError);
  // chunk_size = 0 (the default) is auto_chunk_size: 64 samples here (16 sites), 32 in double
  // from 16x16 on
  static_assert(auto_chunk_size<double>(16) == 64 && auto_chunk_size<double>(64) == 64);
  static_assert(auto_chunk_size<double>(256) == 32 && auto_chunk_size<double>(1024) == 32);
  static_assert(auto_chunk_size<float>(64) == 64 && auto_chunk_size<float>(4096) == 64);
  const std::vector<double> automatic = gradient(1, 0, 100);
  CHECK(automatic == gradient(1, 64, 100));
  CHECK(automatic != one);
  CHECK(gradient(2, 0, 100) == automatic);
}

TEST_CASE("Chunked steps: the reverse KL's fused chunks (backward right after forward) give the split order's bits") {
  // Losses::kl_mean runs each chunk's backward half right after its forward half; the same loss
  // behind a lambda is not recognised, so that step takes the split order (every forward half,
  // the loss, then every backward half). The total gradient (a lambda also turns the path
  // gradient off) must agree bit for bit, on one thread and on two.
  using Lat = Lattice<4, 4>;
  using Net = Flow<Repeat<2, AffineCoupling_<ConvNet<Hidden<4>>>>, Lat, double>;
  auto gradient = [](int threads, bool wrapped) {
    test::ThreadCount tc(threads);
    NormalPrior<Lat, double> prior(0, 1, 7);
    Net net_(3);
    Model model{prior, net_, ScalarPhi4Action{.kappa = 0.5, .m_sq = -1.0, .lambd = 0.5}};
    Trainer<decltype(model)>::Buffers buf{index_t(70)};
    TrainConfig c{.batch_size = 70, .path_gradient = false};
    c.chunk_size = 16;
    if (wrapped)
      c.loss_fn = [](std::span<const double> q, std::span<const double> p, std::span<double> dq, std::span<double> dp) {
        return Losses::kl_mean(q, p, dq, dp);
      };
    const auto r = model.trainer.step(c, 0.8, buf);
    std::vector<double> out(model.net_.grads().begin(), model.net_.grads().end());
    out.push_back(r.loss);
    out.push_back(r.ess);
    out.insert(out.end(), buf.dq.begin(), buf.dq.end());
    return out;
  };
  const std::vector<double> fused = gradient(1, false);
  double norm = 0;
  for (double v : fused) norm = std::max(norm, std::abs(v));
  CHECK(norm > 1e-3);
  CHECK(gradient(1, true) == fused);
  CHECK(gradient(2, true) == fused);
  CHECK(gradient(2, false) == fused);
}

TEST_CASE("Posterior samples and MCMC chains: the same bits with 1, 2 and 3 threads (chunks per thread)") {
  // 1000 samples in chunks of 96: 11 chunks, the last of 40; with 2 and 3 threads each thread
  // draws and maps whole chunks, from streams taken in chunk order
  using Lat = Lattice<4, 4>;
  auto draw = [](int threads) {
    test::ThreadCount tc(threads);
    NormalPrior<Lat> prior(0, 1, 11);
    ScalarPhi4Action action{.kappa = 0.5, .m_sq = -1.0, .lambd = 0.5};
    Flow<Repeat<2, AffineCoupling_<ConvNet<Hidden<4>>>>, Lat> net_(4);
    Model model{prior, net_, action};
    model.posterior.chunk_size = 96;
    const auto a = model.posterior.sample__(1000);
    const auto b = model.posterior.sample__(1000);  // the next draws
    const auto chain = model.mcmc.sample(500);
    std::vector<float> out(a.y.flat().begin(), a.y.flat().end());
    out.insert(out.end(), a.logq.begin(), a.logq.end());
    out.insert(out.end(), a.logp.begin(), a.logp.end());
    out.insert(out.end(), b.y.flat().begin(), b.y.flat().end());
    out.insert(out.end(), chain.flat().begin(), chain.flat().end());
    return out;
  };
  const std::vector<float> one = draw(1);
  CHECK(draw(2) == one);
  CHECK(draw(3) == one);
  // the second draw continues the prior's streams: not the first one again
  NormalPrior<Lat> prior(0, 1, 11);
  Model model{prior, Flow<Repeat<2, AffineCoupling_<ConvNet<Hidden<4>>>>, Lat>(4),
              ScalarPhi4Action{.kappa = 0.5, .m_sq = -1.0, .lambd = 0.5}};
  model.posterior.chunk_size = 96;
  const auto a = model.posterior.sample__(200), b = model.posterior.sample__(200);
  CHECK(std::vector<float>(a.y.flat().begin(), a.y.flat().end()) !=
        std::vector<float>(b.y.flat().begin(), b.y.flat().end()));
}

TEST_CASE("A NaN loss stops training with an exception naming the epoch: bad options are rejected") {
  NormalPrior<Lattice<1>> prior(0, 1, 1);
  ScalarPhi4Action action{.kappa = 0, .m_sq = -2.0, .lambd = 0.2};
  DistConvertor_<Lattice<1>> net_{{.knots_len = 10, .symmetric = true}};
  Model model{prior, net_, action};
  model.trainer.run_training({.n_epochs = 3, .batch_size = 8, .lr = 0.01, .progress = Progress::never});
  const std::vector<float> before(model.net_.params().begin(), model.net_.params().end());
  TrainConfig c{.n_epochs = 5, .batch_size = 8, .lr = 0.01, .progress = Progress::never};
  c.loss_fn = [](std::span<const double>, std::span<const double>, std::span<double> dq, std::span<double> dp) {
    for (auto& v : dq) v = 0;
    for (auto& v : dp) v = 0;
    return std::nan("");
  };
  CHECK_THROWS_WITH_AS(model.trainer.run_training(c), doctest::Contains("epoch 4"), TrainingError);
  const std::vector<float> after(model.net_.params().begin(), model.net_.params().end());
  CHECK(before == after);
  CHECK_THROWS_WITH_AS(model.trainer.run_training({.n_epochs = 1, .batch_size = 1}), doctest::Contains("batch_size"),
                       ParameterError);
  CHECK_THROWS_WITH_AS(model.trainer.run_training({.n_epochs = 1, .batch_size = 8, .lr = -1}), doctest::Contains("lr"),
                       ParameterError);
}

TEST_CASE("MCMC: the chain carries over between calls: rejections repeat the state") {
  NormalPrior<Lattice<1>, double> prior(0, 1, 2);
  ScalarPhi4Action action{.kappa = 0, .m_sq = -2.0, .lambd = 0.2};
  DistConvertor_<Lattice<1>, double> net_{{.symmetric = true}};  // untrained: identity, q != p
  Model model{prior, net_, action};
  const auto a = model.mcmc.sample__(200);
  const auto b = model.mcmc.sample__(200);
  CHECK(model.mcmc.history().size() == 2);
  CHECK(model.mcmc.acceptance_rate() > 0.05);
  CHECK(model.mcmc.acceptance_rate() < 0.95);
  // every element of b either equals its predecessor (a rejection) or is a fresh proposal whose
  // log q / log p are its own; the first element of b continues from the last of a
  int repeats = 0;
  for (index_t i = 1; i < 200; ++i) repeats += b.y(0, i) == b.y(0, i - 1) ? 1 : 0;
  CHECK(repeats > 0);
  if (b.y(0, 0) != a.y(0, 199)) CHECK(b.logq[0] != a.logq[199]);
  // log p of the chain is -S of the chain
  const auto s = action.action(b.y);
  for (index_t i = 0; i < 200; ++i) CHECK(b.logp[std::size_t(i)] == doctest::Approx(-s[std::size_t(i)]));
  // posterior.log_prob through reverse equals the log q recorded on the way forward
  const auto lq = model.posterior.log_prob(b.y);
  for (index_t i = 0; i < 200; ++i) CHECK(lq[std::size_t(i)] == doctest::Approx(b.logq[std::size_t(i)]).epsilon(1e-10));
}

TEST_CASE("Blocked MCMC samples the target: <phi^2> of the 1-dof model against quadrature") {
  // exact <phi^2> of p ~ exp(phi^2 - 0.2 phi^4) by the trapezoid rule
  double z = 0, m2 = 0;
  for (int i = -40000; i <= 40000; ++i) {
    const double phi = i * 2.5e-4, w = std::exp(phi * phi - 0.2 * phi * phi * phi * phi);
    z += w;
    m2 += w * phi * phi;
  }
  const double exact = m2 / z;
  NormalPrior<Lattice<1>, double> prior(0, 1, 3);
  ScalarPhi4Action action{.kappa = 0, .m_sq = -2.0, .lambd = 0.2};
  DistConvertor_<Lattice<1>, double> net_{{.symmetric = true}};
  Model model{prior, net_, action};
  model.trainer.run_training({.n_epochs = 300, .batch_size = 64, .lr = 0.01, .progress = Progress::never});
  const auto s = model.blocked_mcmc.sample__(20000, 1);
  std::vector<double> v;
  for (index_t b = 0; b < s.y.batch(); ++b) v.push_back(double(s.y(0, b)) * double(s.y(0, b)));
  const auto j = jackknife_mean(std::span<const double>(v), 500);
  CAPTURE(exact);
  CAPTURE(j.mean);
  CAPTURE(j.std);
  CHECK(std::abs(j.mean - exact) < 4 * j.std);
  CHECK(model.blocked_mcmc.acceptance_rate() > 0.5);
  // the independence sampler agrees too
  const auto c = model.mcmc.sample(20000);
  std::vector<double> w;
  for (index_t b = 0; b < c.batch(); ++b) w.push_back(double(c(0, b)) * double(c(0, b)));
  const auto k = jackknife_mean(std::span<const double>(w), 500);
  CHECK(std::abs(k.mean - exact) < 4 * k.std);
  CHECK_THROWS_AS(model.blocked_mcmc.sample__(10, 3), ParameterError);  // 3 does not divide volume 1
}

TEST_CASE("reverse_flow_sanitychecker reports rounding-level errors for a trained flow") {
  NormalPrior<Lattice<4, 4>, double> prior(0, 1, 8);
  ScalarPhi4Action action{.kappa = 0.5, .m_sq = -1.0, .lambd = 0.5};
  Flow<Repeat<4, AffineCoupling_<ConvNet<Hidden<4>>>>, Lattice<4, 4>, double> net_(2);
  Model model{prior, net_, action};
  model.trainer.run_training({.n_epochs = 20, .batch_size = 16, .lr = 0.01, .progress = Progress::never});
  const auto r = reverse_flow_sanitychecker(model, 8, false);
  CHECK(r.rel_error_x < 1e-12);
  CHECK(r.log_det_sum < 1e-10);
  CHECK(r.det_product_m1 < 1e-10);
}

TEST_CASE("Checkpoints: a resumed run continues bitwise where the saved one left off") {
  const auto dir = std::filesystem::temp_directory_path() / ("normflow_ckpt_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / "model.nfck";
  using Net = Flow<Repeat<2, AffineCoupling_<ConvNet<Hidden<4>>>>, Lattice<4, 4>>;
  const ScalarPhi4Action action{.kappa = 0.5, .m_sq = -1.0, .lambd = 0.5};
  const TrainConfig cfg{.n_epochs = 15, .batch_size = 32, .lr = 0.01, .progress = Progress::never};

  Model a{NormalPrior<Lattice<4, 4>>(0, 1, 3), Net(1), action};
  TrainConfig first = cfg;
  first.checkpoint_path = path.string();
  a.trainer.run_training(first);  // writes the checkpoint at its end
  // a continues with its own optimiser state
  a.trainer.restore_optimizer(a.trainer.optimizer().first_moment(), a.trainer.optimizer().second_moment(),
                              a.trainer.optimizer().step_count());
  a.trainer.run_training(cfg);

  Model b{NormalPrior<Lattice<4, 4>>(0, 1, 99), Net(2), action};  // other seed and weights: all overwritten
  b.load_checkpoint(path);
  CHECK(b.trainer.current_epoch() == 15);
  b.trainer.run_training(cfg);
  const std::vector<float> pa(a.net_.params().begin(), a.net_.params().end());
  const std::vector<float> pb(b.net_.params().begin(), b.net_.params().end());
  CHECK(pa == pb);
  CHECK(b.trainer.current_epoch() == 30);

  // save/load round trip is bitwise
  b.save_checkpoint(path);
  Model c{NormalPrior<Lattice<4, 4>>(0, 1, 5), Net(3), action};
  c.load_checkpoint(path);
  CHECK(std::vector<float>(c.net_.params().begin(), c.net_.params().end()) == pb);

  // another architecture's checkpoint is refused with a clear message, nothing changes
  Model d{NormalPrior<Lattice<4, 4>>(0, 1, 5), Flow<Repeat<3, AffineCoupling_<ConvNet<Hidden<4>>>>, Lattice<4, 4>>(1),
          action};
  const std::vector<float> before(d.net_.params().begin(), d.net_.params().end());
  CHECK_THROWS_WITH_AS(d.load_checkpoint(path), doctest::Contains("architecture"), CheckpointError);
  CHECK(std::vector<float>(d.net_.params().begin(), d.net_.params().end()) == before);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Same seed gives the same metrics CSV with 1 and 2 threads (timing column aside)") {
  const auto dir = std::filesystem::temp_directory_path() / ("normflow_csv_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto run = [&](int threads) {
    test::ThreadCount tc(threads);
    const auto path = dir / ("metrics_" + std::to_string(threads) + ".csv");
    Model m{NormalPrior<Lattice<8, 8>>(0, 1, 4), Flow<Repeat<4, AffineCoupling_<>>, Lattice<8, 8>>(1),
            ScalarPhi4Action{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5}};
    TrainConfig c{.n_epochs = 25, .batch_size = 64, .lr = 0.01, .scheduler = Scheduler::cosine,
                  .progress = Progress::never};
    c.csv_path = path.string();
    m.trainer.run_training(c);
    std::ifstream in(path);
    std::string line, out;
    while (std::getline(in, line)) out += line.substr(0, line.rfind(',')) + "\n";  // drop "seconds"
    return out;
  };
  const std::string one = run(1), two = run(2);
  CHECK(one.size() > 25 * 20);
  CHECK(one == two);
  // without the wall-clock column the files themselves are bitwise identical
  auto run_plain = [&](int threads) {
    test::ThreadCount tc(threads);
    const auto path = dir / ("plain_" + std::to_string(threads) + ".csv");
    Model m{NormalPrior<Lattice<8, 8>>(0, 1, 4), Flow<Repeat<4, AffineCoupling_<>>, Lattice<8, 8>>(1),
            ScalarPhi4Action{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5}};
    TrainConfig c{.n_epochs = 25, .batch_size = 64, .lr = 0.01, .scheduler = Scheduler::cosine,
                  .progress = Progress::never};
    c.csv_path = path.string();
    c.csv_seconds = false;
    m.trainer.run_training(c);
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string p1 = run_plain(1), p2 = run_plain(2);
  CHECK(p1 == p2);
  CHECK(p1 == one);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Losses: derivatives match central differences (reverse KL and -log ESS)") {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  std::vector<double> q(9), p(9), dq(9), dp(9), dq2(9), dp2(9);
  for (auto& v : q) v = normal(rng) * 3;
  for (auto& v : p) v = normal(rng) * 3 - 40;
  for (const LossFunction& f : {LossFunction(Losses::kl_mean), LossFunction(Losses::minus_log_ess)}) {
    f(q, p, dq, dp);
    for (std::size_t b = 0; b < 9; ++b) {
      const double h = 1e-5;
      auto qp = q, qm = q, pp = p, pm = p;
      qp[b] += h, qm[b] -= h, pp[b] += h, pm[b] -= h;
      CHECK(dq[b] == doctest::Approx((f(qp, p, dq2, dp2) - f(qm, p, dq2, dp2)) / (2 * h)).epsilon(1e-6).scale(1e-2));
      CHECK(dp[b] == doctest::Approx((f(q, pp, dq2, dp2) - f(q, pm, dq2, dp2)) / (2 * h)).epsilon(1e-6).scale(1e-2));
    }
  }
  CHECK(Losses::minus_log_ess(q, p, dq, dp) ==
        doctest::Approx(-std::log(Metrics::calc_ess(std::span<const double>(q), std::span<const double>(p)))));
}

TEST_CASE("AdamW: one step by hand, per-group hyper-parameters, validation") {
  std::vector<double> theta{1.0, -2.0, 0.5}, g{0.3, -0.1, 2.0};
  AdamW opt(3, std::vector<ParamGroup>{{0, 2, {.lr = 0.1, .weight_decay = 0.0}}, {2, 3, {.lr = 0.01}}});
  opt.step(std::span<double>(theta), std::span<const double>(g));
  // t = 1: m = (1-b1) g, v = (1-b2) g^2, mhat = g, vhat = g^2: step = lr g / (|g| + eps)
  CHECK(theta[0] == doctest::Approx(1.0 - 0.1 * 0.3 / (0.3 + 1e-8)).epsilon(1e-12));
  CHECK(theta[1] == doctest::Approx(-2.0 + 0.1 * 0.1 / (0.1 + 1e-8)).epsilon(1e-12));
  CHECK(theta[2] == doctest::Approx(0.5 * (1 - 0.01 * 1e-2) - 0.01 * 2.0 / (2.0 + 1e-8)).epsilon(1e-12));
  CHECK(opt.step_count() == 1);
  CHECK_THROWS_WITH_AS(AdamW(3, AdamWHyper{.beta1 = 1.0}), doctest::Contains("beta1"), ParameterError);
  CHECK_THROWS_WITH_AS(AdamW(3, std::vector<ParamGroup>{{2, 5, {}}}), doctest::Contains("outside"), ParameterError);
}

TEST_CASE("Gradient clipping bounds the norm, alpha annealing starts from the prior, -log ESS trains") {
  NormalPrior<Lattice<1>> prior(0, 1, 1);
  ScalarPhi4Action action{.kappa = 0, .m_sq = -2.0, .lambd = 0.2};
  DistConvertor_<Lattice<1>> net_{{.knots_len = 10, .symmetric = true}};
  Model model{prior, net_, action};
  using Tr = Trainer<decltype(model)>;
  Tr::Buffers buf(64);
  TrainConfig c{.batch_size = 64};
  c.clip_grad_norm = true;
  c.max_grad_norm = 1e-3;
  model.trainer.step(c, 1.0, buf);
  double n2 = 0;
  for (float v : model.net_.grads()) n2 += double(v) * double(v);
  CHECK(std::sqrt(n2) <= 1e-3 * (1 + 1e-5));
  // alpha = 0: the target is the prior itself, and the identity flow is exact: loss 0, ESS 1
  const auto r = model.trainer.step(c, 0.0, buf);
  CHECK(std::abs(r.loss) < 1e-5);
  CHECK(r.ess == doctest::Approx(1.0).epsilon(1e-6));
  TrainConfig a{.n_epochs = 300, .batch_size = 64, .lr = 0.01, .progress = Progress::never};
  a.alpha_tmax = 100;
  a.loss_fn = Losses::minus_log_ess;  // path_gradient stays on: the trainer uses the total gradient for it
  model.trainer.run_training(a);
  CHECK(model.compute_metrics(4096).ess > 0.95);
}
