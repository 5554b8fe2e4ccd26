// Passkey task: exact prompt lengths and depths (byte and Hugging Face tokenizers), lazy
// windows, the training source, answer scoring, streaming evaluation in bounded memory, and
// the committed demo model.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "core/error.hpp"
#include "core/process.hpp"
#include "io/tokenizer.hpp"
#include "model/forward.hpp"
#include "model/model.hpp"
#include "tasks/passkey.hpp"
#include "tasks/passkey_eval.hpp"

using namespace infini;
using namespace infini::tasks;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<const io::Tokenizer> byte_tok() { return std::make_shared<io::ByteTokenizer>(); }

// Checks one prompt: exact length, n_pre = round(depth * filler), the pieces where they belong.
void check_prompt(const PasskeyGenerator& gen, const PasskeyPrompt& p, int64_t L, double depth) {
  // The length counts prompt + answer.
  const std::vector<int32_t> all = p.all_tokens();
  ASSERT_EQ(int64_t(all.size() + p.answer.size()), L);
  ASSERT_EQ(p.total_length(), L);
  const int64_t head = int64_t(p.head->size()), tail = int64_t(p.tail->size());
  const int64_t filler = L - head - int64_t(p.info.size()) - tail - int64_t(p.answer.size());
  EXPECT_EQ(p.n_pre + p.n_suf, filler);
  EXPECT_EQ(p.n_pre, std::llround(depth * double(filler))) << "L=" << L << " depth=" << depth;
  EXPECT_EQ(p.info_begin, head + p.n_pre);
  EXPECT_TRUE(std::equal(p.head->begin(), p.head->end(), all.begin()));
  EXPECT_TRUE(std::equal(p.info.begin(), p.info.end(), all.begin() + p.info_begin));
  EXPECT_TRUE(std::equal(p.tail->begin(), p.tail->end(), all.end() - tail));
  // Filler before and after the info line is the periodic stream from its start.
  for (int64_t i = 0; i < p.n_pre; ++i)
    ASSERT_EQ(all[size_t(head + i)], (*p.filler)[size_t(i % int64_t(p.filler->size()))]);
  for (int64_t i = 0; i < p.n_suf; ++i)
    ASSERT_EQ(all[size_t(p.info_end() + i)], (*p.filler)[size_t(i % int64_t(p.filler->size()))]);
  // The key is in the info line, the answer is " K".
  const std::string info = gen.tokenizer().decode(p.info);
  EXPECT_NE(info.find("The pass key is " + p.key + ". Remember it. " + p.key + " is the pass key."),
            std::string::npos)
      << info;
  EXPECT_EQ(gen.tokenizer().decode(p.answer), " " + p.key);
  // The recall span decodes to the key (BPE may merge a neighbouring character into it).
  ASSERT_GT(p.recall_end, p.recall_begin);
  const std::string recall = gen.tokenizer().decode(
      std::vector<int32_t>(all.begin() + p.recall_begin, all.begin() + p.recall_end));
  EXPECT_NE(recall.find(p.key), std::string::npos) << recall;
  EXPECT_LE(recall.size(), p.key.size() + 2) << recall;
}

void check_many(const PasskeyGenerator& gen) {
  std::mt19937_64 rng(3);
  const double depths[] = {0.0, 0.1, 0.25, 1.0 / 3, 0.5, 0.77, 0.9, 1.0};
  for (int64_t L : {gen.min_length(), gen.min_length() + 1, int64_t(300), int64_t(513),
                    int64_t(1000), int64_t(4096), int64_t(10007)})
    for (double d : depths) check_prompt(gen, gen.make(L, d, gen.random_key(rng)), L, d);
}

}  // namespace

TEST(PasskeyGenerator, ByteTokenizerLengthsAndDepthsAreExact) {
  PasskeyGenerator gen(byte_tok(), 5);
  check_many(gen);
  // The text, decoded, is the task as documented.
  std::mt19937_64 rng(1);
  const PasskeyPrompt p = gen.make(600, 0.5, gen.random_key(rng));
  const std::string text = gen.tokenizer().decode(p.all_tokens());
  EXPECT_EQ(text.rfind(kPasskeyHeader, 0), 0u);
  EXPECT_EQ(text.substr(text.size() - std::string(kPasskeyQuestion).size()), kPasskeyQuestion);
  EXPECT_NE(text.find("\nThe grass is green. The sky is blue."), std::string::npos);
  EXPECT_EQ(p.key.size(), 5u);
  EXPECT_EQ(p.answer.size(), 6u);  // space + 5 digits
}

TEST(PasskeyGenerator, HuggingFaceTokenizersLengthsAndDepthsAreExact) {
  int tested = 0;
  for (const char* name : {"llama2", "qwen3"}) {
    const fs::path path = fs::path(INFINI_SOURCE_DIR) / "tests/data/tokenizers" / name / "tokenizer.json";
    if (!fs::exists(path)) continue;
    std::shared_ptr<const io::Tokenizer> tok(io::load_hf_tokenizer(path.string()));
    PasskeyGenerator gen(tok, 5);
    check_many(gen);
    ++tested;
  }
  if (tested == 0) GTEST_SKIP() << "no tokenizer.json under tests/data/tokenizers";
}

TEST(PasskeyGenerator, WindowsEqualTheWholePromptAndKeysAreDeterministic) {
  PasskeyGenerator gen(byte_tok(), 7);
  std::mt19937_64 a(42), b(42);
  const std::string k1 = gen.random_key(a), k2 = gen.random_key(b);
  EXPECT_EQ(k1, k2);
  EXPECT_EQ(k1.size(), 7u);
  EXPECT_NE(k1[0], '0');
  const PasskeyPrompt p = gen.make(3008, 0.4, k1);  // 3000 prompt tokens + " " + 7 digits
  const auto all = p.all_tokens();
  ASSERT_EQ(p.length, 3000);
  std::vector<int32_t> w(100);
  for (int64_t s : {int64_t(0), int64_t(37), int64_t(1250), int64_t(2900)}) {
    p.tokens(s, 100, w.data());
    EXPECT_TRUE(std::equal(w.begin(), w.end(), all.begin() + s)) << s;
  }
  EXPECT_THROW(p.tokens(2950, 100, w.data()), Error);
  EXPECT_THROW(gen.make(gen.min_length() - 1, 0.5, k1), Error);
  EXPECT_THROW(gen.make(1000, 1.5, k1), Error);
  EXPECT_THROW(gen.make(1000, 0.5, "12a"), Error);
}

TEST(PasskeySource, BatchesHaveTheAnswerMaskedAndAreReproducible) {
  auto gen = std::make_shared<PasskeyGenerator>(byte_tok(), 5);
  PasskeySourceOptions o;
  o.min_len = 300;
  o.max_len = 900;
  o.curriculum_steps = 10;
  o.seed = 5;
  PasskeySource s1(gen, o), s2(gen, o);
  train::Batch b1, b2;
  for (int step = 0; step < 12; ++step) {
    s1.next(3, 0, b1);
    s2.next(3, 0, b2);
    EXPECT_EQ(b1.tokens, b2.tokens);
    ASSERT_GE(b1.seq_len, o.min_len);
    // The curriculum caps the length: min + (max - min) * (step + 1) / steps.
    const int64_t cap = step < 10 ? o.min_len + (o.max_len - o.min_len) * (step + 1) / 10 : o.max_len;
    ASSERT_LE(b1.seq_len, cap);
    const int64_t T = b1.seq_len;
    ASSERT_EQ(int64_t(b1.loss_mask.size()), 3 * T);
    for (int64_t r = 0; r < 3; ++r) {
      // Exactly the 6 predictions of " K" count, and they predict a space then digits.
      int64_t on = 0;
      for (int64_t t = 0; t < T; ++t)
        if (b1.loss_mask[size_t(r * T + t)]) {
          ++on;
          const int32_t next = b1.tokens[size_t(r * T + t + 1)];
          EXPECT_TRUE(next == ' ' || (next >= '0' && next <= '9'));
          EXPECT_GE(t, T - 7);
        }
      EXPECT_EQ(on, 6);
    }
  }
  // Restoring the state continues the same stream.
  PasskeySource s3(gen, o);
  s3.restore(s1.state());
  s1.next(2, 0, b1);
  s3.next(2, 0, b2);
  EXPECT_EQ(b1.tokens, b2.tokens);
  o.loss = PasskeyLoss::All;
  PasskeySource all(gen, o);
  all.next(1, 0, b1);
  EXPECT_TRUE(b1.loss_mask.empty());
  // recall: the answer and the key's second copy in the info line, 6 + 5 predictions.
  o.loss = PasskeyLoss::Recall;
  PasskeySource recall(gen, o);
  recall.next(2, 0, b1);
  for (int64_t r = 0; r < 2; ++r) {
    std::string targets;
    for (int64_t t = 0; t + 1 < b1.seq_len; ++t)
      if (b1.loss_mask[size_t(r * b1.seq_len + t)]) targets.push_back(char(b1.tokens[size_t(r * b1.seq_len + t + 1)]));
    ASSERT_EQ(targets.size(), 11u) << targets;
    EXPECT_EQ(targets.substr(0, 5), targets.substr(6)) << targets;  // the same key twice
    EXPECT_EQ(targets[5], ' ');
  }
  EXPECT_NE(PasskeySource(gen, o).fingerprint(), s2.fingerprint());
}

TEST(PasskeyEval, ScoringAndLengthLabels) {
  EXPECT_TRUE(score_answer("12345", " 12345").exact);
  EXPECT_TRUE(score_answer("12345", " 12345.").exact);
  const PasskeyTrial t = score_answer("12345", " 12395");
  EXPECT_FALSE(t.exact);
  EXPECT_DOUBLE_EQ(t.digit_accuracy, 0.8);
  EXPECT_DOUBLE_EQ(score_answer("12345", " 123").digit_accuracy, 0.6);
  EXPECT_FALSE(score_answer("12345", " 123456").exact);
  EXPECT_DOUBLE_EQ(score_answer("12345", "The").digit_accuracy, 0.0);
  EXPECT_EQ(length_label(1024), "1K");
  EXPECT_EQ(length_label(1 << 20), "1M");
  EXPECT_EQ(length_label(1000), "1000");
  EXPECT_EQ(parse_length("4K", "--lengths"), 4096);
  EXPECT_EQ(parse_length("1M", "--lengths"), 1 << 20);
  EXPECT_EQ(parse_length("777", "--lengths"), 777);
  EXPECT_THROW(parse_length("4x", "--lengths"), Error);
}

namespace {

model::Model<float> micro_model(int64_t seg) {
  model::ModelConfig c;
  c.vocab_size = 258;
  c.hidden_size = 16;
  c.intermediate_size = 32;
  c.num_layers = 1;
  c.num_heads = 2;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.segment_length = seg;
  c.memory_update = model::MemoryUpdate::Delta;
  return model::init_model(c, {1, 0.5, 0.0});
}

}  // namespace

TEST(PasskeyEval, StreamedAnswerEqualsOneForwardOverTheWholePrompt) {
  // The batched grid path, the batch-1 streaming path and a plain segment-by-segment forward
  // over the materialised prompt agree on the first generated token.
  const model::Model<float> m = micro_model(32);
  PasskeyGenerator gen(byte_tok(), 5);
  PasskeyEvalOptions o;
  o.lengths = {270, 326};  // 320 prompt tokens = 10 whole segments: the last one ends a segment
  o.depths = {0.2, 0.9};
  o.trials = 2;
  o.seed = 9;
  o.max_batch_rows = 64;  // two prompts per batch: exercises the batch split
  const PasskeyEvalResult r = evaluate_passkey(m, gen, o);
  ASSERT_EQ(r.cells.size(), 4u);
  model::ForwardContext<float> ctx(m.config);
  for (const auto& cell : r.cells)
    for (const auto& t : cell.trials) {
      const PasskeyPrompt p = gen.make(cell.length, cell.depth, t.key);
      const std::string streamed = answer_prompt(m, p, gen.tokenizer(), int64_t(p.answer.size()));
      EXPECT_EQ(score_answer(t.key, streamed).predicted, t.predicted);
      const auto all = p.all_tokens();
      model::MemoryState<float> st = model::MemoryState<float>::zeros(m.config, 1);
      model::SegmentActs<float> acts;
      for (int64_t s = 0; s < p.length; s += 32)
        model::forward_chunk<float>(m, ctx, all.data() + s, 1, std::min<int64_t>(32, p.length - s),
                                    st, acts);
      const int64_t n = acts.n, V = m.config.vocab_size;
      const float* last = acts.logits.data() + (n - 1) * V;
      const int32_t first = int32_t(std::max_element(last, last + V) - last);
      if (first < 256) {  // the byte tokenizer decodes <bos>/<eos> as nothing
        ASSERT_FALSE(streamed.empty());
        EXPECT_EQ(int32_t((unsigned char)streamed[0]), first);
      }
    }
}

TEST(PasskeyEval, MemoryDoesNotGrowWithLength) {
  // Streaming keeps O(one segment) of activations and generates the prompt per segment, so a
  // 1M-token prompt needs no more memory than a 4K one. Materialising the prompt (4 MB) or its
  // logits (1 GB) would show up in the peak resident set.
  const model::Model<float> m = micro_model(128);
  PasskeyGenerator gen(byte_tok(), 5);
  PasskeyEvalOptions o;
  o.depths = {0.5};
  o.trials = 1;
  o.lengths = {4096};
  evaluate_passkey(m, gen, o);  // warm up allocations
  const double before = peak_rss_mb();
  o.lengths = {1 << 20};
  const PasskeyEvalResult r = evaluate_passkey(m, gen, o);
  const double after = peak_rss_mb();
  EXPECT_LT(after - before, 2.0) << "peak RSS grew from " << before << " MB to " << after << " MB";
  ASSERT_EQ(r.per_length.size(), 1u);
  EXPECT_EQ(r.per_length[0].length, 1 << 20);
}

TEST(PasskeyEval, JsonMarkdownAndHeatmap) {
  PasskeyEvalResult r;
  for (int64_t L : {int64_t(1024), int64_t(1) << 20})
    for (double d : {0.0, 0.5}) {
      PasskeyCell c;
      c.length = L;
      c.depth = d;
      c.trials = {score_answer("11111", " 11111"), score_answer("22222", d > 0 ? " 22222" : " 2")};
      r.cells.push_back(c);
    }
  r.per_length = {{1024, 4, 0.5, 10}, {1 << 20, 4, 20.0, 11}};
  const nlohmann::json j = r.to_json();
  ASSERT_EQ(j["results"].size(), 4u);
  EXPECT_EQ(j["results"][0]["length"], 1024);
  EXPECT_EQ(j["results"][0]["depth"], 0.0);
  EXPECT_DOUBLE_EQ(j["results"][0]["accuracy"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["results"][0]["digit_accuracy"].get<double>(), 0.6);
  EXPECT_DOUBLE_EQ(j["results"][1]["accuracy"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 0.75);
  const std::string md = r.markdown();
  EXPECT_NE(md.find("| 1M |"), std::string::npos);
  EXPECT_NE(md.find("50% (60%)"), std::string::npos);
  const std::string svg = passkey_heatmap_svg(r, "t<1>");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find(">1M</text>"), std::string::npos);
  EXPECT_NE(svg.find(">50</text>"), std::string::npos);
  EXPECT_NE(svg.find("t&lt;1&gt;"), std::string::npos);
  EXPECT_NE(svg.find("context length"), std::string::npos);
}

TEST(PasskeyEval, JsonHoldsAnswersThatAreNotUtf8) {
  // A byte-level model can decode any bytes, e.g. the first byte of a 4-byte sequence; the
  // JSON must still serialise (it once threw "incomplete UTF-8 string" and ended a training run).
  PasskeyEvalResult r;
  PasskeyCell c;
  c.length = 1024;
  c.trials = {score_answer("12345", " 1\xF3"), score_answer("12345", std::string(" \xFF\x80", 3))};
  r.cells.push_back(c);
  r.per_length = {{1024, 2, 0.1, 10}};
  const nlohmann::json j = r.to_json();
  std::string text;
  ASSERT_NO_THROW(text = j.dump());
  EXPECT_NE(text.find("\xEF\xBF\xBD"), std::string::npos);  // U+FFFD
  EXPECT_EQ(j["results"][0]["outputs"][0], " 1\xEF\xBF\xBD");
}

// The committed models still do what docs/passkey.md reports: 16K tokens is 4x the longest
// training sequence of passkey-demo-4k and 3x passkey-demo's (measured: 100% over 20 prompts
// for both). A broken engine or a damaged model file gives chance level (about 10% of the
// digits).
TEST(PasskeyEval, CommittedDemoModelsRetrieveBeyondTheirTrainingLength) {
  for (const char* name : {"passkey-demo", "passkey-demo-4k"}) {
    const fs::path dir = fs::path(INFINI_SOURCE_DIR) / "models" / name;
    ASSERT_TRUE(fs::exists(dir / "model.safetensors")) << dir;
    const model::Model<float> m = model::load_model(dir.string());
    PasskeyGenerator gen(io::load_tokenizer_for_model(dir.string()), 5);
    PasskeyEvalOptions o;
    o.lengths = {16384};
    o.depths = {0.0, 0.5, 1.0};
    o.trials = 2;
    o.seed = 3;
    const PasskeyEvalResult r = evaluate_passkey(m, gen, o);
    const nlohmann::json j = r.to_json();
    // One miss is allowed: a key near a decision boundary may flip with another BLAS kernel.
    EXPECT_GE(j["accuracy"].get<double>(), 5.0 / 6.0 - 1e-9) << name << ": " << r.markdown();
    EXPECT_GE(j["digit_accuracy"].get<double>(), 0.95) << name << ": " << r.markdown();
  }
}

// passkey-demo never saw more than 5,120 tokens in one sequence but was trained with state
// passing (docs/passkey.md); at 256K, where passkey-demo-4k (trained without it) scores 0%, it
// must still find every key. Needs a memory read that keeps the key above 256K filler tokens:
// a memory that dilutes faster (or a broken normaliser) fails here and not at 16K.
TEST(PasskeyEval, CommittedDemoModelRetrievesFarBeyondItsTrainingLength) {
  const fs::path dir = fs::path(INFINI_SOURCE_DIR) / "models" / "passkey-demo";
  const model::Model<float> m = model::load_model(dir.string());
  PasskeyGenerator gen(io::load_tokenizer_for_model(dir.string()), 5);
  PasskeyEvalOptions o;
  o.lengths = {262144};
  o.depths = {0.0, 1.0};
  o.trials = 1;
  o.seed = 17;
  const PasskeyEvalResult r = evaluate_passkey(m, gen, o);
  EXPECT_EQ(r.to_json()["accuracy"].get<double>(), 1.0) << r.markdown();
}
