// libFuzzer target: encoding and decoding arbitrary text with the two real tokenizers
// committed under tests/data/tokenizers (Llama 2 SentencePiece-style BPE, Qwen3 byte-level
// BPE). The first input byte picks the tokenizer, the rest is the text. Ids must stay below
// vocab_size; printable-ASCII text must decode back to itself with the byte-level tokenizer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.hpp"
#include "io/hf_tokenizer.hpp"

using namespace infini;

namespace {

std::unique_ptr<io::HfTokenizer> load(const char* name) {
  const std::string path =
      std::string(INFINI_SOURCE_DIR) + "/tests/data/tokenizers/" + name + "/tokenizer.json";
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return io::load_hf_tokenizer_from_string(ss.str(), path);
}

bool printable_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c > 0x7e) return false;
  return true;
}

std::unique_ptr<io::HfTokenizer> llama2, qwen3;

}  // namespace

// Loading the 11 MB Qwen3 file takes seconds under ASan: do it before the per-input timer.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  llama2 = load("llama2");
  qwen3 = load("qwen3");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool byte_level = data[0] & 1;
  const io::HfTokenizer& tok = byte_level ? *qwen3 : *llama2;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::vector<int32_t> ids = tok.encode(text);  // both have full byte coverage
  const int32_t V = tok.vocab_size();
  for (int32_t id : ids)
    if (id < 0 || id >= V) std::abort();
  const std::string back = tok.decode(ids);
  if (byte_level && printable_ascii(text) && back != text) std::abort();
  (void)tok.decode(ids, /*skip_special_tokens=*/true);
  return 0;
}
