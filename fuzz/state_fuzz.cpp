// libFuzzer target: the saved inference state parser (infer::parse_state).
// Each input is tried as is and with a valid checksum appended, so that mutations reach the
// size and value checks behind the checksum. A state that parses must serialise back to the
// very same bytes (the format has exactly one encoding of each snapshot).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "infer/state_file.hpp"

using namespace infini;

namespace {

void check(std::string_view bytes) {
  infer::StateSnapshot s;
  try {
    s = infer::parse_state(bytes, "fuzz.state");
  } catch (const Error&) {
    return;
  }
  if (infer::serialize_state(s) != bytes) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  check(in);
  std::string fixed(in);
  const uint64_t h = infer::hash_bytes(fixed.data(), fixed.size());
  fixed.append(reinterpret_cast<const char*>(&h), sizeof h);
  check(fixed);
  return 0;
}
