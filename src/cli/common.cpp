#include "cli/common.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <omp.h>

#include "core/error.hpp"
#include "io/text.hpp"
#include "train/checkpoint.hpp"

namespace infini::cli {

namespace fs = std::filesystem;

CLI::Validator non_negative_integer() {
  return CLI::Validator(
      [](std::string& s) {
        return s.find('-') == std::string::npos ? std::string() : "must be a non-negative integer";
      },
      "");
}

void check_numeric_options(CLI::App& app) {
  for (CLI::Option* opt : app.get_options()) {
    const std::string type = opt->get_type_name();
    const bool is_uint = type.rfind("UINT", 0) == 0;
    const bool is_int = !is_uint && type.rfind("INT", 0) == 0;
    const bool is_float = type.rfind("FLOAT", 0) == 0;
    if (is_int || is_uint) {
      opt->check(CLI::Validator(
          [is_uint](std::string& s) -> std::string {
            if (is_uint && s.find('-') != std::string::npos)
              return "must be a non-negative integer";
            char* end = nullptr;
            errno = 0;
            if (is_uint)
              (void)std::strtoull(s.c_str(), &end, 0);
            else
              (void)std::strtoll(s.c_str(), &end, 0);
            if (errno == ERANGE)
              return "'" + s.substr(0, 40) + "' is out of the 64-bit integer range";
            return std::string();
          },
          ""));
    } else if (is_float) {
      opt->check(CLI::Validator(
          [](std::string& s) -> std::string {
            char* end = nullptr;
            const long double v = std::strtold(s.c_str(), &end);
            if (end != s.c_str() && !std::isfinite(v))
              return "must be a finite number, got '" + s.substr(0, 40) + "'";
            return std::string();
          },
          ""));
    }
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    check_numeric_options(*sub);
}

void check_output_file(const std::string& path, const std::string& flag) {
  if (path.empty()) return;
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) throw Error(flag + " " + path + " is a directory, not a file");
  const fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec))
    throw Error(flag + " " + path + ": " + parent.string() + " is not an existing directory");
}

CLI::Option* add_activation_memory_option(CLI::App* cmd, int64_t& mib) {
  return cmd
      ->add_option("--activation-memory-mb", mib,
                   "Activations of whole segments kept from the forward for the backward, at "
                   "most this many MiB; the other segments are recomputed from their memory "
                   "state (about a third more arithmetic). Results are identical either way; "
                   "0: recompute all but the last segment (least memory)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
}

CLI::Option* add_precision_option(CLI::App* cmd, std::string& precision, bool inference) {
  const std::string held =
      inference ? "the linear weights are held in bf16 only, half their float32 memory, "
                  "where native; norms, softmax, the loss and the memory state stay fp32"
                : "weights, gradients, optimizer state, norms, softmax, the loss and the memory "
                  "state stay fp32";
  return cmd
      ->add_option("--precision", precision,
                   "fp32, or bf16: the products with weights, local attention's and the "
                   "memory's take bf16 inputs and sum in fp32 (SPEC §8); " +
                       held +
                       ". Native with AVX512-BF16, emulated elsewhere (infini --version says "
                       "which)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16"}));
}

// ---------------------------------------------------------------------------------------
// RunFlags

namespace {

// The key `infini passkey train` used before flags were recorded by name: "--min-len" was
// "min_len", "--curriculum-steps" was "curriculum_steps".
std::string legacy_key(const std::string& flag) {
  std::string k = flag.substr(flag.find_first_not_of('-'));
  for (char& c : k)
    if (c == '-') c = '_';
  return k;
}

}  // namespace

nlohmann::json RunFlags::record() const {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& e : entries_) j[e.opt->get_name()] = e.get();
  return j;
}

namespace {
// A recorded number goes through the flag's own CLI11 validators (ranges, finiteness), as the
// same value typed on the command line would: a hand-edited or damaged record is refused
// before the run starts, not found later as a non-finite weight. Strings are paths and names
// whose checks (a file that exists) concern the run's start, so they are not re-run.
void check_recorded_value(CLI::Option& opt, const nlohmann::json& rec, const std::string& source) {
  if (!rec.is_number()) return;
  const std::string text = rec.dump();
  for (int i = 0;; ++i) {
    CLI::Validator* check = nullptr;
    try {
      check = opt.get_validator(i);
    } catch (const CLI::OptionNotFound&) {
      break;
    }
    std::string value = text;  // a validator may rewrite its argument
    const std::string why = (*check)(value);
    if (!why.empty())
      throw Error(source + ": the record of " + opt.get_name() + " (" + text +
                  ") is not a valid value: " + why);
  }
}
}  // namespace

std::vector<RunFlags::Change> RunFlags::restore(const nlohmann::json& rec,
                                                const std::string& source) {
  if (!rec.is_object()) throw Error(source + " has no record of the run's flags");
  std::vector<Change> changes;
  for (const auto& e : entries_) {
    const std::string flag = e.opt->get_name();
    const nlohmann::json* r = nullptr;
    if (rec.contains(flag))
      r = &rec[flag];
    else if (rec.contains(legacy_key(flag)))
      r = &rec[legacy_key(flag)];
    if (!r && e.absent) r = &*e.absent;
    if (!r) {
      if (e.trajectory) throw Error(source + " has no record of " + flag);
      continue;
    }
    if (e.opt->count() > 0) {
      const nlohmann::json now = e.get();
      if (now == *r) continue;
      if (e.trajectory)
        throw Error(flag + " " + now.dump() + " differs from the checkpoint's " + r->dump() +
                    " (it shapes the run: omit it, or give the recorded value)");
      changes.push_back({flag, *r, now});
      continue;
    }
    try {
      e.set(*r);
    } catch (const nlohmann::json::exception&) {
      throw Error(source + ": the record of " + flag + " (" + r->dump() + ") is not a valid value");
    }
    check_recorded_value(*e.opt, *r, source);
  }
  return changes;
}

std::string RunFlags::setting_names() const {
  std::vector<std::string> names;
  for (const auto& e : entries_)
    if (!e.trajectory) names.push_back(e.opt->get_name());
  std::string s;
  for (size_t i = 0; i < names.size(); ++i)
    s += (i == 0 ? "" : i + 1 == names.size() ? " and " : ", ") + names[i];
  return s;
}

nlohmann::json read_run_record(const std::string& checkpoint_dir) {
  const std::string path = (fs::path(checkpoint_dir) / "trainer.json").string();
  const auto st = nlohmann::json::parse(io::read_file(path), nullptr, false);
  if (st.is_discarded() || !st.is_object() || !st.contains("args") || !st["args"].is_object())
    throw Error(path + " has no record of the run's flags");
  return st["args"];
}

std::optional<std::string> prepare_resume(const std::string& out, bool resume, RunFlags& flags,
                                          std::FILE* log) {
  if (!resume) {
    if (train::find_latest_checkpoint(out))
      throw Error("--out " + out + " already holds checkpoints; add --resume to continue "
                  "that run or choose another --out");
    return std::nullopt;
  }
  const std::optional<std::string> dir = train::find_latest_checkpoint(out);
  if (!dir) throw Error("--resume: no complete checkpoint in " + out);
  const std::string where = *dir + "/trainer.json";
  for (const auto& c : flags.restore(read_run_record(*dir), where)) {
    if (!log) continue;
    if (c.flag == "--steps")
      std::fprintf(log, "note: --steps changed from %s to %s; the schedule changes with it\n",
                   c.recorded.dump().c_str(), c.now.dump().c_str());
    else
      std::fprintf(log, "note: %s is %s in this part of the run (it was %s)\n", c.flag.c_str(),
                   c.now.dump().c_str(), c.recorded.dump().c_str());
  }
  const auto st = nlohmann::json::parse(io::read_file(where), nullptr, false);
  const auto threads = st.is_object() ? st.find("omp_threads") : st.end();
  if (log && threads != st.end() && threads->is_number_integer() &&
      threads->get<int64_t>() != omp_threads())
    std::fprintf(log, "note: the checkpoint was written with %lld threads, this run uses %d; "
                 "results will not be bit-identical to an uninterrupted run\n",
                 (long long)threads->get<int64_t>(), omp_threads());
  return dir;
}

// ---------------------------------------------------------------------------------------
// StopSignalGuard

namespace {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs a lock-free flag");

extern "C" void on_stop_signal(int sig) {
  if (g_stop.exchange(true)) {  // the second signal: the default action, at once
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

}  // namespace

StopSignalGuard::StopSignalGuard() {
  g_stop = false;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int_);
  sigaction(SIGTERM, &sa, &old_term_);
}

StopSignalGuard::~StopSignalGuard() {
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
}

const std::atomic<bool>& stop_requested() { return g_stop; }

}  // namespace infini::cli
