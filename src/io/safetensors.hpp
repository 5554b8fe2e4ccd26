// safetensors reading (mmap, validated) and writing (F32, atomic).
// Format: 8-byte little-endian header length N, N bytes of JSON header, then data.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.hpp"

namespace infini::io {

enum class DType { F32, F16, BF16 };
const char* dtype_name(DType t);
size_t dtype_size(DType t);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping; valid while the file is open
  size_t nbytes = 0;
  int64_t numel() const;
};

// Parses and validates a whole in-memory .safetensors image (`data`, `size` bytes); `name`
// is used in error messages. Returns the tensors in file order, their `data` pointing into
// `data`; fills `metadata` (may be null) from `__metadata__`. Throws infini::Error on any
// malformed input and never reads outside [data, data + size): safe to fuzz.
std::vector<TensorInfo> parse_safetensors(const uint8_t* data, size_t size, const std::string& name,
                                          std::map<std::string, std::string>* metadata);

// One mmap'd .safetensors file. The header is fully validated on open: JSON syntax,
// known dtypes, shapes that match byte sizes, offsets inside the file, no overlaps.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Drops the mapped pages of `t` (a tensor of this file) from the process's memory; they
  // are read from the file again if touched later. Lets a reader that goes tensor by tensor
  // keep its resident memory at one tensor instead of the whole file.
  void release(const TensorInfo& t) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a model directory: model.safetensors, or the shards listed by
// model.safetensors.index.json.
class WeightStore {
 public:
  static WeightStore open_dir(const std::string& dir);
  bool has(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;  // throws naming the tensor
  std::vector<std::string> names() const;
  // Throws naming the file and the tensor if its shape differs from `shape`.
  void check_shape(const std::string& name, const std::vector<int64_t>& shape) const;
  // Converts to float32 into dst. Throws if the shape differs from `shape`.
  void read_f32(const std::string& name, const std::vector<int64_t>& shape, float* dst) const;
  // Converts elements [begin, begin + count) of the tensor (flat, row-major) into dst.
  void read_f32_range(const std::string& name, int64_t begin, int64_t count, float* dst) const;
  // SafetensorsFile::release for the tensor `name`.
  void release(const std::string& name) const;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> owner_;  // tensor name -> its file
  std::map<std::string, const TensorInfo*> by_name_;
  std::map<std::string, std::string> file_of_;  // tensor name -> shard path, for messages
  std::string dir_;                             // for "not found in <dir>" messages
};

struct TensorView {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};

// Writes F32 tensors (in the given order) atomically: temp file, fsync, rename.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes any dtype from raw little-endian bytes (for BF16/F16 exports and test fixtures).
struct RawTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
void write_safetensors_raw(const std::string& path, const std::vector<RawTensor>& tensors,
                           const std::map<std::string, std::string>& metadata = {});

// Writes tensors whose bytes are produced one at a time, so that no more than what the
// producer holds is ever in memory: the header is laid out from the names, dtypes and shapes
// first, then produce(i, out) is called for each tensor i in order and must pass exactly its
// bytes (numel * dtype size) to out, in any number of pieces. Atomic as write_safetensors;
// when produce throws, nothing is left at `path` (nor a temp file) and the error propagates.
// The file is byte-identical to write_safetensors_raw of the same tensors.
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};
using ByteSink = std::function<void(const void* data, size_t nbytes)>;
void write_safetensors_streaming(const std::string& path, const std::vector<TensorSpec>& tensors,
                                 const std::function<void(size_t, const ByteSink&)>& produce,
                                 const std::map<std::string, std::string>& metadata = {});

using infini::bf16_to_f32;  // core/bf16.hpp
using infini::f32_to_bf16;
float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float v);  // round to nearest even

}  // namespace infini::io
