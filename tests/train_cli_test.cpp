// `infini train` through the built binary, as a user or an outside check runs it: the loss
// goes down, interrupted-and-resumed runs equal uninterrupted ones bit for bit (--stop-at and
// SIGTERM), the token cache is reused and invalidated, a non-finite run keeps its last good
// checkpoint, and bad flags fail with one line and a small exit code.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "io/text.hpp"

extern char** environ;
namespace fs = std::filesystem;

namespace {

std::string io_read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct Result {
  int code;
  std::string err;
};

// Same thread count for every run (bit-identical resumes need it); sleeping OpenMP waits keep
// the tests fast on a loaded 2-core machine.
void fix_threads() {
  setenv("OMP_NUM_THREADS", "2", 1);
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
}

Result run(const std::string& args) {
  fix_threads();
  const fs::path errf =
      fs::temp_directory_path() / ("infini_train_cli_err_" + std::to_string(getpid()));
  const std::string cmd =
      std::string(INFINI_BINARY) + " " + args + " >/dev/null 2>" + errf.string();
  const int status = std::system(cmd.c_str());
  Result r{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), io_read(errf)};
  fs::remove(errf);
  return r;
}

// Starts INFINI_BINARY with `args` (split at spaces) in the background, stderr to `log`.
// Returns the child's pid, or -1.
pid_t spawn(const std::string& args, const std::string& log) {
  fix_threads();
  std::vector<std::string> argv_s = {INFINI_BINARY};
  {
    std::istringstream in(args);
    std::string w;
    while (in >> w) argv_s.push_back(w);
  }
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, INFINI_BINARY, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

std::string step_name(int64_t step) {
  const std::string n = std::to_string(step);
  return "step-" + std::string(n.size() < 8 ? 8 - n.size() : 0, '0') + n;
}

struct Env {
  fs::path dir;
  explicit Env(const std::string& name) {
    dir = fs::temp_directory_path() / ("infini_train_cli_" + name + "_" + std::to_string(getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir / "data");
    std::ofstream(dir / "tiny.json") << R"({"model_type": "llama", "vocab_size": 258,
      "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
      "num_attention_heads": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
      "rope_theta": 10000.0, "tie_word_embeddings": false,
      "infini": {"segment_length": 8, "memory_update": "delta", "use_memory": true}})";
    static const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat. ", "and ", "dog "};
    for (int d = 0; d < 3; ++d) {
      std::mt19937_64 g(static_cast<uint64_t>(d));
      std::string s;
      while (s.size() < 3000) s += words[g() % 8];
      std::ofstream(dir / "data" / ("doc" + std::string(1, char('a' + d)) + ".txt")) << s;
    }
  }
  ~Env() { fs::remove_all(dir); }
  std::string base(const std::string& out) const {
    return "train --config " + (dir / "tiny.json").string() + " --data " + (dir / "data").string() +
           " --out " + (dir / out).string() +
           " --seq-len 32 --batch 4 --lr 1e-2 --gate-lr 5e-2 --warmup 2 --val-fraction 0.34"
           " --val-tokens 400 --log-every 1 --seed 3";
  }
};

struct Line {
  int64_t step;
  double loss;
};

std::vector<Line> metrics(const fs::path& out) {
  std::vector<Line> v;
  std::ifstream f(out / "metrics.jsonl");
  std::string s;
  while (std::getline(f, s)) {
    const auto j = nlohmann::json::parse(s, nullptr, false);
    if (j.is_discarded()) continue;  // a line being appended while we poll
    v.push_back({j["step"].get<int64_t>(), j["loss"].get<double>()});
  }
  return v;
}

void expect_same_losses(const std::vector<Line>& a, const std::vector<Line>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].step, b[i].step);
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << a[i].step;  // exact, not near
  }
}

}  // namespace

TEST(TrainCli, HelpDocumentsEveryFlag) {
  fix_threads();
  const std::string cmd = std::string(INFINI_BINARY) + " train --help";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0);
  for (const char* f :
       {"--config",     "--model",        "--data",      "--out",           "--seq-len",
        "--batch",      "--steps",        "--lr",        "--gate-lr",       "--warmup",
        "--schedule",   "--weight-decay", "--grad-clip", "--grad-accum",    "--save-every",
        "--eval-every", "--seed",         "--resume",    "--bptt-segments", "--val-fraction",
        "--val-tokens", "--keep"})
    EXPECT_NE(out.find(std::string(f) + " "), std::string::npos) << f;
}

TEST(TrainCli, ShortRunLowersTheLossAndLeavesAFinalModel) {
  Env e("lowers");
  const Result r = run(e.base("run") + " --steps 40 --save-every 20 --eval-every 20");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto m = metrics(e.dir / "run");
  ASSERT_EQ(m.size(), 40u);
  EXPECT_GT(m.front().loss, 5.0);
  EXPECT_LT(m.back().loss, m.front().loss - 2.0);
  EXPECT_NE(r.err.find("eval at step 40"), std::string::npos) << r.err;
  for (const char* f : {"final/config.json", "final/model.safetensors", "loss.svg", "latest",
                        "checkpoints/step-00000040/optimizer.safetensors",
                        "checkpoints/step-00000040/trainer.json"})
    EXPECT_TRUE(fs::exists(e.dir / "run" / f)) << f;
  // The final model evaluates with the standard command.
  EXPECT_EQ(run("eval --model " + (e.dir / "run/final").string() + " --data " +
                (e.dir / "data/doca.txt").string())
                .code,
            0);
  // Continual pre-training from the trained model starts where it ended, not from scratch.
  const Result cont = run("train --model " + (e.dir / "run/final").string() + " --data " +
                          (e.dir / "data").string() + " --out " + (e.dir / "cont").string() +
                          " --seq-len 32 --batch 4 --steps 2 --eval-every 0");
  ASSERT_EQ(cont.code, 0) << cont.err;
  EXPECT_LT(metrics(e.dir / "cont").front().loss, m.front().loss - 1.5);
  // Starting again into the same --out without --resume is refused.
  const Result again = run(e.base("run") + " --steps 40");
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.err.find("--resume"), std::string::npos) << again.err;
}

TEST(TrainCli, StopAndResumeEqualsAnUninterruptedRunBitForBit) {
  Env e("resume");
  const std::string common = " --steps 6 --save-every 3 --grad-accum 2 --eval-every 3";
  ASSERT_EQ(run(e.base("full") + common).code, 0);
  Result r = run(e.base("split") + common + " --stop-at 3");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(e.dir / "split/final"));
  // Only --out and --resume: every other flag comes from the checkpoint.
  r = run("train --out " + (e.dir / "split").string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
  expect_same_losses(metrics(e.dir / "full"), metrics(e.dir / "split"));
  for (const char* f : {"final/model.safetensors", "checkpoints/step-00000006/model.safetensors",
                        "checkpoints/step-00000006/optimizer.safetensors"}) {
    const std::string a = io_read(e.dir / "full" / f), b = io_read(e.dir / "split" / f);
    EXPECT_FALSE(a.empty()) << f;
    EXPECT_TRUE(a == b) << f << " differs";
  }
  // A resumed run must repeat the settings it gives.
  r = run("train --out " + (e.dir / "split").string() + " --resume --lr 0.5");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--lr"), std::string::npos) << r.err;
}

// Settings that do not change the weights (--save-every, --keep, --eval-every, --log-every,
// --val-tokens, --token-cache, --steps) are recorded too: a resume with only --out keeps them,
// and a resume may give other values.
TEST(TrainCli, ResumeKeepsTheRecordedSettingsAndAcceptsChangedOnes) {
  Env e("settings");
  const std::string common = " --steps 6 --save-every 1 --keep 10 --eval-every 0";
  ASSERT_EQ(run(e.base("ref") + common).code, 0);
  Result r = run(e.base("r") + common + " --stop-at 2");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run("train --out " + (e.dir / "r").string() + " --resume --stop-at 4");
  ASSERT_EQ(r.code, 0) << r.err;
  // --save-every 1 and --keep 10 held (with the defaults, 500 and 3, step 3 would not be
  // saved), and so did --log-every 1 (default 10: no line for step 3).
  for (int64_t s = 1; s <= 4; ++s)
    EXPECT_TRUE(fs::exists(e.dir / "r/checkpoints" / step_name(s) / "trainer.json")) << s;
  EXPECT_NE(r.err.find("step 3/6"), std::string::npos) << r.err;
  // A different setting is accepted and used from there on; the weights do not change.
  r = run("train --out " + (e.dir / "r").string() + " --resume --save-every 2 --keep 10");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("--save-every is 2"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(e.dir / "r/checkpoints" / step_name(5)));
  EXPECT_TRUE(fs::exists(e.dir / "r/checkpoints" / step_name(6) / "trainer.json"));
  // --eval-every 0 still held at the end (the default would evaluate at step 6).
  EXPECT_EQ(r.err.find("eval at step"), std::string::npos) << r.err;
  expect_same_losses(metrics(e.dir / "ref"), metrics(e.dir / "r"));
  EXPECT_TRUE(io_read(e.dir / "ref/final/model.safetensors") ==
              io_read(e.dir / "r/final/model.safetensors"));
}

TEST(TrainCli, SigtermSavesACheckpointAndResumesExactly) {
  Env e("sigterm");
  fix_threads();
  // A long schedule; the run is stopped by the signal, not by --steps.
  const std::string args = e.base("sig") + " --steps 100000 --save-every 0 --eval-every 0";
  const std::string log = (e.dir / "sig.log").string();
  const pid_t pid = spawn(args, log);
  ASSERT_GT(pid, 0);
  // Wait for a few steps, then ask it to stop.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (metrics(e.dir / "sig").size() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << io_read(log);
  EXPECT_EQ(WEXITSTATUS(status), 0) << io_read(log);
  EXPECT_NE(io_read(log).find("interrupted at step"), std::string::npos) << io_read(log);
  const int64_t k = int64_t(metrics(e.dir / "sig").size());
  ASSERT_GE(k, 3);
  ASSERT_TRUE(fs::exists(e.dir / "sig/checkpoints" / step_name(k)));
  // Resume for 2 more steps; compare with an uninterrupted run to the same step.
  const std::string stop = " --stop-at " + std::to_string(k + 2);
  Result r = run("train --out " + (e.dir / "sig").string() + " --resume" + stop);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(e.base("ref") + " --steps 100000 --save-every 0 --eval-every 0" + stop);
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_losses(metrics(e.dir / "ref"), metrics(e.dir / "sig"));
  const std::string name = step_name(k + 2);
  EXPECT_TRUE(io_read(e.dir / "ref/checkpoints" / name / "model.safetensors") ==
              io_read(e.dir / "sig/checkpoints" / name / "model.safetensors"));
}

// Crash safety: SIGKILL at random moments (mid-step, mid-checkpoint-write, mid-metrics-append),
// several times over. Every resume must start from the newest complete checkpoint, and the
// run must end with the same weights, optimizer state and loss curve as an uninterrupted one.
TEST(TrainCli, SigkillAtRandomMomentsThenResumeEqualsAnUninterruptedRun) {
  Env e("sigkill");
  const int64_t steps = 60;
  // A checkpoint after every step, so that many kills land inside a checkpoint write.
  const std::string flags = " --steps " + std::to_string(steps) +
                            " --save-every 1 --keep 2 --eval-every 5 --grad-accum 2";
  Result r = run(e.base("ref") + flags);
  ASSERT_EQ(r.code, 0) << r.err;

  const fs::path out = e.dir / "kill";
  const std::string log = (e.dir / "kill.log").string();
  std::mt19937_64 rng(20261202);  // fixed: a failure reproduces with the same kill times
  int kills = 0, resumes = 0;
  int64_t last_complete = 0;  // the newest step with a complete checkpoint seen so far
  // Six kills, and on until one lands in a resumed run: on a loaded machine the start-up can
  // outlast every delay, so the first kills may all come before the first checkpoint.
  for (int round = 0; round < 40 && (kills < 6 || resumes == 0); ++round) {
    const bool have = fs::exists(out / "latest");
    const std::string args = have ? "train --out " + out.string() + " --resume" : e.base("kill") + flags;
    std::ofstream(log, std::ios::app) << "=== round " << round << ": " << args << "\n";
    const pid_t pid = spawn(args, log);
    ASSERT_GT(pid, 0);
    // Kill after a random delay (the binary's start-up takes part of it).
    const int delay_ms = 20 + int(rng() % 380);
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << io_read(log);
      std::cout << "round " << round << " finished within " << delay_ms << " ms\n";
      break;  // it finished before the kill
    }
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status));
    ++kills;
    if (have) ++resumes;
    std::cout << "kill " << kills << " after " << delay_ms << " ms: latest "
              << (fs::exists(out / "latest") ? io_read(out / "latest") : "(none)\n");
    // What the next resume must pick: `latest` names a complete checkpoint (each is renamed
    // into place whole), and no later step has a complete one.
    if (!fs::exists(out / "latest")) continue;  // killed before the first checkpoint
    const std::string latest = io_read(out / "latest");
    ASSERT_EQ(latest.rfind("checkpoints/step-", 0), 0u) << latest;
    const int64_t step = std::stoll(latest.substr(17));
    EXPECT_GE(step, last_complete) << "the newest checkpoint went backwards";
    last_complete = step;
    for (const char* f : {"model.safetensors", "optimizer.safetensors", "trainer.json"})
      EXPECT_TRUE(fs::exists(out / "checkpoints" / step_name(step) / f)) << step << " " << f;
    r = run("eval --model " + (out / "checkpoints" / step_name(step)).string() + " --data " +
            (e.dir / "data/doca.txt").string());
    EXPECT_EQ(r.code, 0) << "checkpoint " << step << " does not load: " << r.err;
  }
  EXPECT_GE(kills, 3) << "too few kills landed: " << io_read(log);
  EXPECT_GE(resumes, 1) << io_read(log);
  // What a kill inside model::write_file_atomic or publish_directory leaves in OUT (a kill
  // above rarely lands in that window, so plant it too): the next run removes it.
  if (fs::exists(out / "latest")) {
    for (const char* f : {"latest.tmp.4194999", "metrics.jsonl.tmp.17", "loss.svg.tmp.123456"})
      std::ofstream(out / f) << "stale";
    fs::create_directories(out / ".tmp-final-4194999");
    std::ofstream(out / ".tmp-final-4194999/model.safetensors.tmp.4194999") << "stale";
  }
  // Finish the run.
  r = run(fs::exists(out / "latest") ? "train --out " + out.string() + " --resume"
                                     : e.base("kill") + flags);
  ASSERT_EQ(r.code, 0) << r.err;
  if (last_complete > 0) {
    EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
  }
  expect_same_losses(metrics(e.dir / "ref"), metrics(out));
  for (const std::string& f : std::vector<std::string>{"final/model.safetensors",
                              "checkpoints/" + step_name(steps) + "/model.safetensors",
                              "checkpoints/" + step_name(steps) + "/optimizer.safetensors"}) {
    const std::string a = io_read(e.dir / "ref" / f), b = io_read(out / f);
    EXPECT_FALSE(a.empty()) << f;
    EXPECT_TRUE(a == b) << f << " differs from the uninterrupted run";
  }
  // No half-written checkpoint, nor any other temp file, is left behind once a run has
  // completed.
  for (const auto& c : fs::recursive_directory_iterator(out))
    EXPECT_EQ(c.path().filename().string().find(".tmp"), std::string::npos) << c.path();
}

TEST(TrainCli, TokenCacheIsReusedAndInvalidatedByAChangedInput) {
  Env e("cache");
  const std::string cache = (e.dir / "shared.bin").string();
  Result r = run(e.base("a") + " --steps 1 --token-cache " + cache);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("token cache: tokenized"), std::string::npos) << r.err;
  const auto mtime = fs::last_write_time(cache);
  r = run(e.base("b") + " --steps 1 --token-cache " + cache);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("token cache: reused"), std::string::npos) << r.err;
  EXPECT_EQ(fs::last_write_time(cache), mtime);  // not rewritten
  std::ofstream(e.dir / "data/docb.txt", std::ios::app) << " and a new sentence.";
  r = run(e.base("c") + " --steps 1 --token-cache " + cache);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("token cache: tokenized"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("inputs or tokenizer changed"), std::string::npos) << r.err;
}

TEST(TrainCli, HugeLearningRateStopsAndKeepsTheLastGoodCheckpoint) {
  Env e("nonfinite");
  // lr x weight decay = 100: each step multiplies every decayed weight by (1 - 100), so the
  // weights overflow to inf within a few dozen steps. Checkpoints are written every step.
  const std::string args = "train --config " + (e.dir / "tiny.json").string() + " --data " +
                           (e.dir / "data").string() + " --out " + (e.dir / "boom").string() +
                           " --seq-len 32 --batch 4 --steps 60 --schedule constant --warmup 0"
                           " --lr 10 --weight-decay 10 --save-every 1 --eval-every 0";
  const Result r = run(args);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("non-finite"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("the last good checkpoint is"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(e.dir / "boom/final"));
  const auto steps = metrics(e.dir / "boom");
  ASSERT_GE(steps.size(), 2u);  // it did train for a while
  // latest names the last step that completed, and every checkpoint left loads (load_model
  // rejects non-finite weights).
  const std::string last = step_name(int64_t(steps.size()));
  EXPECT_EQ(io_read(e.dir / "boom/latest"), "checkpoints/" + last + "\n");
  EXPECT_NE(r.err.find(last), std::string::npos) << r.err;
  ASSERT_TRUE(fs::exists(e.dir / "boom/checkpoints"));
  for (const auto& c : fs::directory_iterator(e.dir / "boom/checkpoints")) {
    const Result ev =
        run("eval --model " + c.path().string() + " --data " + (e.dir / "data/doca.txt").string());
    EXPECT_EQ(ev.code, 0) << c.path() << "\n" << ev.err;
  }
  // Resuming with the same settings fails the same way, without touching the checkpoint.
  const std::string before = io_read(e.dir / "boom/checkpoints" / last / "model.safetensors");
  EXPECT_EQ(run("train --out " + (e.dir / "boom").string() + " --resume").code, 1);
  EXPECT_EQ(io_read(e.dir / "boom/checkpoints" / last / "model.safetensors"), before);
}

TEST(TrainCli, HuggingFaceTokenizerIsUsedCopiedAndKeptOnResume) {
  Env e("hf");
  const fs::path tj = fs::path(INFINI_SOURCE_DIR) / "tests/data/tokenizers/llama2/tokenizer.json";
  if (!fs::exists(tj)) GTEST_SKIP() << "no " << tj;
  auto cfg = nlohmann::json::parse(io_read(e.dir / "tiny.json"));
  cfg["vocab_size"] = 32000;  // the llama2 tokenizer's ids
  std::ofstream(e.dir / "tiny32k.json") << cfg.dump();
  const std::string args = "train --config " + (e.dir / "tiny32k.json").string() + " --tokenizer " +
                           tj.string() + " --data " + (e.dir / "data").string() + " --out " +
                           (e.dir / "hf").string() +
                           " --seq-len 32 --batch 2 --steps 3 --eval-every 0";
  Result r = run(args + " --stop-at 1");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run("train --out " + (e.dir / "hf").string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("token cache: reused"), std::string::npos) << r.err;  // same tokenizer
  EXPECT_TRUE(io_read(e.dir / "hf/final/tokenizer.json") == io_read(tj));
  const auto m = metrics(e.dir / "hf");
  ASSERT_EQ(m.size(), 3u);
  EXPECT_GT(m[0].loss, 9.0);  // about ln(32000): the model predicts llama2 token ids
  // The byte-tokenizer default would not fit: a 258-id model cannot take these ids.
  r = run("train --config " + (e.dir / "tiny.json").string() + " --tokenizer " + tj.string() +
          " --data " + (e.dir / "data").string() + " --out " + (e.dir / "hf2").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("vocab_size"), std::string::npos) << r.err;
}

TEST(TrainCli, BadFlagsFailWithOneLineAndASmallExitCode) {
  Env e("flags");
  const std::string cfg = (e.dir / "tiny.json").string(), data = (e.dir / "data").string();
  const std::string ok =
      "train --config " + cfg + " --data " + data + " --out " + (e.dir / "o").string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {ok + " --seq-len 0", "--seq-len"},
      {ok + " --seq-len 1", "--seq-len"},
      {ok + " --lr -1", "--lr"},
      {ok + " --lr 1e9", "--lr"},
      {ok + " --batch 0", "--batch"},
      {ok + " --batch 3 --grad-accum 2", "--grad-accum"},
      {ok + " --steps 0", "--steps"},
      {ok + " --steps 10 --warmup 10", "--warmup"},
      {ok + " --schedule linear", "--schedule"},
      {ok + " --weight-decay -0.1", "--weight-decay"},
      {ok + " --grad-clip -1", "--grad-clip"},
      {ok + " --val-fraction 1.5", "--val-fraction"},
      {ok + " --bptt-segments -1", "--bptt-segments"},
      {ok + " --seed -1", "--seed: must be a non-negative integer"},
      {ok + " --steps abc", "--steps"},
      {ok + " --seq-len 100000", "--seq-len"},
      {ok + " --model " + e.dir.string(), "--config"},
      {"train --config " + cfg + " --out " + (e.dir / "o").string(), "--data"},
      {"train --data " + data + " --out " + (e.dir / "o").string(), "--config"},
      {"train --config " + cfg + " --data " + (e.dir / "nope").string() + " --out " +
           (e.dir / "o").string(),
       "nope"},
      {"train --out " + (e.dir / "none").string() + " --resume", "--resume"},
  };
  for (const auto& [args, word] : cases) {
    const Result r = run(args);
    EXPECT_GT(r.code, 0) << args;
    EXPECT_LT(r.code, 128) << args;
    EXPECT_NE(r.err.find(word), std::string::npos) << args << "\n" << r.err;
    // One line of reason (CLI11 may add a "Run with --help" hint line).
    const std::string first = r.err.substr(0, r.err.find('\n'));
    EXPECT_FALSE(first.empty()) << args;
    EXPECT_LE(std::count(r.err.begin(), r.err.end(), '\n'), 2) << args << "\n" << r.err;
  }
}
