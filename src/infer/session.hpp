// Streaming inference with constant memory: one sequence fed incrementally through the model.
//
// A Session holds what SPEC §3-4 say a sequence needs to continue: the compressive memory
// (M, z per layer and key/value head) and the keys/values of the current segment only. Tokens
// are fed in chunks split at segment boundaries; when a segment fills it is folded into memory
// and the local cache is emptied, exactly as the training-time segmentation does. Nothing
// grows with the number of tokens fed: working memory is sized for the worst chunk up front.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "infer/state_file.hpp"
#include "model/forward.hpp"

namespace infini::infer {

struct SessionOptions {
  // Most tokens per forward call when feeding a long prompt. Bigger chunks make better GEMMs;
  // the attention scores of a chunk take heads * chunk * segment_length floats per layer.
  int64_t prefill_chunk = 256;
  // Cap on heads * chunk * segment_length (floats per layer), so that long segments (the
  // full-attention baseline) get shorter chunks instead of huge score matrices.
  int64_t score_budget = int64_t(1) << 22;
  // Run one worst-case chunk at construction so that every buffer reaches its final size
  // before the first real token: peak memory then does not depend on the prompt length.
  bool reserve_working_memory = true;
  // OpenMP threads for calls of at most kDecodeRows tokens (decode steps). 0: automatic, which
  // is 1 thread for models under kSmallModelWeights weights: there a token is too little work
  // to share, and each parallel region's barrier costs more than it saves (on a loaded 2-core
  // machine, 2 threads decoded ~18x slower than 1; see docs/inference.md). Larger models keep
  // OpenMP's default. Prefill chunks always use OpenMP's default.
  int decode_threads = 0;
  static constexpr int64_t kDecodeRows = 8;
  static constexpr int64_t kSmallModelWeights = int64_t(32) << 20;
  // The session packs the model's weights once for the native GEMM (a copy of them in the
  // layout its kernel reads) when the copy takes at most this many bytes, so that neither a
  // prefill chunk nor a decode step repacks every weight. 0 turns it off.
  int64_t max_packed_weight_bytes = model::kDefaultMaxPackedWeightBytes;
  // Of the products (model/precision.hpp); the packed copy is in this precision.
  model::Precision precision = model::Precision::FP32;
};

class Session {
 public:
  // The model must outlive the session, and its weights must not change while the session
  // exists (the session packs them, and hashes them for saved states, once).
  explicit Session(const model::Model<float>& m, const SessionOptions& opts = {});

  // Runs tokens through the model (prefill, or one decode step when n == 1). Afterwards
  // logits() gives the next-token logits after the last of them.
  void feed(std::span<const int32_t> tokens);
  void feed(int32_t token) { feed(std::span<const int32_t>(&token, 1)); }

  bool has_logits() const { return has_last_; }
  // Next-token logits [vocab_size] after the last token fed; computed on first use.
  std::span<const float> logits() const;

  int64_t position() const { return position_; }            // tokens fed since the start
  int64_t segment_position() const { return cache_.pos; }   // tokens in the current segment
  int64_t chunk_tokens() const { return chunk_; }           // prefill chunk actually used
  const model::ModelConfig& config() const { return m_.config; }
  const model::Model<float>& model() const { return m_; }

  // Back to an empty sequence (zero memory, empty cache).
  void reset();

  // Snapshots of everything needed to continue exactly (see docs/state_format.md).
  StateSnapshot snapshot() const;
  // Writes the state without copying it first (transient memory: one serialized file).
  void save_state(const std::string& path) const;
  // Validates the snapshot against this model (config fingerprint, weights hash, sizes) and
  // adopts it. `source` names the file in error messages.
  void restore(const StateSnapshot& s, const std::string& source = "state");
  void load_state(const std::string& path);

  // The snapshot's fields without its arrays (those are views, see save_state).
  StateSnapshot header() const;
  // Hash of the model's weights, computed once on first use.
  uint64_t weights_hash() const;

 private:
  const model::Model<float>& m_;
  model::ForwardContext<float> ctx_;
  model::MemoryState<float> state_;
  model::KVCache<float> cache_;
  model::SegmentActs<float> acts_;
  model::PackedWeights packed_;  // empty when not packed (see max_packed_weight_bytes)
  int64_t chunk_ = 1;
  int decode_threads_ = 0;  // 0: OpenMP's default
  int64_t position_ = 0;
  bool has_last_ = false;
  std::vector<float> last_f_;  // final-normed hidden state of the last token fed, [D]
  mutable std::vector<float> logits_;
  mutable bool logits_valid_ = false;
  mutable uint64_t weights_hash_ = 0;
  mutable bool weights_hash_valid_ = false;
};

}  // namespace infini::infer
