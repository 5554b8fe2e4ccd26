// Prompt feeding and the generation loop on top of a Session, shared by `infini generate`,
// its interactive mode and the tests.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "infer/sampler.hpp"
#include "infer/session.hpp"
#include "infer/text_stream.hpp"
#include "io/tokenizer.hpp"

namespace infini::infer {

struct FeedStats {
  int64_t tokens = 0;
  uint64_t bytes = 0;
  double seconds = 0;        // wall time: reading, tokenizing and the model
  double model_seconds = 0;  // Session::feed only
  double cpu_seconds = 0;    // CPU time of the process (all threads) over the same span
};

// Tokenizes the reader's pieces one at a time and feeds each to the session: memory stays
// O(piece) whatever the prompt's length. No special tokens are added.
FeedStats feed_text(Session& s, const io::Tokenizer& tok, TextChunkReader& reader);

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  std::vector<std::string> stop;  // stop strings; generation ends before them
  // Feed every sampled token (the last too, <eos> included) so the session ends holding the
  // whole sequence and can continue. Off, the last sampled token is not run through the model.
  bool keep_state = false;
  // Treat <eos> as an ordinary token (benchmarks that must generate exactly max_new_tokens).
  bool ignore_eos = false;
  // Called with every sampled id, <eos> included, before it is fed (the Python package
  // returns token ids rather than text).
  std::function<void(int32_t)> on_token;
};

struct GenerateResult {
  int64_t new_tokens = 0;      // tokens sampled, <eos> included
  std::string stop_reason;     // "eos", "stop" or "length"
  double seconds = 0;          // sampling, model and detokenizing
  double cpu_seconds = 0;      // CPU time of the process (all threads) over the same span
};

// Samples up to max_new_tokens tokens starting from the session's current logits and passes
// text to `emit` as soon as it is complete UTF-8 and cannot be part of a stop string.
GenerateResult generate(Session& s, const io::Tokenizer& tok, Sampler& sampler,
                        const GenerateOptions& o, const std::function<void(std::string_view)>& emit);

}  // namespace infini::infer
