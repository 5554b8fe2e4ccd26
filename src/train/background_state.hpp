// State passing (Buitrago & Gu, ICML 2025): training sequences that start from a non-empty
// memory, the final state of other text read before them without gradient. A short training
// window then sees the normaliser z and the matrix M of a long context: a model that must
// find a passkey behind 1M filler tokens learns, from sequences of a few thousand tokens,
// that the filler's weight in a memory read has to stay small against a million of them.
//
// BackgroundStateSource wraps any BatchSource. It keeps `chains` independent background
// streams, each a memory state that has read `age` tokens of a background text (for passkey:
// the filler, continuing where it stopped). Every step each chain reads `tokens_per_step`
// more tokens with the current weights (forward only), or restarts from the empty memory once
// it has read its cycle's length, drawn uniformly from [max_tokens/2, max_tokens]. The first
// round(share * batch) rows of each batch start from chain (row % chains); the others start
// from the empty memory, as SPEC §4 does. Gradients never flow into the passed state.
//
// The chains' states are part of state(), so --resume continues bit for bit.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/forward.hpp"
#include "train/data.hpp"

namespace infini::train {

struct BackgroundOptions {
  int64_t chains = 0;           // 0: off (batches pass through unchanged)
  int64_t tokens_per_step = 0;  // tokens each chain reads per step; a multiple of the segment
  int64_t max_tokens = 0;       // longest cycle before a chain restarts from the empty memory
  double share = 0.5;           // share of a batch's rows that start from a chain's state
  uint64_t seed = 0;
};

// Writes tokens [start, start + count) of the background text into out.
using TokenStream = std::function<void(int64_t start, int64_t count, int32_t* out)>;
// The model to read the background with: called every step, so it reflects current weights.
using ModelView = std::function<const model::Model<float>&()>;

class BackgroundStateSource final : public BatchSource {
 public:
  // Throws infini::Error naming the option at fault.
  BackgroundStateSource(BatchSource& inner, const model::ModelConfig& config, ModelView model,
                        TokenStream stream, BackgroundOptions opts);
  void next(int64_t batch, int64_t seq_len, Batch& out) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  std::string fingerprint() const override;

  // Tokens each chain has read since its last restart (after the latest next()).
  const std::vector<int64_t>& ages() const { return age_; }
  const model::MemoryState<float>& chain_states() const { return chains_; }

 private:
  void restart(int64_t c);
  void advance();

  BatchSource& inner_;
  model::ModelConfig config_;
  ModelView model_;
  TokenStream stream_;
  BackgroundOptions opts_;
  model::ForwardContext<float> ctx_;
  model::SegmentActs<float> acts_;
  model::MemoryState<float> chains_;  // batch = chains
  std::vector<int64_t> age_, cycle_;
  std::vector<int64_t> restarts_;     // restarts of each chain (seeds its next cycle length)
  std::vector<int32_t> tokens_;
  int64_t steps_ = 0;
};

}  // namespace infini::train
