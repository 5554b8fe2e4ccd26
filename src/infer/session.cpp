#include "infer/session.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdio>

#include "core/error.hpp"
#include "ops/gemm.hpp"

namespace infini::infer {

namespace {

std::string hex(uint64_t x) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

// Sets the OpenMP thread count of this thread's next parallel regions (and OpenBLAS's, whose
// OpenMP build asks omp_get_max_threads) for one scope; 0 leaves it alone.
class ThreadScope {
 public:
  explicit ThreadScope(int n) : saved_(n > 0 ? omp_get_max_threads() : 0) {
    if (n > 0) omp_set_num_threads(n);
  }
  ~ThreadScope() {
    if (saved_ > 0) omp_set_num_threads(saved_);
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_;
};

}  // namespace

Session::Session(const model::Model<float>& m, const SessionOptions& opts)
    : m_(m),
      ctx_(m.config),
      state_(model::MemoryState<float>::zeros(m.config, 1)),
      cache_(model::KVCache<float>::make(m.config)) {
  const model::ModelConfig& c = m.config;
  const int64_t N = c.segment_length;
  const int64_t by_budget = opts.score_budget / std::max<int64_t>(1, c.num_heads * N);
  chunk_ = std::clamp<int64_t>(std::min(opts.prefill_chunk, by_budget), 1, N);
  decode_threads_ = opts.decode_threads > 0 ? opts.decode_threads
                  : m.layout.total < SessionOptions::kSmallModelWeights ? 1
                                                                                    : 0;
  last_f_.assign(size_t(c.hidden_size), 0.0f);
  logits_.assign(size_t(c.vocab_size), 0.0f);
  ctx_.precision = opts.precision;
  if (opts.max_packed_weight_bytes > 0)
    model::pack_weights(m, false, opts.max_packed_weight_bytes, packed_, opts.precision);
  if (opts.reserve_working_memory) {
    // The largest chunk shape: chunk_ queries against a full segment of keys, which also folds
    // the segment into memory. A scratch state absorbs the fold; the cache rows it wrote are
    // overwritten before they are ever read, since reads stop at cache_.pos.
    std::vector<int32_t> dummy(static_cast<size_t>(chunk_), 0);
    model::MemoryState<float> scratch = state_;
    cache_.pos = N - chunk_;
    model::forward_chunk(m_, ctx_, dummy.data(), 1, chunk_, scratch, acts_, &cache_, false,
                         &packed_);
    cache_.pos = 0;
  }
}

void Session::feed(std::span<const int32_t> tokens) {
  const model::ModelConfig& c = m_.config;
  const int64_t n = int64_t(tokens.size()), D = c.hidden_size, N = c.segment_length;
  if (n == 0) return;
  // Checked up front so that a bad id leaves the session as it was.
  for (int32_t t : tokens)
    if (t < 0 || t >= c.vocab_size)
      throw Error("token id " + std::to_string(t) + " is outside the model's vocabulary (size " +
                  std::to_string(c.vocab_size) + ")");
  for (int64_t i = 0; i < n;) {
    // Never cross a segment boundary within one call: the fold happens exactly at its end.
    const int64_t take = std::min({n - i, chunk_, N - cache_.pos});
    ThreadScope threads(take <= SessionOptions::kDecodeRows ? decode_threads_ : 0);
    model::forward_chunk(m_, ctx_, tokens.data() + i, 1, take, state_, acts_, &cache_, false,
                         &packed_);
    i += take;
  }
  const int64_t last = acts_.n - 1;
  std::copy_n(acts_.f.data() + last * D, D, last_f_.data());
  has_last_ = true;
  logits_valid_ = false;
  position_ += n;
}

std::span<const float> Session::logits() const {
  if (!has_last_) throw Error("no token has been fed yet, so there are no next-token logits");
  if (!logits_valid_) {
    // Only the last row: prefill never pays the [n, V] projection.
    model::head_logits(m_, ctx_, last_f_.data(), 1, logits_.data(), &packed_);
    logits_valid_ = true;
  }
  return logits_;
}

void Session::reset() {
  state_.set_zero();
  cache_.pos = 0;
  position_ = 0;
  has_last_ = false;
  logits_valid_ = false;
}

uint64_t Session::weights_hash() const {
  if (!weights_hash_valid_) {
    weights_hash_ = hash_bytes(m_.weights.data(), m_.weights.size() * sizeof(float));
    // A bf16-resident model's linear weights are its packed copies: they are hashed too, so
    // a state saved under the float32 weights is not resumed under their bf16 rounding.
    if (m_.bf16_weights) {
      for (const model::LinearWeight& w : model::linear_weights(m_.config, m_.layout)) {
        const ops::PackedBf16& p = *m_.bf16_weights->forward_bf16(w.offset);
        weights_hash_ = hash_bytes(p.data.get(), p.bytes(), weights_hash_);
      }
      const std::vector<uint16_t>& e = m_.bf16_weights->embedding;  // when held in bf16
      if (!e.empty())
        weights_hash_ = hash_bytes(e.data(), e.size() * sizeof(uint16_t), weights_hash_);
    }
    weights_hash_valid_ = true;
  }
  return weights_hash_;
}

StateSnapshot Session::header() const {
  const model::ModelConfig& c = m_.config;
  StateSnapshot s;
  s.config_fingerprint = config_fingerprint(c);
  s.weights_hash = weights_hash();
  s.num_layers = c.num_layers;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.hidden_size = c.hidden_size;
  s.segment_length = c.segment_length;
  s.use_memory = c.use_memory;
  s.position = position_;
  s.cache_pos = cache_.pos;
  return s;
}

StateSnapshot Session::snapshot() const {
  const model::ModelConfig& c = m_.config;
  StateSnapshot s = header();
  s.M = state_.M;
  s.z = state_.z;
  const size_t rows = size_t(cache_.pos * c.kv_width());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const size_t L = size_t(l);
    s.k.insert(s.k.end(), cache_.k[L].begin(), cache_.k[L].begin() + ptrdiff_t(rows));
    s.k_rot.insert(s.k_rot.end(), cache_.k_rot[L].begin(), cache_.k_rot[L].begin() + ptrdiff_t(rows));
    s.v.insert(s.v.end(), cache_.v[L].begin(), cache_.v[L].begin() + ptrdiff_t(rows));
  }
  if (has_last_) s.last_hidden = last_f_;
  return s;
}

void Session::save_state(const std::string& path) const {
  const StateSnapshot h = header();
  StateView v;
  v.header = &h;
  v.M = state_.M;
  v.z = state_.z;
  if (has_last_) v.last_hidden = last_f_;
  const size_t rows = size_t(cache_.pos * m_.config.kv_width());
  for (int64_t l = 0; l < m_.config.num_layers; ++l) {
    v.k.emplace_back(cache_.k[size_t(l)].data(), rows);
    v.k_rot.emplace_back(cache_.k_rot[size_t(l)].data(), rows);
    v.v.emplace_back(cache_.v[size_t(l)].data(), rows);
  }
  write_state_file(path, v);
}

void Session::restore(const StateSnapshot& s, const std::string& source) {
  const model::ModelConfig& c = m_.config;
  auto fail = [&](const std::string& why) {
    return Error("state file " + source + " does not fit this model: " + why);
  };
  const std::pair<const char*, std::pair<int64_t, int64_t>> dims[] = {
      {"num_layers", {s.num_layers, c.num_layers}},
      {"num_key_value_heads", {s.num_kv_heads, c.num_kv_heads}},
      {"head_dim", {s.head_dim, c.head_dim}},
      {"hidden_size", {s.hidden_size, c.hidden_size}},
      {"segment_length", {s.segment_length, c.segment_length}}};
  for (const auto& [name, v] : dims)
    if (v.first != v.second)
      throw fail(std::string(name) + " is " + std::to_string(v.first) + " in the state, " +
                 std::to_string(v.second) + " in the model");
  if (s.use_memory != c.use_memory)
    throw fail(std::string("the state was saved ") + (s.use_memory ? "with" : "without") +
               " compressive memory, the model has it " + (c.use_memory ? "on" : "off"));
  if (s.config_fingerprint != config_fingerprint(c))
    throw fail("config fingerprint " + hex(s.config_fingerprint) + " differs from the model's " +
               hex(config_fingerprint(c)) + " (another vocab, eps, rope_theta or update rule)");
  if (s.weights_hash != weights_hash())
    throw fail("it was saved with other weights (hash " + hex(s.weights_hash) + ", model " +
               hex(weights_hash()) + "; under --precision bf16 the weights are their bf16 " +
               "copies, so a state fits runs of the precision it was saved in)");
  // Sizes: parse_state guarantees them for parsed files; a hand-built snapshot is checked too.
  const size_t kv_rows = size_t(s.cache_pos * c.kv_width() * c.num_layers);
  if (s.M.size() != state_.M.size() || s.z.size() != state_.z.size() || s.k.size() != kv_rows ||
      s.k_rot.size() != kv_rows || s.v.size() != kv_rows ||
      s.last_hidden.size() != (s.position > 0 ? size_t(c.hidden_size) : 0) ||
      s.cache_pos < 0 || s.cache_pos >= c.segment_length)
    throw fail("its arrays have the wrong sizes");

  std::copy(s.M.begin(), s.M.end(), state_.M.begin());
  std::copy(s.z.begin(), s.z.end(), state_.z.begin());
  const size_t rows = size_t(s.cache_pos * c.kv_width());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const size_t L = size_t(l);
    std::copy_n(s.k.begin() + ptrdiff_t(L * rows), rows, cache_.k[L].begin());
    std::copy_n(s.k_rot.begin() + ptrdiff_t(L * rows), rows, cache_.k_rot[L].begin());
    std::copy_n(s.v.begin() + ptrdiff_t(L * rows), rows, cache_.v[L].begin());
  }
  cache_.pos = s.cache_pos;
  position_ = s.position;
  has_last_ = s.position > 0;
  if (has_last_) std::copy(s.last_hidden.begin(), s.last_hidden.end(), last_f_.begin());
  logits_valid_ = false;
}

void Session::load_state(const std::string& path) { restore(read_state_file(path), path); }

}  // namespace infini::infer
