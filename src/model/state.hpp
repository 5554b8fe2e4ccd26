// The compressive memory of one batch of sequences: a value that is passed in and out of the
// forward, copied, saved and restored. Never hidden inside a layer.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "model/config.hpp"

namespace infini::model {

template <class T>
struct MemoryState {
  int64_t layers = 0, batch = 0, kv_heads = 0, head_dim = 0;
  std::vector<T> M;  // [layers, batch, kv_heads, d, d]
  std::vector<T> z;  // [layers, batch, kv_heads, d]

  static MemoryState zeros(const ModelConfig& c, int64_t batch) {
    MemoryState s;
    s.layers = c.num_layers;
    s.batch = batch;
    s.kv_heads = c.num_kv_heads;
    s.head_dim = c.head_dim;
    if (c.use_memory) {
      s.M.assign(size_t(s.layers * batch * s.kv_heads * s.head_dim * s.head_dim), T(0));
      s.z.assign(size_t(s.layers * batch * s.kv_heads * s.head_dim), T(0));
    }
    return s;
  }
  int64_t M_per_layer() const { return batch * kv_heads * head_dim * head_dim; }
  int64_t z_per_layer() const { return batch * kv_heads * head_dim; }
  T* M_layer(int64_t l) { return M.data() + l * M_per_layer(); }
  T* z_layer(int64_t l) { return z.data() + l * z_per_layer(); }
  const T* M_layer(int64_t l) const { return M.data() + l * M_per_layer(); }
  const T* z_layer(int64_t l) const { return z.data() + l * z_per_layer(); }
  void set_zero() {
    std::fill(M.begin(), M.end(), T(0));
    std::fill(z.begin(), z.end(), T(0));
  }
  // Copies sequence `b` of this state into sequence `into_b` of `dst` (same model).
  void copy_sequence(int64_t b, MemoryState& dst, int64_t into_b) const {
    if (M.empty()) return;  // use_memory = false: no state (and data() is null)
    const int64_t m = kv_heads * head_dim * head_dim, zz = kv_heads * head_dim;
    for (int64_t l = 0; l < layers; ++l) {
      std::copy_n(M_layer(l) + b * m, m, dst.M_layer(l) + into_b * m);
      std::copy_n(z_layer(l) + b * zz, zz, dst.z_layer(l) + into_b * zz);
    }
  }
};

}  // namespace infini::model
