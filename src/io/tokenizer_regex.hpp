// PCRE2-backed regular expressions with Oniguruma's match iteration (internal).
//
// Hugging Face `tokenizers` compiles Split / Replace / ByteLevel patterns with
// Oniguruma. PCRE2 (UTF + UCP) accepts the same syntax for the patterns found
// in real tokenizer.json files; the semantic gap we patch is `\s`, which is the
// White_Space property in Oniguruma (U+0085 in, U+180E out) but not in PCRE2.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace infini::io::tok {

using Span = std::pair<size_t, size_t>;  // [begin, end) byte offsets

class Regex {
 public:
  // Throws std::invalid_argument with PCRE2's message when the pattern is invalid.
  explicit Regex(const std::string& pattern);
  // Makes a regex matching `literal` exactly.
  static Regex literal(std::string_view literal);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // All matches in `text` (valid UTF-8), in order, as Oniguruma's find_iter
  // yields them: an empty match right where the previous match ended is
  // skipped by advancing one character.
  void find_all(std::string_view text, std::vector<Span>& out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Rewrites Oniguruma-only details of a pattern for PCRE2 (see header comment).
std::string onig_to_pcre2(std::string_view pattern);

}  // namespace infini::io::tok
