// Data-parallel `infini train` under `mpirun -np 2` (docs/distributed.md), through the built
// binary: two ranks give the same per-step losses and final weights as one process at the
// same global batch, rank 1 writes nothing, --resume works under MPI, and ranks given
// different data or an indivisible batch fail clearly on every rank instead of hanging.
// Skipped when mpirun is not installed or infini was built without MPI.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <thread>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.hpp"
#include "util/cli.hpp"
#include "util/nan_max.hpp"

using infini::testing::nan_max;

extern char** environ;
namespace fs = std::filesystem;

namespace {

using infini::testutil::CliResult;
using infini::testutil::read_file;
using infini::testutil::run_shell;

bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

// One OpenMP thread per process, so that 2 ranks fit the CI's 2 cores.
CliResult sh(const std::string& cmd) {
  setenv("OMP_NUM_THREADS", "1", 1);
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  // CI runs as root; OpenMPI refuses that unless told (the flag below says it too).
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  // `timeout`: a hang fails the test (exit 124) instead of blocking CI. Standard output goes
  // to /dev/null so that no rank left behind can hold the pipe open.
  return run_shell("timeout 120 " + cmd + " >/dev/null");
}

// Shared memory and loopback only; no CPU binding (the ranks share 2 cores with other tests).
std::string mpirun(int np) {
  return "mpirun -np " + std::to_string(np) +
         " --oversubscribe --allow-run-as-root --bind-to none"
         " --mca btl self,vader --mca btl_vader_single_copy_mechanism none"
         " -x OMP_NUM_THREADS -x OMP_WAIT_POLICY"
         // A sanitizer build would report OpenMPI's own allocations at exit as leaks.
         " -x ASAN_OPTIONS=detect_leaks=0 ";
}

struct Env {
  fs::path dir;
  Env() {
    dir = infini::testutil::temp_dir("mpi");
    fs::create_directories(dir / "data");
    fs::create_directories(dir / "other");
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
      s[10] = 'X';  // same names and sizes, different bytes
      std::ofstream(dir / "other" / ("doc" + std::string(1, char('a' + d)) + ".txt")) << s;
    }
  }
  ~Env() { fs::remove_all(dir); }
  std::string train(const std::string& out, const std::string& data = "data",
                    int batch = 4) const {
    return std::string(INFINI_BINARY) + " train --config " + (dir / "tiny.json").string() +
           " --data " + (dir / data).string() + " --out " + (dir / out).string() +
           " --batch " + std::to_string(batch) +
           " --seq-len 32 --lr 1e-2 --gate-lr 5e-2 --warmup 2 --val-fraction 0.34"
           " --val-tokens 400 --log-every 1 --seed 3 --eval-every 3";
  }
};

std::vector<nlohmann::json> metrics(const fs::path& out) {
  std::vector<nlohmann::json> v;
  std::ifstream f(out / "metrics.jsonl");
  std::string s;
  while (std::getline(f, s)) v.push_back(nlohmann::json::parse(s));
  return v;
}

[[maybe_unused]] std::vector<float> weights(const fs::path& dir) {
  return infini::model::load_model(dir.string()).weights;
}

[[maybe_unused]] size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

class Mpi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!have_mpirun()) return;
    env_ = new Env();
  }
  // The reference runs, made once for the tests that need them: one process, and 2 ranks.
  static void reference_runs() {
    if (!single_) single_ = new CliResult(sh(env_->train("single") + " --steps 8"));
    if (!pair_)
      pair_ = new CliResult(sh(mpirun(2) + env_->train("pair") + " --steps 8 --save-every 4"));
  }
  static void TearDownTestSuite() {
    delete env_;
    delete single_;
    delete pair_;
    env_ = nullptr;
    single_ = pair_ = nullptr;
  }
  void SetUp() override {
    if (!have_mpirun()) GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs it)";
  }
  static Env* env_;
  static CliResult *single_, *pair_;
};
Env* Mpi::env_ = nullptr;
CliResult* Mpi::single_ = nullptr;
CliResult* Mpi::pair_ = nullptr;

}  // namespace

#ifdef INFINI_WITH_MPI

TEST_F(Mpi, TwoRanksMatchOneProcessAtTheSameGlobalBatch) {
  reference_runs();
  ASSERT_EQ(single_->code, 0) << single_->err;
  ASSERT_EQ(pair_->code, 0) << pair_->err;
  const auto a = metrics(env_->dir / "single"), b = metrics(env_->dir / "pair");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);  // rank 1 appending its own lines would make 16
  for (size_t i = 0; i < a.size(); ++i) {
    const double la = a[i]["loss"].get<double>(), lb = b[i]["loss"].get<double>();
    EXPECT_NEAR(lb, la, 1e-5 * std::fabs(la)) << "step " << i + 1;
    EXPECT_NEAR(b[i]["grad_norm"].get<double>(), a[i]["grad_norm"].get<double>(),
                1e-4 * a[i]["grad_norm"].get<double>()) << "step " << i + 1;
    if (a[i].contains("val_loss")) {
      ASSERT_TRUE(b[i].contains("val_loss"));
      EXPECT_NEAR(b[i]["val_loss"].get<double>(), a[i]["val_loss"].get<double>(),
                  1e-5 * a[i]["val_loss"].get<double>());
    }
  }
  EXPECT_GT(a.front()["loss"].get<double>(), a.back()["loss"].get<double>() + 0.5);
  const auto wa = weights(env_->dir / "single/final"), wb = weights(env_->dir / "pair/final");
  ASSERT_EQ(wa.size(), wb.size());
  float worst = 0;
  for (size_t i = 0; i < wa.size(); ++i) worst = nan_max(worst, std::fabs(wa[i] - wb[i]));
  EXPECT_LE(worst, 1e-5f);
  // Only rank 0 logs: one start line, and rank 1 created no temp files in --out.
  EXPECT_EQ(count(pair_->err, "mpi: 2 processes"), 1u) << pair_->err;
  EXPECT_EQ(count(pair_->err, "step 8/8"), 1u) << pair_->err;
  for (const auto& f : fs::recursive_directory_iterator(env_->dir / "pair"))
    EXPECT_EQ(f.path().filename().string().find(".tmp"), std::string::npos) << f.path();
}

TEST_F(Mpi, ResumeUnderMpiEqualsTheUninterruptedRun) {
  reference_runs();
  ASSERT_EQ(pair_->code, 0) << pair_->err;
  CliResult r = sh(mpirun(2) + env_->train("split") + " --steps 8 --save-every 4 --stop-at 4");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(env_->dir / "split/final"));
  r = sh(mpirun(2) + std::string(INFINI_BINARY) + " train --resume --out " +
         (env_->dir / "split").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
  const auto a = metrics(env_->dir / "pair"), b = metrics(env_->dir / "split");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
  EXPECT_EQ(weights(env_->dir / "pair/final"), weights(env_->dir / "split/final"));
}

TEST_F(Mpi, RanksGivenDifferentDataFailOnEveryRankWithoutHanging) {
  // Rank 1 reads other/ (same file names and sizes, one byte changed).
  const fs::path wrapper = env_->dir / "wrap.sh";
  std::ofstream(wrapper) << "#!/bin/sh\nif [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then exec "
                         << env_->train("mismatch", "other") << " --steps 4; else exec "
                         << env_->train("mismatch", "data") << " --steps 4; fi\n";
  // --data also differs as a flag, so the flags check is the one that fails.
  const CliResult r = sh(mpirun(2) + "sh " + wrapper.string());
  EXPECT_NE(r.code, 0) << r.err;
  EXPECT_NE(r.code, 124) << "hung: " << r.err;
  EXPECT_NE(r.err.find("not the same on all 2 MPI processes"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(env_->dir / "mismatch/metrics.jsonl"));

  // Same --data path on both ranks, different bytes: only the data fingerprint tells.
  std::ofstream(env_->dir / "wrap2.sh")
      << "#!/bin/sh\nd=" << env_->dir.string() << "/rank$OMPI_COMM_WORLD_RANK\n"
      << "mkdir -p $d && ln -sfn " << env_->dir.string()
      << "/$( [ \"$OMPI_COMM_WORLD_RANK\" = 1 ] && echo other || echo data ) $d/corpus\n"
      << "cd $d && exec " << INFINI_BINARY << " train --config " << (env_->dir / "tiny.json").string()
      << " --data corpus --out " << (env_->dir / "mismatch2").string()
      << " --seq-len 32 --batch 4 --steps 4\n";
  const CliResult r2 = sh(mpirun(2) + "sh " + (env_->dir / "wrap2.sh").string());
  EXPECT_NE(r2.code, 0) << r2.err;
  EXPECT_NE(r2.code, 124) << "hung: " << r2.err;
  EXPECT_NE(r2.err.find("the training data"), std::string::npos) << r2.err;
  EXPECT_NE(r2.err.find("not the same on all 2 MPI processes"), std::string::npos) << r2.err;
}

// The processes whose parent is `parent` (read from /proc; no procps needed).
std::vector<pid_t> children(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::istringstream st(read_file(e.path() / "stat"));
    std::string pid, comm, state;
    long ppid = 0;
    // comm is in parentheses and has no spaces for the programs started here.
    if (st >> pid >> comm >> state >> ppid && ppid == parent) out.push_back(pid_t(std::stol(pid)));
  }
  return out;
}

TEST_F(Mpi, SigtermToOneRankStopsAllRanksAtTheSameStepWithACheckpoint) {
  const std::string cmd =
      mpirun(2) + env_->train("sig") + " --steps 100000 --save-every 0";
  std::vector<std::string> argv_s;
  {
    std::istringstream in(cmd);
    std::string w;
    while (in >> w) argv_s.push_back(w);
  }
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  sh("true");  // sets the environment the ranks inherit
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  const std::string log = (env_->dir / "sig.log").string();
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawnp(&pid, "mpirun", &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int status = 0;
  while (metrics(env_->dir / "sig").size() < 3 && std::chrono::steady_clock::now() < deadline) {
    ASSERT_EQ(waitpid(pid, &status, WNOHANG), 0) << "mpirun ended early: " << read_file(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::vector<pid_t> ranks = children(pid);
  ASSERT_EQ(ranks.size(), 2u) << read_file(log);
  // Only one rank is told; the stop is agreed between ranks after each step.
  ASSERT_EQ(kill(ranks.back(), SIGTERM), 0);
  while (waitpid(pid, &status, WNOHANG) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (waitpid(pid, &status, WNOHANG) == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL() << "mpirun did not finish after SIGTERM to one rank: " << read_file(log);
  }
  const std::string err = read_file(log);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << err;
  EXPECT_NE(err.find("interrupted at step"), std::string::npos) << err;
  const auto m = metrics(env_->dir / "sig");
  ASSERT_GE(m.size(), 3u);
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", (long long)m.size());
  EXPECT_TRUE(fs::exists(env_->dir / "sig/checkpoints" / name / "trainer.json")) << err;
}

TEST_F(Mpi, GlobalBatchMustDivideOverRanksTimesGradAccum) {
  const CliResult r = sh(mpirun(2) + env_->train("odd", "data", 2) + " --steps 3 --grad-accum 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.code, 124) << "hung: " << r.err;
  EXPECT_NE(r.err.find("multiple of 2 MPI processes x --grad-accum 2"), std::string::npos)
      << r.err;
}

#else  // a build without MPI refuses to be started as several processes

TEST_F(Mpi, BuildWithoutMpiRefusesSeveralProcesses) {
  const CliResult r = sh(mpirun(2) + env_->train("nompi") + " --steps 3");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.code, 124) << "hung: " << r.err;
  EXPECT_NE(r.err.find("no MPI support"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(env_->dir / "nompi/metrics.jsonl"));
}

#endif

// Both builds: a plain launch (no mpirun) is a single process as before.
TEST_F(Mpi, PlainLaunchIsOneProcess) {
  const CliResult r = sh(env_->train("plain") + " --steps 3");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.find("mpi:"), std::string::npos) << r.err;
  EXPECT_EQ(metrics(env_->dir / "plain").size(), 3u);
}
