// Encode throughput of the Hugging Face tokenizers on ~512 KiB of mixed text
// (the golden texts: prose, code, numbers, CJK, emoji, ..., leaving out the
// artificial entries of 1000+ characters), reported in MB/s.
// Run from the repository root (or set INFINI_SOURCE_DIR):
//   build/tokenizer_bench
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "io/hf_tokenizer.hpp"

namespace {

// The bench targets may not define INFINI_SOURCE_DIR; fall back to the environment
// or the working directory.
const std::string kSrc = [] {
  if (const char* env = std::getenv("INFINI_SOURCE_DIR")) return std::string(env);
#ifdef INFINI_SOURCE_DIR
  return std::string(INFINI_SOURCE_DIR);
#else
  return std::string(".");
#endif
}();

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::string& bench_text() {
  static const std::string text = [] {
    const auto texts = nlohmann::json::parse(read(kSrc + "/tests/data/tokenizers/texts.json"));
    std::string t;
    while (t.size() < (512u << 10))
      for (const auto& e : texts)
        if (e.is_string() && e.get<std::string>().size() < 1000) t += e.get<std::string>() + "\n";
    return t;
  }();
  return text;
}

void encode(benchmark::State& state, const char* name, bool cold) {
  const auto tok =
      infini::io::load_hf_tokenizer(kSrc + "/tests/data/tokenizers/" + name + "/tokenizer.json");
  const std::string& text = bench_text();
  size_t n = 0;
  for (auto _ : state) {
    if (cold) {  // a fresh tokenizer each time: no word cache hits
      state.PauseTiming();
      auto fresh = infini::io::load_hf_tokenizer(kSrc + "/tests/data/tokenizers/" + name +
                                                 "/tokenizer.json");
      state.ResumeTiming();
      n = fresh->encode(text).size();
    } else {
      n = tok->encode(text).size();
    }
    benchmark::DoNotOptimize(n);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(n);
}

}  // namespace

BENCHMARK_CAPTURE(encode, qwen3, "qwen3", false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(encode, llama2, "llama2", false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(encode, qwen3_cold_cache, "qwen3", true)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);
BENCHMARK_CAPTURE(encode, llama2_cold_cache, "llama2", true)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);

BENCHMARK_MAIN();
