// Validation: whole documents streamed through the model segment by segment with the memory
// carried (forward only), so the loss measures what long context buys.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/forward.hpp"
#include "train/data.hpp"

namespace infini::train {

// Loss of one document as one sequence (SPEC §2), with per-segment sums. Equals
// model::sequence_loss on the whole document (tested), in O(one segment) memory.
struct DocumentLoss {
  double loss_sum = 0;
  int64_t predicted = 0;
  std::vector<double> segment_loss;    // summed loss of the predictions made in segment s
  std::vector<int64_t> segment_count;  // predictions made in segment s
};
// packed: m's weights packed for the native GEMM (model::pack_weights), or null.
DocumentLoss document_loss(const model::Model<float>& m, const model::ForwardContext<float>& ctx,
                           const int32_t* tokens, int64_t n, model::SegmentActs<float>& acts,
                           const model::PackedWeights* packed = nullptr);

struct SegmentBucket {
  int64_t first = 0, last = 0;  // segment indices (0-based, inclusive)
  double loss = 0;
  int64_t predicted = 0;
};

struct EvalResult {
  double loss = 0;  // mean over every predicted position of every document
  int64_t predicted = 0, tokens = 0, documents = 0;
  // Loss by segment index in buckets [0], [1], [2,3], [4,7], ...: segment 0 has no memory yet,
  // later buckets show what the memory of earlier segments adds.
  std::vector<SegmentBucket> by_segment;
  nlohmann::json to_json() const;  // {"val_loss", "val_ppl", "val_tokens", "val_by_segment"}
};

// Evaluates the documents in order, each from a zero memory, taking a prefix of each so that
// at most `max_tokens` tokens are read in all (<= 0: everything).
EvalResult evaluate_documents(const model::Model<float>& m, const std::vector<Document>& docs,
                              int64_t max_tokens,
                              model::Precision precision = model::Precision::FP32);

}  // namespace infini::train
