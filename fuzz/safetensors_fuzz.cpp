// libFuzzer target: the safetensors header parser (io::parse_safetensors) on arbitrary bytes.
// Any input must either parse into tensors that lie inside the buffer, do not overlap and
// match their shapes, or throw infini::Error. Run: scripts/fuzz.sh (docs/hardening.md).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>

#include "core/error.hpp"
#include "io/safetensors.hpp"

using namespace infini;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::map<std::string, std::string> meta;
  std::vector<io::TensorInfo> ts;
  try {
    ts = io::parse_safetensors(data, size, "fuzz.safetensors", &meta);
  } catch (const Error&) {
    return 0;
  }
  const uint8_t* prev_end = nullptr;
  for (const io::TensorInfo& t : ts) {
    const uint64_t want = static_cast<uint64_t>(t.numel()) * io::dtype_size(t.dtype);
    if (want != t.nbytes) std::abort();
    if (t.nbytes == 0) continue;
    if (t.data < data || t.data + t.nbytes > data + size) std::abort();
    if (prev_end && t.data < prev_end) std::abort();  // sorted and disjoint
    prev_end = t.data + t.nbytes;
    // Touch the first and last byte: ASan flags any range outside the buffer.
    volatile uint8_t sink = t.data[0] ^ t.data[t.nbytes - 1];
    (void)sink;
  }
  return 0;
}
