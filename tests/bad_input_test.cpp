// Table-driven bad-input test of the real `infini` binary (docs/hardening.md, "Bad inputs").
// Every case builds its inputs in a fresh temp directory, runs the binary with a time limit
// and checks that it ends with a one-line reason on stderr naming the problem and an exit code
// in 1..127: never a signal (a crash, or a sanitizer report: scripts/sanitize.sh runs this
// test against an ASan/UBSan build with abort_on_error=1), never a hang, and never a partial
// output file. A few inputs are valid (binary data under the byte tokenizer) and must succeed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kTimeoutSeconds = 300;  // generous: ASan builds on a loaded 2-core CI machine

struct Result {
  int code = -1;     // exit status when the process exited
  int signal = 0;    // terminating signal, 0 when it exited
  bool timed_out = false;
  std::string out, err;
};

// Runs INFINI_BINARY with `args`; `fsize` limits the size of files it may write (RLIMIT_FSIZE,
// with SIGXFSZ ignored so that write() fails with EFBIG as on a full disk).
Result run_infini(const std::vector<std::string>& args, rlim_t fsize = RLIM_INFINITY) {
  int out_pipe[2], err_pipe[2];
  if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    close(out_pipe[0]);
    close(out_pipe[1]);
    close(err_pipe[0]);
    close(err_pipe[1]);
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    if (fsize != RLIM_INFINITY) {
      signal(SIGXFSZ, SIG_IGN);  // kept across exec: write() returns EFBIG instead
      const rlimit lim{fsize, fsize};
      setrlimit(RLIMIT_FSIZE, &lim);
    }
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(INFINI_BINARY));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(INFINI_BINARY, argv.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  Result r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kTimeoutSeconds);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    if (poll(fds, 2, int(std::min<int64_t>(left.count(), 1000))) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? r.out : r.err).append(buf, size_t(n));
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_bytes(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << s;
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

// A safetensors file as (header JSON, data section).
struct St {
  json header;
  std::string data;
};

St read_st(const fs::path& p) {
  const std::string b = read_bytes(p);
  uint64_t n;
  std::memcpy(&n, b.data(), 8);
  return {json::parse(b.substr(8, n)), b.substr(8 + n)};
}

void write_st(const fs::path& p, const St& st) {
  std::string h = st.header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  const uint64_t n = h.size();
  std::string b(8, '\0');
  std::memcpy(b.data(), &n, 8);
  write_bytes(p, b + h + st.data);
}

json tiny_config() {
  return {{"model_type", "llama"},
          {"vocab_size", 258},
          {"hidden_size", 16},
          {"intermediate_size", 32},
          {"num_hidden_layers", 1},
          {"num_attention_heads", 2},
          {"num_key_value_heads", 1},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"tie_word_embeddings", false},
          {"infini", {{"segment_length", 16}, {"memory_update", "linear"}, {"use_memory", true}}}};
}

// Shared fixtures, built once per process: a valid tiny model and a text file.
struct Fixture {
  fs::path root, model, data, config;
};

fs::path& fixture_root() {
  static fs::path p;
  return p;
}

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture x;
    char tmpl[] = "/tmp/infini_bad_input_XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    x.root = tmpl;
    fixture_root() = x.root;
    x.config = x.root / "tiny.json";
    write_bytes(x.config, tiny_config().dump(2));
    x.model = x.root / "model";
    const Result r = run_infini({"init", "--config", x.config, "--out", x.model, "--seed", "1"});
    if (r.code != 0) throw std::runtime_error("infini init failed: " + r.err);
    x.data = x.root / "data.txt";
    std::string text;
    for (int i = 0; i < 8; ++i) text += "It is a truth universally acknowledged, that a single man. ";
    write_bytes(x.data, text);
    return x;
  }();
  return f;
}

// Removes the shared fixture directory when the test program ends.
class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    if (!fixture_root().empty()) fs::remove_all(fixture_root(), ec);
  }
};
[[maybe_unused]] ::testing::Environment* const kCleanup =
    ::testing::AddGlobalTestEnvironment(new Cleanup);

fs::path copy_model(const fs::path& dir) {
  const fs::path m = dir / "model";
  fs::copy(fixture().model, m, fs::copy_options::recursive);
  return m;
}

void edit_header(const fs::path& model, const std::function<void(St&)>& fn) {
  const fs::path p = model / "model.safetensors";
  St st = read_st(p);
  fn(st);
  write_st(p, st);
}

void edit_config(const fs::path& model, const std::function<void(json&)>& fn) {
  json c = json::parse(read_bytes(model / "config.json"));
  fn(c);
  write_bytes(model / "config.json", c.dump(2));
}

fs::path config_file(const fs::path& dir, const std::function<void(json&)>& fn) {
  json c = tiny_config();
  fn(c);
  const fs::path p = dir / "config.json";
  write_bytes(p, c.dump(2));
  return p;
}

using Args = std::vector<std::string>;

Args eval_args(const fs::path& model, const fs::path& data) {
  return {"eval", "--model", model, "--data", data};
}

struct Case {
  const char* name;
  // Builds the inputs in `dir` and returns the command line.
  std::function<Args(const fs::path& dir)> setup;
  // Expected in the first stderr line (case-sensitive); nullptr: the command must succeed.
  const char* expect;
  // Output path (relative to dir) that must not exist afterwards; may be empty.
  const char* out = "";
  rlim_t fsize = RLIM_INFINITY;
  // The command logs progress to stderr (train): the reason is then its last line.
  bool logs = false;
};

// The llama2 tokenizer.json (32000 ids) committed for the tokenizer tests.
const fs::path kLlamaTokenizer =
    fs::path(INFINI_SOURCE_DIR) / "tests/data/tokenizers/llama2/tokenizer.json";

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      // ---- model.safetensors
      {"TruncatedWeights",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         const std::string b = read_bytes(m / "model.safetensors");
         write_bytes(m / "model.safetensors", b.substr(0, b.size() * 6 / 10));
         return eval_args(m, fixture().data);
       },
       "beyond the data"},
      {"HeaderLengthLargerThanFile",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         std::string b = read_bytes(m / "model.safetensors");
         const uint64_t n = b.size() + 1000;
         std::memcpy(b.data(), &n, 8);
         write_bytes(m / "model.safetensors", b);
         return eval_args(m, fixture().data);
       },
       "header length"},
      {"HeaderLengthHuge",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         std::string b = read_bytes(m / "model.safetensors");
         const uint64_t n = uint64_t(1) << 63;
         std::memcpy(b.data(), &n, 8);
         write_bytes(m / "model.safetensors", b);
         return eval_args(m, fixture().data);
       },
       "header length"},
      {"WeightsShorterThan8Bytes",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         write_bytes(m / "model.safetensors", "\x10\x00\x00");
         return eval_args(m, fixture().data);
       },
       "shorter than 8"},
      {"HeaderNotJson",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         std::string b = read_bytes(m / "model.safetensors");
         for (size_t i = 8; i < 40; ++i) b[i] = '#';
         write_bytes(m / "model.safetensors", b);
         return eval_args(m, fixture().data);
       },
       "not valid JSON"},
      {"OverlappingOffsets",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) {
           st.header["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] =
               st.header["model.layers.0.input_layernorm.weight"]["data_offsets"];
         });
         return eval_args(m, fixture().data);
       },
       "overlap"},
      {"OffsetsOutOfRange",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) {
           const uint64_t end = st.data.size();
           st.header["model.norm.weight"]["data_offsets"] = {end, end + 64};
         });
         return eval_args(m, fixture().data);
       },
       "beyond the data"},
      {"OffsetsReversed",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) { st.header["model.norm.weight"]["data_offsets"] = {64, 0}; });
         return eval_args(m, fixture().data);
       },
       "begin is after end"},
      {"UnsupportedDtype",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) { st.header["model.norm.weight"]["dtype"] = "I32"; });
         return eval_args(m, fixture().data);
       },
       "unsupported dtype 'I32'"},
      {"DtypeDisagreesWithConfig",  // F16 with twice the elements: same bytes, wrong shape
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) {
           st.header["model.norm.weight"]["dtype"] = "F16";
           st.header["model.norm.weight"]["shape"] = {32};
         });
         return eval_args(m, fixture().data);
       },
       "tensor 'model.norm.weight' has shape [32], expected [16]"},
      {"ShapeDisagreesWithConfig",  // the embedding transposed: same bytes
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) { st.header["model.embed_tokens.weight"]["shape"] = {16, 258}; });
         return eval_args(m, fixture().data);
       },
       "has shape [16, 258], expected [258, 16]"},
      {"ShapeDisagreesWithBytes",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) { st.header["model.norm.weight"]["shape"] = {15}; });
         return eval_args(m, fixture().data);
       },
       "needs 60"},
      {"NanWeight",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) {
           const uint64_t at = st.header["model.norm.weight"]["data_offsets"][0].get<uint64_t>();
           const float nan = std::nanf("");
           std::memcpy(st.data.data() + at + 8, &nan, 4);
         });
         return eval_args(m, fixture().data);
       },
       "tensor 'model.norm.weight' contains a non-finite value"},
      {"InfWeight",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) {
           const uint64_t at =
               st.header["model.embed_tokens.weight"]["data_offsets"][0].get<uint64_t>();
           const float inf = -INFINITY;
           std::memcpy(st.data.data() + at, &inf, 4);
         });
         return eval_args(m, fixture().data);
       },
       "non-finite"},
      {"MissingTensor",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) { st.header.erase("model.layers.0.mlp.up_proj.weight"); });
         return eval_args(m, fixture().data);
       },
       "tensor 'model.layers.0.mlp.up_proj.weight' is missing"},
      {"MissingWeightsFile",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::remove(m / "model.safetensors");
         return eval_args(m, fixture().data);
       },
       "no model.safetensors"},
      {"WeightsFileIsADirectory",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::remove(m / "model.safetensors");
         fs::create_directory(m / "model.safetensors");
         return eval_args(m, fixture().data);
       },
       "not a regular file"},
      {"ShardOutsideModelDir",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::rename(m / "model.safetensors", d / "elsewhere.safetensors");
         json idx = {{"weight_map", {{"model.norm.weight", "../elsewhere.safetensors"}}}};
         write_bytes(m / "model.safetensors.index.json", idx.dump());
         return eval_args(m, fixture().data);
       },
       "is not a plain file name"},
      {"ShardMissing",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::remove(m / "model.safetensors");
         json idx = {{"weight_map", {{"model.norm.weight", "model-00001-of-00001.safetensors"}}}};
         write_bytes(m / "model.safetensors.index.json", idx.dump());
         return eval_args(m, fixture().data);
       },
       "cannot open"},

      // ---- config.json
      {"HeadsDoNotDivideHidden",
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) {
           j["hidden_size"] = 30;
           j["num_attention_heads"] = 4;
         });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "is not divisible by 'num_attention_heads'", "out"},
      {"KvHeadsDoNotDivideHeads",
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) {
           j["num_attention_heads"] = 4;
           j["num_key_value_heads"] = 3;
         });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "must be a multiple of 'num_key_value_heads'", "out"},
      {"SegmentLengthZero",
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) { j["infini"]["segment_length"] = 0; });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "infini.segment_length", "out"},
      {"SegmentLengthZeroInModelDir",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_config(m, [](json& j) { j["infini"]["segment_length"] = 0; });
         return eval_args(m, fixture().data);
       },
       "infini.segment_length"},
      {"NegativeVocab",
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) { j["vocab_size"] = -5; });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "'vocab_size' = -5 is out of range", "out"},
      {"HugeHidden",
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) { j["hidden_size"] = int64_t(1) << 40; });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "'hidden_size' = 1099511627776 is out of range", "out"},
      {"HugeFloatSize",  // was undefined behaviour (double -> int64 overflow), found by fuzzing
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) { j["intermediate_size"] = 1e300; });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "'intermediate_size' must be an integer", "out"},
      {"HugeUnsignedSize",
       [](const fs::path& d) {
         const fs::path c =
             config_file(d, [](json& j) { j["num_hidden_layers"] = UINT64_MAX; });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "'num_hidden_layers' is too large", "out"},
      {"ModelTooLarge",
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) {
           j["vocab_size"] = 1 << 24;
           j["hidden_size"] = 1 << 16;
           j["num_attention_heads"] = 512;
           j["num_key_value_heads"] = 512;
         });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "too large", "out"},
      {"ConfigNotJson",
       [](const fs::path& d) {
         write_bytes(d / "config.json", "{\"model_type\": \"llama\",");
         return Args{"init", "--config", d / "config.json", "--out", d / "out"};
       },
       "not valid JSON", "out"},
      {"ConfigMissingKey",
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) { j.erase("vocab_size"); });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "missing required key 'vocab_size'", "out"},
      {"ConfigWrongType",
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) { j["hidden_size"] = "16"; });
         return Args{"init", "--config", c, "--out", d / "out"};
       },
       "'hidden_size' must be an integer", "out"},
      {"ConfigDeeplyNested",  // an unknown key is kept for round-trips; nesting must not crash
       [](const fs::path& d) {
         std::string cfg = tiny_config().dump();
         cfg.pop_back();
         cfg += ",\"x\":" + std::string(200000, '[') + std::string(200000, ']') + "}";
         write_bytes(d / "config.json", cfg);
         return Args{"init", "--config", d / "config.json", "--out", d / "out"};
       },
       "nests too deeply", "out"},
      {"ConfigDisagreesWithWeights",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_config(m, [](json& j) { j["intermediate_size"] = 48; });
         return eval_args(m, fixture().data);
       },
       "has shape [32, 16], expected [48, 16]"},
      {"ConfigIsADirectory",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::remove(m / "config.json");
         fs::create_directory(m / "config.json");
         return eval_args(m, fixture().data);
       },
       "config.json is a directory"},

      // ---- data files and tokenizers
      {"EmptyDataFile",
       [](const fs::path& d) {
         write_bytes(d / "empty.txt", "");
         return eval_args(fixture().model, d / "empty.txt");
       },
       "is empty"},
      {"OneTokenDataFile",
       [](const fs::path& d) {
         write_bytes(d / "one.txt", "x");
         return eval_args(fixture().model, d / "one.txt");
       },
       "at least 2"},
      {"BinaryDataIsValidForTheByteTokenizer",
       [](const fs::path& d) {
         std::string b(4096, '\0');
         std::mt19937 g(5);
         for (auto& c : b) c = char(g() & 0xff);
         write_bytes(d / "data.bin", b);
         return eval_args(fixture().model, d / "data.bin");
       },
       nullptr},
      {"NonUtf8TextIsValidForTheByteTokenizer",
       [](const fs::path& d) {
         write_bytes(d / "latin1.txt", "caf\xe9 na\xefve \xff\xfe \xc3( \xed\xa0\x80 end");
         return Args{"grad", "--model", fixture().model, "--data", d / "latin1.txt", "--out",
                     d / "g.safetensors"};
       },
       nullptr},
      {"NonUtf8TextWithHfTokenizerIsReplaced",  // decoded lossily to U+FFFD, as documented
       [](const fs::path& d) {
         const fs::path c = config_file(d, [](json& j) { j["vocab_size"] = 32000; });
         const Result r = run_infini({"init", "--config", c, "--out", d / "model"});
         if (r.code != 0) throw std::runtime_error(r.err);
         fs::copy_file(kLlamaTokenizer, d / "model" / "tokenizer.json");
         write_bytes(d / "latin1.txt", "caf\xe9 na\xefve \xff\xfe \xc3( \xed\xa0\x80 end");
         return eval_args(d / "model", d / "latin1.txt");
       },
       nullptr},
      {"TokenizerLargerThanModelVocab",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::copy_file(kLlamaTokenizer, m / "tokenizer.json");
         return eval_args(m, fixture().data);
       },
       "vocab"},
      {"CorruptTokenizerJson",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         write_bytes(m / "tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": 7}}");
         return eval_args(m, fixture().data);
       },
       "tokenizer.json"},
      {"DataFileIsADirectory",
       [](const fs::path& d) { return eval_args(fixture().model, d); }, "is a directory"},
      {"DataFileMissing",
       [](const fs::path& d) { return eval_args(fixture().model, d / "nope.txt"); }, "nope.txt"},
      {"ModelDirMissing",
       [](const fs::path& d) { return eval_args(d / "nope", fixture().data); }, "nope"},
      {"TokenizeMissingFile",
       [](const fs::path& d) { return Args{"tokenize", "--text-file", d / "nope.txt"}; },
       "nope.txt"},
      {"TokenizeBadTokenizerFile",
       [](const fs::path& d) {
         write_bytes(d / "tok.json", std::string(1000, '\x01'));
         return Args{"tokenize", "--tokenizer", d / "tok.json", "--text", "hello"};
       },
       "tok.json"},
      {"DetokenizeNotANumber",
       [](const fs::path&) { return Args{"detokenize", "--ids", "1 2 x"}; }, "--ids"},

      // ---- absurd command-line values
      {"InitNegativeSeed",
       [](const fs::path& d) {
         return Args{"init", "--config", fixture().config, "--out", d / "out", "--seed", "-1"};
       },
       "--seed: must be a non-negative integer", "out"},
      {"InitHugeGateInit",
       [](const fs::path& d) {
         return Args{"init", "--config", fixture().config, "--out", d / "out", "--gate-init",
                     "1e9"};
       },
       "--gate-init", "out"},
      {"InitNanInitStd",
       [](const fs::path& d) {
         return Args{"init", "--config", fixture().config, "--out", d / "out", "--init-std",
                     "nan"};
       },
       "--init-std", "out"},
      {"InitNanGateInit",
       [](const fs::path& d) {
         return Args{"init", "--config", fixture().config, "--out", d / "out", "--gate-init",
                     "nan"};
       },
       "--gate-init", "out"},
      {"TrainSeqLenZero",
       [](const fs::path& d) {
         return Args{"train", "--config", fixture().config, "--data", fixture().data, "--out",
                     d / "run", "--seq-len", "0", "--steps", "1"};
       },
       "--seq-len", "run"},
      {"TrainNegativeBatch",
       [](const fs::path& d) {
         return Args{"train", "--config", fixture().config, "--data", fixture().data, "--out",
                     d / "run", "--batch", "-3", "--steps", "1"};
       },
       "--batch", "run"},
      {"TrainEmptyData",
       [](const fs::path& d) {
         write_bytes(d / "empty.txt", "");
         return Args{"train", "--config", fixture().config, "--data", d / "empty.txt", "--out",
                     d / "run", "--steps", "1", "--seq-len", "8"};
       },
       "contain no text", "run/final", RLIM_INFINITY, true},
      {"TrainNanLearningRate",
       [](const fs::path& d) {
         return Args{"train", "--config", fixture().config, "--data", fixture().data, "--out",
                     d / "run", "--lr", "nan", "--steps", "1", "--seq-len", "8"};
       },
       "non-finite", "run/final", RLIM_INFINITY, true},
      {"GenerateNegativeMaxNewTokens",
       [](const fs::path&) {
         return Args{"generate", "--model", fixture().model, "--prompt", "hi",
                     "--max-new-tokens", "-1"};
       },
       "--max-new-tokens"},
      {"GenerateTopPAboveOne",
       [](const fs::path&) {
         return Args{"generate", "--model", fixture().model, "--prompt", "hi", "--top-p", "2"};
       },
       "--top-p"},
      {"GenerateZeroPrefillChunk",
       [](const fs::path&) {
         return Args{"generate", "--model", fixture().model, "--prompt", "hi",
                     "--prefill-chunk", "0"};
       },
       "--prefill-chunk"},
      {"GenerateCorruptStateFile",
       [](const fs::path& d) {
         write_bytes(d / "state.bin", "INFSTATE" + std::string(200, '\x7f'));
         return Args{"generate", "--model", fixture().model, "--state-in", d / "state.bin",
                     "--max-new-tokens", "1"};
       },
       "state file"},
      {"GenerateStateOfAnotherModel",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_config(m, [](json& j) { j["infini"]["segment_length"] = 8; });
         const Result r = run_infini({"generate", "--model", fixture().model, "--prompt",
                                      "hello", "--max-new-tokens", "0", "--state-out",
                                      d / "state.bin"});
         if (r.code != 0) throw std::runtime_error(r.err);
         return Args{"generate", "--model", m, "--state-in", d / "state.bin",
                     "--max-new-tokens", "1"};
       },
       "state"},
      {"UnknownSubcommand", [](const fs::path&) { return Args{"frobnicate"}; }, "subcommand"},
      {"UnexpectedArgument",
       [](const fs::path&) { return Args{"eval", "--model", "m", "--data", "d", "extra"}; },
       "extra"},
      {"MissingRequiredFlag", [](const fs::path&) { return Args{"eval", "--data", "x"}; },
       "--model"},

      // ---- output paths that cannot be written
      {"InitOutUnderARegularFile",  // root ignores permissions; a file as parent stops anyone
       [](const fs::path& d) {
         write_bytes(d / "file.txt", "x");
         return Args{"init", "--config", fixture().config, "--out", d / "file.txt" / "out"};
       },
       "file.txt/out"},
      {"GradOutUnderARegularFile",
       [](const fs::path& d) {
         write_bytes(d / "file.txt", "x");
         return Args{"grad", "--model", fixture().model, "--data", fixture().data, "--out",
                     d / "file.txt" / "g.safetensors"};
       },
       "g.safetensors"},
      {"GradOutIsADirectory",
       [](const fs::path& d) {
         fs::create_directory(d / "g.safetensors");
         return Args{"grad", "--model", fixture().model, "--data", fixture().data, "--out",
                     d / "g.safetensors"};
       },
       "g.safetensors"},
      {"TrainOutUnderARegularFile",
       [](const fs::path& d) {
         write_bytes(d / "file.txt", "x");
         return Args{"train", "--config", fixture().config, "--data", fixture().data, "--out",
                     d / "file.txt" / "run", "--steps", "1", "--seq-len", "8"};
       },
       "file.txt"},
      {"GenerateStateOutUnderARegularFile",
       [](const fs::path& d) {
         write_bytes(d / "file.txt", "x");
         return Args{"generate", "--model", fixture().model, "--prompt", "hi",
                     "--max-new-tokens", "0", "--state-out", d / "file.txt" / "s.bin"};
       },
       "s.bin"},

      // ---- disk full (RLIMIT_FSIZE): the write fails with EFBIG, nothing partial remains
      {"GradDiskFull",
       [](const fs::path& d) {
         return Args{"grad", "--model", fixture().model, "--data", fixture().data, "--out",
                     d / "g.safetensors"};
       },
       "File too large", "g.safetensors", 8192},
      {"InitDiskFull",
       [](const fs::path& d) {
         return Args{"init", "--config", fixture().config, "--out", d / "out"};
       },
       "File too large", "out/model.safetensors", 8192},
      {"GenerateStateDiskFull",
       [](const fs::path& d) {
         return Args{"generate", "--model", fixture().model, "--prompt", "hello there",
                     "--max-new-tokens", "0", "--state-out", d / "s.bin"};
       },
       "File too large", "s.bin", 256},
      {"TrainDiskFull",
       [](const fs::path& d) {
         return Args{"train", "--config", fixture().config, "--data", fixture().data, "--out",
                     d / "run", "--steps", "2", "--seq-len", "8", "--save-every", "1"};
       },
       "File too large", "run/final", 4096, true},
  };
  return c;
}

class BadInput : public ::testing::TestWithParam<size_t> {};

bool has_temp_files(const fs::path& dir) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec))
    if (it->path().filename().string().find(".tmp") != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_P(BadInput, EndsWithOneLineReason) {
  const Case& c = cases()[GetParam()];
  const fs::path dir = fixture().root / c.name;
  fs::create_directories(dir);
  const Args args = c.setup(dir);
  std::string cmdline = "infini";
  for (const auto& a : args) cmdline += " " + a;
  const Result r = run_infini(args, c.fsize);
  SCOPED_TRACE(cmdline + "\nstderr: " + r.err);

  ASSERT_FALSE(r.timed_out) << "no result within " << kTimeoutSeconds << " s";
  ASSERT_EQ(r.signal, 0) << "killed by signal " << r.signal << " (" << strsignal(r.signal) << ")";
  if (!c.expect) {
    EXPECT_EQ(r.code, 0);
  } else {
    EXPECT_GE(r.code, 1);
    EXPECT_LT(r.code, 128);
    // One line naming the problem. CLI11's parse errors add a fixed hint line; commands that
    // log progress (c.logs) may print lines before it.
    std::vector<std::string> lines;
    std::stringstream ss(r.err);
    for (std::string l; std::getline(ss, l);) lines.push_back(l);
    if (!lines.empty() && lines.back().rfind("Run with --help", 0) == 0) lines.pop_back();
    ASSERT_FALSE(lines.empty()) << "no reason on stderr";
    RecordProperty("reason", lines.back());  // --gtest_output=xml: the table in docs/hardening.md
    RecordProperty("exit_code", r.code);
    EXPECT_NE(lines.back().find(c.expect), std::string::npos) << "expected: " << c.expect;
    if (!c.logs) {
      EXPECT_EQ(lines.size(), 1u) << "more than one line of error";
    }
  }
  if (*c.out) {
    EXPECT_FALSE(fs::exists(dir / c.out)) << "partial output " << c.out << " left";
  }
  EXPECT_FALSE(has_temp_files(dir)) << "a temporary file was left in " << dir;
}

INSTANTIATE_TEST_SUITE_P(Cases, BadInput, ::testing::Range(size_t(0), cases().size()),
                         [](const ::testing::TestParamInfo<size_t>& i) {
                           return std::string(cases()[i.param].name);
                         });
