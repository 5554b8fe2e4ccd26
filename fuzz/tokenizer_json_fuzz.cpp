// libFuzzer target: building a tokenizer from tokenizer.json text
// (io::load_hf_tokenizer_from_string), then encoding and decoding a fixed sample with it.
// Any input must either build a tokenizer whose ids stay below vocab_size, or throw
// infini::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.hpp"
#include "io/hf_tokenizer.hpp"

using namespace infini;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<io::HfTokenizer> tok;
  try {
    tok = io::load_hf_tokenizer_from_string(text, "fuzz/tokenizer.json");
  } catch (const Error&) {
    return 0;
  }
  static const std::string kSample =
      "Hello, world! It's 2024:\n\tcaf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80  "
      "<|endoftext|> <s> x\xff\xfe y";
  std::vector<int32_t> ids;
  try {
    ids = tok->encode(kSample);
  } catch (const Error&) {
    return 0;  // e.g. a character that needs an unk token the vocabulary lacks
  }
  const int32_t V = tok->vocab_size();
  for (int32_t id : ids)
    if (id < 0 || id >= V) std::abort();
  (void)tok->decode(ids);
  (void)tok->decode(ids, /*skip_special_tokens=*/true);
  (void)tok->decode({0, V - 1, V, -1});  // out-of-range ids must be handled, not read
  return 0;
}
