// Saved inference state: what a Session needs to continue a sequence exactly. The byte layout
// is documented in docs/state_format.md; parse_state accepts any bytes (it is fuzzed) and
// either returns a consistent snapshot or throws infini::Error naming the source.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.hpp"

namespace infini::infer {

inline constexpr char kStateMagic[8] = {'I', 'N', 'F', 'S', 'T', 'A', 'T', 'E'};
inline constexpr uint32_t kStateVersion = 1;
inline constexpr size_t kStateHeaderBytes = 88;

struct StateSnapshot {
  uint64_t config_fingerprint = 0;
  uint64_t weights_hash = 0;
  int64_t num_layers = 0, num_kv_heads = 0, head_dim = 0, hidden_size = 0, segment_length = 0;
  bool use_memory = true;
  int64_t position = 0;   // tokens fed since the start of the sequence
  int64_t cache_pos = 0;  // tokens of the current segment held in k, k_rot, v
  std::vector<float> M, z;         // [L, Hkv, d, d], [L, Hkv, d]; empty without memory
  std::vector<float> k, k_rot, v;  // [L, cache_pos, Hkv*d]: pre-RoPE keys, rotated keys, values
  std::vector<float> last_hidden;  // [D] final-normed hidden state of the last token; empty
                                   // when no token has been fed (position == 0)
};

// The same content as views into someone else's buffers (a Session's cache and memory), so
// saving does not first copy the state. k, k_rot, v: one span per layer, [cache_pos, Hkv*d].
struct StateView {
  const StateSnapshot* header = nullptr;  // every field but the arrays is read from here
  std::span<const float> M, z, last_hidden;
  std::vector<std::span<const float>> k, k_rot, v;
};

// Hash of the config values that decide shapes and math (not of its file layout).
uint64_t config_fingerprint(const model::ModelConfig& c);
// A fast 64-bit non-cryptographic hash (four-lane multiply-rotate, avalanche finish).
uint64_t hash_bytes(const void* data, size_t n, uint64_t seed = 0);

std::string serialize_state(const StateView& s);
std::string serialize_state(const StateSnapshot& s);
// Parses and checks the file's own consistency: magic, version, sizes, checksum, finite
// values. Matching against a model is Session::restore's job.
StateSnapshot parse_state(std::string_view bytes, const std::string& source);

// File versions; writing is atomic (temp file, fsync, rename).
void write_state_file(const std::string& path, const StateView& s);
void write_state_file(const std::string& path, const StateSnapshot& s);
StateSnapshot read_state_file(const std::string& path);

}  // namespace infini::infer
