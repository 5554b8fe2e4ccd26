#include "train/evaluate.hpp"

#include <algorithm>
#include <cmath>

#include "ops/cross_entropy.hpp"

namespace infini::train {

DocumentLoss document_loss(const model::Model<float>& m, const model::ForwardContext<float>& ctx,
                           const int32_t* tokens, int64_t n, model::SegmentActs<float>& acts,
                           const model::PackedWeights* packed) {
  const int64_t N = m.config.segment_length, V = m.config.vocab_size;
  DocumentLoss r;
  model::MemoryState<float> state = model::MemoryState<float>::zeros(m.config, 1);
  std::vector<int32_t> targets;
  for (int64_t start = 0; start < n; start += N) {
    const int64_t len = std::min(N, n - start);
    // The last position of a segment predicts the first token of the next one (SPEC §2).
    targets.resize(size_t(len));
    for (int64_t i = 0; i < len; ++i)
      targets[size_t(i)] = start + i + 1 < n ? tokens[start + i + 1] : -1;
    model::forward_chunk(m, ctx, tokens + start, 1, len, state, acts,
                         (model::KVCache<float>*)nullptr, true, packed);
    const double l =
        ops::cross_entropy<float>(acts.logits.data(), targets.data(), len, V, nullptr, 0.0f);
    const int64_t cnt = std::min(len, n - 1 - start);
    r.segment_loss.push_back(l);
    r.segment_count.push_back(cnt);
    r.loss_sum += l;
    r.predicted += cnt;
  }
  return r;
}

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j = {{"val_loss", loss},
                      {"val_ppl", std::exp(loss)},
                      {"val_tokens", tokens},
                      {"val_documents", documents}};
  nlohmann::json b = nlohmann::json::array();
  for (const auto& s : by_segment)
    b.push_back({{"segments", std::to_string(s.first) + "-" + std::to_string(s.last)},
                 {"loss", s.loss},
                 {"predicted", s.predicted}});
  j["val_by_segment"] = b;
  return j;
}

EvalResult evaluate_documents(const model::Model<float>& m, const std::vector<Document>& docs,
                              int64_t max_tokens, model::Precision precision) {
  model::ForwardContext<float> ctx(m.config);
  ctx.precision = precision;
  model::SegmentActs<float> acts;
  model::PackedWeights packed;  // once for every document
  model::pack_weights(m, false, model::kDefaultMaxPackedWeightBytes, packed, precision);
  EvalResult r;
  std::vector<double> seg_loss;
  std::vector<int64_t> seg_count;
  double total = 0;
  int64_t left = max_tokens > 0 ? max_tokens : INT64_MAX;
  for (const auto& d : docs) {
    const int64_t n = std::min<int64_t>(int64_t(d.tokens.size()), left);
    if (n < 2) break;
    const DocumentLoss dl = document_loss(m, ctx, d.tokens.data(), n, acts, &packed);
    total += dl.loss_sum;
    r.predicted += dl.predicted;
    r.tokens += n;
    r.documents += 1;
    left -= n;
    if (seg_loss.size() < dl.segment_loss.size()) {
      seg_loss.resize(dl.segment_loss.size(), 0.0);
      seg_count.resize(dl.segment_loss.size(), 0);
    }
    for (size_t s = 0; s < dl.segment_loss.size(); ++s) {
      seg_loss[s] += dl.segment_loss[s];
      seg_count[s] += dl.segment_count[s];
    }
  }
  r.loss = r.predicted ? total / double(r.predicted) : 0.0;
  for (int64_t first = 0; first < int64_t(seg_loss.size()); first = first ? first * 2 : 1) {
    const int64_t last = std::min<int64_t>(first ? 2 * first - 1 : 0, int64_t(seg_loss.size()) - 1);
    SegmentBucket b{first, last, 0, 0};
    double sum = 0;
    for (int64_t s = first; s <= last; ++s) {
      sum += seg_loss[size_t(s)];
      b.predicted += seg_count[size_t(s)];
    }
    if (b.predicted) {
      b.loss = sum / double(b.predicted);
      r.by_segment.push_back(b);
    }
  }
  return r;
}

}  // namespace infini::train
