// Tokenizers: byte tokenizer round trip, and Hugging Face tokenizer.json files
// checked id for id against goldens made by Hugging Face's own implementation
// (scripts/make_tokenizer_goldens.js, tokenizers 0.23.2).
#include "io/tokenizer.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "io/hf_tokenizer.hpp"

namespace {

using infini::io::HfTokenizer;
using nlohmann::json;
namespace fs = std::filesystem;

const std::string kSrc = INFINI_SOURCE_DIR;

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const json& cached_json(const std::string& rel) {
  static std::map<std::string, json> cache;
  auto it = cache.find(rel);
  if (it == cache.end()) it = cache.emplace(rel, json::parse(read(kSrc + "/" + rel))).first;
  return it->second;
}

std::string tokenizer_path(const std::string& name) {
  return "tests/data/tokenizers/" + name + "/tokenizer.json";
}

// A texts.json entry: a string, or {"hex": "..."} for raw (maybe invalid) bytes.
std::string text_of(const json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  std::string hex;
  for (char c : entry.at("hex").get<std::string>())
    if (!std::isspace(static_cast<unsigned char>(c))) hex.push_back(c);
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return bytes;
}

std::vector<int32_t> ids_of(const json& a) { return a.get<std::vector<int32_t>>(); }

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size() && i < 40; ++i) s += std::to_string(ids[i]) + " ";
  return s + (ids.size() > 40 ? "..." : "");
}

// Applies a golden variant (top-level patch, model patch, appended added tokens).
json apply_variant(json j, const json& v) {
  if (v.contains("patch"))
    for (auto it = v["patch"].begin(); it != v["patch"].end(); ++it) j[it.key()] = it.value();
  if (v.contains("model_patch"))
    for (auto it = v["model_patch"].begin(); it != v["model_patch"].end(); ++it)
      j["model"][it.key()] = it.value();
  if (v.contains("added_tokens_append")) {
    int64_t next = 0;
    for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it)
      next = std::max<int64_t>(next, it.value().get<int64_t>() + 1);
    for (const json& t : j["added_tokens"])
      next = std::max<int64_t>(next, t["id"].get<int64_t>() + 1);
    for (json t : v["added_tokens_append"]) {
      t["id"] = next++;
      j["added_tokens"].push_back(t);
    }
  }
  return j;
}

// Checks every case; returns the number of texts checked.
size_t check_cases(const HfTokenizer& tok, const json& cases, const json& texts,
                   const std::string& label) {
  size_t failures = 0;
  for (const json& c : cases) {
    const std::string text = texts.is_array() ? text_of(texts.at(c["text"].get<size_t>())) : "";
    const auto want = ids_of(c["ids"]);
    const auto got = tok.encode(text);
    if (got != want && ++failures <= 5)
      ADD_FAILURE() << label << " text #" << c["text"] << " encode\n  want " << show(want)
                    << "\n  got  " << show(got);
    const std::string dec = tok.decode(want);
    if (dec != c["decoded"].get<std::string>() && ++failures <= 5)
      ADD_FAILURE() << label << " text #" << c["text"] << " decode\n  want "
                    << json(c["decoded"]).dump() << "\n  got  " << json(dec).dump();
    if (c.contains("decoded_skip_special") &&
        tok.decode(want, true) != c["decoded_skip_special"].get<std::string>() && ++failures <= 5)
      ADD_FAILURE() << label << " text #" << c["text"] << " decode(skip_special_tokens)";
  }
  EXPECT_EQ(failures, 0u) << label;
  return cases.size();
}

void check_golden(const std::string& name) {
  const json& golden = cached_json("tests/golden/tokenizers/" + name + ".json");
  const json& texts = cached_json("tests/data/tokenizers/texts.json");
  const json& base = cached_json(tokenizer_path(name));
  const auto tok = HfTokenizer::from_json(base, tokenizer_path(name));
  ASSERT_GE(golden["cases"].size(), 40u);
  check_cases(*tok, golden["cases"], texts, name);

  size_t bad = 0;
  for (const json& d : golden["decode_cases"]) {
    const auto ids = ids_of(d["ids"]);
    if (tok->decode(ids) != d["decoded"].get<std::string>() && ++bad <= 5)
      ADD_FAILURE() << name << " decode of " << show(ids) << "\n  want " << d["decoded"].dump()
                    << "\n  got  " << json(tok->decode(ids)).dump();
    if (tok->decode(ids, true) != d["decoded_skip_special"].get<std::string>() && ++bad <= 5)
      ADD_FAILURE() << name << " decode(skip_special_tokens) of " << show(ids);
  }
  EXPECT_EQ(bad, 0u);
}

void check_variants(const std::string& name) {
  const json& golden = cached_json("tests/golden/tokenizers/" + name + ".json");
  const json& texts = cached_json("tests/data/tokenizers/texts.json");
  const json& base = cached_json(tokenizer_path(name));
  ASSERT_GT(golden["variants"].size(), 0u);
  for (const json& v : golden["variants"]) {
    const std::string label = name + "/" + v["name"].get<std::string>();
    const auto tok = HfTokenizer::from_json(apply_variant(base, v), label);
    check_cases(*tok, v["cases"], texts, label);
  }
}

TEST(ByteTokenizer, RoundTripsEveryByte) {
  infini::io::ByteTokenizer t;
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  const auto ids = t.encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(ids[static_cast<size_t>(i)], i);
  EXPECT_EQ(t.decode(ids), all);
  EXPECT_EQ(t.decode({t.bos_id(), 'h', 'i', t.eos_id()}), "hi");
  EXPECT_EQ(t.vocab_size(), 258);
}

TEST(HfTokenizer, Qwen3MatchesGoldens) { check_golden("qwen3"); }
TEST(HfTokenizer, Llama2MatchesGoldens) { check_golden("llama2"); }
TEST(HfTokenizer, Qwen3VariantsMatchGoldens) { check_variants("qwen3"); }
TEST(HfTokenizer, Llama2VariantsMatchGoldens) { check_variants("llama2"); }

// Differential run against a fuzz golden written by
// `INFINI_TOKENIZER_FUZZ=N node scripts/make_tokenizer_goldens.js` (development only).
TEST(HfTokenizer, FuzzGoldensFromEnvironment) {
  const char* dir = std::getenv("INFINI_TOKENIZER_FUZZ_DIR");
  if (!dir) GTEST_SKIP() << "set INFINI_TOKENIZER_FUZZ_DIR to run";
  for (const std::string name : {"qwen3", "llama2"}) {
    const std::string path = std::string(dir) + "/tokenizer_fuzz_golden_" + name + ".json";
    if (!fs::exists(path)) continue;
    const json fz = json::parse(read(path));
    const json& base = cached_json(tokenizer_path(name));
    const auto tok = HfTokenizer::from_json(base, name);
    check_cases(*tok, fz["cases"], fz["inline_texts"], name + " fuzz");
    for (const json& v : fz["variants"]) {
      const std::string label = name + "/" + v["name"].get<std::string>() + " fuzz";
      check_cases(*HfTokenizer::from_json(apply_variant(base, v), label), v["cases"],
                  fz["inline_texts"], label);
    }
  }
}

TEST(HfTokenizer, LoadsFromFileWithConfig) {
  const auto q = infini::io::load_hf_tokenizer(kSrc + "/" + tokenizer_path("qwen3"));
  EXPECT_EQ(q->vocab_size(), 151669);
  EXPECT_EQ(q->bos_id(), -1);
  EXPECT_EQ(q->eos_id(), 151645);  // <|im_end|> per tokenizer_config.json
  EXPECT_EQ(q->encode("Hello world"), (std::vector<int32_t>{9707, 1879}));
  const auto l = infini::io::load_hf_tokenizer(kSrc + "/" + tokenizer_path("llama2"));
  EXPECT_EQ(l->vocab_size(), 32000);
  EXPECT_EQ(l->bos_id(), 1);
  EXPECT_EQ(l->eos_id(), 2);
}

TEST(HfTokenizer, ModelDirectoryPicksTokenizerJson) {
  const fs::path dir = fs::temp_directory_path() / ("infini_tok_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  EXPECT_EQ(infini::io::load_tokenizer_for_model(dir.string())->vocab_size(), 258);
  fs::copy_file(kSrc + "/" + tokenizer_path("llama2"), dir / "tokenizer.json");
  EXPECT_EQ(infini::io::load_tokenizer_for_model(dir.string())->vocab_size(), 32000);
  fs::remove_all(dir);
}

TEST(HfTokenizer, InvalidUtf8BecomesReplacementCharacter) {
  for (const std::string name : {"qwen3", "llama2"}) {
    const auto tok = HfTokenizer::from_json(cached_json(tokenizer_path(name)), name);
    // Same ids as the text with U+FFFD written out (what a JS string would hold).
    EXPECT_EQ(tok->encode("a\xff"
                          "b\xe2\x82"),
              tok->encode("a\xEF\xBF\xBD"
                          "b\xEF\xBF\xBD"));
    std::mt19937 rng(42);
    for (int k = 0; k < 200; ++k) {
      std::string s(static_cast<size_t>(rng() % 64), '\0');
      for (char& c : s) c = static_cast<char>(rng());
      const auto ids = tok->encode(s);
      (void)tok->decode(ids);
      std::vector<int32_t> random_ids(static_cast<size_t>(rng() % 16));
      for (int32_t& id : random_ids) id = static_cast<int32_t>(rng() % 200000) - 100;
      (void)tok->decode(random_ids);
    }
  }
}

TEST(HfTokenizer, LongInputsStayFast) {
  const auto q = HfTokenizer::from_json(cached_json(tokenizer_path("qwen3")), "qwen3");
  const auto l = HfTokenizer::from_json(cached_json(tokenizer_path("llama2")), "llama2");
  std::string text;
  const json& texts = cached_json("tests/data/tokenizers/texts.json");
  while (text.size() < (2u << 20))
    for (const json& t : texts) text += text_of(t) + "\n";
  std::string word(1u << 20, 'a');  // one 1 MiB pre-token: the merge loop must not be quadratic
  for (size_t i = 0; i < word.size(); i += 7) word[i] = 'b';
  const auto start = std::chrono::steady_clock::now();
  for (const HfTokenizer* t : {q.get(), l.get()}) {
    EXPECT_EQ(t->decode(t->encode(word)), word);
    EXPECT_GT(t->encode(text).size(), text.size() / 8);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(secs, 60.0);
}

TEST(HfTokenizer, BlockEncodingMatchesWholeForByteLevel) {
  const auto q = HfTokenizer::from_json(cached_json(tokenizer_path("qwen3")), "qwen3");
  std::string text;
  const json& texts = cached_json("tests/data/tokenizers/texts.json");
  for (int rep = 0; rep < 20; ++rep)
    for (const json& t : texts) text += text_of(t) + "\nline " + std::to_string(rep) + "\n";
  const fs::path file =
      fs::temp_directory_path() / ("infini_tok_blocks_" + std::to_string(::getpid()));
  std::ofstream(file, std::ios::binary) << text;
  EXPECT_EQ(infini::io::encode_file_in_blocks(*q, file.string(), 4096), q->encode(text));
  fs::remove(file);
}

void expect_error(const std::string& text, const std::string& needle) {
  try {
    infini::io::load_hf_tokenizer_from_string(text, "bad.json");
    ADD_FAILURE() << "no error for " << text.substr(0, 200);
  } catch (const infini::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "want '" << needle << "' in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(HfTokenizer, MalformedFilesThrowError) {
  const std::string model =
      R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  expect_error("", "invalid JSON");
  expect_error("{", "invalid JSON");
  expect_error("[1, 2]", "top level");
  expect_error("{}", "model");
  expect_error(R"({"model": 3})", "model");
  expect_error(R"({"model": {"type": "WordPiece", "vocab": {}}})",
               "unsupported model type 'WordPiece'");
  expect_error(R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})",
               "unsupported model type 'Unigram'");
  expect_error(R"({"model": {"type": "BPE", "vocab": [], "merges": []}})", "model.vocab");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})", "vocab");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})", "vocab");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 4000000000}, "merges": []}})", "vocab");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})", "merges[0]");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", 1]]}})",
               "merges[0]");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a c"]}})",
               "model.merges");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": {}}})", "model.merges");
  expect_error("{" + model + R"(, "normalizer": {"type": "Precompiled"}})", "normalizer.type");
  expect_error("{" + model + R"(, "normalizer": {"type": "Sequence"}})", "normalizers");
  expect_error(
      "{" + model +
          R"(, "normalizer": {"type": "Replace", "pattern": {"Regex": "("}, "content": ""}})",
      "pattern.Regex");
  expect_error(
      "{" + model +
          R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[a-"}, "behavior": "Isolated"}})",
      "pre_tokenizer.pattern.Regex");
  expect_error(
      "{" + model +
          R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways"}})",
      "behavior");
  expect_error(
      "{" + model +
          R"(, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Nope"}]}})",
      "pre_tokenizer.pretokenizers[0].type");
  expect_error("{" + model + R"(, "pre_tokenizer": {"type": "Metaspace", "replacement": "ab"}})",
               "replacement");
  expect_error(
      "{" + model +
          R"(, "pre_tokenizer": {"type": "Metaspace", "replacement": "_", "prepend_scheme": "sometimes"}})",
      "prepend_scheme");
  expect_error("{" + model + R"(, "decoder": {"type": "WordPiece"}})", "decoder.type");
  expect_error("{" + model + R"(, "decoder": {"type": "Strip", "content": " ", "start": -1}})",
               "decoder.start");
  expect_error("{" + model + R"(, "decoder": 7})", "decoder");
  expect_error("{" + model + R"(, "added_tokens": {}})", "added_tokens");
  expect_error("{" + model + R"(, "added_tokens": [{"id": 5}]})", "added_tokens[0].content");
  expect_error("{" + model + R"(, "added_tokens": [{"content": "x"}]})", "added_tokens[0].id");
  expect_error("{" + model + R"(, "added_tokens": [{"id": 3, "content": "x", "special": "yes"}]})",
               "added_tokens[0].special");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "fuse_unk": 1}})",
               "fuse_unk");

  std::string nested = R"({"type": "NFC"})";
  for (int i = 0; i < 100; ++i) nested = R"({"type": "Sequence", "normalizers": [)" + nested + "]}";
  expect_error("{" + model + R"(, "normalizer": )" + nested + "}", "nested");
  expect_error(std::string(100000, '[') + std::string(100000, ']'), "top level");

  // A minimal valid file loads; an unknown unk_token only fails when needed.
  const auto ok = infini::io::load_hf_tokenizer_from_string("{" + model + "}", "ok.json");
  EXPECT_EQ(ok->encode("abab"), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(ok->encode("abc"), (std::vector<int32_t>{2}));  // no unk_token: 'c' is dropped
  const auto unk = infini::io::load_hf_tokenizer_from_string(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}})",
      "unk.json");
  EXPECT_EQ(unk->encode("aa"), (std::vector<int32_t>{0, 0}));
  EXPECT_THROW(unk->encode("ab"), infini::Error);

  EXPECT_THROW(infini::io::load_hf_tokenizer("/nonexistent/tokenizer.json"), infini::Error);
}

// Replaces one random node of j (at any depth) with a random JSON value.
void mutate(json& j, std::mt19937& rng) {
  json* node = &j;
  while ((node->is_object() || node->is_array()) && !node->empty() && rng() % 3 != 0) {
    auto it = node->begin();
    std::advance(it, static_cast<long>(rng() % node->size()));
    node = &*it;
  }
  static const json kValues[] = {nullptr, -1, 0, 1, 4000000000LL, 1e300, "", "x", " ", "\u2581",
                                 "(", json::array(), json::object(), true, "Sequence", "BPE",
                                 json::array({"a", "b"}), json::object({{"Regex", "[("}})};
  *node = kValues[rng() % std::size(kValues)];
}

TEST(HfTokenizer, MutatedFilesThrowErrorOrWork) {
  const json base = json::parse(R"({
    "added_tokens": [{"id": 5, "content": "<s>", "special": true, "normalized": false},
                     {"id": 6, "content": "ab", "single_word": true, "lstrip": true, "rstrip": true}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Prepend", "prepend": "_"},
                   {"type": "Replace", "pattern": {"String": " "}, "content": "_"}]},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+|\\p{L}+"}, "behavior": "Isolated", "invert": false},
        {"type": "Metaspace", "replacement": "_", "prepend_scheme": "first", "split": true},
        {"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}]},
    "decoder": {"type": "Sequence", "decoders": [{"type": "ByteLevel"}, {"type": "ByteFallback"},
                {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 1},
                {"type": "Metaspace", "replacement": "_"}]},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<unk>": 3, "<0x41>": 4},
              "merges": ["a b"], "unk_token": "<unk>", "byte_fallback": true, "fuse_unk": true}
  })");
  ASSERT_NO_THROW(HfTokenizer::from_json(base, "base"));
  std::mt19937 rng(7);
  int loaded = 0;
  for (int k = 0; k < 3000; ++k) {
    json j = base;
    for (int m = 1 + static_cast<int>(rng() % 3); m > 0; --m) mutate(j, rng);
    try {
      const auto tok = HfTokenizer::from_json(j, "mutant");
      ++loaded;
      const auto ids = tok->encode("ab a<s>Ab \xff ba\n");
      (void)tok->decode(ids);
      (void)tok->decode({0, 1, 2, 3, 4, 5, 6, 7, -1});
    } catch (const infini::Error&) {
      // expected for most mutants
    }
  }
  EXPECT_GT(loaded, 0);
}

TEST(HfTokenizer, TruncatedRealFileThrowsError) {
  const std::string text = read(kSrc + "/" + tokenizer_path("llama2"));
  for (size_t cut : {size_t{10}, text.size() / 3, text.size() - 2}) {
    EXPECT_THROW(infini::io::load_hf_tokenizer_from_string(text.substr(0, cut), "cut.json"),
                 infini::Error);
  }
}

// --------------------------------------------------------------------- CLI

struct CliResult {
  int status;
  std::string out;
};

CliResult run(const std::string& args) {
  const std::string cmd = std::string(INFINI_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(TokenizeCli, EncodesAndDecodes) {
  const std::string q = kSrc + "/" + tokenizer_path("qwen3");
  const std::string l = kSrc + "/" + tokenizer_path("llama2");
  EXPECT_EQ(run("tokenize --tokenizer " + q + " --text 'Hello world'").out, "9707 1879\n");
  EXPECT_EQ(run("tokenize --tokenizer " + q + " --text 'Hello world' --json").out,
            "[9707, 1879]\n");
  EXPECT_EQ(run("tokenize --tokenizer " + l + " --text '<s>Hi'").out, "1 15359\n");
  EXPECT_EQ(run("detokenize --tokenizer " + q + " --ids '9707 1879'").out, "Hello world");
  EXPECT_EQ(run("detokenize --tokenizer " + q + " --ids '[9707, 1879]'").out, "Hello world");
  EXPECT_EQ(run("tokenize --text 'hi'").out, "104 105\n");  // byte tokenizer
  EXPECT_EQ(run("detokenize --ids '104 105 257'").out, "hi");

  const fs::path file =
      fs::temp_directory_path() / ("infini_tok_cli_" + std::to_string(::getpid()));
  std::ofstream(file, std::ios::binary) << "Hello world";
  EXPECT_EQ(run("tokenize --tokenizer " + q + " --text-file " + file.string()).out, "9707 1879\n");
  std::ofstream(file, std::ios::binary) << "9707\n1879\n";
  EXPECT_EQ(run("detokenize --tokenizer " + q + " --ids-file " + file.string()).out, "Hello world");

  std::ofstream(file, std::ios::binary) << "{\"model\": ";
  CliResult bad = run("tokenize --tokenizer " + file.string() + " --text x");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.out.find("invalid JSON"), std::string::npos) << bad.out;
  fs::remove(file);

  EXPECT_NE(run("detokenize --ids '1 x 2'").status, 0);
  EXPECT_NE(run("tokenize").status, 0);
  EXPECT_NE(run("tokenize --text a --text-file b").status, 0);
}

}  // namespace
