#include "train/background_state.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.hpp"
#include "core/hash.hpp"

namespace infini::train {

namespace {

// Floats as hex of their bits: exact through JSON, half the size of 17-digit decimals.
std::string floats_to_hex(const std::vector<float>& v) {
  static const char* digits = "0123456789abcdef";
  std::string s(v.size() * 8, '0');
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &v[i], 4);
    for (int k = 0; k < 8; ++k) s[i * 8 + size_t(k)] = digits[(u >> (28 - 4 * k)) & 15];
  }
  return s;
}

void hex_to_floats(const std::string& s, std::vector<float>& v, const char* what) {
  if (s.size() != v.size() * 8)
    throw Error(std::string("background state: '") + what + "' has " + std::to_string(s.size()) +
                " hex digits, expected " + std::to_string(v.size() * 8));
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t u = 0;
    for (int k = 0; k < 8; ++k) {
      const char c = s[i * 8 + size_t(k)];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) throw Error(std::string("background state: '") + what + "' is not hex");
      u = (u << 4) | uint32_t(d);
    }
    std::memcpy(&v[i], &u, 4);
  }
}

}  // namespace

BackgroundStateSource::BackgroundStateSource(BatchSource& inner, const model::ModelConfig& config,
                                             ModelView model, TokenStream stream,
                                             BackgroundOptions opts)
    : inner_(inner),
      config_(config),
      model_(std::move(model)),
      stream_(std::move(stream)),
      opts_(opts),
      ctx_(config) {
  if (opts_.chains < 0) throw Error("--background-chains must be >= 0");
  if (opts_.chains == 0) return;
  if (!config_.use_memory)
    throw Error("--background-chains needs a model with memory (infini.use_memory: false)");
  const int64_t N = config_.segment_length;
  if (opts_.tokens_per_step < N || opts_.tokens_per_step % N != 0)
    throw Error("--background-tokens-per-step must be a positive multiple of the segment length (" +
                std::to_string(N) + "), got " + std::to_string(opts_.tokens_per_step));
  if (opts_.max_tokens < 2 * opts_.tokens_per_step)
    throw Error("--background-max-tokens must be at least twice --background-tokens-per-step");
  if (!(opts_.share > 0 && opts_.share <= 1))
    throw Error("--background-share must be in (0, 1]");
  chains_ = model::MemoryState<float>::zeros(config_, opts_.chains);
  age_.assign(size_t(opts_.chains), 0);
  cycle_.assign(size_t(opts_.chains), 0);
  restarts_.assign(size_t(opts_.chains), 0);
  for (int64_t c = 0; c < opts_.chains; ++c) restart(c);
}

// The chain starts again from the empty memory with a new cycle length, uniform over the
// multiples of tokens_per_step in [max/2, max] (the first cycle of each chain in [step, max], so
// that the chains do not all restart together).
void BackgroundStateSource::restart(int64_t c) {
  const int64_t K = opts_.tokens_per_step, hi = opts_.max_tokens / K;
  const int64_t lo = restarts_[size_t(c)] == 0 ? 1 : std::max<int64_t>(1, hi / 2);
  const uint64_t r = splitmix64_at(mix64(opts_.seed ^ 0xb5c0u) + uint64_t(c) * 0x10001u +
                                   uint64_t(restarts_[size_t(c)]) * 0x9e3779b97f4a7c15ULL);
  cycle_[size_t(c)] = (lo + int64_t(r % uint64_t(hi - lo + 1))) * K;
  age_[size_t(c)] = 0;
  ++restarts_[size_t(c)];
  const int64_t m = chains_.kv_heads * chains_.head_dim * chains_.head_dim;
  const int64_t zz = chains_.kv_heads * chains_.head_dim;
  for (int64_t l = 0; l < chains_.layers; ++l) {
    std::fill_n(chains_.M_layer(l) + c * m, m, 0.0f);
    std::fill_n(chains_.z_layer(l) + c * zz, zz, 0.0f);
  }
}

// Every chain reads tokens_per_step more background tokens, one segment at a time, all chains
// as one batch.
void BackgroundStateSource::advance() {
  const int64_t C = opts_.chains, N = config_.segment_length;
  for (int64_t c = 0; c < C; ++c)
    if (age_[size_t(c)] + opts_.tokens_per_step > cycle_[size_t(c)]) restart(c);
  const model::Model<float>& m = model_();
  tokens_.resize(size_t(C * N));
  for (int64_t s = 0; s < opts_.tokens_per_step; s += N) {
    for (int64_t c = 0; c < C; ++c) stream_(age_[size_t(c)] + s, N, tokens_.data() + c * N);
    model::forward_chunk<float>(m, ctx_, tokens_.data(), C, N, chains_, acts_, nullptr, false);
  }
  for (auto& a : age_) a += opts_.tokens_per_step;
}

void BackgroundStateSource::next(int64_t batch, int64_t seq_len, Batch& out) {
  inner_.next(batch, seq_len, out);
  out.initial_state = {};
  if (opts_.chains == 0) return;
  const int64_t from_chain = std::llround(opts_.share * double(out.batch));
  // Chains no row starts from would be read for nothing.
  if (from_chain == 0)
    throw Error("--background-share " + nlohmann::json(opts_.share).dump() + " of a batch of " +
                std::to_string(out.batch) + " rows rounds to no row starting from a chain; "
                "raise --background-share or --batch");
  advance();
  ++steps_;
  out.initial_state = model::MemoryState<float>::zeros(config_, out.batch);
  for (int64_t b = 0; b < from_chain; ++b)
    chains_.copy_sequence(b % opts_.chains, out.initial_state, b);
}

nlohmann::json BackgroundStateSource::state() const {
  if (opts_.chains == 0) return inner_.state();
  return {{"inner", inner_.state()}, {"steps", steps_},     {"ages", age_},
          {"cycles", cycle_},        {"restarts", restarts_}, {"M", floats_to_hex(chains_.M)},
          {"z", floats_to_hex(chains_.z)}};
}

void BackgroundStateSource::restore(const nlohmann::json& st) {
  if (opts_.chains == 0) return inner_.restore(st);
  try {
    if (!st.is_object() || !st.contains("inner"))
      throw Error("background state: the checkpoint was written without --background-chains");
    const auto ages = st.at("ages").get<std::vector<int64_t>>();
    const auto cycles = st.at("cycles").get<std::vector<int64_t>>();
    const auto restarts = st.at("restarts").get<std::vector<int64_t>>();
    const size_t C = size_t(opts_.chains);
    if (ages.size() != C || cycles.size() != C || restarts.size() != C)
      throw Error("background state: the checkpoint has another number of chains");
    model::MemoryState<float> s = model::MemoryState<float>::zeros(config_, opts_.chains);
    hex_to_floats(st.at("M").get<std::string>(), s.M, "M");
    hex_to_floats(st.at("z").get<std::string>(), s.z, "z");
    inner_.restore(st.at("inner"));
    chains_ = std::move(s);
    age_ = ages;
    cycle_ = cycles;
    restarts_ = restarts;
    steps_ = st.at("steps").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("background state: malformed (") + e.what() + ")");
  }
}

std::string BackgroundStateSource::fingerprint() const {
  if (opts_.chains == 0) return inner_.fingerprint();
  char share[32];
  std::snprintf(share, sizeof share, "%g", opts_.share);
  return inner_.fingerprint() + "+background(chains=" + std::to_string(opts_.chains) +
         ",per_step=" + std::to_string(opts_.tokens_per_step) +
         ",max=" + std::to_string(opts_.max_tokens) + ",share=" + share +
         ",seed=" + std::to_string(opts_.seed) + ")";
}

}  // namespace infini::train
