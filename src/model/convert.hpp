// Hugging Face Llama/Qwen2 checkpoints in and out: conversion to an Infini-attention model
// directory and export back to the Hugging Face layout.
#pragma once
#include <optional>
#include <string>

#include "model/config.hpp"

namespace infini::model {

// sigmoid(-2) = 0.12: the converted model keeps 88% of its pretrained local attention, so it
// starts close to the original function, while the gate gradient sigmoid'(-2) = 0.10 stays
// large enough for training to open the memory where it helps.
constexpr double kDefaultConvertGateInit = -2.0;

struct ConvertOptions {
  std::optional<int64_t> segment_length;      // default: keep the source's infini block or 2048
  std::optional<MemoryUpdate> memory_update;  // default: linear
  double gate_init = kDefaultConvertGateInit;  // for beta tensors the source lacks
  bool bf16 = false;                           // write weights as BF16 instead of F32
};

// Reads `from` (config.json, model.safetensors or shards, F32/BF16/F16, tokenizer files) and
// writes an Infini model directory to `out`. Returns a one-line summary.
std::string convert_hf_checkpoint(const std::string& from, const std::string& out,
                                  const ConvertOptions& opts);

// Writes `model_dir` back in Hugging Face layout (config.json with architectures, one
// model.safetensors, tokenizer files). The beta tensors and the infini block stay, since
// dropping them would silently change the model; the summary says so.
std::string export_hf_checkpoint(const std::string& model_dir, const std::string& out, bool bf16);

}  // namespace infini::model
