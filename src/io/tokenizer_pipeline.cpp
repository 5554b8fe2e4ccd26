#include "io/tokenizer_pipeline.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "core/error.hpp"
#include "io/tokenizer_regex.hpp"
#include "io/tokenizer_unicode.hpp"

namespace infini::io::tok {

// ---------------------------------------------------------------- JSON helpers

void json_fail(const std::string& where, const std::string& message) {
  throw Error(where + ": " + message);
}

const json& json_field(const json& obj, const char* key, const std::string& where) {
  if (!obj.is_object()) json_fail(where, "expected a JSON object");
  auto it = obj.find(key);
  if (it == obj.end()) json_fail(where + "." + key, "missing");
  return *it;
}

std::string json_string(const json& obj, const char* key, const std::string& where) {
  const json& v = json_field(obj, key, where);
  if (!v.is_string()) json_fail(where + "." + key, "expected a string");
  return v.get<std::string>();
}

std::string json_string_or(const json& obj, const char* key, const std::string& where,
                           const std::string& fallback) {
  if (!obj.is_object()) json_fail(where, "expected a JSON object");
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_string()) json_fail(where + "." + key, "expected a string");
  return it->get<std::string>();
}

bool json_bool_or(const json& obj, const char* key, const std::string& where, bool fallback) {
  if (!obj.is_object()) json_fail(where, "expected a JSON object");
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) json_fail(where + "." + key, "expected true or false");
  return it->get<bool>();
}

namespace {

size_t json_size_or(const json& obj, const char* key, const std::string& where, size_t fallback) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0))
    json_fail(where + "." + key, "expected a non-negative integer");
  return it->get<size_t>();
}

const json& json_array(const json& obj, const char* key, const std::string& where) {
  const json& v = json_field(obj, key, where);
  if (!v.is_array()) json_fail(where + "." + key, "expected an array");
  return v;
}

// A single character given as a JSON string (Metaspace replacement, Strip content).
char32_t json_char(const json& obj, const char* key, const std::string& where) {
  const std::string s = json_string(obj, key, where);
  size_t i = 0;
  if (s.empty() || (next_cp(s, i), i != s.size()))
    json_fail(where + "." + key, "expected a string of exactly one character");
  i = 0;
  return next_cp(s, i);
}

// {"String": "..."} or {"Regex": "..."} -> a compiled pattern. String patterns
// are escaped and compiled too, as the reference does.
Regex json_pattern(const json& obj, const char* key, const std::string& where) {
  const json& p = json_field(obj, key, where);
  const std::string w = where + "." + key;
  if (!p.is_object() || p.size() != 1)
    json_fail(w, "expected {\"String\": ...} or {\"Regex\": ...}");
  try {
    if (p.contains("String")) {
      if (!p["String"].is_string()) json_fail(w + ".String", "expected a string");
      return Regex::literal(p["String"].get<std::string>());
    }
    if (p.contains("Regex")) {
      if (!p["Regex"].is_string()) json_fail(w + ".Regex", "expected a string");
      return Regex(p["Regex"].get<std::string>());
    }
  } catch (const std::invalid_argument& e) {
    json_fail(w + ".Regex", std::string("invalid regular expression: ") + e.what());
  }
  json_fail(w, "expected {\"String\": ...} or {\"Regex\": ...}");
}

std::string type_of(const json& j, const std::string& where) {
  if (!j.is_object()) json_fail(where, "expected a JSON object");
  return json_string(j, "type", where);
}

// Bounds the recursion through nested "Sequence" stages, so that a hostile file
// cannot exhaust the stack.
class NestingGuard {
 public:
  explicit NestingGuard(const std::string& where) {
    if (++depth_ > kMaxDepth) {
      --depth_;
      json_fail(where, "stages nested more than " + std::to_string(kMaxDepth) + " deep");
    }
  }
  ~NestingGuard() { --depth_; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;

 private:
  static constexpr int kMaxDepth = 64;
  static thread_local int depth_;
};
thread_local int NestingGuard::depth_ = 0;

// Rust's str::replace semantics (an empty pattern matches between characters).
std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  if (from.empty()) {
    out.append(to);
    for (size_t i = 0; i < s.size();) {
      const size_t n = utf8_len(static_cast<unsigned char>(s[i]));
      out.append(s.substr(i, n));
      out.append(to);
      i += n;
    }
    return out;
  }
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(s.substr(pos));
  return out;
}

// Replaces every regex match in s with content (NormalizedString::replace and
// the Replace decoder). Returns whether a match deleted the first character.
bool regex_replace(const Regex& re, std::string& s, const std::string& content) {
  if (s.empty()) return false;
  std::vector<Span> spans;
  re.find_all(s, spans);
  if (spans.empty()) return false;
  const bool lead_deleted = spans.front().first == 0 && spans.front().second > 0 && content.empty();
  std::string out;
  out.reserve(s.size());
  size_t prev = 0;
  for (auto [b, e] : spans) {
    out.append(s, prev, b - prev);
    out += content;
    prev = e;
  }
  out.append(s, prev, std::string::npos);
  s = std::move(out);
  return lead_deleted;
}

// s = pre + s (written out because GCC 12 warns falsely on string::insert(0, ...)).
void prepend(std::string& s, std::string_view pre) {
  std::string out;
  out.reserve(pre.size() + s.size());
  out.append(pre);
  out.append(s);
  s = std::move(out);
}

// ------------------------------------------------------------ splitting engine

struct Seg {
  size_t b, e;
  bool match;
};

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior json_behavior(const json& obj, const std::string& where, Behavior fallback) {
  auto it = obj.find("behavior");
  if (it == obj.end() || it->is_null()) return fallback;
  if (it->is_string()) {
    const std::string b = it->get<std::string>();
    if (b == "Removed") return Behavior::kRemoved;
    if (b == "Isolated") return Behavior::kIsolated;
    if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
    if (b == "MergedWithNext") return Behavior::kMergedWithNext;
    if (b == "Contiguous") return Behavior::kContiguous;
  }
  json_fail(where + ".behavior",
            "expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous");
}

// Matches of a regex, with the gaps between them, covering [0, len).
std::vector<Seg> cover_regex(const Regex& re, std::string_view s) {
  if (s.empty()) return {Seg{0, 0, false}};
  std::vector<Span> spans;
  re.find_all(s, spans);
  std::vector<Seg> segs;
  segs.reserve(spans.size() * 2 + 1);
  size_t prev = 0;
  for (auto [b, e] : spans) {
    if (prev != b) segs.push_back(Seg{prev, b, false});
    segs.push_back(Seg{b, e, true});
    prev = e;
  }
  if (prev != s.size()) segs.push_back(Seg{prev, s.size(), false});
  return segs;
}

// Every character satisfying pred is a match of its own.
template <class Pred>
std::vector<Seg> cover_chars(std::string_view s, Pred pred) {
  if (s.empty()) return {Seg{0, 0, false}};
  std::vector<Seg> segs;
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t b = i;
    const char32_t c = next_cp(s, i);
    if (pred(c)) {
      if (last < b) segs.push_back(Seg{last, b, false});
      segs.push_back(Seg{b, i, true});
      last = i;
    }
  }
  if (last < s.size()) segs.push_back(Seg{last, s.size(), false});
  return segs;
}

// NormalizedString::split: applies the delimiter behaviour and appends the
// resulting non-empty pieces of `parent` to out.
void emit_split(const Piece& parent, std::vector<Seg> segs, Behavior behavior, bool invert,
                std::vector<Piece>& out) {
  if (invert)
    for (Seg& s : segs) s.match = !s.match;
  struct Keep {
    size_t b, e;
    bool remove;
  };
  std::vector<Keep> keep;
  keep.reserve(segs.size());
  switch (behavior) {
    case Behavior::kIsolated:
      for (const Seg& s : segs) keep.push_back({s.b, s.e, false});
      break;
    case Behavior::kRemoved:
      for (const Seg& s : segs) keep.push_back({s.b, s.e, s.match});
      break;
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (const Seg& s : segs) {
        if (s.match == prev_match && !keep.empty())
          keep.back().e = s.e;
        else
          keep.push_back({s.b, s.e, false});
        prev_match = s.match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const Seg& s : segs) {
        if (s.match && !prev_match && !keep.empty())
          keep.back().e = s.e;
        else
          keep.push_back({s.b, s.e, false});
        prev_match = s.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !prev_match && !keep.empty())
          keep.back().b = it->b;
        else
          keep.push_back({it->b, it->e, false});
        prev_match = it->match;
      }
      std::reverse(keep.begin(), keep.end());
      break;
    }
  }
  for (const Keep& k : keep) {
    if (k.remove || k.e == k.b) continue;
    out.push_back(Piece{parent.text.substr(k.b, k.e - k.b), -1, parent.at_origin && k.b == 0});
  }
}

// Runs fn(piece, out) on each piece still to tokenize; others pass through.
template <class Fn>
void split_each(std::vector<Piece>& pieces, Fn fn) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (Piece& p : pieces) {
    if (p.id >= 0)
      out.push_back(std::move(p));
    else
      fn(p, out);
  }
  pieces = std::move(out);
}

// ----------------------------------------------------------------- normalizers

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void normalize(std::string& s, bool& lead_kept) const override {
    for (const auto& p : parts_) p->normalize(s, lead_kept);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormForm f) : form_(f) {}
  void normalize(std::string& s, bool&) const override { s = unicode_normalize(s, form_); }

 private:
  NormForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s, bool&) const override { s = lowercase(s); }
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string p) : prepend_(std::move(p)) {}
  void normalize(std::string& s, bool&) const override {
    if (!s.empty()) prepend(s, prepend_);
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Regex re, std::string content)
      : re_(std::move(re)), content_(std::move(content)) {}
  void normalize(std::string& s, bool& lead_kept) const override {
    if (regex_replace(re_, s, content_)) lead_kept = false;
  }

 private:
  Regex re_;
  std::string content_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& s, bool& lead_kept) const override {
    size_t b = 0, e = s.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!is_whitespace(next_cp(s, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t start = e - 1;
        while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!is_whitespace(next_cp(s, i))) break;
        e = start;
      }
    }
    if (b > 0) lead_kept = false;
    s = s.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

class StripAccentsNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s, bool& lead_kept) const override {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      const size_t b = i;
      const char32_t c = next_cp(s, i);
      if (is_combining_mark(c)) {
        if (b == 0) lead_kept = false;
        continue;
      }
      out.append(s, b, i - b);
    }
    s = std::move(out);
  }
};

class ByteLevelNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s, bool&) const override {
    std::string out;
    out.reserve(s.size() * 2);
    for (unsigned char c : s) out += byte_to_char(c);
    s = std::move(out);
  }
};

// -------------------------------------------------------------- pre-tokenizers

constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) re_ = std::make_unique<Regex>(kGpt2Pattern);
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](Piece& p, std::vector<Piece>& out) {
      if (add_prefix_space_ && p.text[0] != ' ') prepend(p.text, " ");
      const size_t first = out.size();
      if (use_regex_)
        emit_split(p, cover_regex(*re_, p.text), Behavior::kIsolated, false, out);
      else
        out.push_back(std::move(p));
      // Map every byte to its printable stand-in character.
      for (size_t k = first; k < out.size(); ++k) {
        std::string mapped;
        mapped.reserve(out[k].text.size() * 2);
        for (unsigned char c : out[k].text) mapped += byte_to_char(c);
        out[k].text = std::move(mapped);
      }
    });
  }

 private:
  bool add_prefix_space_, use_regex_;
  std::unique_ptr<Regex> re_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex re, Behavior b, bool invert)
      : re_(std::move(re)), behavior_(b), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](Piece& p, std::vector<Piece>& out) {
      emit_split(p, cover_regex(re_, p.text), behavior_, invert_, out);
    });
  }

 private:
  Regex re_;
  Behavior behavior_;
  bool invert_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

PrependScheme json_prepend_scheme(const json& j, const std::string& where) {
  auto it = j.find("prepend_scheme");
  if (it != j.end() && !it->is_null()) {
    const std::string s = it->is_string() ? it->get<std::string>() : "";
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    json_fail(where + ".prepend_scheme", "expected \"always\", \"first\" or \"never\"");
  }
  // Older files carry a boolean add_prefix_space instead.
  return json_bool_or(j, "add_prefix_space", where, true) ? PrependScheme::kAlways
                                                          : PrependScheme::kNever;
}

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(replacement), rep_(cp_to_utf8(replacement)), scheme_(scheme), split_(split) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](Piece& p, std::vector<Piece>& out) {
      p.text = replace_all(p.text, " ", rep_);
      const bool starts = p.text.compare(0, rep_.size(), rep_) == 0;
      if (!starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_origin)))
        prepend(p.text, rep_);
      if (split_) {
        const char32_t r = replacement_;
        emit_split(p, cover_chars(p.text, [r](char32_t c) { return c == r; }),
                   Behavior::kMergedWithNext, false, out);
      } else {
        out.push_back(std::move(p));
      }
    });
  }

 private:
  char32_t replacement_;
  std::string rep_;
  PrependScheme scheme_;
  bool split_;
};

// Splits on characters matching a predicate (WhitespaceSplit, Digits, ...).
template <class Pred>
class CharSplitPreTokenizer final : public PreTokenizer {
 public:
  CharSplitPreTokenizer(Pred pred, Behavior b) : pred_(pred), behavior_(b) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](Piece& p, std::vector<Piece>& out) {
      emit_split(p, cover_chars(p.text, pred_), behavior_, false, out);
    });
  }

 private:
  Pred pred_;
  Behavior behavior_;
};

template <class Pred>
std::unique_ptr<PreTokenizer> char_split(Pred pred, Behavior b) {
  return std::make_unique<CharSplitPreTokenizer<Pred>>(pred, b);
}

// Whitespace: keeps the matches of `\w+|[^\w\s]+` (Rust regex classes), drops the rest.
class WhitespacePreTokenizer final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](Piece& p, std::vector<Piece>& out) {
      const std::string& s = p.text;
      std::vector<Seg> segs;
      int run = -1;  // 0: word run, 1: other non-space run, -1: none
      size_t run_start = 0;
      for (size_t i = 0; i <= s.size();) {
        int kind = -1;
        size_t next = i;
        if (i < s.size()) {
          const char32_t c = next_cp(s, next);
          kind = is_regex_word(c) ? 0 : is_whitespace(c) ? -1 : 1;
        }
        if (kind != run) {
          if (run >= 0) segs.push_back(Seg{run_start, i, true});
          run = kind;
          run_start = i;
        }
        if (i == s.size()) break;
        i = next;
      }
      emit_split(p, std::move(segs), Behavior::kIsolated, false, out);
    });
  }
};

// --------------------------------------------------------------------- decoders

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& t) const override {
    for (const auto& p : parts_) p->decode_chain(t);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  ByteLevelDecoder() {
    std::fill(std::begin(inverse_), std::end(inverse_), int16_t{-1});
    for (int b = 0; b < 256; ++b) {
      const std::string& c = byte_to_char(static_cast<unsigned char>(b));
      size_t i = 0;
      inverse_[next_cp(c, i)] = static_cast<int16_t>(b);
    }
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    std::string tb;
    for (const std::string& t : tokens) {
      tb.clear();
      bool ok = true;
      for (size_t i = 0; i < t.size() && ok;) {
        const char32_t c = next_cp(t, i);
        const int v = c < kTable ? inverse_[c] : -1;
        if (v < 0)
          ok = false;
        else
          tb.push_back(static_cast<char>(v));
      }
      // A token with a character outside the table is kept as its UTF-8 bytes.
      bytes += ok ? tb : t;
    }
    tokens.assign(1, utf8_lossy(bytes));
  }

 private:
  static constexpr char32_t kTable = 324;  // the table's characters are all below U+0144
  int16_t inverse_[kTable];
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, PrependScheme scheme)
      : replacement_(replacement), scheme_(scheme) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string out;
      const std::string& t = tokens[k];
      for (size_t i = 0; i < t.size();) {
        const size_t b = i;
        const char32_t c = next_cp(t, i);
        if (c == replacement_) {
          // Every replacement character of the first token is dropped.
          if (!(k == 0 && scheme_ != PrependScheme::kNever)) out.push_back(' ');
        } else {
          out.append(t, b, i - b);
        }
      }
      tokens[k] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  PrependScheme scheme_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Regex re, std::string content)
      : re_(std::move(re)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) regex_replace(re_, t, content_);
  }

 private:
  Regex re_;
  std::string content_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;  // bytes of consecutive <0xNN> tokens
    auto flush = [&] {
      if (pending.empty()) return;
      if (is_valid_utf8(pending))
        out.push_back(pending);
      else
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      pending.clear();
    };
    for (std::string& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>')
        byte = parse_hex2(t[3], t[4]);
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  // Rust's u8::from_str_radix(_, 16) on two characters: accepts a leading '+'.
  static int parse_hex2(char a, char b) {
    if (a == '+') return hex(b);
    const int hi = hex(a), lo = hex(b);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<size_t> offs;  // byte offset of each character, plus the end
      std::vector<char32_t> cps;
      for (size_t i = 0; i < t.size();) {
        offs.push_back(i);
        cps.push_back(next_cp(t, i));
      }
      offs.push_back(t.size());
      const size_t n = cps.size();
      size_t start_cut = 0;
      for (size_t i = 0; i < std::min(start_, n) && cps[i] == content_; ++i) start_cut = i + 1;
      size_t stop_cut = n;
      for (size_t i = 0; i < std::min(stop_, n) && cps[n - i - 1] == content_; ++i)
        stop_cut = n - i - 1;
      t = start_cut >= stop_cut ? std::string()
                                : t.substr(offs[start_cut], offs[stop_cut] - offs[start_cut]);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class BpeSuffixDecoder final : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
  }

 private:
  std::string suffix_;
};

}  // namespace

// --------------------------------------------------------------------- builders

const std::string& byte_to_char(unsigned char b) {
  // GPT-2's table: printable Latin-1 bytes stand for themselves, the others are
  // shifted to U+0100 and up, in byte order.
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int shifted = 0;
    for (int c = 0; c < 256; ++c) {
      const bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
      t[static_cast<size_t>(c)] =
          cp_to_utf8(printable ? static_cast<char32_t>(c) : static_cast<char32_t>(256 + shifted++));
    }
    return t;
  }();
  return table[b];
}

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& where) {
  const NestingGuard guard(where);
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& arr = json_array(j, "normalizers", where);
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < arr.size(); ++i)
      parts.push_back(make_normalizer(arr[i], where + ".normalizers[" + std::to_string(i) + "]"));
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormForm::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormForm::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormForm::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormForm::kNFKD);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  if (type == "Prepend")
    return std::make_unique<PrependNormalizer>(json_string(j, "prepend", where));
  if (type == "Replace")
    return std::make_unique<ReplaceNormalizer>(json_pattern(j, "pattern", where),
                                               json_string(j, "content", where));
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(json_bool_or(j, "strip_left", where, true),
                                             json_bool_or(j, "strip_right", where, true));
  json_fail(where + ".type", "unsupported normalizer type '" + type + "'");
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& where) {
  const NestingGuard guard(where);
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& arr = json_array(j, "pretokenizers", where);
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < arr.size(); ++i)
      parts.push_back(
          make_pre_tokenizer(arr[i], where + ".pretokenizers[" + std::to_string(i) + "]"));
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(json_bool_or(j, "add_prefix_space", where, true),
                                                   json_bool_or(j, "use_regex", where, true));
  if (type == "Split")
    return std::make_unique<SplitPreTokenizer>(json_pattern(j, "pattern", where),
                                               json_behavior(j, where, Behavior::kRemoved),
                                               json_bool_or(j, "invert", where, false));
  if (type == "Metaspace")
    return std::make_unique<MetaspacePreTokenizer>(json_char(j, "replacement", where),
                                                   json_prepend_scheme(j, where),
                                                   json_bool_or(j, "split", where, true));
  if (type == "WhitespaceSplit") return char_split(is_whitespace, Behavior::kRemoved);
  if (type == "Whitespace") return std::make_unique<WhitespacePreTokenizer>();
  if (type == "Digits")
    return char_split(is_numeric, json_bool_or(j, "individual_digits", where, false)
                                      ? Behavior::kIsolated
                                      : Behavior::kContiguous);
  if (type == "Punctuation")
    return char_split(is_punctuation, json_behavior(j, where, Behavior::kIsolated));
  if (type == "CharDelimiterSplit") {
    const char32_t d = json_char(j, "delimiter", where);
    return char_split([d](char32_t c) { return c == d; }, Behavior::kRemoved);
  }
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    parts.push_back(char_split(is_whitespace, Behavior::kRemoved));
    parts.push_back(char_split(is_punctuation, Behavior::kIsolated));
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  json_fail(where + ".type", "unsupported pre_tokenizer type '" + type + "'");
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where) {
  const NestingGuard guard(where);
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& arr = json_array(j, "decoders", where);
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < arr.size(); ++i)
      parts.push_back(make_decoder(arr[i], where + ".decoders[" + std::to_string(i) + "]"));
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace")
    return std::make_unique<MetaspaceDecoder>(json_char(j, "replacement", where),
                                              json_prepend_scheme(j, where));
  if (type == "Replace")
    return std::make_unique<ReplaceDecoder>(json_pattern(j, "pattern", where),
                                            json_string(j, "content", where));
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip")
    return std::make_unique<StripDecoder>(json_char(j, "content", where),
                                          json_size_or(j, "start", where, 0),
                                          json_size_or(j, "stop", where, 0));
  if (type == "BPEDecoder")
    return std::make_unique<BpeSuffixDecoder>(json_string_or(j, "suffix", where, "</w>"));
  json_fail(where + ".type", "unsupported decoder type '" + type + "'");
}

}  // namespace infini::io::tok
