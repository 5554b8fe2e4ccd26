// UTF-8 and Unicode helpers for the Hugging Face tokenizer (internal).
//
// The Hugging Face `tokenizers` library is written in Rust, so its notion of
// "whitespace", "alphanumeric" and "lowercase" is Rust's `char` methods. These
// helpers reproduce those semantics on top of ICU's property data rather than
// hand-written Unicode tables.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace infini::io::tok {

// Replaces every invalid UTF-8 sequence with U+FFFD, one replacement per
// "maximal subpart" (the WHATWG / Unicode §3.9 rule used by Rust's
// String::from_utf8_lossy and Node's Buffer.toString). Valid input is returned
// unchanged.
std::string utf8_lossy(std::string_view bytes);
bool is_valid_utf8(std::string_view bytes);

// Decodes the code point starting at s[i] and advances i. The input must be
// valid UTF-8 (callers sanitise first).
inline char32_t next_cp(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    ++i;
    return c;
  }
  if (c < 0xE0) {
    char32_t cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
    i += 2;
    return cp;
  }
  if (c < 0xF0) {
    char32_t cp = ((c & 0x0Fu) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
                  (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
    i += 3;
    return cp;
  }
  char32_t cp = ((c & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
                ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
                (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
  i += 4;
  return cp;
}

// Byte length of the UTF-8 sequence introduced by lead byte c (1 for stray bytes).
inline size_t utf8_len(unsigned char c) {
  return c < 0x80 ? 1 : c < 0xE0 ? (c >= 0xC0 ? 2 : 1) : c < 0xF0 ? 3 : 4;
}

void append_utf8(std::string& out, char32_t cp);
std::string cp_to_utf8(char32_t cp);
size_t count_cps(std::string_view s);

// Rust `char::is_whitespace` (Unicode White_Space property).
bool is_whitespace(char32_t c);
// Rust `char::is_alphanumeric` (Alphabetic or general category N*).
bool is_alphanumeric(char32_t c);
// Rust `char::is_numeric` (general category Nd, Nl or No).
bool is_numeric(char32_t c);
// Rust regex `\w` (Alphabetic, M*, Nd, Pc, Join_Control).
bool is_regex_word(char32_t c);
// General category M* (what unicode-normalization calls a combining mark).
bool is_combining_mark(char32_t c);
// ASCII punctuation or general category P* (the Punctuation pre-tokenizer).
bool is_punctuation(char32_t c);

enum class NormForm { kNFC, kNFD, kNFKC, kNFKD };
// Unicode normalisation through ICU. Input must be valid UTF-8.
std::string unicode_normalize(std::string_view s, NormForm form);
// Full lowercase mapping applied one code point at a time, without context
// (Rust `char::to_lowercase`, which is what the Lowercase normalizer uses).
std::string lowercase(std::string_view s);

}  // namespace infini::io::tok
