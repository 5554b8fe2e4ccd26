// infini init: a new randomly initialised model directory.
#include <cmath>
#include <cstdio>
#include <memory>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "model/model.hpp"

namespace infini::cli {

void register_init(CLI::App& app) {
  struct Opts {
    std::string config, out;
    uint64_t seed = 0;
    double gate_init = 0.0, init_std = 0.02;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("init", "Write a new randomly initialised model directory");
  cmd->add_option("--config", o->config, "config.json with the model's shape (SPEC §5)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", o->out, "Output model directory (created if needed)")->required();
  cmd->add_option("--seed", o->seed, "Random seed")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& s) {  // CLI11 would wrap "-1" into 2^64 - 1 silently
            return s.find('-') == std::string::npos ? std::string()
                                                    : "must be a non-negative integer";
          },
          ""));
  cmd->add_option("--gate-init", o->gate_init,
                  "Initial value of every memory gate beta (sigmoid(beta) weights memory)")
      ->capture_default_str()
      ->check(CLI::Range(-30.0, 30.0));
  cmd->add_option("--init-std", o->init_std, "Std-dev of the normal init of weight matrices")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 10.0));
  cmd->callback([o] {
    // CLI::Range lets NaN through (every comparison with NaN is false).
    if (!std::isfinite(o->gate_init)) throw Error("--gate-init must be a finite number");
    if (!std::isfinite(o->init_std)) throw Error("--init-std must be a finite number");
    model::InitOptions io;
    io.seed = o->seed;
    io.gate_init = o->gate_init;
    io.init_std = o->init_std;
    model::ModelConfig cfg = model::load_config(o->config);
    model::Model<float> m = model::init_model(cfg, io);
    model::save_model(m, o->out);
    std::printf("wrote %s (%lld parameters)\n", o->out.c_str(), (long long)m.layout.total);
  });
}

}  // namespace infini::cli
