// The training library (src/train): schedule, AdamW parameter groups checked numerically,
// clipping, the token cache and split, the window source, evaluation, checkpoints, and the
// trainer's gradient seams (accumulation, data-parallel shards, hooks, non-finite guard).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/safetensors.hpp"
#include "io/text.hpp"
#include "model/bptt.hpp"
#include "model/model.hpp"
#include "train/checkpoint.hpp"
#include "train/data.hpp"
#include "train/evaluate.hpp"
#include "train/metrics.hpp"
#include "train/optimizer.hpp"
#include "train/trainer.hpp"
#include "util/nan_max.hpp"

using infini::testing::nan_max;
using namespace infini;
using namespace infini::train;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d =
      fs::temp_directory_path() / ("infini_train_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

model::ModelConfig tiny_config(bool memory = true) {
  model::ModelConfig c;
  c.vocab_size = 258;
  c.hidden_size = 16;
  c.intermediate_size = 32;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.segment_length = 8;
  c.use_memory = memory;
  c.attention_bias = true;  // so that the Bias group is exercised
  return c;
}

// Text with structure a tiny model learns within a few dozen steps.
std::string toy_text(size_t n, uint64_t seed) {
  static const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat. ", "and ", "dog "};
  std::mt19937_64 g(seed);
  std::string s;
  while (s.size() < n) s += words[g() % 8];
  s.resize(n);
  return s;
}

Document doc_of(const std::string& name, const std::string& text) {
  io::ByteTokenizer tok;
  return {name, tok.encode(text)};
}

}  // namespace

// --------------------------------------------------------------------------- schedule

TEST(Schedule, WarmupThenCosineOrConstant) {
  Schedule s{ScheduleKind::Cosine, 10, 110, 0.1};
  EXPECT_DOUBLE_EQ(s.factor(0), 0.1);  // (0+1)/10
  EXPECT_DOUBLE_EQ(s.factor(4), 0.5);
  EXPECT_DOUBLE_EQ(s.factor(9), 1.0);
  EXPECT_DOUBLE_EQ(s.factor(10), 1.0);     // cosine starts at its peak
  EXPECT_NEAR(s.factor(60), 0.55, 1e-12);  // half way: (1 + 0.1) / 2
  EXPECT_NEAR(s.factor(110), 0.1, 1e-12);
  for (int64_t t = 11; t < 110; ++t) EXPECT_LT(s.factor(t), s.factor(t - 1));
  Schedule c{ScheduleKind::Constant, 4, 100, 0.1};
  EXPECT_DOUBLE_EQ(c.factor(1), 0.5);
  EXPECT_DOUBLE_EQ(c.factor(50), 1.0);
  EXPECT_DOUBLE_EQ(Schedule({ScheduleKind::Cosine, 0, 10, 0.0}).factor(0), 1.0);
  EXPECT_THROW(parse_schedule("linear"), Error);
}

// --------------------------------------------------------------------------- optimizer

TEST(AdamW, MatchesAReferenceWithGroupsAndFrozenEntries) {
  // 7 entries: [0,3) decayed lr 0.1 wd 0.5; [3,5) lr 0.1 no decay; [5] lr 1.0; [6] frozen.
  std::vector<ParamGroup> groups = {
      {"mat", {{0, 3}}, 0.1, 0.5}, {"norm", {{3, 2}}, 0.1, 0.0}, {"gate", {{5, 1}}, 1.0, 0.0}};
  AdamWOptions o{0.9, 0.95, 1e-8};
  AdamW opt(7, groups, o);
  std::vector<float> p = {0.5f, -1.0f, 2.0f, 1.0f, -0.25f, 0.0f, 3.0f};
  std::vector<double> ref(p.begin(), p.end()), m(7, 0.0), v(7, 0.0);
  const double lr_of[7] = {0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 0.0};
  const double wd_of[7] = {0.5, 0.5, 0.5, 0, 0, 0, 0};
  std::mt19937_64 g(3);
  std::normal_distribution<double> nd;
  for (int t = 1; t <= 5; ++t) {
    std::vector<float> grad(7);
    for (auto& x : grad) x = float(nd(g));
    const double factor = 0.5 + 0.1 * t;
    opt.step(p.data(), grad.data(), factor);
    for (int i = 0; i < 6; ++i) {
      const double lr = lr_of[i] * factor;
      m[i] = 0.9 * m[i] + 0.1 * grad[i];
      v[i] = 0.95 * v[i] + 0.05 * double(grad[i]) * grad[i];
      ref[i] *= 1 - lr * wd_of[i];
      ref[i] -=
          lr * (m[i] / (1 - std::pow(0.9, t))) / (std::sqrt(v[i] / (1 - std::pow(0.95, t))) + 1e-8);
    }
    for (int i = 0; i < 7; ++i) EXPECT_NEAR(p[i], ref[i], 1e-5) << "step " << t << " entry " << i;
  }
  EXPECT_EQ(p[6], 3.0f);  // in no group: frozen
  EXPECT_EQ(opt.steps_taken(), 5);
  EXPECT_THROW(AdamW(4, {{"a", {{0, 3}}, 0.1, 0}, {"b", {{2, 2}}, 0.1, 0}}), Error);  // overlap
  EXPECT_THROW(AdamW(4, {{"a", {{2, 3}}, 0.1, 0}}), Error);                           // outside
}

TEST(AdamW, ModelGroupsGiveGatesTheirOwnLrAndNoDecayToNormsBiasesGates) {
  const model::Model<float> m0 = model::init_model(tiny_config(), {1, 0.5, 0.3});
  auto groups = model_param_groups(m0.layout, 0.01, 0.5, 0.2);
  ASSERT_EQ(groups.size(), 3u);
  // Step 1 with zero gradient moves only decayed weights, by exactly the decay factor.
  {
    model::Model<float> m = m0;
    AdamW opt(m.layout.total, groups);
    std::vector<float> zero(size_t(m.layout.total), 0.0f);
    opt.step(m.weights.data(), zero.data(), 1.0);
    for (const auto& p : m.layout.params)
      for (int64_t i = 0; i < p.numel; ++i) {
        const float before = m0.weights[size_t(p.offset + i)],
                    after = m.weights[size_t(p.offset + i)];
        const bool decays =
            p.kind == model::ParamKind::Matrix || p.kind == model::ParamKind::Embedding;
        if (decays)
          ASSERT_FLOAT_EQ(after, before * float(1 - 0.01 * 0.2)) << p.name;
        else
          ASSERT_EQ(after, before) << p.name << " must not decay";
      }
  }
  // Step 1 with a unit gradient moves every weight by its group's lr (Adam's first step is
  // lr * sign(g)): gates by the gate lr, everything else by lr.
  {
    model::Model<float> m = m0;
    AdamW opt(m.layout.total, model_param_groups(m.layout, 0.01, 0.5, 0.0));
    std::vector<float> ones(size_t(m.layout.total), 1.0f);
    opt.step(m.weights.data(), ones.data(), 1.0);
    int gates = 0, biases = 0;
    for (const auto& p : m.layout.params) {
      const double want = p.kind == model::ParamKind::Gate ? 0.5 : 0.01;
      gates += p.kind == model::ParamKind::Gate;
      biases += p.kind == model::ParamKind::Bias;
      for (int64_t i = 0; i < p.numel; ++i)
        ASSERT_NEAR(m0.weights[size_t(p.offset + i)] - m.weights[size_t(p.offset + i)], want, 1e-5)
            << p.name;
    }
    EXPECT_EQ(gates, 2);
    EXPECT_EQ(biases, 6);
  }
}

TEST(AdamW, SaveLoadContinuesBitIdentically) {
  const fs::path dir = temp_dir("adam");
  std::vector<ParamGroup> groups = {{"all", {{0, 5}}, 0.05, 0.1}};
  AdamW a(5, groups), b(5, groups);
  std::vector<float> pa = {1, 2, 3, 4, 5}, g = {0.1f, -0.2f, 0.3f, 0.0f, 1.0f};
  a.step(pa.data(), g.data(), 1.0);
  a.step(pa.data(), g.data(), 0.7);
  a.save((dir / "opt.safetensors").string());
  std::vector<float> pb = pa;
  b.load((dir / "opt.safetensors").string());
  EXPECT_EQ(b.steps_taken(), 2);
  a.step(pa.data(), g.data(), 0.3);
  b.step(pb.data(), g.data(), 0.3);
  EXPECT_EQ(pa, pb);
  AdamW other(6, {{"all", {{0, 6}}, 0.05, 0.1}});
  EXPECT_THROW(other.load((dir / "opt.safetensors").string()), Error);
  fs::remove_all(dir);
}

TEST(Clip, GlobalNormIsClippedAndReported) {
  std::vector<float> g = {3, 4};
  EXPECT_DOUBLE_EQ(clip_global_norm(g.data(), 2, 10.0), 5.0);
  EXPECT_EQ(g[0], 3.0f);  // under the limit: untouched
  EXPECT_DOUBLE_EQ(clip_global_norm(g.data(), 2, 1.0), 5.0);
  EXPECT_NEAR(global_norm(g.data(), 2), 1.0, 1e-6);
  EXPECT_NEAR(g[0] / g[1], 0.75, 1e-6);
  std::vector<float> nan = {1, NAN};
  EXPECT_TRUE(std::isnan(clip_global_norm(nan.data(), 2, 1.0)));
}

// --------------------------------------------------------------------------- data

TEST(Data, TokenCacheIsReusedAndInvalidatedWhenAnInputChanges) {
  const fs::path dir = temp_dir("cache");
  fs::create_directories(dir / "docs/sub");
  write(dir / "docs/a.txt", "alpha document");
  write(dir / "docs/sub/b.txt", "beta");
  write(dir / "docs/.hidden", "never read");
  io::ByteTokenizer tok;
  DataOptions o;
  o.train_paths = {(dir / "docs").string()};
  o.val_fraction = 0;
  o.cache_path = (dir / "tokens.bin").string();
  o.tokenizer_id = "byte";
  std::string log;
  Corpus c1 = load_corpus(tok, o, &log);
  EXPECT_FALSE(c1.from_cache);
  ASSERT_EQ(c1.train.size(), 2u);  // the hidden file is skipped; sorted order
  EXPECT_EQ(c1.train[0].tokens, tok.encode("alpha document"));
  EXPECT_EQ(c1.train[1].tokens, tok.encode("beta"));
  Corpus c2 = load_corpus(tok, o, &log);
  EXPECT_TRUE(c2.from_cache);
  EXPECT_NE(log.find("token cache: reused"), std::string::npos);
  EXPECT_EQ(c2.train[1].tokens, c1.train[1].tokens);
  EXPECT_EQ(c2.fingerprint, c1.fingerprint);

  write(dir / "docs/sub/b.txt", "betA");  // same size, other bytes
  Corpus c3 = load_corpus(tok, o);
  EXPECT_FALSE(c3.from_cache);
  EXPECT_EQ(c3.train[1].tokens, tok.encode("betA"));
  EXPECT_NE(c3.fingerprint, c1.fingerprint);

  o.tokenizer_id = "hf:other";  // another tokenizer invalidates too
  EXPECT_FALSE(load_corpus(tok, o).from_cache);
  EXPECT_TRUE(load_corpus(tok, o).from_cache);

  // A truncated cache is never trusted: the data is tokenized again.
  const std::string fp = load_corpus(tok, o).fingerprint;
  std::vector<CachedDoc> docs;
  std::string why;
  ASSERT_TRUE(load_token_cache(o.cache_path, fp, docs, why)) << why;
  fs::resize_file(o.cache_path, fs::file_size(o.cache_path) - 3);
  EXPECT_FALSE(load_token_cache(o.cache_path, fp, docs, why));
  EXPECT_NE(why.find("truncated"), std::string::npos) << why;
  const Corpus c4 = load_corpus(tok, o);
  EXPECT_FALSE(c4.from_cache);
  EXPECT_EQ(c4.train[1].tokens, tok.encode("betA"));
  EXPECT_TRUE(load_corpus(tok, o).from_cache);
  fs::remove_all(dir);
}

TEST(Data, CorruptCacheFailsItsChecksum) {
  const fs::path dir = temp_dir("corrupt");
  std::vector<CachedDoc> docs = {{"a", false, {1, 2, 3}}, {"b", true, {4}}};
  const std::string path = (dir / "c.bin").string();
  save_token_cache(path, "fp", docs);
  std::vector<CachedDoc> back;
  std::string why;
  ASSERT_TRUE(load_token_cache(path, "fp", back, why)) << why;
  EXPECT_EQ(back[0].tokens, docs[0].tokens);
  EXPECT_TRUE(back[1].val);
  EXPECT_FALSE(load_token_cache(path, "other", back, why));
  std::string bytes = io::read_file(path);
  bytes[bytes.size() - 9] ^= 1;  // last token's high byte
  write(path, bytes);
  EXPECT_FALSE(load_token_cache(path, "fp", back, why));
  EXPECT_EQ(why, "checksum mismatch");
  fs::remove_all(dir);
}

// A cache whose header was rewritten (as an attacker or a broken tool might) with `docs`
// for its document list, the tokens and their checksum left as they were.
std::string with_documents(const std::string& cache, const std::string& docs) {
  uint64_t hlen = 0;
  std::memcpy(&hlen, cache.data() + 16, 8);
  const std::string header = R"({"fingerprint":"fp","documents":)" + docs + "}";
  std::string out = cache.substr(0, 16);
  const uint64_t n = header.size();
  out.append(reinterpret_cast<const char*>(&n), 8);
  return out + header + cache.substr(24 + hlen);
}

TEST(Data, HostileCacheHeadersAreRejectedWithoutAllocating) {
  const std::vector<CachedDoc> docs = {{"a", false, {1, 2, 3}}, {"b", true, {4}}};
  const std::string cache = serialize_token_cache("fp", docs);
  std::vector<CachedDoc> back;
  std::string why;
  ASSERT_TRUE(parse_token_cache(with_documents(cache, R"([{"tokens":4}])"), "fp", back, why))
      << why;  // the same tokens as one nameless document: the rewriting itself is sound
  EXPECT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].tokens, (std::vector<int32_t>{1, 2, 3, 4}));
  const std::vector<CachedDoc> before = back;
  struct Case {
    std::string docs, why;
  };
  const Case cases[] = {
      // Counts that wrap around to the 4 tokens there are (2^64 - 1 + 5), or one huge count.
      {R"([{"tokens":18446744073709551615},{"tokens":5}])", "truncated or oversized token data"},
      {R"([{"tokens":4611686018427387905}])", "truncated or oversized token data"},
      {R"([{"tokens":5}])", "truncated or oversized token data"},
      {R"([{"tokens":-1},{"tokens":5}])", "corrupt header"},
      {R"([{"tokens":4.0}])", "corrupt header"},
      {R"([{"name":7,"tokens":4}])", "corrupt header"},
      {R"([{"val":"yes","tokens":4}])", "corrupt header"},
      {R"([4])", "corrupt header"},
      {R"([{}])", "corrupt header"},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(parse_token_cache(with_documents(cache, c.docs), "fp", back, why)) << c.docs;
    EXPECT_EQ(why, c.why) << c.docs;
    EXPECT_EQ(back.size(), before.size()) << "a rejected cache must leave docs alone";
  }
}

TEST(Data, SplitHoldsOutWholeDocumentsOrTheTailOfASingleOne) {
  const fs::path dir = temp_dir("split");
  io::ByteTokenizer tok;
  for (int i = 0; i < 10; ++i) {
    std::string name = "d0.txt";
    name[1] = char('0' + i);  // (GCC 12 warns falsely about "d" + to_string(i) at -O3)
    write(dir / name, std::string(20, char('a' + i)));
  }
  DataOptions o;
  o.train_paths = {dir.string()};
  o.val_fraction = 0.2;
  Corpus c = load_corpus(tok, o);
  ASSERT_EQ(c.val.size(), 2u);
  EXPECT_EQ(c.train.size(), 8u);
  EXPECT_NE(c.val[0].name, c.val[1].name);
  for (const auto& v : c.val)
    for (const auto& t : c.train) EXPECT_NE(v.name, t.name);

  const fs::path one = dir / "d3.txt";
  o.train_paths = {one.string()};
  o.val_fraction = 0.25;
  c = load_corpus(tok, o);
  ASSERT_EQ(c.val.size(), 1u);
  EXPECT_EQ(c.val[0].tokens.size(), 5u);
  EXPECT_EQ(c.train[0].tokens.size(), 15u);
  EXPECT_EQ(c.val[0].name, one.string() + "#tail");

  o.val_paths = {(dir / "d0.txt").string()};
  c = load_corpus(tok, o);
  ASSERT_EQ(c.val.size(), 1u);
  EXPECT_EQ(c.val[0].tokens, tok.encode(std::string(20, 'a')));
  EXPECT_EQ(c.train.size(), 1u);

  o.train_paths = {(dir / "missing").string()};
  EXPECT_THROW(load_corpus(tok, o), Error);
  fs::remove_all(dir);
}

TEST(Data, WindowSourceIsDeterministicResumableAndSeparatesDocuments) {
  std::vector<Document> docs = {doc_of("a", std::string(50, 'a')),
                                doc_of("b", std::string(37, 'b'))};
  WindowSource s1(docs, 257, 10, 7, "fp"), s2(docs, 257, 10, 7, "fp"), s3(docs, 257, 10, 8, "fp");
  EXPECT_EQ(s1.stream_tokens(), 89);
  Batch b1, b2, b3;
  std::vector<int32_t> all1, all3;
  nlohmann::json mid;
  for (int i = 0; i < 12; ++i) {  // several epochs of 8 windows
    if (i == 5) mid = s1.state();
    s1.next(3, 10, b1);
    s2.next(3, 10, b2);
    s3.next(3, 10, b3);
    EXPECT_EQ(b1.tokens, b2.tokens);
    all1.insert(all1.end(), b1.tokens.begin(), b1.tokens.end());
    all3.insert(all3.end(), b3.tokens.begin(), b3.tokens.end());
    EXPECT_TRUE(b1.loss_mask.empty());
    // A window is a slice of "a..a<eos>b..b<eos>": the eos sits between the documents.
    for (int r = 0; r < 3; ++r)
      for (int t = 1; t < 10; ++t) {
        const int32_t prev = b1.tokens[size_t(r * 10 + t - 1)], cur = b1.tokens[size_t(r * 10 + t)];
        if (prev == 'a') {
          EXPECT_TRUE(cur == 'a' || cur == 257);
        }
        if (cur == 'b') {
          EXPECT_TRUE(prev == 'b' || prev == 257);
        }
      }
  }
  EXPECT_NE(all1, all3);  // the seed changes the order
  EXPECT_GE(s1.epoch(), 3);
  // Restoring the state reproduces the continuation.
  WindowSource r(docs, 257, 10, 7, "fp");
  r.restore(mid);
  Batch rb;
  for (int i = 5; i < 12; ++i) {
    r.next(3, 10, rb);
    EXPECT_TRUE(std::equal(rb.tokens.begin(), rb.tokens.end(), all1.begin() + i * 30)) << i;
  }
  EXPECT_THROW(r.restore({{"kind", "windows"}, {"epoch", 0}, {"index", 99}}), Error);
  EXPECT_THROW(WindowSource(docs, 257, 100, 7, "fp"), Error);  // fewer tokens than seq_len
  EXPECT_NE(s1.fingerprint(), s3.fingerprint());
}

// --------------------------------------------------------------------------- evaluation

TEST(Evaluate, StreamedDocumentLossEqualsSequenceLoss) {
  for (bool memory : {true, false}) {
    const auto m = model::init_model(tiny_config(memory), {5, 0.3, 1.0});
    const Document d = doc_of("d", toy_text(61, 2));  // 8 segments, the last one short
    model::ForwardContext<float> ctx(m.config);
    model::SegmentActs<float> acts;
    const DocumentLoss dl = document_loss(m, ctx, d.tokens.data(), int64_t(d.tokens.size()), acts);
    model::SequenceWorkspace<float> ws;
    const auto ref = model::sequence_loss<float>(m, ctx, d.tokens.data(), 1,
                                                 int64_t(d.tokens.size()), nullptr, {}, ws);
    EXPECT_EQ(dl.predicted, 60);
    EXPECT_NEAR(dl.loss_sum, ref.loss_sum, 1e-9 * ref.loss_sum);
    EXPECT_EQ(dl.segment_loss.size(), 8u);
    EXPECT_EQ(dl.segment_count.back(), 4);  // 5 tokens, the last predicts nothing

    const EvalResult r = evaluate_documents(m, {d, d}, 80);  // second document cut to 19
    EXPECT_EQ(r.tokens, 80);
    EXPECT_EQ(r.documents, 2);
    EXPECT_EQ(r.predicted, 60 + 18);
    int64_t bucketed = 0;
    for (const auto& b : r.by_segment) bucketed += b.predicted;
    EXPECT_EQ(bucketed, r.predicted);
    EXPECT_EQ(r.by_segment[0].first, 0);
    EXPECT_EQ(r.by_segment[0].last, 0);
    EXPECT_EQ(r.by_segment[2].first, 2);
    EXPECT_EQ(r.by_segment[2].last, 3);
  }
}

// --------------------------------------------------------------------------- checkpoints

TEST(Checkpoint, CommitIsAtomicKeepsTheNewestAndIgnoresPartialWrites) {
  const fs::path out = temp_dir("ckpt");
  auto fill = [](int64_t v) {
    return [v](const std::string& dir) {
      write(fs::path(dir) / "data", std::to_string(v));
      write(fs::path(dir) / "trainer.json", "{}");
    };
  };
  for (int64_t s : {3, 6, 9, 12}) commit_checkpoint(out.string(), s, fill(s), 2);
  EXPECT_FALSE(fs::exists(out / "checkpoints/step-00000003"));
  EXPECT_FALSE(fs::exists(out / "checkpoints/step-00000006"));
  EXPECT_TRUE(fs::exists(out / "checkpoints/step-00000009"));
  EXPECT_EQ(io::read_file((out / "latest").string()), "checkpoints/step-00000012\n");
  EXPECT_EQ(*find_latest_checkpoint(out.string()), (out / "checkpoints/step-00000012").string());

  // A writer that dies half way leaves neither a step directory nor a new pointer.
  EXPECT_THROW(commit_checkpoint(
                   out.string(), 15,
                   [](const std::string& dir) {
                     write(fs::path(dir) / "data", "half");
                     throw Error("disk full");
                   },
                   2),
               Error);
  EXPECT_FALSE(fs::exists(out / "checkpoints/step-00000015"));
  EXPECT_EQ(*find_latest_checkpoint(out.string()), (out / "checkpoints/step-00000012").string());
  // A leftover temp dir (a killed process) is ignored and cleaned up; a directory without the
  // marker is not a checkpoint.
  fs::create_directories(out / "checkpoints/.tmp-step-00000018-1");
  fs::create_directories(out / "checkpoints/step-00000021");
  fs::remove(out / "latest");
  EXPECT_EQ(*find_latest_checkpoint(out.string()), (out / "checkpoints/step-00000012").string());
  remove_stale_checkpoint_temps(out.string());
  EXPECT_FALSE(fs::exists(out / "checkpoints/.tmp-step-00000018-1"));
  // Re-saving an existing step replaces it.
  commit_checkpoint(out.string(), 12, fill(99), 5);
  EXPECT_EQ(io::read_file((out / "checkpoints/step-00000012/data").string()), "99");
  fs::remove_all(out);
}

TEST(Metrics, SvgHasBothCurvesAndLabelledAxes) {
  const std::string svg =
      loss_curve_svg({{1, 5.0}, {2, 4.0}, {3, 3.5}}, {{2, 4.2}, {3, 3.9}}, "t<1>");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  EXPECT_NE(svg.find("loss (nats per token)"), std::string::npos);
  EXPECT_NE(svg.find("t&lt;1&gt;"), std::string::npos);
  size_t polylines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos;
       at = svg.find("<polyline", at + 1))
    ++polylines;
  EXPECT_EQ(polylines, 2u);
  EXPECT_NE(svg.find("<circle"), std::string::npos);
}

// --------------------------------------------------------------------------- trainer

namespace {

struct Fixture {
  fs::path out;
  std::vector<Document> docs;
  Fixture(const std::string& name) : out(temp_dir(name)) {
    docs = {doc_of("a", toy_text(3000, 1)), doc_of("b", toy_text(2000, 2))};
  }
  ~Fixture() { fs::remove_all(out); }
  TrainOptions options(int64_t steps) const {
    TrainOptions o;
    o.out = out.string();
    o.steps = steps;
    o.batch = 4;
    o.seq_len = 32;
    o.schedule = {ScheduleKind::Constant, 2, steps, 0.1};
    o.log_every = 1000000;
    return o;
  }
};

}  // namespace

TEST(Trainer, ShortRunLowersTheLossAndWritesAModel) {
  Fixture f("lowers");
  FullModelTrainable tr(model::init_model(tiny_config(), {1, 0.1, 0.0}), "");
  WindowSource src(f.docs, 257, 32, 3, "fp");
  std::vector<double> losses;
  TrainHooks hooks;
  hooks.on_step = [&](const nlohmann::json& j) { losses.push_back(j["loss"].get<double>()); };
  TrainOptions o = f.options(40);
  o.eval_every = 20;
  Trainer t(tr, model_param_groups(tr.model().layout, 1e-2, 1e-1, 0.0), src,
            {doc_of("v", toy_text(200, 9))}, o, hooks);
  EXPECT_EQ(t.run(nullptr, nullptr), Trainer::Outcome::Finished);
  ASSERT_EQ(losses.size(), 40u);
  EXPECT_GT(losses.front(), 5.0);  // ~ln(258) at the start
  const double tail = (losses[37] + losses[38] + losses[39]) / 3;
  EXPECT_LT(tail, losses.front() - 2.0);
  const auto final_model = model::load_model((f.out / "final").string());
  EXPECT_EQ(final_model.weights, tr.model().weights);
  // metrics.jsonl: one line per step, val_loss on eval steps.
  std::ifstream in(f.out / "metrics.jsonl");
  std::string line;
  int lines = 0, evals = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    ++lines;
    for (const char* k : {"step", "loss", "lr", "tokens_per_s", "grad_norm"})
      EXPECT_TRUE(j.contains(k)) << k;
    if (j.contains("val_loss")) {
      ++evals;
      EXPECT_TRUE(j.contains("val_ppl"));
      EXPECT_EQ(j["gates"].size(), 2u);
    }
  }
  EXPECT_EQ(lines, 40);
  EXPECT_EQ(evals, 2);
  EXPECT_TRUE(fs::exists(f.out / "loss.svg"));
}

TEST(Trainer, AccumulationAndShardsSumToTheFullBatchGradient) {
  Fixture f("accum");
  const auto m = model::init_model(tiny_config(), {2, 0.3, 0.5});
  WindowSource src(f.docs, 257, 32, 3, "fp");
  Batch b;
  src.next(4, 32, b);
  b.loss_mask.assign(b.tokens.size(), 1);
  for (size_t i = 0; i < b.loss_mask.size(); i += 3) b.loss_mask[i] = 0;
  auto grad_of = [&](int64_t accum, int64_t rank, int64_t world, StepGradient* out) {
    FullModelTrainable tr(m, "");
    TrainOptions o = f.options(1);
    o.grad_accum = accum;
    o.rank = rank;
    o.world = world;
    int micro = 0;
    TrainHooks hooks;
    hooks.after_micro_batch = [&](int64_t, int64_t, const float*, int64_t) { ++micro; };
    Trainer t(tr, model_param_groups(m.layout, 1e-3, 1e-3, 0), src, {}, o, hooks);
    std::vector<float> g(size_t(m.layout.total));
    *out = t.compute_gradient(b, g.data());
    EXPECT_EQ(micro, accum);
    return std::vector<double>(g.begin(), g.end());
  };
  StepGradient full, acc, s0, s1;
  const auto g_full = grad_of(1, 0, 1, &full);
  const auto g_acc = grad_of(4, 0, 1, &acc);
  const auto g0 = grad_of(1, 0, 2, &s0);
  const auto g1 = grad_of(2, 1, 2, &s1);
  int64_t masked_in = 0;
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t t = 0; t < 31; ++t) masked_in += b.loss_mask[size_t(r * 32 + t)] != 0;
  EXPECT_EQ(full.predicted, masked_in);
  EXPECT_EQ(s0.predicted + s1.predicted, masked_in);
  EXPECT_NEAR(acc.loss_sum, full.loss_sum, 1e-6 * full.loss_sum);
  EXPECT_NEAR(s0.loss_sum + s1.loss_sum, full.loss_sum, 1e-6 * full.loss_sum);
  double scale = 0, err_acc = 0, err_dp = 0;
  for (size_t i = 0; i < g_full.size(); ++i) {
    scale = nan_max(scale, std::abs(g_full[i]));
    err_acc = nan_max(err_acc, std::abs(g_acc[i] - g_full[i]));
    err_dp = nan_max(err_dp, std::abs(g0[i] + g1[i] - g_full[i]));
  }
  EXPECT_GT(scale, 0);
  EXPECT_LT(err_acc, 1e-5 * scale);
  EXPECT_LT(err_dp, 1e-5 * scale);
}

TEST(Trainer, NonFiniteGradientStopsWithoutSavingAndKeepsTheLastGoodCheckpoint) {
  Fixture f("nonfinite");
  FullModelTrainable tr(model::init_model(tiny_config(), {1, 0.1, 0.0}), "");
  WindowSource src(f.docs, 257, 32, 3, "fp");
  TrainHooks hooks;
  hooks.after_step_gradient = [](StepGradient& g) {
    if (g.step == 4) g.grad[7] = NAN;  // the 5th step's gradient
  };
  TrainOptions o = f.options(10);
  o.save_every = 3;
  Trainer t(tr, model_param_groups(tr.model().layout, 1e-2, 1e-1, 0.0), src, {}, o, hooks);
  try {
    t.run(nullptr, nullptr);
    FAIL() << "expected NonFiniteError";
  } catch (const NonFiniteError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("step 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("step-00000003"), std::string::npos) << msg;
  }
  EXPECT_EQ(t.step(), 4);
  const auto latest = find_latest_checkpoint(f.out.string());
  ASSERT_TRUE(latest);
  EXPECT_EQ(fs::path(*latest).filename(), "step-00000003");
  EXPECT_FALSE(fs::exists(f.out / "checkpoints/step-00000004"));
  EXPECT_FALSE(fs::exists(f.out / "final"));
  const auto saved = model::load_model(*latest);  // load_model rejects non-finite weights
  EXPECT_EQ(saved.layout.total, tr.model().layout.total);
}

TEST(Trainer, InterruptFlagEndsWithACheckpointThatResumesExactly) {
  // Bit-exactness is promised for a fixed thread count of at most 2 (docs/training.md).
  omp_set_num_threads(std::min(2, omp_get_max_threads()));
  Fixture f("interrupt");
  const auto m0 = model::init_model(tiny_config(), {4, 0.1, 0.0});
  auto groups = model_param_groups(m0.layout, 1e-2, 1e-1, 0.1);
  // Reference: 8 uninterrupted steps.
  std::vector<double> ref_losses;
  std::vector<float> ref_weights;
  {
    FullModelTrainable tr(m0, "");
    WindowSource src(f.docs, 257, 32, 3, "fp");
    TrainHooks h;
    h.on_step = [&](const nlohmann::json& j) { ref_losses.push_back(j["loss"].get<double>()); };
    TrainOptions o = f.options(8);
    o.out = (f.out / "ref").string();
    Trainer t(tr, groups, src, {}, o, h);
    t.run(nullptr, nullptr);
    ref_weights = tr.model().weights;
  }
  // Interrupted after step 3 (the flag is raised during step 3), then resumed.
  std::atomic<bool> stop{false};
  std::vector<double> losses;
  {
    FullModelTrainable tr(m0, "");
    WindowSource src(f.docs, 257, 32, 3, "fp");
    TrainHooks h;
    h.after_step_gradient = [&](StepGradient& g) {
      if (g.step == 2) stop = true;
    };
    h.on_step = [&](const nlohmann::json& j) { losses.push_back(j["loss"].get<double>()); };
    TrainOptions o = f.options(8);
    o.out = (f.out / "run").string();
    Trainer t(tr, groups, src, {}, o, h);
    EXPECT_EQ(t.run(&stop, nullptr), Trainer::Outcome::Interrupted);
    EXPECT_EQ(t.step(), 3);
  }
  {
    model::Model<float> other = m0;
    std::fill(other.weights.begin(), other.weights.end(), 0.0f);  // must be overwritten
    FullModelTrainable tr(other, "");
    WindowSource src(f.docs, 257, 32, 3, "fp");
    TrainHooks h;
    h.on_step = [&](const nlohmann::json& j) { losses.push_back(j["loss"].get<double>()); };
    TrainOptions o = f.options(8);
    o.out = (f.out / "run").string();
    Trainer t(tr, groups, src, {}, o, h);
    const auto latest = find_latest_checkpoint(o.out);
    ASSERT_TRUE(latest);
    t.resume_from(*latest);
    EXPECT_EQ(t.step(), 3);
    EXPECT_EQ(t.run(nullptr, nullptr), Trainer::Outcome::Finished);
    EXPECT_EQ(tr.model().weights, ref_weights);
  }
  EXPECT_EQ(losses, ref_losses);
  // A resume against other data is refused.
  FullModelTrainable tr(m0, "");
  WindowSource other_src(f.docs, 257, 32, 4, "fp");
  Trainer t(tr, groups, other_src, {}, f.options(8));
  EXPECT_THROW(t.resume_from(*find_latest_checkpoint((f.out / "run").string())), Error);
}
