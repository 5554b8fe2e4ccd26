// Loading and running Hugging Face tokenizer.json files. The encode pipeline is
// the reference one: added tokens are cut out of the raw text first, the rest
// is normalized (and searched again for "normalized" added tokens), split by
// the pre-tokenizer, and each piece is run through the BPE model.
#include "io/hf_tokenizer.hpp"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "core/error.hpp"
#include "io/text.hpp"
#include "io/tokenizer_bpe.hpp"
#include "io/tokenizer_pipeline.hpp"
#include "io/tokenizer_unicode.hpp"

namespace infini::io {

using tok::json;
using tok::Piece;

namespace {

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

json parse_json(const std::string& text, const std::string& name) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(name + ": invalid JSON: " + one_line(e.what()));
  }
}

struct AddedToken {
  std::string content;
  // What decode() feeds the decoder: the normalized content for a normalized
  // token whose content the normalizer changes (so that e.g. a Metaspace or
  // byte-level decoder can undo it), else the content itself.
  std::string decode_form;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Finds added tokens in text with leftmost-longest semantics (as an
// Aho-Corasick automaton in that mode would) using a byte trie.
class AddedMatcher {
 public:
  void add(const std::string& pattern, size_t token_index) {
    if (pattern.empty()) return;  // an empty pattern can never be cut out
    int32_t node = 0;
    for (unsigned char c : pattern) {
      int32_t next = child(node, c);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_.emplace_back();
        if (node == 0)
          root_[c] = next;
        else
          nodes_[static_cast<size_t>(node)].edges.emplace_back(c, next);
      }
      node = next;
    }
    // The first pattern wins when two tokens share one matching string.
    if (nodes_[static_cast<size_t>(node)].token < 0)
      nodes_[static_cast<size_t>(node)].token = static_cast<int32_t>(token_index);
  }
  bool empty() const { return nodes_.size() == 1; }

  // Calls fn(begin, end, token_index) for each non-overlapping match, left to right.
  template <class Fn>
  void for_each_match(std::string_view text, Fn fn) const {
    if (empty()) return;
    size_t pos = 0;
    while (pos < text.size()) {
      const auto c0 = static_cast<unsigned char>(text[pos]);
      if (root_[c0] < 0) {
        ++pos;
        continue;
      }
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t k = pos; k < text.size(); ++k) {
        node = child(node, static_cast<unsigned char>(text[k]));
        if (node < 0) break;
        if (nodes_[static_cast<size_t>(node)].token >= 0) {
          best = nodes_[static_cast<size_t>(node)].token;
          best_end = k + 1;
        }
      }
      if (best >= 0) {
        fn(pos, best_end, static_cast<size_t>(best));
        pos = best_end;
      } else {
        ++pos;
      }
    }
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> edges;
    int32_t token = -1;
  };
  int32_t child(int32_t node, unsigned char c) const {
    if (node == 0) return root_[c];
    for (const auto& [ch, next] : nodes_[static_cast<size_t>(node)].edges)
      if (ch == c) return next;
    return -1;
  }
  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<int32_t, 256> root_ = [] {
    std::array<int32_t, 256> a{};
    a.fill(-1);
    return a;
  }();
};

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return tok::is_regex_word(tok::next_cp(s, b));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return tok::is_regex_word(tok::next_cp(s, i));
}

// Start of the whitespace run that ends s.
size_t trailing_space_start(std::string_view s) {
  size_t e = s.size();
  while (e > 0) {
    size_t b = e - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t i = b;
    if (!tok::is_whitespace(tok::next_cp(s, i))) break;
    e = b;
  }
  return e;
}

// Length of the whitespace run that starts s.
size_t leading_space_len(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!tok::is_whitespace(tok::next_cp(s, j))) break;
    i = j;
  }
  return i;
}

int32_t json_id(const json& v, const std::string& where) {
  if (!v.is_number_integer()) tok::json_fail(where, "expected a non-negative integer id");
  if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX)
                             : (v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX))
    tok::json_fail(where, "id out of range");
  return static_cast<int32_t>(v.get<int64_t>());
}

// bos_token / eos_token in tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> config_token(const json* config, const char* key) {
  if (!config || !config->is_object()) return std::nullopt;
  auto it = config->find(key);
  if (it == config->end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

struct HfTokenizer::Impl {
  std::string name;
  std::unique_ptr<tok::BpeModel> model;
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Decoder> decoder;

  std::vector<AddedToken> added;                    // in file order
  std::unordered_map<int32_t, size_t> added_by_id;  // id -> index into added
  std::unordered_map<std::string, int32_t, tok::StringHash, std::equal_to<>> added_by_content;
  std::unordered_set<std::string, tok::StringHash, std::equal_to<>> special_contents;
  AddedMatcher raw_matcher;         // tokens with normalized == false, matched on raw text
  AddedMatcher normalized_matcher;  // tokens with normalized == true, matched after normalizing
  int32_t vocab_size = 0, bos = -1, eos = -1;

  // Cuts the added tokens found by `matcher` out of piece p (AddedVocabulary's
  // find_matches: single_word, lstrip and rstrip included) and appends the
  // resulting non-empty pieces to out.
  void split_added(Piece& p, const AddedMatcher& matcher, std::vector<Piece>& out) const {
    if (p.text.empty()) return;
    if (matcher.empty()) {
      out.push_back(std::move(p));
      return;
    }
    const std::string_view s = p.text;
    size_t start_offset = 0;
    auto emit = [&](size_t b, size_t e, int32_t id) {
      if (e > b) out.push_back(Piece{std::string(s.substr(b, e - b)), id, p.at_origin && b == 0});
    };
    matcher.for_each_match(s, [&](size_t start, size_t stop, size_t index) {
      const AddedToken& t = added[index];
      if (t.single_word) {
        const bool start_space = start == 0 || !ends_with_word(s.substr(0, start));
        const bool stop_space = stop == s.size() || !starts_with_word(s.substr(stop));
        if (!start_space || !stop_space) return;
      }
      if (t.lstrip) start = std::max(trailing_space_start(s.substr(0, start)), start_offset);
      if (t.rstrip) stop += leading_space_len(s.substr(stop));
      if (start_offset < start) emit(start_offset, start, -1);
      emit(start, stop, t.id);
      start_offset = stop;
    });
    if (start_offset < s.size()) emit(start_offset, s.size(), -1);
  }

  std::string normalize_content(const std::string& content) const {
    std::string s = content;
    bool lead = true;
    if (normalizer) normalizer->normalize(s, lead);
    return s;
  }
};

HfTokenizer::HfTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfTokenizer::~HfTokenizer() = default;

std::unique_ptr<HfTokenizer> HfTokenizer::from_json(const json& j, const std::string& name,
                                                    const json* config) {
  auto impl = std::make_unique<Impl>();
  impl->name = name;
  if (!j.is_object()) tok::json_fail(name, "expected a JSON object at the top level");

  try {
    // ---- model
    const json& m = tok::json_field(j, "model", name);
    const std::string mw = name + ": model";
    if (!m.is_object()) tok::json_fail(mw, "expected a JSON object");
    std::string type = tok::json_string_or(m, "type", mw, "");
    if (type.empty() && m.contains("merges")) type = "BPE";
    if (type != "BPE")
      tok::json_fail(mw + ".type", "unsupported model type '" + (type.empty() ? "?" : type) +
                                       "' (only BPE models are supported)");

    const json& vj = tok::json_field(m, "vocab", mw);
    if (!vj.is_object()) tok::json_fail(mw + ".vocab", "expected an object of token -> id");
    tok::Vocab vocab;
    vocab.reserve(vj.size());
    int64_t max_id = -1;
    for (auto it = vj.begin(); it != vj.end(); ++it) {
      const int32_t id = json_id(it.value(), mw + ".vocab[\"" + it.key() + "\"]");
      max_id = std::max<int64_t>(max_id, id);
      vocab.emplace(it.key(), id);
    }
    // The id -> token table is dense; refuse absurdly sparse ids instead of
    // allocating gigabytes for them.
    if (max_id > static_cast<int64_t>(vocab.size()) * 4 + (1 << 20))
      tok::json_fail(mw + ".vocab", "id " + std::to_string(max_id) + " is far beyond the " +
                                        std::to_string(vocab.size()) + " entries");

    std::vector<std::pair<std::string, std::string>> merges;
    if (m.contains("merges") && !m["merges"].is_null()) {
      const json& mj = m["merges"];
      if (!mj.is_array()) tok::json_fail(mw + ".merges", "expected an array");
      merges.reserve(mj.size());
      for (size_t i = 0; i < mj.size(); ++i) {
        const json& e = mj[i];
        const std::string ew = mw + ".merges[" + std::to_string(i) + "]";
        if (e.is_string()) {
          const std::string s = e.get<std::string>();
          const size_t sp = s.find(' ');
          if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            tok::json_fail(ew, "expected \"left right\" with exactly one space");
          merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
          merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
        } else {
          tok::json_fail(ew, "expected \"left right\" or [\"left\", \"right\"]");
        }
      }
    }

    tok::BpeOptions opt;
    const std::string unk = tok::json_string_or(m, "unk_token", mw, "");
    if (m.contains("unk_token") && m["unk_token"].is_string()) opt.unk_token = unk;
    opt.continuing_subword_prefix = tok::json_string_or(m, "continuing_subword_prefix", mw, "");
    opt.end_of_word_suffix = tok::json_string_or(m, "end_of_word_suffix", mw, "");
    opt.fuse_unk = tok::json_bool_or(m, "fuse_unk", mw, false);
    opt.byte_fallback = tok::json_bool_or(m, "byte_fallback", mw, false);
    opt.ignore_merges = tok::json_bool_or(m, "ignore_merges", mw, false);
    if (m.contains("dropout") && !m["dropout"].is_null() && !m["dropout"].is_number())
      tok::json_fail(mw + ".dropout", "expected a number or null");
    // dropout is ignored on purpose: encoding here is always deterministic.
    try {
      impl->model = std::make_unique<tok::BpeModel>(std::move(vocab), merges, std::move(opt));
    } catch (const std::invalid_argument& e) {
      tok::json_fail(mw + ".merges", e.what());
    }

    // ---- pipeline stages
    auto stage = [&](const char* key) -> const json* {
      auto it = j.find(key);
      return it == j.end() || it->is_null() ? nullptr : &*it;
    };
    if (const json* n = stage("normalizer"))
      impl->normalizer = tok::make_normalizer(*n, name + ": normalizer");
    if (const json* p = stage("pre_tokenizer"))
      impl->pre_tokenizer = tok::make_pre_tokenizer(*p, name + ": pre_tokenizer");
    if (const json* d = stage("decoder")) impl->decoder = tok::make_decoder(*d, name + ": decoder");

    // ---- added tokens. Ids follow the reference: a token already known (added
    // earlier or in the model vocabulary) keeps that id, a new one gets the
    // next id after the model vocabulary; the file's "id" is only a hint there.
    int32_t next_id = static_cast<int32_t>(impl->model->vocab().size());
    if (const json* a = stage("added_tokens")) {
      if (!a->is_array()) tok::json_fail(name + ": added_tokens", "expected an array");
      for (size_t i = 0; i < a->size(); ++i) {
        const json& t = (*a)[i];
        const std::string tw = name + ": added_tokens[" + std::to_string(i) + "]";
        AddedToken at;
        at.content = tok::json_string(t, "content", tw);
        json_id(tok::json_field(t, "id", tw), tw + ".id");
        at.single_word = tok::json_bool_or(t, "single_word", tw, false);
        at.lstrip = tok::json_bool_or(t, "lstrip", tw, false);
        at.rstrip = tok::json_bool_or(t, "rstrip", tw, false);
        at.special = tok::json_bool_or(t, "special", tw, false);
        at.normalized = tok::json_bool_or(t, "normalized", tw, !at.special);
        if (at.content.empty()) continue;
        if (auto it = impl->added_by_content.find(at.content); it != impl->added_by_content.end())
          at.id = it->second;
        else if (auto mid = impl->model->token_to_id(at.content))
          at.id = *mid;
        else
          at.id = next_id++;
        impl->added_by_content[at.content] = at.id;
        if (at.special) impl->special_contents.insert(at.content);
        if (auto it = impl->added_by_id.find(at.id); it != impl->added_by_id.end())
          impl->added[it->second] = at;  // a later entry updates the earlier one
        else {
          impl->added_by_id.emplace(at.id, impl->added.size());
          impl->added.push_back(at);
        }
      }
    }
    for (AddedToken& t : impl->added)
      t.decode_form = t.normalized ? impl->normalize_content(t.content) : t.content;
    // Matching sets: special tokens first, then the others, as the reference orders them.
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i = 0; i < impl->added.size(); ++i) {
        const AddedToken& t = impl->added[i];
        if (t.special != (pass == 0)) continue;
        if (t.normalized)
          impl->normalized_matcher.add(t.decode_form, i);
        else
          impl->raw_matcher.add(t.content, i);
      }
    }

    int32_t top = impl->model->max_id();
    for (const AddedToken& t : impl->added) top = std::max(top, t.id);
    impl->vocab_size = top + 1;
  } catch (const json::exception& e) {
    throw Error(name + ": malformed tokenizer: " + one_line(e.what()));
  }

  auto tokenizer = std::unique_ptr<HfTokenizer>(new HfTokenizer(std::move(impl)));
  tokenizer->impl_->bos = tokenizer->find_special(config, "bos_token", true);
  tokenizer->impl_->eos = tokenizer->find_special(config, "eos_token", false);
  return tokenizer;
}

int32_t HfTokenizer::find_special(const json* config, const char* key, bool bos) const {
  if (auto name = config_token(config, key)) {
    if (auto id = token_to_id(*name)) return *id;
  }
  // No tokenizer_config.json: the well-known names, most specific first.
  static const char* const kBos[] = {"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"};
  static const char* const kEos[] = {"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"};
  for (const char* n : bos ? std::vector<const char*>(std::begin(kBos), std::end(kBos))
                           : std::vector<const char*>(std::begin(kEos), std::end(kEos))) {
    auto it = impl_->added_by_content.find(std::string_view(n));
    if (it != impl_->added_by_content.end()) return it->second;
  }
  return -1;
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text) const {
  const Impl& im = *impl_;
  std::vector<int32_t> ids;
  if (text.empty()) return ids;

  // 1. Added tokens that match the raw text.
  std::vector<Piece> raw;
  Piece whole{tok::utf8_lossy(text), -1, true};
  im.split_added(whole, im.raw_matcher, raw);

  // 2. Normalize what is left, then cut out the normalized added tokens.
  std::vector<Piece> pieces;
  pieces.reserve(raw.size());
  for (Piece& p : raw) {
    if (p.id >= 0) {
      pieces.push_back(std::move(p));
      continue;
    }
    if (im.normalizer) {
      bool lead_kept = true;
      im.normalizer->normalize(p.text, lead_kept);
      p.at_origin = p.at_origin && lead_kept;
    }
    im.split_added(p, im.normalized_matcher, pieces);
  }

  // 3. Pre-tokenize, 4. run the model on every piece.
  if (im.pre_tokenizer) im.pre_tokenizer->pre_tokenize(pieces);
  ids.reserve(text.size() / 3 + 8);
  try {
    for (const Piece& p : pieces) {
      if (p.id >= 0)
        ids.push_back(p.id);
      else
        im.model->tokenize(p.text, ids);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::runtime_error& e) {  // unk_token missing from the vocabulary
    throw Error(im.name + ": " + e.what());
  }
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids) const {
  return decode(ids, false);
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* t = nullptr;
    if (auto it = im.added_by_id.find(id); it != im.added_by_id.end())
      t = &im.added[it->second].decode_form;
    else
      t = im.model->id_to_token(id);
    if (!t) continue;  // unknown ids are dropped, as the reference does
    // Like the reference, "special" is judged on the string handed to the decoder.
    if (skip_special_tokens && im.special_contents.count(*t)) continue;
    tokens.push_back(*t);
  }
  std::string out;
  if (im.decoder) {
    im.decoder->decode_chain(tokens);
    for (const std::string& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out += tokens[i];
    }
  }
  return out;
}

int32_t HfTokenizer::vocab_size() const { return impl_->vocab_size; }
int32_t HfTokenizer::bos_id() const { return impl_->bos; }
int32_t HfTokenizer::eos_id() const { return impl_->eos; }

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->added_by_content.find(token);
  if (it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

const std::string* HfTokenizer::id_to_token(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  if (it != impl_->added_by_id.end()) return &impl_->added[it->second].content;
  return impl_->model->id_to_token(id);
}

std::unique_ptr<HfTokenizer> load_hf_tokenizer_from_string(const std::string& json_text,
                                                           const std::string& name) {
  return HfTokenizer::from_json(parse_json(json_text, name), name);
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  const json j = parse_json(read_file(path), path);
  // tokenizer_config.json beside the file names the BOS / EOS tokens.
  json config;
  const auto config_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::is_regular_file(config_path, ec)) {
    try {
      config = json::parse(read_file(config_path.string()));
    } catch (const json::exception&) {
      config = nullptr;  // only a hint: a broken config does not stop loading
    }
  }
  return HfTokenizer::from_json(j, path, config.is_object() ? &config : nullptr);
}

std::unique_ptr<Tokenizer> load_tokenizer_for_model(const std::string& model_dir) {
  const auto path = std::filesystem::path(model_dir) / "tokenizer.json";
  std::error_code ec;
  // Anything at that name (a directory, a dangling link, a link loop) is meant as the
  // tokenizer: loading it reports why it cannot be read, instead of silently using bytes.
  if (std::filesystem::exists(std::filesystem::symlink_status(path, ec)))
    return load_hf_tokenizer(path.string());
  return std::make_unique<ByteTokenizer>();
}

std::vector<int32_t> encode_file_in_blocks(const Tokenizer& tokenizer, const std::string& path,
                                           size_t block_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  block_bytes = std::max<size_t>(block_bytes, 4096);
  std::vector<int32_t> ids;
  std::string carry, buf(block_bytes, '\0');
  auto is_alnum = [](char c) {
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
  };
  while (true) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<size_t>(in.gcount());
    if (in.bad()) throw Error(path + ": read error");
    carry.append(buf, 0, got);
    const bool at_end = got < buf.size();
    size_t cut = std::string::npos;
    if (!at_end) {
      // The last "\n" followed by an ASCII letter or digit: a pre-token edge.
      for (size_t i = carry.size() - 1; i > 0; --i) {
        if (carry[i - 1] == '\n' && is_alnum(carry[i])) {
          cut = i;
          break;
        }
      }
    }
    if (at_end || cut != std::string::npos) {
      const size_t n = at_end ? carry.size() : cut;
      const auto part = tokenizer.encode(std::string_view(carry).substr(0, n));
      ids.insert(ids.end(), part.begin(), part.end());
      carry.erase(0, n);
    }
    if (at_end) break;
  }
  return ids;
}

}  // namespace infini::io
