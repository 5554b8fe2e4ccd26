// Normalizers, pre-tokenizers and decoders of a Hugging Face tokenizer.json
// (internal). Each stage is built from its JSON object and mirrors the
// behaviour of the Rust `tokenizers` component of the same name.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace infini::io::tok {

using json = nlohmann::json;

// A stretch of the input on its way through the pipeline.
struct Piece {
  std::string text;
  int32_t id = -1;         // id of a matched added token, or -1 for text still to tokenize
  bool at_origin = false;  // begins at offset 0 of the original input (Metaspace "first")
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites s. lead_kept is cleared when the first original character is
  // deleted (the piece then no longer starts at its original offset).
  virtual void normalize(std::string& s, bool& lead_kept) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece with id < 0 into pieces; added-token pieces pass through.
  // Empty pieces are dropped.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Transforms the token strings in place (the `decode_chain` step).
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Builders: `where` names the JSON location for error messages, e.g.
// "tokenizer.json: pre_tokenizer". They throw infini::Error for malformed or
// unsupported configurations.
std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& where);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& where);
std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where);

// Checked JSON accessors shared with the loader.
const json& json_field(const json& obj, const char* key, const std::string& where);
std::string json_string(const json& obj, const char* key, const std::string& where);
std::string json_string_or(const json& obj, const char* key, const std::string& where,
                           const std::string& fallback);
bool json_bool_or(const json& obj, const char* key, const std::string& where, bool fallback);
[[noreturn]] void json_fail(const std::string& where, const std::string& message);

// The GPT-2 byte-to-character table used by the ByteLevel components.
const std::string& byte_to_char(unsigned char b);

}  // namespace infini::io::tok
