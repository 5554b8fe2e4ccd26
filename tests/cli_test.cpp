// The SPEC §6 command-line contract, run through the built binary as an outside check would.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.hpp"

namespace fs = std::filesystem;

namespace {

struct Result {
  int code;
  std::string out, err;
};

Result run(const std::string& args) {
  const fs::path errf = fs::temp_directory_path() / ("infini_cli_err_" + std::to_string(getpid()));
  const std::string cmd = std::string(INFINI_BINARY) + " " + args + " 2>" + errf.string();
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream e(errf);
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  fs::remove(errf);
  return r;
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("infini_cli_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

const fs::path kGolden = fs::path(INFINI_SOURCE_DIR) / "tests/golden";

}  // namespace

TEST(Cli, EvalJsonMatchesTheTwinOnEveryGoldenModel) {
  for (const auto& e : fs::directory_iterator(kGolden)) {
    if (!fs::exists(e.path() / "expected.json")) continue;
    const auto want = nlohmann::json::parse(std::ifstream(e.path() / "expected.json"));
    Result r = run("eval --json --model " + e.path().string() + " --data " +
                   (e.path() / "data.txt").string());
    ASSERT_EQ(r.code, 0) << r.err;
    const auto got = nlohmann::json::parse(r.out);
    const double loss = want["loss"].get<double>();
    EXPECT_NEAR(got["loss"].get<double>(), loss, 1e-5 * loss) << e.path();
    EXPECT_NEAR(got["ppl"].get<double>(), std::exp(loss), 1e-4 * std::exp(loss));
    EXPECT_EQ(got["tokens"].get<int64_t>(), want["tokens"].get<int64_t>());
  }
}

TEST(Cli, GradWritesEveryParameterMatchingTheTwin) {
  const fs::path model = kGolden / "qwen2_delta_gqa_bias";
  const fs::path out = temp_dir("grad") / "g.safetensors";
  Result r = run("grad --model " + model.string() + " --data " + (model / "data.txt").string() +
                 " --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  auto got = infini::io::SafetensorsFile::open(out.string());
  auto want = infini::io::SafetensorsFile::open((model / "grads.safetensors").string());
  ASSERT_EQ(got->tensors().size(), want->tensors().size());
  for (const auto& t : want->tensors()) {
    const auto* g = got->find(t.name);
    ASSERT_NE(g, nullptr) << t.name;
    ASSERT_EQ(g->dtype, infini::io::DType::F32);
    ASSERT_EQ(g->shape, t.shape);
    std::vector<float> a(size_t(t.numel())), b(a.size());
    std::memcpy(a.data(), g->data, g->nbytes);
    std::memcpy(b.data(), t.data, t.nbytes);
    float scale = 1e-12f, err = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      scale = std::max(scale, std::abs(b[i]));
      err = std::max(err, std::abs(a[i] - b[i]));
    }
    EXPECT_LT(err / scale, 1e-3) << t.name;
  }
}

TEST(Cli, InitThenEvalIsNearUniformAndSeeded) {
  const fs::path d = temp_dir("init");
  std::ofstream(d / "cfg.json") << R"({"model_type":"llama","vocab_size":258,"hidden_size":32,
    "intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
    "rms_norm_eps":1e-6,"rope_theta":10000,"tie_word_embeddings":true,
    "infini":{"segment_length":16,"memory_update":"delta","use_memory":true}})";
  std::ofstream(d / "data.txt") << "The grass is green. The sky is blue. The sun is yellow.";
  ASSERT_EQ(run("init --config " + (d / "cfg.json").string() + " --out " + (d / "a").string() +
                " --seed 3").code, 0);
  ASSERT_EQ(run("init --config " + (d / "cfg.json").string() + " --out " + (d / "b").string() +
                " --seed 3").code, 0);
  ASSERT_EQ(run("init --config " + (d / "cfg.json").string() + " --out " + (d / "c").string() +
                " --seed 4").code, 0);
  auto read = [](const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(read(d / "a/model.safetensors"), read(d / "b/model.safetensors"));
  EXPECT_NE(read(d / "a/model.safetensors"), read(d / "c/model.safetensors"));
  Result r = run("eval --json --model " + (d / "a").string() + " --data " + (d / "data.txt").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const double loss = nlohmann::json::parse(r.out)["loss"].get<double>();
  EXPECT_NEAR(loss, std::log(258.0), 0.1);  // a fresh model is close to uniform
}

TEST(Cli, BadInputGivesOneLineErrorAndNonZeroExit) {
  const fs::path d = temp_dir("bad");
  const fs::path good = kGolden / "llama_linear_tied";
  std::ofstream(d / "empty.txt");
  fs::create_directories(d / "trunc");
  fs::copy_file(good / "config.json", d / "trunc/config.json");
  {
    std::ifstream f(good / "model.safetensors", std::ios::binary);
    std::string bytes(std::istreambuf_iterator<char>(f), {});
    std::ofstream(d / "trunc/model.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  fs::create_directories(d / "badcfg");
  fs::copy_file(good / "model.safetensors", d / "badcfg/model.safetensors");
  std::ofstream(d / "badcfg/config.json") << R"({"model_type":"llama","vocab_size":260,
    "hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":3})";
  const std::string data = " --data " + (good / "data.txt").string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"eval --model " + good.string() + " --data " + (d / "empty.txt").string(), "empty"},
      {"eval --model " + (d / "trunc").string() + data, "model.safetensors"},
      {"eval --model " + (d / "badcfg").string() + data, "num_attention_heads"},
      {"eval --model " + (d / "nope").string() + data, "nope"},
      {"grad --model " + good.string() + data + " --out /proc/nonexistent/g.safetensors", "g.safetensors"},
      {"eval --model " + good.string() + " --data " + (d / "missing.txt").string(), "missing.txt"},
  };
  for (const auto& [args, needle] : cases) {
    Result r = run(args);
    EXPECT_GT(r.code, 0) << args;
    EXPECT_LT(r.code, 128) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\n" << r.err;
  }
}

TEST(Cli, HelpForEverySubcommand) {
  for (const char* sub : {"init", "eval", "grad"}) {
    Result r = run(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find(std::string(sub) == "init" ? "--config" : "--model"), std::string::npos)
        << sub;
  }
  EXPECT_EQ(run("--help").code, 0);
}
