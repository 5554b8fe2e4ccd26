// Errors are reported to the caller as exceptions; only main() decides to exit.
#pragma once
#include <stdexcept>
#include <string>

namespace infini {

// A user-facing failure: bad file, bad flag, bad config. The message is one line
// and names the file, tensor, key or flag at fault.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace infini
