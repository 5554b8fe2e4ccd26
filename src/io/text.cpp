#include "io/text.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace infini::io {

void check_not_dir_or_device(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (std::filesystem::is_directory(st)) throw Error(path + " is a directory, not a file");
  if (std::filesystem::is_character_file(st) || std::filesystem::is_block_file(st))
    throw Error(path + " is a device, not a regular file");
}

std::string read_file(const std::string& path) {
  check_not_dir_or_device(path);
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open " + path + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error("cannot read " + path);
  return ss.str();
}

std::vector<int32_t> tokenize_file(const Tokenizer& tok, const std::string& path,
                                   size_t min_tokens) {
  const std::string text = read_file(path);
  if (text.empty()) throw Error("data file " + path + " is empty");
  std::vector<int32_t> ids = tok.encode(text);
  if (ids.size() < min_tokens)
    throw Error("data file " + path + " gives " + std::to_string(ids.size()) +
                " tokens; at least " + std::to_string(min_tokens) + " are needed");
  return ids;
}

}  // namespace infini::io
