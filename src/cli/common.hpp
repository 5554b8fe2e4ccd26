// Small helpers shared by the subcommands.
#pragma once
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <functional>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/process.hpp"
#include "model/bptt.hpp"

namespace infini::cli {

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// For unsigned flags such as --seed: CLI11 would wrap "-1" into 2^64 - 1 silently. The error
// reads "--seed: must be a non-negative integer".
CLI::Validator non_negative_integer();

// Adds to every numeric option of `app` and its subcommands (recursively) the checks CLI11
// 2.1 leaves out: an INT/UINT value beyond 64 bits is an error (CLI11 saturates it to the
// largest value silently), a UINT value may not be negative (CLI11 wraps "-1" to 2^64 - 1),
// and a FLOAT value must be finite ("nan" passes every CLI::Range). Call once, after every
// subcommand is registered; the checks run after the option's own ones.
void check_numeric_options(CLI::App& app);

// For an output file written at the end of a long run (--plot, --state-out): throws naming
// `flag` when `path` is a directory or its parent is not an existing directory, so that the
// run stops before it starts rather than after it is done.
void check_output_file(const std::string& path, const std::string& flag);

// --activation-memory-mb of the commands that back-propagate (train, passkey train, bench, grad): the budget
// for activations kept from the forward for the backward (model::SequenceOptions).
CLI::Option* add_activation_memory_option(CLI::App* cmd, int64_t& mib);
// --precision of the commands that run the model (train, passkey train and eval, eval, grad,
// generate, bench): "fp32" or "bf16" (model/precision.hpp).
// --precision fp32|bf16. `inference`: the command only runs the model, which then holds its
// linear weights in bf16 (model::load_inference_model), and the help says so.
CLI::Option* add_precision_option(CLI::App* cmd, std::string& precision, bool inference = false);
inline int64_t default_activation_memory_mb() {
  return model::SequenceOptions::kDefaultKeepActivationsBytes >> 20;
}

// The flags of a resumable run (`infini train`, `infini passkey train`), each declared once
// and registered here as one of two kinds. All are recorded in every checkpoint (trainer.json
// "args", keyed by the flag's name, e.g. "--lr"). On --resume:
//   trajectory: shapes the weights (model, data, optimizer, schedule, seed). Omitted: taken
//               from the record. Given: must equal the record, else an error naming the flag.
//   setting:    does not change the weights (checkpoint, eval and log cadence, ...). Omitted:
//               taken from the record. Given: may differ; restore() reports the change.
class RunFlags {
 public:
  template <class T>
  CLI::Option* trajectory(CLI::Option* opt, T& value) {
    add(opt, true, value);
    return opt;
  }
  // A trajectory flag added after checkpoints existed: a record without it is read as the
  // flag's default (`value` when registered), the behaviour before the flag existed.
  template <class T>
  CLI::Option* trajectory_added_later(CLI::Option* opt, T& value) {
    add(opt, true, value);
    entries_.back().absent = nlohmann::json(value);
    return opt;
  }
  template <class T>
  CLI::Option* setting(CLI::Option* opt, T& value) {
    add(opt, false, value);
    return opt;
  }

  // {"--flag": value, ...} of every registered flag, with the values they hold now.
  nlohmann::json record() const;

  struct Change {
    std::string flag;
    nlohmann::json recorded, now;
  };
  // Applies the record `rec` (read from `source`, named in errors) as described above and
  // returns the settings given with a value different from the record. A record written before
  // a flag was registered lacks it: a setting keeps its value, a trajectory flag is an error
  // (unless registered with trajectory_added_later).
  // Records of `infini passkey train` before this scheme ("lr", "min_len") are read too.
  std::vector<Change> restore(const nlohmann::json& rec, const std::string& source);

  // The names of the settings, "--a, --b and --c", for help texts.
  std::string setting_names() const;

 private:
  struct Entry {
    CLI::Option* opt;
    bool trajectory;
    std::function<nlohmann::json()> get;
    std::function<void(const nlohmann::json&)> set;
    std::optional<nlohmann::json> absent;  // what a record without this flag means
  };
  template <class T>
  void add(CLI::Option* opt, bool trajectory, T& value) {
    entries_.push_back({opt, trajectory, [&value] { return nlohmann::json(value); },
                        [&value](const nlohmann::json& j) { value = j.get<T>(); }, std::nullopt});
  }
  std::vector<Entry> entries_;
};

// The "args" record of a checkpoint directory's trainer.json; throws naming the file.
nlohmann::json read_run_record(const std::string& checkpoint_dir);

// With --resume: the newest complete checkpoint in `out`, after restoring `flags` from its
// record; notes on changed settings, and on a thread count other than the checkpoint's (the
// run is then not bit-identical to an uninterrupted one), go to `log` (null: nowhere).
// Without: nullopt, after checking that `out` holds no checkpoint that a fresh run would mix
// with.
std::optional<std::string> prepare_resume(const std::string& out, bool resume, RunFlags& flags,
                                          std::FILE* log);

// While alive, the first SIGINT or SIGTERM sets stop_requested() (a trainer then finishes its
// step, writes a checkpoint and returns, and the command exits 0); a second one ends the
// process at once with the signal's default action. The previous handlers come back on
// destruction. One guard at a time.
class StopSignalGuard {
 public:
  StopSignalGuard();
  ~StopSignalGuard();
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;

 private:
  struct sigaction old_int_ {
  }, old_term_{};
};

// The flag a StopSignalGuard sets (false while none is alive and none was received).
const std::atomic<bool>& stop_requested();

}  // namespace infini::cli
