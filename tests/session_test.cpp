// Streaming inference (src/infer): incremental decoding equals the training-time segmentation,
// saved states resume exactly, sampling is reproducible, state files are validated, and the
// text plumbing (chunked prompts, UTF-8 streaming, stop strings) is exact.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.hpp"
#include "infer/generate.hpp"
#include "infer/session.hpp"
#include "model/bptt.hpp"
#include "util/gradcheck.hpp"
#include "ops/cross_entropy.hpp"
#include "util/nan_max.hpp"

#include <nlohmann/json.hpp>

using infini::testing::nan_max;
using namespace infini;
using namespace infini::infer;
using infini::testing::random_tokens;
using model::MemoryUpdate;
using model::ModelConfig;

namespace fs = std::filesystem;

namespace {

struct Case {
  const char* name;
  MemoryUpdate rule;
  bool use_memory, bias;
  int64_t heads, kv_heads, seg;
};

ModelConfig make_config(const Case& c, int64_t vocab = 19) {
  ModelConfig cfg;
  cfg.model_type = c.bias ? "qwen2" : "llama";
  cfg.vocab_size = vocab;
  cfg.hidden_size = 16;
  cfg.intermediate_size = 24;
  cfg.num_layers = 2;
  cfg.num_heads = c.heads;
  cfg.num_kv_heads = c.kv_heads;
  cfg.head_dim = 4;
  cfg.rms_norm_eps = 1e-5;
  cfg.rope_theta = 100.0;
  cfg.attention_bias = c.bias;
  cfg.segment_length = c.seg;
  cfg.memory_update = c.rule;
  cfg.use_memory = c.use_memory;
  return cfg;
}

// Weights large enough that the memory, the gates and the local cache all move the logits.
model::Model<float> random_model(const ModelConfig& cfg, uint64_t seed) {
  model::Model<float> m = model::init_model(cfg, {seed, 0.4, 0.0});
  std::mt19937_64 g(seed + 1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (const auto& p : m.layout.params)
    if (p.kind == model::ParamKind::Gate || p.kind == model::ParamKind::Bias)
      for (int64_t i = 0; i < p.numel; ++i) m.weights[size_t(p.offset + i)] = d(g);
  return m;
}

// The training-time reference: one forward_chunk per whole segment, all logits [T, V].
std::vector<float> batch_logits(const model::Model<float>& m, const std::vector<int32_t>& tok) {
  const ModelConfig& c = m.config;
  model::ForwardContext<float> ctx(c);
  auto state = model::MemoryState<float>::zeros(c, 1);
  model::SegmentActs<float> acts;
  std::vector<float> all;
  const int64_t T = int64_t(tok.size());
  for (int64_t s = 0; s * c.segment_length < T; ++s) {
    const int64_t n = std::min(c.segment_length, T - s * c.segment_length);
    model::forward_chunk(m, ctx, tok.data() + s * c.segment_length, 1, n, state, acts);
    all.insert(all.end(), acts.logits.begin(), acts.logits.end());
  }
  return all;
}

double max_diff(std::span<const float> a, const float* b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = nan_max(d, double(std::abs(a[i] - b[i])));
  return d;
}

const Case kCases[] = {
    {"linear", MemoryUpdate::Linear, true, false, 2, 2, 5},
    {"delta", MemoryUpdate::Delta, true, false, 2, 2, 5},
    {"delta_gqa_bias", MemoryUpdate::Delta, true, true, 4, 2, 6},
    {"local_only", MemoryUpdate::Linear, false, false, 2, 2, 5},
};

class Incremental : public ::testing::TestWithParam<Case> {};

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("infini_session_" + name + "_" + std::to_string(getpid()));
}

}  // namespace

TEST_P(Incremental, DecodingEqualsBatchForwardAcrossSegments) {
  const Case c = GetParam();
  const ModelConfig cfg = make_config(c);
  const auto m = random_model(cfg, 3);
  const int64_t T = 4 * c.seg + 3;  // four boundaries, a partial last segment
  const auto tok = random_tokens(T, cfg.vocab_size, 5);
  const std::vector<float> ref = batch_logits(m, tok);
  const int64_t V = cfg.vocab_size;

  // The reference is the training path: its loss is sequence_loss's.
  model::ForwardContext<float> ctx(cfg);
  model::SequenceWorkspace<float> ws;
  const double seq = model::sequence_loss<float>(m, ctx, tok.data(), 1, T, nullptr, {}, ws).loss_sum;
  std::vector<int32_t> targets(tok.begin() + 1, tok.end());
  targets.push_back(-1);
  EXPECT_NEAR(ops::cross_entropy<float>(ref.data(), targets.data(), T, V, nullptr, 0), seq,
              1e-4 * std::abs(seq));

  // Prefill 7 tokens in chunks of at most 3, then decode one token at a time.
  SessionOptions so;
  so.prefill_chunk = 3;
  Session s(m, so);
  const int64_t P = 7;
  s.feed(std::span<const int32_t>(tok.data(), P));
  EXPECT_EQ(s.position(), P);
  EXPECT_EQ(s.segment_position(), P % c.seg);
  EXPECT_LT(max_diff(s.logits(), ref.data() + (P - 1) * V), 1e-4) << "after prefill";
  for (int64_t t = P; t < T; ++t) {
    s.feed(tok[size_t(t)]);
    ASSERT_LT(max_diff(s.logits(), ref.data() + t * V), 1e-4) << c.name << " token " << t;
  }

  // Ragged feeds (1..9 tokens, crossing boundaries inside one call) agree as well.
  Session r(m);
  std::mt19937_64 g(11);
  for (int64_t t = 0; t < T;) {
    const int64_t n = std::min<int64_t>(T - t, 1 + int64_t(g() % 9));
    r.feed(std::span<const int32_t>(tok.data() + t, size_t(n)));
    t += n;
    ASSERT_LT(max_diff(r.logits(), ref.data() + (t - 1) * V), 1e-4) << c.name << " ragged at " << t;
  }
}

TEST_P(Incremental, PackedWeightsGiveTheSameLogitsBitForBit) {
  // A session packs the weights once for the native GEMM; prefill chunks and decode steps
  // must give the bits an unpacked session gives.
  const Case c = GetParam();
  const ModelConfig cfg = make_config(c);
  const auto m = random_model(cfg, 6);
  const int64_t T = 3 * c.seg + 2;
  const auto tok = random_tokens(T, cfg.vocab_size, 7);
  SessionOptions packed_opts, plain_opts;
  packed_opts.prefill_chunk = plain_opts.prefill_chunk = 4;
  plain_opts.max_packed_weight_bytes = 0;
  Session packed(m, packed_opts), plain(m, plain_opts);
  for (int64_t t = 0; t < T;) {
    const int64_t n = t == 0 ? 6 : 1;  // a prefill chunk, then decode steps
    packed.feed(std::span<const int32_t>(tok.data() + t, size_t(n)));
    plain.feed(std::span<const int32_t>(tok.data() + t, size_t(n)));
    t += n;
    const auto a = packed.logits(), b = plain.logits();
    ASSERT_TRUE(std::equal(a.begin(), a.end(), b.begin())) << c.name << " at token " << t;
  }
}

TEST_P(Incremental, LaterSegmentsDependOnEarlierOnes) {
  // Guards the test above: with memory, a segment's logits must change when the segments
  // before it change; without memory they must not.
  const Case c = GetParam();
  const ModelConfig cfg = make_config(c);
  const auto m = random_model(cfg, 3);
  auto a = random_tokens(3 * c.seg, cfg.vocab_size, 5);
  auto b = a;
  for (int64_t i = 0; i < c.seg; ++i) b[size_t(i)] = (b[size_t(i)] + 1) % int32_t(cfg.vocab_size);
  Session sa(m), sb(m);
  sa.feed(a);
  sb.feed(b);
  const double d = max_diff(sa.logits(), sb.logits().data());
  if (c.use_memory)
    EXPECT_GT(d, 1e-3);
  else
    EXPECT_LT(d, 1e-6);
}

TEST_P(Incremental, SavedStateResumesExactly) {
  const Case c = GetParam();
  const ModelConfig cfg = make_config(c);
  const auto m = random_model(cfg, 4);
  const auto tok = random_tokens(5 * c.seg, cfg.vocab_size, 6);
  // Cut mid-segment, exactly at a boundary, and before any token.
  for (const int64_t cut : {int64_t(2 * c.seg + 2), int64_t(2 * c.seg), int64_t(0)}) {
    Session cont(m);
    cont.feed(std::span<const int32_t>(tok.data(), size_t(cut)));
    const fs::path path = temp_path(std::string(c.name) + "_" + std::to_string(cut));
    cont.save_state(path.string());
    Session resumed(m);
    resumed.feed(std::span<const int32_t>(tok.data(), 3));  // overwritten by the load
    resumed.load_state(path.string());
    fs::remove(path);
    EXPECT_EQ(resumed.position(), cut);
    EXPECT_EQ(resumed.has_logits(), cut > 0);
    if (cut > 0) {
      const auto a = cont.logits(), b = resumed.logits();
      EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin())) << "cut " << cut;
    }
    for (size_t t = size_t(cut); t < tok.size(); ++t) {
      cont.feed(tok[t]);
      resumed.feed(tok[t]);
      const auto a = cont.logits(), b = resumed.logits();
      ASSERT_TRUE(std::equal(a.begin(), a.end(), b.begin())) << "cut " << cut << " token " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, Incremental, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Generate, ResumedGenerationEqualsContinuous) {
  // Byte-tokenizer vocabulary, so the text path (detokenizing, <eos>) runs too.
  const ModelConfig cfg = make_config(kCases[1], 260);
  const auto m = random_model(cfg, 8);
  io::ByteTokenizer tok;
  const std::string prompt = "the quick brown fox";
  SamplingOptions greedy;
  greedy.temperature = 0;
  auto run = [&](Session& s, int64_t n) {
    Sampler sampler(greedy);
    GenerateOptions g;
    g.max_new_tokens = n;
    g.keep_state = true;
    std::string out;
    const auto r = generate(s, tok, sampler, g, [&](std::string_view t) { out.append(t); });
    EXPECT_EQ(r.stop_reason, "length");
    return out;
  };
  Session whole(m);
  auto reader = TextChunkReader::from_string(prompt);
  feed_text(whole, tok, reader);
  const std::string all = run(whole, 24);

  Session first(m);
  auto reader2 = TextChunkReader::from_string(prompt);
  feed_text(first, tok, reader2);
  const std::string a = run(first, 10);
  const std::string bytes = serialize_state(first.snapshot());
  Session second(m);
  second.restore(parse_state(bytes, "memory"));
  const std::string b = run(second, 14);
  EXPECT_EQ(a + b, all);
  EXPECT_EQ(second.position(), whole.position());
}

TEST(Sampling, SeedReproducibleAndTopKOneIsGreedy) {
  std::vector<float> logits(50);
  std::mt19937_64 g(1);
  std::normal_distribution<float> d(0, 1);
  for (auto& x : logits) x = d(g);
  const int32_t argmax = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  SamplingOptions o;
  o.temperature = 1.5;
  o.seed = 42;
  Sampler a(o), b(o);
  o.seed = 43;
  Sampler c(o);
  std::vector<int32_t> sa, sb, sc;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a.sample(logits, 50));
    sb.push_back(b.sample(logits, 50));
    sc.push_back(c.sample(logits, 50));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
  EXPECT_GT(std::set<int32_t>(sa.begin(), sa.end()).size(), 5u);  // it really samples

  for (const auto& [temp, k, p] : {std::tuple{0.0, 0, 1.0}, std::tuple{2.0, 1, 1.0},
                                   std::tuple{1.0, 0, 1e-9}}) {
    SamplingOptions q;
    q.temperature = temp;
    q.top_k = k;
    q.top_p = p;
    Sampler s(q);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(logits, 50), argmax) << temp << " " << k << " " << p;
  }
  // Padding ids beyond `allowed` are never produced, even when they are the most likely.
  logits[49] = 100;
  SamplingOptions q;
  q.temperature = 0;
  EXPECT_NE(Sampler(q).sample(logits, 49), 49);
}

TEST(Sampling, FrequenciesFollowTheTruncatedSoftmax) {
  // p = [0.5, 0.25, 0.125, 0.125]: top-k 3 renormalises over the first three; top-p 0.7
  // keeps the first two (0.5 < 0.7 <= 0.75).
  const std::vector<float> logits = {std::log(4.f), std::log(2.f), 0.f, 0.f};
  auto freq = [&](int64_t k, double p) {
    SamplingOptions o;
    o.top_k = k;
    o.top_p = p;
    o.seed = 7;
    Sampler s(o);
    std::vector<double> f(4, 0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) f[size_t(s.sample(logits, 4))] += 1.0 / n;
    return f;
  };
  const auto all = freq(0, 1.0), k3 = freq(3, 1.0), p7 = freq(0, 0.7);
  const double want_all[] = {0.5, 0.25, 0.125, 0.125}, want_k3[] = {4 / 7., 2 / 7., 1 / 7., 0},
               want_p7[] = {2 / 3., 1 / 3., 0, 0};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(all[size_t(i)], want_all[i], 0.015);
    EXPECT_NEAR(k3[size_t(i)], want_k3[i], 0.015);
    EXPECT_NEAR(p7[size_t(i)], want_p7[i], 0.015);
  }
}

namespace {

std::string valid_state_bytes(const model::Model<float>& m, int64_t tokens) {
  Session s(m);
  s.feed(random_tokens(tokens, m.config.vocab_size, 2));
  return serialize_state(s.snapshot());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(StateFile, BadFilesGiveClearErrors) {
  const ModelConfig cfg = make_config(kCases[0]);
  const auto m = random_model(cfg, 1);
  const std::string good = valid_state_bytes(m, 7);
  auto parse = [](std::string b) { return [b] { parse_state(b, "s.bin"); }; };
  EXPECT_EQ(error_of(parse(good)), "no error");

  EXPECT_NE(error_of(parse("")).find("bad magic"), std::string::npos);
  EXPECT_NE(error_of(parse("GGUF0000000000000000000000")).find("bad magic"), std::string::npos);
  std::string v = good;
  v[8] = 9;
  EXPECT_NE(error_of(parse(v)).find("unsupported version 9"), std::string::npos);
  for (size_t n : {size_t(8), size_t(40), good.size() / 2, good.size() - 1})
    EXPECT_NE(error_of(parse(good.substr(0, n))).find("truncated"), std::string::npos) << n;
  EXPECT_NE(error_of(parse(good + "xx")).find("trailing"), std::string::npos);
  std::string flip = good;
  flip[kStateHeaderBytes + 5] ^= 0x10;
  EXPECT_NE(error_of(parse(flip)).find("checksum"), std::string::npos);
  // A NaN with a valid checksum is still refused.
  std::string nan = good;
  const float q = std::nanf("");
  std::memcpy(nan.data() + kStateHeaderBytes, &q, 4);
  const uint64_t h = hash_bytes(nan.data(), nan.size() - 8);
  std::memcpy(nan.data() + nan.size() - 8, &h, 8);
  EXPECT_NE(error_of(parse(nan)).find("non-finite"), std::string::npos);
  // Every message names the source and is one line.
  const std::string e = error_of(parse(good.substr(0, 100)));
  EXPECT_EQ(e.rfind("state file s.bin: ", 0), 0u) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);
}

TEST(StateFile, MismatchedModelIsRefusedAndLeavesTheSessionAlone) {
  const ModelConfig cfg = make_config(kCases[0]);
  const auto m = random_model(cfg, 1);
  const StateSnapshot snap = parse_state(valid_state_bytes(m, 7), "s.bin");

  const auto other_weights = random_model(cfg, 2);
  Session s(other_weights);
  s.feed(3);
  EXPECT_NE(error_of([&] { s.restore(snap, "s.bin"); }).find("other weights"), std::string::npos);
  EXPECT_EQ(s.position(), 1);  // untouched

  ModelConfig deeper = cfg;
  deeper.num_layers = 3;
  const auto md = random_model(deeper, 1);
  Session sd(md);
  EXPECT_NE(error_of([&] { sd.restore(snap, "s.bin"); }).find("num_layers is 2 in the state, 3 in the model"),
            std::string::npos);

  ModelConfig delta = cfg;
  delta.memory_update = MemoryUpdate::Delta;
  const auto mdelta = random_model(delta, 1);
  Session sx(mdelta);
  EXPECT_NE(error_of([&] { sx.restore(snap, "s.bin"); }).find("config fingerprint"), std::string::npos);

  ModelConfig local = cfg;
  local.use_memory = false;
  const auto ml = random_model(local, 1);
  Session sl(ml);
  EXPECT_NE(error_of([&] { sl.restore(snap, "s.bin"); }).find("compressive memory"), std::string::npos);

  const fs::path missing = temp_path("missing");
  EXPECT_NE(error_of([&] { s.load_state(missing.string()); }).find(missing.string()), std::string::npos);
}

TEST(StateFile, RandomCorruptionNeverCrashes) {
  // A small fuzz loop: mutated and truncated files either parse or throw infini::Error.
  const ModelConfig cfg = make_config(kCases[2]);
  const auto m = random_model(cfg, 1);
  const std::string good = valid_state_bytes(m, 9);
  std::mt19937_64 g(123);
  int parsed = 0;
  for (int it = 0; it < 3000; ++it) {
    std::string b = good;
    const int edits = 1 + int(g() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (g() % 4) {
        case 0: b[g() % b.size()] = char(g()); break;
        case 1: b.resize(g() % (b.size() + 1)); break;
        case 2: {  // a header field set to an extreme value
          const size_t at = 8 + 8 * (g() % 10);
          const uint64_t x = (g() % 2) ? ~uint64_t(0) >> (g() % 64) : g() % 64;
          if (at + 8 <= b.size()) std::memcpy(b.data() + at, &x, 8);
          break;
        }
        default: b.insert(b.begin() + ptrdiff_t(g() % (b.size() + 1)), char(g()));
      }
      if (b.empty()) break;
    }
    try {
      parse_state(b, "fuzz");
      ++parsed;
    } catch (const Error&) {
    }
  }
  EXPECT_LT(parsed, 30);  // the checksum catches almost every mutation
}

TEST(Text, Utf8AndSplitPoints) {
  EXPECT_EQ(utf8_complete_len("abc"), 3u);
  EXPECT_EQ(utf8_complete_len("a\xC3"), 1u);            // é cut after its lead byte
  EXPECT_EQ(utf8_complete_len("a\xC3\xA9"), 3u);
  EXPECT_EQ(utf8_complete_len("\xE2\x82"), 0u);          // € cut after two of three bytes
  EXPECT_EQ(utf8_complete_len("x\xF0\x9F\x98\x80"), 5u);  // emoji complete
  EXPECT_EQ(utf8_complete_len("x\xF0\x9F\x98"), 1u);
  EXPECT_EQ(safe_split_point("hello big  world"), 10u);  // before the space that joins "world"
  EXPECT_EQ(safe_split_point("a.\n\nb"), 4u);             // after a run ending in a line break
  EXPECT_EQ(safe_split_point("ends with space "), 9u);   // a run at the end may go on
  EXPECT_EQ(safe_split_point("nospace\xE2\x82"), 7u);    // no space: last whole character
  EXPECT_EQ(safe_split_point("  lead"), 1u);
}

TEST(Text, ChunkedReadingIsLosslessAndBounded) {
  std::string text;
  std::mt19937_64 g(3);
  const char* words[] = {"alpha ", "béta ", "\n\n", "gamma\t", "δέλτα ", "€uro ", "x"};
  while (text.size() < 5000) text += words[g() % 7];
  const fs::path p = temp_path("chunks.txt");
  std::ofstream(p, std::ios::binary) << text;
  auto r = TextChunkReader::open_file(p.string(), 64);
  std::string piece, joined;
  int pieces = 0;
  while (r.next(piece)) {
    EXPECT_LE(piece.size(), 64u);
    EXPECT_EQ(utf8_complete_len(piece), piece.size());  // never splits a character
    joined += piece;
    ++pieces;
  }
  fs::remove(p);
  EXPECT_EQ(joined, text);
  EXPECT_GT(pieces, 5000 / 64);
  EXPECT_EQ(r.bytes_read(), text.size());
  EXPECT_NE(error_of([] { TextChunkReader::open_file("/nonexistent/prompt.txt"); }).find("/nonexistent/prompt.txt"),
            std::string::npos);
}

TEST(Text, TokenStreamEmitsWholeCharactersOnly) {
  io::ByteTokenizer tok;
  const std::string s = "h\xC3\xA9 \xE2\x82\xAC!\xF0\x9F\x98\x80";  // "hé €!😀"
  TokenTextStream ts(tok);
  std::string joined;
  for (unsigned char c : s) {
    const std::string out = ts.push(int32_t(c));
    EXPECT_EQ(utf8_complete_len(out), out.size());
    joined += out;
    if (c == 0xC3) {
      EXPECT_EQ(out, "");  // first byte of é: held back
    }
  }
  joined += ts.flush();
  EXPECT_EQ(joined, s);
  // An incomplete character at the very end is still flushed.
  TokenTextStream t2(tok);
  EXPECT_EQ(t2.push('a'), "a");
  EXPECT_EQ(t2.push(0xE2), "");
  EXPECT_EQ(t2.flush(), "\xE2");
}

TEST(Text, StopStringsSpanPushesAndAreNotEmitted) {
  StopFilter f({"END", "\n\n"});
  std::string out;
  out += f.push("hello E");
  EXPECT_EQ(out, "hello ");  // "E" could start "END"
  out += f.push("Nx wor");
  EXPECT_EQ(out, "hello ENx wor");
  out += f.push("ld EN");
  out += f.push("D trailing");
  EXPECT_TRUE(f.stopped());
  EXPECT_EQ(out, "hello ENx world ");
  EXPECT_EQ(f.push("more"), "");
  StopFilter none({});
  EXPECT_EQ(none.push("abc"), "abc");
  EXPECT_EQ(none.flush(), "");
}

TEST(Session, LongFeedKeepsOnlyTheCurrentSegment) {
  // After 50 segments the state is still one memory and 3 cached rows.
  ModelConfig cfg = make_config(kCases[1]);
  const auto m = random_model(cfg, 1);
  Session s(m);
  s.feed(random_tokens(50 * cfg.segment_length + 3, cfg.vocab_size, 1));
  const StateSnapshot a = s.snapshot();
  EXPECT_EQ(a.M.size(), size_t(cfg.num_layers * cfg.num_kv_heads * 16));
  EXPECT_EQ(a.k.size(), size_t(cfg.num_layers * 3 * cfg.kv_width()));
  EXPECT_EQ(s.position(), 50 * cfg.segment_length + 3);
  EXPECT_EQ(s.segment_position(), 3);
}

namespace {

const std::string kSrc = INFINI_SOURCE_DIR;

// The texts of tests/data/tokenizers/texts.json that are plain strings.
std::vector<std::string> tokenizer_texts() {
  std::ifstream f(kSrc + "/tests/data/tokenizers/texts.json");
  const auto j = nlohmann::json::parse(f);
  std::vector<std::string> out;
  for (const auto& e : j)
    if (e.is_string()) out.push_back(e.get<std::string>());
  return out;
}

// Loading tokenizer.json takes a while; each is loaded once per run.
const io::Tokenizer& hf_tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<io::Tokenizer>> loaded;
  auto& t = loaded[name];
  if (!t) t = io::load_hf_tokenizer(kSrc + "/tests/data/tokenizers/" + name + "/tokenizer.json");
  return *t;
}

}  // namespace

TEST(Text, TokenStreamMatchesWholeDecodeWithRealTokenizers) {
  // Byte-level BPE (Qwen3: tokens that split UTF-8 characters) and SentencePiece-style BPE
  // (Llama 2: a decoder that drops the leading space of the text).
  const auto texts = tokenizer_texts();
  ASSERT_GT(texts.size(), 5u);
  for (const char* name : {"qwen3", "llama2"}) {
    const io::Tokenizer* tok = &hf_tokenizer(name);
    for (const auto& text : texts) {
      const std::vector<int32_t> ids = tok->encode(text);
      TokenTextStream ts(*tok);
      std::string joined;
      for (int32_t id : ids) {
        const std::string out = ts.push(id);
        EXPECT_EQ(utf8_complete_len(out), out.size()) << name;
        joined += out;
      }
      joined += ts.flush();
      EXPECT_EQ(joined, tok->decode(ids)) << name << ": " << text;
    }
  }
}

TEST(Text, ChunkedTokenizationIsExactForByteLevelBpe) {
  // Cutting at safe_split_point gives the tokens of the whole text with a GPT-2-style
  // pre-tokenizer (Qwen3), on text with spaces, runs of spaces, tabs and blank lines. Not
  // covered: a whitespace run longer than a whole read (97 bytes here, 64 KiB in the CLI).
  const io::Tokenizer* tok = &hf_tokenizer("qwen3");
  std::string text;
  for (const auto& t : tokenizer_texts())
    if (t.find(' ') != std::string::npos && t.find(std::string(64, ' ')) == std::string::npos)
      text += t + "\n\n";
  ASSERT_GT(text.size(), 2000u);
  std::vector<int32_t> chunked;
  auto r = TextChunkReader::from_string(text, 97);
  for (std::string piece; r.next(piece);) {
    const auto ids = tok->encode(piece);
    chunked.insert(chunked.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(chunked, tok->encode(text));
}
