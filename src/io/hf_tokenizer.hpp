// Hugging Face tokenizer.json support: BPE models (byte-level as in GPT-2,
// Llama 3 and Qwen, or SentencePiece-style as in Llama 2 and Mistral) with the
// normalizers, pre-tokenizers, decoders and added tokens those files use.
// Results match the Rust `tokenizers` library; see docs/tokenizers.md.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/tokenizer.hpp"

namespace infini::io {

class HfTokenizer final : public Tokenizer {
 public:
  // Builds a tokenizer from a parsed tokenizer.json. `name` (usually the file
  // path) prefixes error messages. `config` is the optional tokenizer_config.json,
  // consulted only for bos_token / eos_token. Throws infini::Error.
  static std::unique_ptr<HfTokenizer> from_json(const nlohmann::json& tokenizer_json,
                                                const std::string& name,
                                                const nlohmann::json* config = nullptr);
  ~HfTokenizer() override;

  // Invalid UTF-8 in `text` is first replaced with U+FFFD (see utf8_lossy).
  std::vector<int32_t> encode(std::string_view text) const override;
  // decode(ids, /*skip_special_tokens=*/false), as Hugging Face's default.
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
  // One more than the largest id (model vocabulary or added token).
  int32_t vocab_size() const override;
  int32_t bos_id() const override;
  int32_t eos_id() const override;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token string for id (added tokens first), or nullptr when unknown.
  const std::string* id_to_token(int32_t id) const;

 private:
  struct Impl;
  explicit HfTokenizer(std::unique_ptr<Impl> impl);
  int32_t find_special(const nlohmann::json* config, const char* key, bool bos) const;
  std::unique_ptr<Impl> impl_;
};

// Parses and builds a tokenizer from tokenizer.json text (for tests and tools).
std::unique_ptr<HfTokenizer> load_hf_tokenizer_from_string(const std::string& json_text,
                                                           const std::string& name);

// Encodes a (possibly huge) text file by reading it in blocks of about
// `block_bytes` and cutting only after a "\n" that is followed by an ASCII
// letter or digit. For byte-level tokenizers whose pre-tokenizer splits there
// (GPT-2, Llama 3, Qwen patterns) the result equals encoding the whole file at
// once; for other tokenizers it may differ slightly at block edges, see
// docs/tokenizers.md.
std::vector<int32_t> encode_file_in_blocks(const Tokenizer& tokenizer, const std::string& path,
                                           size_t block_bytes = size_t{4} << 20);

}  // namespace infini::io
