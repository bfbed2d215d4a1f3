// SPDX-License-Identifier: MIT
// normflow-phi4: the main job. Trains a flow for real scalar phi^4 theory by reverse KL with path
// gradients, then reports ESS, MCMC acceptance, <|M|>/V and the susceptibility with errors, and
// writes the metrics CSV and MCMC samples. With no arguments it runs the reference 8x8 workload
// (reference 6.2): kappa = 0.67, m_sq = -2.68, lambd = 0.5; 16 affine couplings with ConvNet
// 1 -> 8 -> 8 -> 2, kernel 3, tanh, no bias; batch 128; lr 0.01 with cosine annealing.
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <normflow/normflow.hpp>

namespace {

using namespace normflow;

struct Options {
  std::string lattice = "8x8";
  std::string arch = "affine";
  long long layers = 16;
  std::vector<index_t> hidden{8, 8};
  long long kernel = 3;
  std::string activation = "tanh";
  bool bias = false;
  double kappa = 0.67, m_sq = -2.68, lambd = 0.5;
  long long epochs = 1000;
  long long batch = 128;
  long long chunk = 0;  // 0: automatic (TrainConfig::chunk_size)
  double lr = 0.01;
  std::string scheduler = "cosine";
  std::uint64_t seed = 1;
  std::string estimator = "path";
  long long threads = 0;
  long long proposals = 16384;
  std::string out = "normflow-out";
  std::string resume;
  long long checkpoint_every = 100;
};

const char* usage =
    "usage: normflow-phi4 [options]\n"
    "Trains a normalizing flow for real scalar phi^4 theory and samples it with independence\n"
    "Metropolis. With no options: the reference 8x8 workload.\n"
    "\n"
    "theory:\n"
    "  --lattice SHAPE      8x8 (default), 16x16, 32x32, 4x4x4\n"
    "  --kappa K            hopping coupling (default 0.67)\n"
    "  --m-sq M             bare mass squared (default -2.68)\n"
    "  --lambd L            quartic coupling >= 0 (default 0.5)\n"
    "flow:\n"
    "  --arch A             affine (default) or spline (RQ spline couplings, 5 knots, odd with linear tails)\n"
    "  --couplings N        number of coupling layers (default 16)\n"
    "  --hidden C1,C2,...   conditioner hidden channels (default 8,8)\n"
    "  --kernel K           conditioner kernel size, odd (default 3)\n"
    "  --activation A       tanh (default), leaky_relu, silu, none\n"
    "  --bias               give the conditioner convolutions a bias (default: none, Z2-symmetric)\n"
    "training:\n"
    "  --epochs N           optimiser steps (default 1000)\n"
    "  --batch N            samples per step (default 128)\n"
    "  --chunk N            samples per chunk of a step (default 0: automatic, 64 in float):\n"
    "                       threads take whole chunks;\n"
    "                       results depend on it, not on the thread count\n"
    "  --lr X               AdamW learning rate (default 0.01)\n"
    "  --scheduler S        cosine (default) or none\n"
    "  --estimator E        path (default: path gradient) or total\n"
    "  --seed S             seed of the prior, the initial weights and the chain (default 1)\n"
    "  --threads T          OpenMP threads (default: OpenMP's choice)\n"
    "sampling and output:\n"
    "  --proposals N        MCMC proposals after training (default 16384)\n"
    "  --out DIR            output folder (default normflow-out): metrics.csv, checkpoint.nfck,\n"
    "                       samples.npy (the last 4096 chain samples, batch first, then the lattice axes)\n"
    "  --checkpoint-every N write the checkpoint every N epochs (default 100) and at the end\n"
    "  --resume FILE        continue from a checkpoint of the same architecture (weights, Adam state,\n"
    "                       epoch counter, generator position); --epochs more epochs are trained\n"
    "  --help               this text\n";

[[noreturn]] void fail(const std::string& msg) {
  std::fprintf(stderr, "normflow-phi4: %s (see --help)\n", msg.c_str());
  std::exit(2);
}

long long parse_int(const std::string& flag, const std::string& text, long long lo, long long hi) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno || v < lo || v > hi)
    fail(flag + " expects an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + text + "'");
  return v;
}

double parse_double(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno || !std::isfinite(v)) fail(flag + " expects a finite number, got '" + text + "'");
  return v;
}

std::string one_of(const std::string& flag, const std::string& text, std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) {
    if (text == a) return text;
    list += list.empty() ? a : std::string(", ") + a;
  }
  fail(flag + " expects one of " + list + ", got '" + text + "'");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    }
    if (a == "--bias") {
      o.bias = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) fail("unexpected argument '" + a + "'");
    if (i + 1 >= argc) fail("option " + a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--lattice") o.lattice = one_of(a, v, {"8x8", "16x16", "32x32", "4x4x4"});
    else if (a == "--kappa") o.kappa = parse_double(a, v);
    else if (a == "--m-sq") o.m_sq = parse_double(a, v);
    else if (a == "--lambd") {
      o.lambd = parse_double(a, v);
      if (o.lambd < 0) fail("--lambd must be >= 0, got '" + v + "'");
    } else if (a == "--arch") o.arch = one_of(a, v, {"affine", "spline"});
    else if (a == "--couplings") o.layers = parse_int(a, v, 1, 256);
    else if (a == "--hidden") {
      o.hidden.clear();
      std::size_t start = 0;
      while (start <= v.size()) {
        const std::size_t comma = v.find(',', start);
        const std::string part = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        o.hidden.push_back(index_t(parse_int(a, part, 1, 1024)));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (a == "--kernel") {
      o.kernel = parse_int(a, v, 1, 15);
      if (o.kernel % 2 == 0) fail("--kernel must be odd, got '" + v + "'");
    } else if (a == "--activation") o.activation = one_of(a, v, {"tanh", "leaky_relu", "silu", "none"});
    else if (a == "--epochs") o.epochs = parse_int(a, v, 0, 100'000'000);
    else if (a == "--batch") o.batch = parse_int(a, v, 2, 1 << 20);
    else if (a == "--chunk") o.chunk = parse_int(a, v, 0, 1 << 20);
    else if (a == "--lr") {
      o.lr = parse_double(a, v);
      if (!(o.lr > 0)) fail("--lr must be > 0, got '" + v + "'");
    } else if (a == "--scheduler") o.scheduler = one_of(a, v, {"cosine", "none"});
    else if (a == "--estimator") o.estimator = one_of(a, v, {"path", "total"});
    else if (a == "--seed") o.seed = std::uint64_t(parse_int(a, v, 0, (1ll << 62)));
    else if (a == "--threads") o.threads = parse_int(a, v, 1, 1024);
    else if (a == "--proposals") o.proposals = parse_int(a, v, 2, 1 << 26);
    else if (a == "--resume") {
      if (v.empty()) fail("--resume expects a checkpoint file");
      o.resume = v;
    } else if (a == "--checkpoint-every") o.checkpoint_every = parse_int(a, v, 1, 100'000'000);
    else if (a == "--out") {
      if (v.empty()) fail("--out expects a folder name");
      o.out = v;
    } else fail("unknown option '" + a + "'");
  }
  return o;
}

Activation activation_of(const std::string& s) {
  if (s == "leaky_relu") return Activation::leaky_relu;
  if (s == "silu") return Activation::silu;
  if (s == "none") return Activation::none;
  return Activation::tanh;
}

template <class Lat>
int run(const Options& o) {
  using F = Field<Lat, float>;
  ConvNetConfig net_cfg;
  net_cfg.hidden = o.hidden;
  net_cfg.kernel_size = index_t(o.kernel);
  net_cfg.activation = activation_of(o.activation);
  net_cfg.bias = o.bias;
  ModuleList_<F> layers;
  for (long long k = 0; k < o.layers; ++k) {
    if (o.arch == "affine")
      layers.push_back(CouplingLayer<AffineContraction, ConvNet<>, F>(index_t(k), {}, net_cfg));
    else
      layers.push_back(CouplingLayer<RQSpline<5>, ConvNet<>, F>(index_t(k), OddSplineLinearTails::make<5>(), net_cfg));
  }
  Parametrized<ModuleList_<F>> net_(std::move(layers), o.seed);
  NormalPrior<Lat> prior(0, 1, o.seed);
  const ScalarPhi4Action action{.kappa = o.kappa, .m_sq = o.m_sq, .lambd = o.lambd};
  action.validate();
  Model model{prior, net_, action};
  model.mcmc.reset(o.seed ^ 0x5eed5eed5eedull);
  std::string hidden;
  for (index_t h : o.hidden) hidden += (hidden.empty() ? "" : ",") + std::to_string(h);
  model.set_architecture(detail::concat("normflow-phi4 lattice=", o.lattice, " arch=", o.arch, " couplings=", o.layers,
                                        " hidden=", hidden, " kernel=", o.kernel, " activation=", o.activation,
                                        " bias=", int(o.bias)));
  if (!o.resume.empty()) {
    model.load_checkpoint(o.resume);
    std::printf("resumed from %s at epoch %lld\n", o.resume.c_str(), model.trainer.current_epoch());
  }

  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) fail("cannot create the output folder '" + o.out + "': " + ec.message());
  const std::string csv = (std::filesystem::path(o.out) / "metrics.csv").string();
  const std::string ckpt = (std::filesystem::path(o.out) / "checkpoint.nfck").string();
  const std::string npy = (std::filesystem::path(o.out) / "samples.npy").string();

  std::printf("normflow %s: phi^4 on %s (kappa %g, m_sq %g, lambd %g); %lld %s couplings, %zu parameters\n",
              version_string, o.lattice.c_str(), o.kappa, o.m_sq, o.lambd, o.layers, o.arch.c_str(),
              model.net_.num_params());
  const long long chunk = std::min(o.chunk > 0 ? o.chunk : 64LL, o.batch);  // automatic: 64 in float
  std::printf("training: %lld epochs, batch %lld (chunks of %lld), lr %g (%s), %s gradient, seed %llu, %d threads, %s\n",
              o.epochs, o.batch, chunk, o.lr, o.scheduler.c_str(), o.estimator.c_str(),
              (unsigned long long)o.seed, exec::max_threads(),
              simd::arch_name());
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  TrainConfig tc{.n_epochs = o.epochs, .batch_size = o.batch, .lr = o.lr};
  tc.scheduler = o.scheduler == "cosine" ? Scheduler::cosine : Scheduler::none;
  tc.path_gradient = o.estimator == "path";
  tc.chunk_size = o.chunk;
  tc.csv_path = csv;
  tc.checkpoint_path = ckpt;
  tc.checkpoint_every = o.checkpoint_every;
  model.trainer.run_training(tc);
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("trained in %.1f s (%.2f ms per step)\n", train_s, 1e3 * train_s / double(std::max(1ll, o.epochs)));

  reverse_flow_sanitychecker(model, 4);
  const auto m = model.compute_metrics(4096);
  std::printf("ESS (4096 flow samples): %.4f   log(q/p): %s\n", m.ess,
              fmt_val_err(m.log_ratio.mean, m.log_ratio.std / std::sqrt(4096.0)).c_str());

  // MCMC: chain of `proposals` elements in batches of 1024
  const double V = Lat::volume;
  std::vector<double> absm, m2;
  F keep(index_t(std::min<long long>(o.proposals, 4096)));
  long long done = 0;
  while (done < o.proposals) {
    const index_t nb = index_t(std::min<long long>(1024, o.proposals - done));
    const auto y = model.mcmc.sample(nb);
    for (index_t b = 0; b < nb; ++b) {
      double M = 0;
      for (index_t s = 0; s < Lat::volume; ++s) M += double(y(s, b));
      absm.push_back(std::abs(M) / V);
      m2.push_back(M * M / (V * V));
      const long long idx = done + b - (o.proposals - keep.batch());
      if (idx >= 0) detail::copy_sample(y, b, keep, index_t(idx));
    }
    done += nb;
  }
  const std::size_t bin = std::max<std::size_t>(1, absm.size() / 32);
  const auto am = jackknife_mean(std::span<const double>(absm), bin);
  const auto chi = jackknife({std::span<const double>(absm), std::span<const double>(m2)}, bin,
                             [V](std::span<const double> mm) { return V * (mm[1] - mm[0] * mm[0]); });
  std::printf("MCMC (%lld proposals): acceptance %.4f\n", o.proposals, model.mcmc.acceptance_rate());
  std::printf("  <|M|>/V        = %s\n", fmt_val_err(am.mean, am.std).c_str());
  std::printf("  susceptibility = %s   (V (<m^2> - <|m|>^2), m = M/V; binned jackknife, %zu bins)\n",
              fmt_val_err(chi.mean, chi.std).c_str(), absm.size() / bin);
  save_npy(npy, keep);
  std::printf("wrote %s, %s, %s\n", csv.c_str(), ckpt.c_str(), npy.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (o.threads > 0) exec::set_num_threads(int(o.threads));
  try {
    if (o.lattice == "8x8") return run<Lattice<8, 8>>(o);
    if (o.lattice == "16x16") return run<Lattice<16, 16>>(o);
    if (o.lattice == "32x32") return run<Lattice<32, 32>>(o);
    return run<Lattice<4, 4, 4>>(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "normflow-phi4: %s\n", e.what());
    return 1;
  }
}
