// `infini train`'s flags, declared once here and shared by the command line and the Python
// package (infini.train(**flags) parses its keyword arguments with these same declarations,
// so both accept the same values and report the same errors).
#pragma once
#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/common.hpp"
#include "train/distributed.hpp"
#include "train/run.hpp"

namespace infini::cli {

struct TrainCommand {
  std::shared_ptr<train::TrainRunOptions> opts;  // filled by parsing
  std::shared_ptr<RunFlags> flags;               // the record kept in checkpoints
};

// Declares the flags of `infini train` on `cmd`, bound to a new TrainCommand.
TrainCommand add_train_flags(CLI::App* cmd);

// After parsing: applies --resume (prepare_resume) and runs train::run_training (see there for
// the callbacks). An error seen by one MPI rank alone aborts all ranks rather than leaving them
// waiting.
train::TrainRunResult run_train_command(const TrainCommand& c, train::Distributed& dist,
                                        const std::function<void(const nlohmann::json&)>& on_step,
                                        const std::atomic<bool>* interrupt, std::FILE* log,
                                        const std::function<void()>& before_steps = nullptr);

}  // namespace infini::cli
