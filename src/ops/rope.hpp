// Rotary position embedding, Llama "rotate-half" layout: for i < d/2 the pair (i, i + d/2)
// is rotated by angle p * theta^(-2i/d).
#pragma once
#include <cstdint>
#include <vector>

namespace infini::ops {

// cos/sin of every (position, i) for positions 0..max_positions-1, computed in double.
template <class T>
struct RopeTable {
  int64_t head_dim = 0;
  int64_t max_positions = 0;
  std::vector<T> cos, sin;  // [max_positions][head_dim / 2]
  RopeTable() = default;
  RopeTable(int64_t head_dim, int64_t max_positions, double theta);
};

// out[rows, heads * head_dim] = x rotated; row r has position positions[r]. out may be x (in
// place); otherwise the two must not overlap. inverse = true rotates by -angle, which is the
// backward of the forward rotation.
template <class T>
void rope_apply(T* out, const T* x, int64_t rows, int64_t heads, const int32_t* positions,
                const RopeTable<T>& table, bool inverse);
template <class T>
void rope_apply(T* x, int64_t rows, int64_t heads, const int32_t* positions,
                const RopeTable<T>& table, bool inverse) {
  rope_apply(x, x, rows, heads, positions, table, inverse);
}

// The same for one head: rows of head_dim values at x, x + ld, x + 2 ld, ...
template <class T>
void rope_apply_head(T* x, int64_t rows, int64_t ld, const int32_t* positions,
                     const RopeTable<T>& table, bool inverse);

}  // namespace infini::ops
