#include "infer/state_file.hpp"

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/error.hpp"
#include "io/text.hpp"
#include "model/model.hpp"

namespace infini::infer {

static_assert(std::endian::native == std::endian::little,
              "the state file is little-endian and written with memcpy");

namespace {

constexpr uint32_t kFlagUseMemory = 1u << 0;
constexpr uint32_t kFlagHasLast = 1u << 1;
// Bounds on header values: far beyond any real model, small enough that products of them
// cannot overflow 64 bits before being compared with the file size.
constexpr int64_t kMaxDim = int64_t(1) << 20;
constexpr int64_t kMaxPosition = int64_t(1) << 60;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL;
inline uint64_t round_mix(uint64_t acc, uint64_t w) { return rotl(acc + w * kP2, 31) * kP1; }
inline uint64_t avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDULL;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ULL;
  h ^= h >> 33;
  return h;
}

class Writer {
 public:
  explicit Writer(size_t reserve) { out_.reserve(reserve); }
  template <class T>
  void put(T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out_.append(b, sizeof(T));
  }
  void floats(std::span<const float> v) {
    if (!v.empty()) out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(std::string_view b, const std::string& src) : b_(b), src_(src) {}
  template <class T>
  T get() {
    T v;
    std::memcpy(&v, b_.data() + at_, sizeof(T));  // sizes were checked before reading
    at_ += sizeof(T);
    return v;
  }
  std::vector<float> floats(int64_t n, const char* what) {
    std::vector<float> v(static_cast<size_t>(n));
    if (n == 0) return v;  // memcpy into an empty vector's null data() is undefined
    std::memcpy(v.data(), b_.data() + at_, size_t(n) * sizeof(float));
    at_ += size_t(n) * sizeof(float);
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(v[size_t(i)]))
        throw Error("state file " + src_ + ": " + what + " holds a non-finite value at index " +
                    std::to_string(i));
    return v;
  }

 private:
  std::string_view b_;
  const std::string& src_;
  size_t at_ = 0;
};

}  // namespace

uint64_t hash_bytes(const void* data, size_t n, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  // Four independent lanes keep the multiplier pipeline busy (GB/s on multi-GB weights).
  uint64_t a = seed + kP1 + kP2, b = seed + kP2, c = seed, d = seed - kP1;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint64_t w[4];
    std::memcpy(w, p + i, 32);
    a = round_mix(a, w[0]);
    b = round_mix(b, w[1]);
    c = round_mix(c, w[2]);
    d = round_mix(d, w[3]);
  }
  uint64_t h = rotl(a, 1) + rotl(b, 7) + rotl(c, 12) + rotl(d, 18) + uint64_t(n);
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = round_mix(h, w);
  }
  for (; i < n; ++i) h = round_mix(h, uint64_t(p[i]) + 1);
  return avalanche(h);
}

uint64_t config_fingerprint(const model::ModelConfig& c) {
  // Every value that changes the shape of the state or the numbers the model computes.
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "V=%lld;D=%lld;F=%lld;L=%lld;H=%lld;Hkv=%lld;d=%lld;eps=%.17g;theta=%.17g;"
                "tie=%d;bias=%d;N=%lld;update=%s;mem=%d",
                (long long)c.vocab_size, (long long)c.hidden_size,
                (long long)c.intermediate_size, (long long)c.num_layers,
                (long long)c.num_heads, (long long)c.num_kv_heads, (long long)c.head_dim,
                c.rms_norm_eps, c.rope_theta, int(c.tie_word_embeddings),
                int(c.attention_bias), (long long)c.segment_length,
                model::memory_update_name(c.memory_update), int(c.use_memory));
  std::string text = buf;
  if (c.is_moe()) {  // dense models keep their fingerprint (states saved before MoE existed)
    std::snprintf(buf, sizeof buf, ";moe:E=%lld;k=%lld;Fm=%lld;Fs=%lld;norm=%d;step=%lld;dense=",
                  (long long)c.num_experts, (long long)c.num_experts_per_tok,
                  (long long)c.moe_intermediate_size,
                  (long long)c.shared_expert_intermediate_size, int(c.norm_topk_prob),
                  (long long)c.decoder_sparse_step);
    text += buf;
    for (int64_t l : c.mlp_only_layers) text += std::to_string(l) + ",";
  }
  return hash_bytes(text.data(), text.size(), 0x1F1A1);
}

std::string serialize_state(const StateView& v) {
  const StateSnapshot& s = *v.header;
  size_t floats = v.M.size() + v.z.size() + v.last_hidden.size();
  for (const auto* part : {&v.k, &v.k_rot, &v.v})
    for (const auto& span : *part) floats += span.size();
  Writer w(kStateHeaderBytes + floats * sizeof(float) + 8);
  w.str().append(kStateMagic, sizeof kStateMagic);
  w.put<uint32_t>(kStateVersion);
  w.put<uint32_t>((s.use_memory ? kFlagUseMemory : 0) | (v.last_hidden.empty() ? 0 : kFlagHasLast));
  w.put<uint64_t>(s.config_fingerprint);
  w.put<uint64_t>(s.weights_hash);
  for (int64_t x : {s.num_layers, s.num_kv_heads, s.head_dim, s.hidden_size, s.segment_length,
                    s.position, s.cache_pos})
    w.put<int64_t>(x);
  w.floats(v.M);
  w.floats(v.z);
  for (const auto* part : {&v.k, &v.k_rot, &v.v})
    for (const auto& span : *part) w.floats(span);
  w.floats(v.last_hidden);
  w.put<uint64_t>(hash_bytes(w.str().data(), w.str().size()));
  return std::move(w.str());
}

std::string serialize_state(const StateSnapshot& s) {
  StateView v;
  v.header = &s;
  v.M = s.M;
  v.z = s.z;
  v.last_hidden = s.last_hidden;
  v.k = {s.k};
  v.k_rot = {s.k_rot};
  v.v = {s.v};
  return serialize_state(v);
}

StateSnapshot parse_state(std::string_view b, const std::string& src) {
  auto fail = [&](const std::string& why) { return Error("state file " + src + ": " + why); };
  if (b.size() < sizeof kStateMagic || std::memcmp(b.data(), kStateMagic, sizeof kStateMagic) != 0)
    throw fail("bad magic (not an infini state file)");
  if (b.size() < kStateHeaderBytes + 8)
    throw fail("truncated (" + std::to_string(b.size()) + " bytes, the header alone needs " +
               std::to_string(kStateHeaderBytes + 8) + ")");
  Reader r(b, src);
  r.get<uint64_t>();  // magic
  const uint32_t version = r.get<uint32_t>();
  if (version != kStateVersion)
    throw fail("unsupported version " + std::to_string(version) + " (this build reads version " +
               std::to_string(kStateVersion) + ")");
  const uint32_t flags = r.get<uint32_t>();
  if (flags & ~(kFlagUseMemory | kFlagHasLast))
    throw fail("unknown flag bits " + std::to_string(flags));
  StateSnapshot s;
  s.use_memory = flags & kFlagUseMemory;
  const bool has_last = flags & kFlagHasLast;
  s.config_fingerprint = r.get<uint64_t>();
  s.weights_hash = r.get<uint64_t>();
  s.num_layers = r.get<int64_t>();
  s.num_kv_heads = r.get<int64_t>();
  s.head_dim = r.get<int64_t>();
  s.hidden_size = r.get<int64_t>();
  s.segment_length = r.get<int64_t>();
  s.position = r.get<int64_t>();
  s.cache_pos = r.get<int64_t>();

  const std::pair<const char*, int64_t> dims[] = {{"num_layers", s.num_layers},
                                                  {"num_kv_heads", s.num_kv_heads},
                                                  {"head_dim", s.head_dim},
                                                  {"hidden_size", s.hidden_size},
                                                  {"segment_length", s.segment_length}};
  for (const auto& [name, v] : dims)
    if (v < 1 || v > kMaxDim) throw fail(std::string(name) + " " + std::to_string(v) + " is out of range");
  if (s.position < 0 || s.position > kMaxPosition)
    throw fail("position " + std::to_string(s.position) + " is out of range");
  if (s.cache_pos < 0 || s.cache_pos >= s.segment_length ||
      s.cache_pos != s.position % s.segment_length)
    throw fail("segment position " + std::to_string(s.cache_pos) + " does not match position " +
               std::to_string(s.position) + " and segment length " +
               std::to_string(s.segment_length));
  if (has_last != (s.position > 0))
    throw fail(has_last ? "has a last hidden state but no tokens"
                        : "has tokens but no last hidden state");

  // Each product is < 2^80 at worst; do it in unsigned __int128 and compare with the size.
  using u128 = unsigned __int128;
  const u128 L = u128(s.num_layers), G = u128(s.num_kv_heads), d = u128(s.head_dim);
  const u128 nM = s.use_memory ? L * G * d * d : 0, nz = s.use_memory ? L * G * d : 0;
  const u128 nkv = L * u128(s.cache_pos) * G * d, nlast = has_last ? u128(s.hidden_size) : 0;
  const u128 want = u128(kStateHeaderBytes) + (nM + nz + 3 * nkv + nlast) * sizeof(float) + 8;
  if (u128(b.size()) < want)
    throw fail("truncated (" + std::to_string(b.size()) + " bytes, the header says " +
               (want > u128(kMaxPosition) ? std::string("far more")
                                          : std::to_string(uint64_t(want))) +
               ")");
  if (u128(b.size()) > want)
    throw fail("has " + std::to_string(b.size() - size_t(want)) + " unexpected trailing bytes");
  uint64_t stored;
  std::memcpy(&stored, b.data() + b.size() - 8, 8);
  if (stored != hash_bytes(b.data(), b.size() - 8))
    throw fail("checksum mismatch (the file is corrupt)");

  s.M = r.floats(int64_t(nM), "M");
  s.z = r.floats(int64_t(nz), "z");
  s.k = r.floats(int64_t(nkv), "cached keys");
  s.k_rot = r.floats(int64_t(nkv), "cached rotated keys");
  s.v = r.floats(int64_t(nkv), "cached values");
  s.last_hidden = r.floats(int64_t(nlast), "last hidden state");
  // z sums sigma(k) > 0: a negative entry cannot come from the model.
  for (size_t i = 0; i < s.z.size(); ++i)
    if (s.z[i] < 0) throw fail("z holds a negative value at index " + std::to_string(i));
  return s;
}

void write_state_file(const std::string& path, const StateView& v) {
  model::write_file_atomic(path, serialize_state(v));
}

void write_state_file(const std::string& path, const StateSnapshot& s) {
  model::write_file_atomic(path, serialize_state(s));
}

StateSnapshot read_state_file(const std::string& path) {
  return parse_state(io::read_file(path), path);
}

}  // namespace infini::infer
