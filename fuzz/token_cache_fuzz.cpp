// libFuzzer target: the binary token cache reader (train::parse_token_cache), which `infini
// train` trusts when its fingerprint matches. Each input is tried as is and with its last 8
// bytes replaced by the checksum of the token data its header points at, so that mutations
// get past the checksum to the copies. A cache that parses must serialise to one that parses
// back to the same documents.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "train/data.hpp"

using namespace infini;

namespace {

constexpr size_t kFixed = 24;  // magic, version, reserved, header length

bool same(const std::vector<train::CachedDoc>& a, const std::vector<train::CachedDoc>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].name != b[i].name || a[i].val != b[i].val || a[i].tokens != b[i].tokens) return false;
  return true;
}

void check(std::string_view bytes) {
  std::vector<train::CachedDoc> docs, back;
  std::string why;
  if (!train::parse_token_cache(bytes, "fp", docs, why)) {
    if (why.empty()) std::abort();  // a rejection always says why
    return;
  }
  const std::string again = train::serialize_token_cache("fp", docs);
  if (!train::parse_token_cache(again, "fp", back, why) || !same(docs, back)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  check(in);
  if (size < kFixed + 8) return 0;
  uint64_t hlen = 0;
  std::memcpy(&hlen, data + 16, 8);
  if (hlen > size - kFixed - 8) return 0;
  std::string fixed(in);
  const size_t tokens_at = kFixed + hlen;
  const uint64_t sum = train::fnv1a(fixed.data() + tokens_at, size - 8 - tokens_at);
  std::memcpy(fixed.data() + size - 8, &sum, 8);
  check(fixed);
  return 0;
}
