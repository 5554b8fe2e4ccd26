// Softmax cross-entropy over rows of logits. Rows whose target is negative are ignored.
#pragma once
#include <cstdint>

namespace infini::ops {

// Returns the summed loss (natural log) over rows with a target. When dlogits is not null it
// is set (=) to scale * (softmax - onehot) for rows with a target, and 0 for the others.
// dlogits may alias logits.
template <class T>
double cross_entropy(const T* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                     T* dlogits, T scale);

}  // namespace infini::ops
