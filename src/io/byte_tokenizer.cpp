#include <string>

#include "core/error.hpp"
#include "io/tokenizer.hpp"

namespace infini::io {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(static_cast<int32_t>(c));
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids)
    if (id >= 0 && id < 256) out.push_back(static_cast<char>(id));  // specials print as nothing
  return out;
}

}  // namespace infini::io
