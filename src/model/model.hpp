// A model: its config, its parameter layout and one flat buffer of weights.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

namespace infini::io {
class WeightStore;
}

namespace infini::model {

struct PackedWeights;

template <class T>
struct Model {
  ModelConfig config;
  ParamLayout layout;
  std::vector<T> weights;  // layout.total values, or fewer when bf16_weights is set
  // Set only in a model made for inference in bf16 (model/packed_weights.hpp,
  // make_bf16_resident): the linear weights the forward multiplies packed then live only
  // here, in bf16, and `weights` holds the rest (the layout stores them first). Such a model
  // runs forward_chunk under Precision::BF16 and nothing else: no backward, save or cast.
  std::shared_ptr<const PackedWeights> bf16_weights;
  bool floats_complete() const { return !bf16_weights; }

  const T* at(int64_t offset) const { return offset < 0 ? nullptr : weights.data() + offset; }
  T* at(int64_t offset) { return offset < 0 ? nullptr : weights.data() + offset; }
};

struct InitOptions {
  uint64_t seed = 0;
  double init_std = 0.02;  // normal(0, std) for embeddings and projections
  double gate_init = 0.0;  // every beta starts here; sigmoid(0) = 0.5 mixes memory and local evenly
};

Model<float> init_model(const ModelConfig& config, const InitOptions& opts);

// sigmoid(beta) per layer and query head: the share of each head's output read from memory
// ([layers][heads]; empty without memory).
std::vector<std::vector<double>> memory_gates(const Model<float>& m);

struct LoadOptions {
  // A checkpoint without beta tensors (a plain Llama/Qwen2 model) gets them filled with
  // gate_init when this is set; otherwise a missing beta is an error.
  bool allow_missing_gates = false;
  double gate_init = 0.0;
};

// The config.json of model directory `dir` (an error names `dir` when it does not exist).
ModelConfig load_model_config(const std::string& dir);

// Reads config.json and model.safetensors (or shards) from `dir`. Every tensor is checked for
// presence, shape and finite values; errors name the directory and the tensor.
Model<float> load_model(const std::string& dir, const LoadOptions& opts = {});

// Reads the weights of `dir` for an already parsed config (conversion supplies its own).
// Goes tensor by tensor, dropping each tensor's mapped file pages once it is converted: the
// peak resident memory is the float32 weights plus about one tensor, not weights + file.
Model<float> load_weights(const ModelConfig& config, const std::string& dir,
                          const LoadOptions& opts = {});

// Checks that `store` (the weights of `dir`) holds every tensor of `layout` with its shape,
// before anything is allocated or written; a missing beta passes when
// opts.allow_missing_gates. Errors name `dir` and the tensor (and, for an MLP tensor of a
// mixture-of-experts model, say when the checkpoint has the other kind of MLP in that layer).
void check_weights(const ParamLayout& layout, const io::WeightStore& store, const std::string& dir,
                   const LoadOptions& opts = {});

// One tensor of `store` (the weights of `dir`, checked by check_weights) into dst as float32,
// its file pages dropped after; a missing gate (allowed by check_weights) is filled with
// opts.gate_init. Throws, naming `dir` and the tensor, on a non-finite value.
void read_param(const io::WeightStore& store, const ParamInfo& p, const std::string& dir,
                const LoadOptions& opts, float* dst);

// Writes config.json and model.safetensors (F32) into `dir`, creating it if needed.
// Each file is written atomically (temp file, fsync, rename); on failure, as write_model_dir.
void save_model(const Model<float>& m, const std::string& dir);

// Creates the output directory `dir` (and its parents) when needed, then runs write(), which
// writes the files of a model directory into it. When write() throws, the entries it added
// to `dir` are removed again, and `dir` itself when this call created it: a failed write
// leaves no partial model directory behind (files it had already replaced stay replaced).
// `what` names the directory in the error when it cannot be created ("model directory").
void write_model_dir(const std::string& dir, const std::function<void()>& write,
                     const std::string& what = "model directory");

// Writes one F32 safetensors file of a buffer laid out like the model (for gradients).
void save_tensors(const ParamLayout& layout, const float* values, const std::string& path);

// Throws infini::Error, naming `what`, when `m` lacks float copies of its linear weights
// (a bf16 inference model), which whatever `what` is needs.
template <class T>
void require_float_weights(const Model<T>& m, const std::string& what) {
  if (!m.floats_complete())
    throw Error(what + " needs the float32 weights; this model holds its linear weights in "
                       "bf16 only, for inference (load it with load_model, or in Python without "
                       "inference=True)");
}

template <class To, class From>
Model<To> cast_model(const Model<From>& m) {
  require_float_weights(m, "casting a model");
  Model<To> out;
  out.config = m.config;
  out.layout = m.layout;
  out.weights.assign(m.weights.begin(), m.weights.end());
  return out;
}

// Writes text to `path` atomically (temp file, fsync, rename). Used for every small file.
void write_file_atomic(const std::string& path, const std::string& contents);

// A model directory's tokenizer.json, kept as text so that the exact file travels with the
// weights (training checkpoints, LoRA merges, Python's Model.save). Read: its contents, or ""
// when the directory has none (the byte tokenizer). Write: DIR/tokenizer.json, atomically,
// unless `tokenizer_json` is "".
std::string read_tokenizer_json(const std::string& model_dir);
void write_tokenizer_json(const std::string& model_dir, const std::string& tokenizer_json);

}  // namespace infini::model
