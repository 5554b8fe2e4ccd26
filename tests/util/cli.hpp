// Helpers for tests that run the real `infini` binary (INFINI_BINARY) as a user or an outside
// check would: run a command line and capture what it printed, make a scratch directory,
// read a file whole.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace infini::testutil {

namespace fs = std::filesystem;

struct CliResult {
  int code = -1;  // the exit status, or 128 + the signal that ended the process
  std::string out, err;
};

inline std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Runs a shell command line; its stdout and stderr are captured separately.
inline CliResult run_shell(const std::string& line) {
  static int calls = 0;  // a fresh stderr file per call
  const fs::path errf = fs::temp_directory_path() / ("infini_test_err_" + std::to_string(getpid()) +
                                                     "_" + std::to_string(++calls));
  const std::string cmd = line + " 2>" + errf.string();
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.err = read_file(errf);
  fs::remove(errf);
  return r;
}

// Runs INFINI_BINARY with `args`, a shell word list ("eval --model DIR --json").
inline CliResult run_infini(const std::string& args) {
  return run_shell(std::string(INFINI_BINARY) + " " + args);
}

// A fresh, empty directory for this test process: /tmp/infini_<name>_<pid>.
inline fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("infini_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace infini::testutil
