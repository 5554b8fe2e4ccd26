// The one forward of the model, per segment (or per chunk of a segment when streaming), and
// its backward. Training, evaluation and streaming inference all call forward_chunk.
//
// Rows are laid out [batch, n]: row b*n + i is token i of sequence b in this chunk.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.hpp"
#include "model/packed_weights.hpp"
#include "model/state.hpp"
#include "ops/moe.hpp"
#include "ops/rope.hpp"

namespace infini::model {

// Columns of dW per weight-gradient task of the backward: large enough for an efficient GEMM,
// small enough to balance threads. A task computes dW[:, o0 .. o1] += dY^T X[:, o0 .. o1], so
// it packs only its own columns of X (blocks of rows would each pack the whole of X: measured
// 12% slower). Public for bench/gemm_bench.cpp, which times the same tasks.
constexpr int64_t kGradBlock = 128;

// Everything one layer computes for one chunk, kept for the backward.
template <class T>
struct LayerActs {
  std::vector<T> x_in, rstd_in, a;     // layer input, its RMSNorm
  std::vector<T> q, q_rot;             // [r, H*d] before / after RoPE
  std::vector<T> k, k_rot, v;          // [r, Hkv*d] (training: the segment's keys/values)
  std::vector<T> probs;                // [B, H, n, ctx]; only key <= query is defined
  std::vector<T> local, mem, sq, den;  // local attention, memory read, sigma(q), denominators
  std::vector<T> mixed;                // gated mix, [r, H*d]
  std::vector<T> x_mid, rstd_post, m;  // after attention, its RMSNorm
  std::vector<T> gate, up, hmid;       // MLP, [r, F] (dense layers)
  // Sparse layers (mixture of experts, SPEC §7): router logits [r, E] and the routing, the
  // experts' grouped activations, the shared expert [r, Fs], its gate sigmoid(m W_sg^T) [r]
  // and its output before the gate [r, D].
  std::vector<T> router_logits;
  ops::MoeRouting<T> routing;
  ops::MoeExpertActs<T> experts;
  std::vector<T> sgate, sup, shmid, sg, sout;
};

// Work buffers of forward_chunk and backward_segment (residual stream, gradients, per-thread
// scratch), kept between calls so that the training loop does not allocate.
template <class T>
struct ChunkWorkspace {
  std::vector<T> h;                                          // residual stream [r, D]
  std::vector<T> dh, df, dxm, dm, dmixed, dmem, dlocal, da;  // [r, D] or [r, H*d]
  std::vector<T> dhmid, dgate, dup;                          // [r, F]
  std::vector<T> dq, dk, dv;                                 // [r, H*d], [r, Hkv*d]
  std::vector<T> dbeta;                                      // [L, B, H] partial gate gradients
  // Sparse layers: the shared expert's dY (gated) [r, D], its hidden gradients [r, Fs], the
  // gate logit's [r], the router logits' [r, E], the routing weights' [r, k], the experts'
  // input gradients by assignment [r * k, D], and the aux loss's gradient of the probabilities.
  std::vector<T> dsout, dshmid, dsgate, dsup, dsg, drouter, dweight, dxg, dprobs;
  // Precision::BF16: the output gradients dY of the weight gradients dW = dY^T X, rounded to
  // bf16 once per layer for all of dW's column blocks, as dY^T in pairs of rows
  // (ops::bf16_convert_pairs, [r even / 2, 2 out] each): the LM head's; dh, dgate, dup, dxm of
  // the MLP and output projection; dq, dk, dv.
  std::vector<uint16_t> dyt_head, dyt_mlp, dyt_qkv;
  std::vector<std::vector<T>> thread;  // per-thread scratch
};

template <class T>
struct SegmentActs {
  int64_t batch = 0, n = 0;
  std::vector<int32_t> positions;  // local position of every row
  std::vector<LayerActs<T>> layers;
  std::vector<T> h_final, rstd_final, f, logits;  // logits [r, V]
  mutable ChunkWorkspace<T> work;                 // scratch only: no result lives here
};

// Keys and values of the current segment for streaming decode (batch 1). Rows 0..pos-1 hold
// the tokens of the segment seen so far. k holds pre-RoPE keys (for the memory update),
// k_rot the rotated ones (for attention).
template <class T>
struct KVCache {
  int64_t capacity = 0, pos = 0;
  std::vector<std::vector<T>> k, k_rot, v;  // per layer, [capacity, Hkv*d]
  static KVCache make(const ModelConfig& c) {
    KVCache kv;
    kv.capacity = c.segment_length;
    const size_t sz = size_t(c.segment_length * c.kv_width());
    kv.k.assign(size_t(c.num_layers), std::vector<T>(sz));
    kv.k_rot = kv.k;
    kv.v = kv.k;
    return kv;
  }
};

template <class T>
struct ForwardContext {
  ops::RopeTable<T> rope;  // positions 0 .. segment_length-1
  // true: the plain layer code (one op after another, each parallel on its own, full-matrix
  // attention). It is what the fused fast path is tested against; single-token decode uses it.
  bool reference = false;
  // Threads of the fast path; 0: OpenMP's count, or one for chunks too small to share.
  int threads = 0;
  // Which products take bf16 inputs (model/precision.hpp). Pack with the same precision.
  Precision precision = Precision::FP32;
  explicit ForwardContext(const ModelConfig& c)
      : rope(c.head_dim, c.segment_length, c.rope_theta) {}
};

// Runs `n` tokens of each of `batch` sequences through the model.
// - cache == nullptr (training/eval): the chunk is a whole segment (n <= segment_length, a short
//   last segment allowed); memory is read from `state` and then updated.
// - cache != nullptr (streaming, batch 1): the chunk continues the segment held in the cache at
//   local positions cache->pos ..; when the segment becomes full, the memory is updated with
//   all of its keys/values and the cache is emptied. finish_segment forces that fold earlier.
// acts.logits receives [batch*n, V] unless compute_logits is false.
// packed: the model's weights packed for the native GEMM (pack_weights), or null (or empty) to
// pack per call. It must have been packed from m's current weights. Results are the same bits
// either way.
template <class T>
void forward_chunk(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                   int64_t batch, int64_t n, MemoryState<T>& state, SegmentActs<T>& acts,
                   KVCache<T>* cache = nullptr, bool compute_logits = true,
                   const PackedWeights* packed = nullptr);

// logits [rows, V] = f W_head^T, the LM head of forward_chunk (same precision, same packed
// copy, same bits) for rows of the final-norm output f [rows, D] a caller kept: a generation
// session computes only its last token's.
template <class T>
void head_logits(const Model<T>& m, const ForwardContext<T>& ctx, const T* f, int64_t rows,
                 T* logits, const PackedWeights* packed = nullptr);

// Folds the cache's partial segment into memory (as the end of a segment would) and empties it;
// under Precision::BF16 with the memory's products in bf16, as the forward folds.
template <class T>
void fold_cache_into_memory(const Model<T>& m, KVCache<T>& cache, MemoryState<T>& state,
                            Precision precision = Precision::FP32);

// Backward of a whole-segment forward_chunk (cache == nullptr).
//   moe_aux_grad: [num_experts], or null: the gradient of the training objective with respect
//   to every router probability p_{t,e} of every sparse layer (the load-balancing loss of
//   SPEC §7 has the same one for all rows: coef E f_e / T', times its scale).
//   dlogits [r, V]: gradient of the loss with respect to the logits.
//   state_before: the memory state the forward started from.
//   dstate: in, gradient with respect to the state after the segment; out, with respect to the
//   state before it. grads (+=) has the parameter layout. packed: as for forward_chunk (with
//   the backward orientation packed too).
template <class T>
void backward_segment(const Model<T>& m, const ForwardContext<T>& ctx, const int32_t* tokens,
                      const SegmentActs<T>& acts, const T* dlogits,
                      const MemoryState<T>& state_before, MemoryState<T>& dstate, T* grads,
                      const PackedWeights* packed = nullptr, const T* moe_aux_grad = nullptr);

}  // namespace infini::model
