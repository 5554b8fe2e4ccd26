// `infini generate` through the built binary: reproducible sampling, saved states that resume
// exactly, the interactive mode, stop strings, streamed prompt files and clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "util/cli.hpp"

namespace fs = std::filesystem;

namespace {

using infini::testutil::CliResult;
using infini::testutil::read_file;
using infini::testutil::run_infini;
using infini::testutil::run_shell;

nlohmann::json json_of(const CliResult& r) {
  EXPECT_EQ(r.code, 0) << r.err;
  return nlohmann::json::parse(r.out);
}

// A small byte-tokenizer model with a memory and 16-token segments, made once per run.
class Generate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = infini::testutil::temp_dir("gen");
    auto make = [](const std::string& name, uint64_t seed, int seg = 16) {
      std::ofstream(dir_ / (name + ".json")) << R"({"vocab_size": 260, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "model_type": "llama",
        "infini": {"segment_length": )" << seg << R"(, "memory_update": "delta", "use_memory": true}})";
      const CliResult r = run_infini("init --config " + (dir_ / (name + ".json")).string() +
                                     " --out " + (dir_ / name).string() + " --seed " +
                                     std::to_string(seed) + " --init-std 0.3 --gate-init 1");
      ASSERT_EQ(r.code, 0) << r.err;
    };
    make("m", 1);
    make("other", 2);
    make("wide", 1, 128);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string model() { return (dir_ / "m").string(); }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }
  static std::string gen(const std::string& args) {
    return "generate --model " + model() + " " + args;
  }
  static inline fs::path dir_;
};

}  // namespace

TEST_F(Generate, JsonReportsTheContractFields) {
  const auto j = json_of(
      run_infini(gen("--prompt 'Once upon a time' --max-new-tokens 12 --json --temperature 0")));
  for (const char* k : {"prompt_tokens", "new_tokens", "prefill_tokens_per_s", "decode_tokens_per_s",
                        "peak_rss_mb", "text", "stop_reason"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["prompt_tokens"].get<int64_t>(), 16);  // byte tokenizer: one token per byte
  EXPECT_LE(j["new_tokens"].get<int64_t>(), 12);
  EXPECT_GT(j["peak_rss_mb"].get<double>(), 1.0);
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0.0);
}

TEST_F(Generate, SamplingIsReproducibleAndTopKOneIsGreedy) {
  const std::string p = "--prompt 'The memory of' --max-new-tokens 40 ";
  const CliResult greedy = run_infini(gen(p + "--temperature 0"));
  ASSERT_EQ(greedy.code, 0) << greedy.err;
  EXPECT_EQ(run_infini(gen(p + "--temperature 1.7 --top-k 1 --seed 9")).out, greedy.out);
  const CliResult a = run_infini(gen(p + "--temperature 1 --seed 5"));
  const CliResult b = run_infini(gen(p + "--temperature 1 --seed 5 --top-p 1"));
  const CliResult c = run_infini(gen(p + "--temperature 1 --seed 6"));
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_NE(a.out, greedy.out);
}

TEST_F(Generate, SavedStateResumesLikeOneRun) {
  // Reading A then B from a saved state gives what reading A+B in one run gives; so does
  // generating 10 + 15 tokens across two runs versus 25 in one (greedy).
  const std::string A = "a long document that spans several segments of sixteen tokens. ";
  const std::string B = "Question: what was it about?";
  const std::string st = path("doc.state");
  const CliResult whole =
      run_infini(gen("--prompt '" + A + B + "' --max-new-tokens 25 --temperature 0"));
  ASSERT_EQ(whole.code, 0) << whole.err;
  const CliResult read =
      run_infini(gen("--prompt '" + A + "' --max-new-tokens 0 --state-out " + st));
  ASSERT_EQ(read.code, 0) << read.err;
  const CliResult asked = run_infini(
      gen("--state-in " + st + " --prompt '" + B + "' --max-new-tokens 25 --temperature 0"));
  ASSERT_EQ(asked.code, 0) << asked.err;
  EXPECT_EQ(asked.out, whole.out);
  // The state can be queried again: it was not modified by the read.
  EXPECT_EQ(run_infini(gen("--state-in " + st + " --prompt '" + B +
                           "' --max-new-tokens 25 --temperature 0"))
                .out,
            whole.out);

  const std::string st2 = path("gen.state");
  const auto first = json_of(run_infini(gen(
      "--prompt '" + A + B + "' --max-new-tokens 10 --temperature 0 --json --state-out " + st2)));
  ASSERT_EQ(first["stop_reason"], "length");
  const auto second =
      json_of(run_infini(gen("--state-in " + st2 + " --max-new-tokens 15 --temperature 0 --json")));
  const auto all = json_of(
      run_infini(gen("--prompt '" + A + B + "' --max-new-tokens 25 --temperature 0 --json")));
  ASSERT_EQ(all["stop_reason"], "length");
  EXPECT_EQ(first["text"].get<std::string>() + second["text"].get<std::string>(), all["text"].get<std::string>());
  EXPECT_EQ(second["position"].get<int64_t>(), all["position"].get<int64_t>());
}

TEST_F(Generate, InteractiveKeepsTheStateAcrossTurns) {
  const std::string in = path("turns.txt");
  std::ofstream(in) << "first question\nsecond question\n";
  const CliResult r =
      run_infini(gen("--interactive --json --max-new-tokens 8 --temperature 0 < " + in));
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<nlohmann::json> turns;
  std::istringstream lines(r.out);
  for (std::string l; std::getline(lines, l);) turns.push_back(nlohmann::json::parse(l));
  ASSERT_EQ(turns.size(), 2u);
  // Turn 2 equals: read turn 1 and its answer, save, then ask the second line.
  const std::string st = path("chat.state"), q1 = path("q1.txt"), q2 = path("q2.txt");
  std::ofstream(q1) << "first question\n";
  std::ofstream(q2) << "second question\n";
  const auto t1 = json_of(run_infini(
      gen("--prompt-file " + q1 + " --max-new-tokens 8 --temperature 0 --json --state-out " + st)));
  EXPECT_EQ(t1["text"], turns[0]["text"]);
  const auto t2 = json_of(run_infini(gen("--state-in " + st + " --prompt-file " + q2 +
                                         " --max-new-tokens 8 --temperature 0 --json")));
  EXPECT_EQ(t2["text"], turns[1]["text"]);
  EXPECT_GT(turns[1]["position"].get<int64_t>(), turns[0]["position"].get<int64_t>());
  // EOF right away is a clean exit.
  EXPECT_EQ(run_infini(gen("--interactive < /dev/null")).code, 0);
}

TEST_F(Generate, StopStringEndsTheOutputBeforeIt) {
  const std::string p = "--prompt 'Stop here' --max-new-tokens 30 --temperature 0 --json ";
  const std::string text = json_of(run_infini(gen(p)))["text"];
  ASSERT_GE(text.size(), 12u);
  // Any 2-character piece of the output that is plain ASCII works as a stop string.
  size_t at = 6;
  while (at + 2 < text.size() && (text[at] < 0x21 || text[at] > 0x7e || text[at] == '\'' ||
                                  text[at + 1] < 0x21 || text[at + 1] > 0x7e || text[at + 1] == '\''))
    ++at;
  if (at + 2 >= text.size()) GTEST_SKIP() << "no printable pair in the output";
  const std::string stop = text.substr(at, 2);
  const auto j = json_of(run_infini(gen(p + "--stop '" + stop + "'")));
  EXPECT_EQ(j["stop_reason"], "stop");
  EXPECT_EQ(j["text"].get<std::string>(), text.substr(0, text.find(stop)));
}

TEST_F(Generate, PromptFilesAreStreamedInBoundedMemory) {
  // 600 KB of text: ten 64 KiB pieces. Every byte is a token, and peak memory is that of a
  // 1 KB prompt (nothing holds the whole prompt). One thread keeps it quick on a busy machine.
  std::mt19937_64 g(1);
  const char* words[] = {"memory ", "segment ", "attention\n", "long ", "context "};
  std::string text;
#if defined(__SANITIZE_ADDRESS__)
  const size_t size = 200000;  // 4 pieces are enough to check streaming; ASan is slow
#else
  const size_t size = 600000;  // big enough that holding it whole would show in the RSS
#endif
  while (text.size() < size) text += words[g() % 5];
  const std::string big = path("big.txt"), small = path("small.txt");
  std::ofstream(big) << text;
  std::ofstream(small) << text.substr(0, 1000);
  const std::string wide = "OMP_NUM_THREADS=1 " + std::string(INFINI_BINARY) + " generate --model " +
                           path("wide") + " --max-new-tokens 4 --temperature 0 --json ";
  auto run_wide = [&](const std::string& args) {
    const CliResult r = run_shell(wide + args);
    EXPECT_EQ(r.code, 0) << r.err;
    return nlohmann::json::parse(r.out);
  };
  const auto jb = run_wide("--prompt-file " + big);
  EXPECT_EQ(jb["prompt_tokens"].get<int64_t>(), int64_t(text.size()));
  EXPECT_EQ(jb["prompt_bytes"].get<int64_t>(), int64_t(text.size()));
  // Standard input is read the same way.
  const auto js = run_wide("--prompt-file - < " + big);
  EXPECT_EQ(js["text"], jb["text"]);
  EXPECT_EQ(js["prompt_tokens"], jb["prompt_tokens"]);
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's quarantine makes RSS grow with allocations";
#else
  const auto jsm = run_wide("--prompt-file " + small);
  EXPECT_LT(jb["peak_rss_mb"].get<double>() - jsm["peak_rss_mb"].get<double>(), 1.5)
      << jb["peak_rss_mb"] << " vs " << jsm["peak_rss_mb"];
#endif
}

TEST_F(Generate, BadStateFilesFailWithOneLine) {
  const std::string good = path("good.state");
  ASSERT_EQ(run_infini(gen("--prompt 'some text' --max-new-tokens 0 --state-out " + good)).code, 0);
  auto expect_error = [&](const std::string& args, const std::string& needle) {
    const CliResult r = run_infini(args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  };
  const std::string garbage = path("garbage.state");
  std::ofstream(garbage) << "this is not a state file at all";
  expect_error(gen("--state-in " + garbage + " --max-new-tokens 3"), "bad magic");

  const std::string bytes = read_file(good);
  const std::string cut = path("cut.state");
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() - 13);
  expect_error(gen("--state-in " + cut + " --max-new-tokens 3"), "truncated");

  expect_error("generate --model " + path("other") + " --state-in " + good + " --max-new-tokens 3",
               "other weights");
  expect_error(gen("--state-in " + path("missing.state") + " --max-new-tokens 3"), "missing.state");
  expect_error(gen("--prompt x --top-p 0 --max-new-tokens 3"), "--top-p");
}
