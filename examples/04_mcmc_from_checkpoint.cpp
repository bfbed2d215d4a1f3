// SPDX-License-Identifier: MIT
// MCMC on a trained checkpoint: loads the weights of the 8x8 affine flow from a checkpoint
// (training one briefly and saving it first if the file does not exist), then runs the
// independence Metropolis chain and prints the acceptance rate and <|M|>/V with its error.
//   example_04_mcmc_from_checkpoint [checkpoint.nfck]
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#include <normflow/normflow.hpp>
using namespace normflow;

int main(int argc, char** argv) {
  const std::filesystem::path path = argc > 1 ? argv[1] : "phi4_8x8_affine.nfck";
  using Lat = Lattice<8, 8>;
  const ScalarPhi4Action action{.kappa = 0.67, .m_sq = -2.68, .lambd = 0.5};
  using Net = Flow<Repeat<16, AffineCoupling_<>>, Lat>;
  if (!std::filesystem::exists(path)) {
    Model trainee{NormalPrior<Lat>(0, 1, 1), Net(1), action};
    std::printf("%s not found: training 300 epochs and saving it\n", path.string().c_str());
    trainee.trainer.run_training({.n_epochs = 300, .batch_size = 128, .lr = 0.01, .scheduler = Scheduler::cosine});
    trainee.save_checkpoint(path);
  }
  Model model{NormalPrior<Lat>(0, 1, 7), Net(0), action};
  model.load_checkpoint(path);
  std::printf("loaded %s (epoch %lld, %zu parameters)\n", path.string().c_str(), model.trainer.current_epoch(),
              model.net_.num_params());
  std::vector<double> absm;
  for (int k = 0; k < 16; ++k) {
    const auto y = model.mcmc.sample(1024);
    for (index_t b = 0; b < y.batch(); ++b) {
      double m = 0;
      for (index_t s = 0; s < Lat::volume; ++s) m += double(y(s, b));
      absm.push_back(std::abs(m) / Lat::volume);
    }
  }
  const auto j = jackknife_mean(std::span<const double>(absm), 512);
  std::printf("MCMC acceptance %.4f over 16384 proposals, <|M|>/V = %s\n", model.mcmc.acceptance_rate(),
              fmt_val_err(j.mean, j.std).c_str());
  return 0;
}
