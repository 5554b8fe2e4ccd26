// Tokenizers: the SPEC byte tokenizer and Hugging Face tokenizer.json.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace infini::io {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes text with no special tokens added.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when the tokenizer has none
  virtual int32_t eos_id() const = 0;  // -1 when the tokenizer has none
};

// ids 0-255 are bytes, 256 is <bos>, 257 is <eos> (SPEC §5).
class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int32_t vocab_size() const override { return 258; }
  int32_t bos_id() const override { return 256; }
  int32_t eos_id() const override { return 257; }
};

// Loads a Hugging Face tokenizer.json (byte-level BPE or SentencePiece-style BPE).
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);

// The model directory's tokenizer.json when present, else the byte tokenizer.
std::unique_ptr<Tokenizer> load_tokenizer_for_model(const std::string& model_dir);

}  // namespace infini::io
