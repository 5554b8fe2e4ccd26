// Reading text files for evaluation and training.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.hpp"

namespace infini::io {

// Throws naming `path` when it is a directory or a device (/dev/zero would never end); a
// regular file, a pipe or a name that does not exist (left to the open) pass.
void check_not_dir_or_device(const std::string& path);

// The whole file as bytes; errors name the file.
std::string read_file(const std::string& path);

// The whole file as one sequence, with no special tokens added. Throws when the file cannot be
// read or gives fewer than `min_tokens` tokens.
std::vector<int32_t> tokenize_file(const Tokenizer& tok, const std::string& path,
                                   size_t min_tokens = 1);

}  // namespace infini::io
