// Parity with the independent PyTorch twin (reference/infini_ref.py): loss, logits and every
// gradient tensor of committed tiny models (tests/golden, made by reference/make_goldens.py).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.hpp"
#include "io/text.hpp"
#include "io/tokenizer.hpp"
#include "model/bptt.hpp"
#include "util/nan_max.hpp"

using infini::testing::nan_max;
using namespace infini;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> golden_cases() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(fs::path(INFINI_SOURCE_DIR) / "tests/golden"))
    if (e.is_directory() && fs::exists(e.path() / "expected.json"))
      out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class Golden : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST(GoldenSet, HasTheExpectedCases) { EXPECT_GE(golden_cases().size(), 6u); }

TEST_P(Golden, LossLogitsAndGradientsMatchTheTwin) {
  const fs::path dir = fs::path(INFINI_SOURCE_DIR) / "tests/golden" / GetParam();
  nlohmann::json expected = nlohmann::json::parse(std::ifstream(dir / "expected.json"));
  const model::Model<float> m = model::load_model(dir.string());
  io::ByteTokenizer tok;
  const auto ids = io::tokenize_file(tok, (dir / "data.txt").string(), 2);
  ASSERT_EQ(int64_t(ids.size()), expected["tokens"].get<int64_t>());

  model::ForwardContext<float> ctx(m.config);
  model::SequenceWorkspace<float> ws;
  std::vector<float> grads(size_t(m.layout.total), 0.0f);
  const double loss = model::sequence_loss<float>(m, ctx, ids.data(), 1, int64_t(ids.size()),
                                                  grads.data(), {}, ws).mean();
  const double want = expected["loss"].get<double>();
  EXPECT_NEAR(loss, want, 1e-5 * std::abs(want));

  // Logits of the first and the last position (the last one after every memory update).
  model::MemoryState<float> state = model::MemoryState<float>::zeros(m.config, 1);
  model::SegmentActs<float> acts;
  const int64_t N = m.config.segment_length, T = int64_t(ids.size()), V = m.config.vocab_size;
  std::vector<float> first, last;
  for (int64_t s = 0; s * N < T; ++s) {
    const int64_t n = std::min(N, T - s * N);
    model::forward_chunk(m, ctx, ids.data() + s * N, 1, n, state, acts);
    if (s == 0) first.assign(acts.logits.begin(), acts.logits.begin() + V);
    last.assign(acts.logits.end() - V, acts.logits.end());
  }
  for (size_t j = 0; j < expected["logits_first"].size(); ++j) {
    EXPECT_NEAR(first[j], expected["logits_first"][j].get<double>(), 1e-4) << j;
    EXPECT_NEAR(last[j], expected["logits_last"][j].get<double>(), 1e-4) << j;
  }

  // Every gradient tensor within 1e-4 of the reference tensor's largest magnitude.
  auto ref = io::SafetensorsFile::open((dir / "grads.safetensors").string());
  EXPECT_EQ(ref->tensors().size(), m.layout.params.size());
  for (const auto& p : m.layout.params) {
    const io::TensorInfo* t = ref->find(p.name);
    ASSERT_NE(t, nullptr) << p.name;
    ASSERT_EQ(t->shape, p.shape) << p.name;
    std::vector<float> want_g(size_t(p.numel));
    std::memcpy(want_g.data(), t->data, t->nbytes);
    float scale = 1e-12f, err = 0;
    for (int64_t i = 0; i < p.numel; ++i) {
      scale = nan_max(scale, std::abs(want_g[size_t(i)]));
      err = nan_max(err, std::abs(want_g[size_t(i)] - grads[size_t(p.offset + i)]));
    }
    EXPECT_LT(err / scale, 1e-4) << p.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, Golden, ::testing::ValuesIn(golden_cases()));
