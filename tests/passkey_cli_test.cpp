// `infini passkey train` through the built binary: a run split by --stop-at and continued with
// only `--out DIR --resume` ends bit-identical to an uninterrupted one (every flag, settings
// included, comes from the checkpoint); a resume that changes a flag shaping the weights fails
// naming it; records written before flags were recorded by name still resume. Also: every
// --seed flag rejects a negative value instead of wrapping it to 2^64 - 1.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "util/cli.hpp"

namespace fs = std::filesystem;
using infini::testutil::CliResult;
using infini::testutil::read_file;

namespace {

// Same thread count for every run: bit-identical resumes need it.
CliResult run(const std::string& args) {
  setenv("OMP_NUM_THREADS", "1", 1);
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  return infini::testutil::run_infini(args);
}

struct Env {
  fs::path dir;
  explicit Env(const std::string& name) : dir(infini::testutil::temp_dir("passkey_cli_" + name)) {
    // One layer, hidden 16, segment 32: a step over 2 prompts of ~270 byte tokens takes ms.
    std::ofstream(dir / "tiny.json") << R"({"model_type": "llama", "vocab_size": 258,
      "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
      "num_attention_heads": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
      "rope_theta": 10000.0, "tie_word_embeddings": false,
      "infini": {"segment_length": 32, "memory_update": "delta", "use_memory": true}})";
  }
  ~Env() { fs::remove_all(dir); }
  // Settings other than their defaults (--save-every, --keep, --log-every, --eval-every), so
  // that a resume which forgot them shows.
  std::string train(const std::string& out) const {
    return "passkey train --config " + (dir / "tiny.json").string() + " --out " +
           (dir / out).string() +
           " --steps 4 --batch 2 --min-len 256 --max-len 288 --digits 2 --warmup 1 --lr 1e-2"
           " --seed 5 --save-every 1 --keep 10 --log-every 1 --eval-every 0";
  }
};

std::string ckpt(int step) {
  const std::string n = std::to_string(step);
  return "checkpoints/step-" + std::string(8 - n.size(), '0') + n;
}

}  // namespace

TEST(PasskeyCli, StopAtThenResumeWithOnlyOutEqualsAnUninterruptedRun) {
  Env e("resume");
  CliResult r = run(e.train("full"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(e.train("split") + " --stop-at 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(e.dir / "split/final"));
  // Nothing but --out and --resume: the model, the prompts, the optimizer and the settings
  // all come from the checkpoint.
  r = run("passkey train --out " + (e.dir / "split").string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from"), std::string::npos) << r.err;
  const std::string a = read_file(e.dir / "full/final/model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == read_file(e.dir / "split/final/model.safetensors")) << "final/ differs";
  // The recorded --save-every 1 and --keep 10 held after the resume (with the defaults, 500
  // and 3, step 3 would not be saved), and so did --log-every 1 (default 10: no line for 3).
  for (int s = 1; s <= 4; ++s)
    EXPECT_TRUE(fs::exists(e.dir / "split" / ckpt(s) / "trainer.json")) << ckpt(s);
  EXPECT_NE(r.err.find("step 3/4"), std::string::npos) << r.err;
  // A flag that shapes the weights must not change on resume; the error names it.
  r = run("passkey train --out " + (e.dir / "split").string() + " --resume --lr 0.5");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("--lr"), std::string::npos) << r.err;
  // Repeating a recorded value is fine, and a setting may change.
  r = run("passkey train --out " + (e.dir / "split").string() +
          " --resume --lr 1e-2 --save-every 3 --steps 4");
  EXPECT_EQ(r.code, 0) << r.err;
}

// With state passing the chains' memory is part of the checkpoint: a split run continues bit
// for bit, and the chains change the weights (they are not a no-op).
TEST(PasskeyCli, StatePassingResumesExactlyAndMatters) {
  Env e("background");
  const std::string chains =
      " --background-chains 2 --background-tokens-per-step 64 --background-max-tokens 512";
  CliResult r = run(e.train("full") + chains);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("state passing: 1 of every 2 rows"), std::string::npos) << r.err;
  r = run(e.train("split") + chains + " --stop-at 3");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run("passkey train --out " + (e.dir / "split").string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string a = read_file(e.dir / "full/final/model.safetensors");
  EXPECT_TRUE(a == read_file(e.dir / "split/final/model.safetensors")) << "final/ differs";
  r = run(e.train("plain"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(a == read_file(e.dir / "plain/final/model.safetensors"));
  // Turning the chains on at a resume would change the run: refused, naming the flag.
  r = run(e.train("plain2") + " --stop-at 2");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run("passkey train --out " + (e.dir / "plain2").string() +
          " --resume --background-chains 2");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("--background-chains"), std::string::npos) << r.err;
}

// Checkpoints written before flags were recorded by name ({"lr": ..., "min_len": ...}, no
// settings) resume too: the trajectory flags are read from the old keys.
TEST(PasskeyCli, ResumesACheckpointWithTheOldRecordFormat) {
  Env e("legacy");
  CliResult r = run(e.train("full"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(e.train("old") + " --stop-at 2");
  ASSERT_EQ(r.code, 0) << r.err;
  const fs::path tj = e.dir / "old" / ckpt(2) / "trainer.json";
  auto st = nlohmann::json::parse(read_file(tj));
  nlohmann::json legacy;
  for (const char* k :
       {"--config",   "--model",         "--tokenizer",    "--loss",        "--schedule",
        "--steps",    "--batch",         "--min-len",      "--max-len",     "--len-multiple",
        "--warmup",   "--bptt-segments", "--digits",       "--lora-rank",   "--lora-alpha",
        "--lr",       "--gate-lr",       "--weight-decay", "--grad-clip",   "--min-lr-ratio",
        "--init-std", "--gate-init",     "--seed",         "--end-fraction"}) {
    std::string key = std::string(k).substr(2);
    for (char& c : key)
      if (c == '-') c = '_';
    ASSERT_TRUE(st["args"].contains(k)) << k;
    legacy[key] = st["args"][k];
  }
  legacy["curriculum_steps"] = st["args"]["--curriculum-steps"];
  st["args"] = legacy;
  std::ofstream(tj) << st.dump(2);
  r = run("passkey train --out " + (e.dir / "old").string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(read_file(e.dir / "full/final/model.safetensors") ==
              read_file(e.dir / "old/final/model.safetensors"));
}

// CLI11 would read "--seed -1" into a uint64_t as 2^64 - 1 without a word.
TEST(SeedFlags, ANegativeSeedIsRejectedByEveryCommand) {
  Env e("seed");
  const std::string model = (e.dir / "m").string();
  CliResult r = run("init --config " + (e.dir / "tiny.json").string() + " --out " + model);
  ASSERT_EQ(r.code, 0) << r.err;
  std::ofstream(e.dir / "doc.txt") << "the cat sat on the mat";
  const std::vector<std::string> cases = {
      "init --config " + (e.dir / "tiny.json").string() + " --out " + (e.dir / "m2").string(),
      "train --config " + (e.dir / "tiny.json").string() + " --data " +
          (e.dir / "doc.txt").string() + " --out " + (e.dir / "t").string() +
          " --steps 1 --seq-len 8 --batch 1",
      "generate --model " + model + " --prompt hi --max-new-tokens 1",
      "passkey train --config " + (e.dir / "tiny.json").string() + " --out " +
          (e.dir / "p").string() +
          " --steps 1 --batch 1 --min-len 256 --max-len 288 --eval-every 0",
      "passkey eval --model " + model + " --lengths 300 --depths 0 --trials 1",
      "passkey sample --length 300",
  };
  for (const auto& args : cases) {
    for (const char* bad : {"-1", "-5"}) {
      r = run(args + " --seed " + bad);
      EXPECT_GT(r.code, 0) << args;
      EXPECT_LT(r.code, 128) << args;
      EXPECT_NE(r.err.find("--seed: must be a non-negative integer"), std::string::npos)
          << args << " --seed " << bad << "\n"
          << r.err;
    }
    r = run(args + " --seed 7");  // a valid seed still works
    EXPECT_EQ(r.code, 0) << args << "\n" << r.err;
  }
}
