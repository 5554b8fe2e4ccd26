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

// A tiny qwen2_moe config (SPEC §7): layer 0 sparse (4 experts of width 8, top 2, a shared
// expert of width 16), layer 1 dense (mlp_only_layers).
json tiny_moe_config() {
  json j = tiny_config();
  j["model_type"] = "qwen2_moe";
  j["num_hidden_layers"] = 2;
  j["num_experts"] = 4;
  j["num_experts_per_tok"] = 2;
  j["moe_intermediate_size"] = 8;
  j["shared_expert_intermediate_size"] = 16;
  j["mlp_only_layers"] = {1};
  return j;
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

// dir/config.json: `base` (tiny_config() when null) changed by fn.
fs::path config_file(const fs::path& dir, const std::function<void(json&)>& fn,
                     const json& base = nullptr) {
  json c = base.is_null() ? tiny_config() : base;
  fn(c);
  const fs::path p = dir / "config.json";
  write_bytes(p, c.dump(2));
  return p;
}

using Args = std::vector<std::string>;

// `infini init` of tiny_moe_config() changed by fn.
Args moe_init_args(const fs::path& d, const std::function<void(json&)>& fn) {
  return {"init", "--config", config_file(d, fn, tiny_moe_config()), "--out", d / "out"};
}

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

// Appends an F32 tensor filled with `value` to a safetensors image.
void add_f32(St& st, const std::string& name, const std::vector<int64_t>& shape, float value) {
  int64_t n = 1;
  for (int64_t v : shape) n *= v;
  const uint64_t at = st.data.size();
  for (int64_t i = 0; i < n; ++i) st.data.append(reinterpret_cast<const char*>(&value), 4);
  st.header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {at, at + 4 * n}}};
}

const char* kPeftPrefix = "base_model.model.model.layers.0.self_attn.";

// A LoRA adapter (PEFT layout) for the fixture model (1 layer; q, o [16, 16]; k, v [8, 16];
// 2 query heads) of rank r: A = 0.1, B = b, gates 0. `cfg` and `st` edit the two files.
fs::path write_adapter(const fs::path& dir, int64_t r, const std::function<void(json&)>& cfg = {},
                       const std::function<void(St&)>& st = {}, float b = 0.0f) {
  const fs::path a = dir / "adapter";
  fs::create_directories(a);
  json c = {{"peft_type", "LORA"},
            {"r", r},
            {"lora_alpha", 16.0},
            {"fan_in_fan_out", false},
            {"bias", "none"},
            {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj"}},
            {"task_type", "CAUSAL_LM"}};
  if (cfg) cfg(c);
  write_bytes(a / "adapter_config.json", c.dump(2));
  St t{json::object(), ""};
  const std::pair<const char*, int64_t> outs[] = {
      {"q_proj", 16}, {"k_proj", 8}, {"v_proj", 8}, {"o_proj", 16}};
  for (const auto& [m, out] : outs) {
    add_f32(t, kPeftPrefix + std::string(m) + ".lora_A.weight", {r, 16}, 0.1f);
    add_f32(t, kPeftPrefix + std::string(m) + ".lora_B.weight", {out, r}, b);
  }
  add_f32(t, kPeftPrefix + std::string("beta"), {2}, 0.0f);
  if (st) st(t);
  write_st(a / "adapter_model.safetensors", t);
  return a;
}

Args merge_args(const fs::path& d, const fs::path& adapter) {
  return {"lora", "merge", "--model", fixture().model, "--adapter", adapter, "--out", d / "out"};
}

// A plain Hugging Face checkpoint made from the fixture model: no beta tensors, no infini
// block in config.json. `cfg` edits config.json.
fs::path hf_checkpoint(const fs::path& dir, const std::function<void(json&)>& cfg = {}) {
  const fs::path h = dir / "hf";
  fs::copy(fixture().model, h, fs::copy_options::recursive);
  edit_header(h, [](St& st) { st.header.erase("model.layers.0.self_attn.beta"); });
  edit_config(h, [&](json& j) {
    j.erase("infini");
    j["architectures"] = {"LlamaForCausalLM"};
    j["hidden_act"] = "silu";
    if (cfg) cfg(j);
  });
  return h;
}

// The tiny qwen2_moe model (`infini init`), built once.
const fs::path& moe_model() {
  static const fs::path p = [] {
    const fs::path cfg = fixture().root / "tiny_moe.json";
    write_bytes(cfg, tiny_moe_config().dump(2));
    const fs::path m = fixture().root / "moe_model";
    const Result r = run_infini({"init", "--config", cfg, "--out", m, "--seed", "2"});
    if (r.code != 0) throw std::runtime_error("infini init (qwen2_moe) failed: " + r.err);
    return m;
  }();
  return p;
}

// A Hugging Face qwen2_moe checkpoint made from moe_model(): no beta tensors, no infini block,
// no attention_bias key (Qwen2MoeConfig has none). `cfg` edits config.json, `st` the header.
fs::path moe_hf_checkpoint(const fs::path& dir, const std::function<void(json&)>& cfg = {},
                           const std::function<void(St&)>& st = {}) {
  const fs::path h = dir / "hf";
  fs::copy(moe_model(), h, fs::copy_options::recursive);
  edit_header(h, [&](St& s) {
    s.header.erase("model.layers.0.self_attn.beta");
    s.header.erase("model.layers.1.self_attn.beta");
    if (st) st(s);
  });
  edit_config(h, [&](json& j) {
    j.erase("infini");
    j.erase("attention_bias");
    j["architectures"] = {"Qwen2MoeForCausalLM"};
    j["hidden_act"] = "silu";
    if (cfg) cfg(j);
  });
  return h;
}

Args convert_args(const fs::path& d, const fs::path& from) {
  return {"convert", "--from", from, "--out", d / "out", "--segment-length", "16"};
}

// A `train` run stopped after step 1 of 2 (checkpoints/step-00000001), built once; each case
// works on its own copy (copy_run).
const fs::path& trained_run() {
  static const fs::path p = [] {
    const fs::path run = fixture().root / "trained_run";
    const Result r = run_infini({"train", "--config", fixture().config, "--data", fixture().data,
                                 "--out", run, "--steps", "2", "--stop-at", "1", "--seq-len", "8",
                                 "--batch", "1", "--save-every", "1", "--eval-every", "0"});
    if (r.code != 0) throw std::runtime_error("infini train failed: " + r.err);
    return run;
  }();
  return p;
}

fs::path copy_run(const fs::path& dir) {
  const fs::path run = dir / "run";
  fs::copy(trained_run(), run, fs::copy_options::recursive);
  return run;
}

const char* kStep1 = "checkpoints/step-00000001";

Args resume_args(const fs::path& run) { return {"train", "--out", run, "--resume"}; }

void edit_json(const fs::path& p, const std::function<void(json&)>& fn) {
  json j = json::parse(read_bytes(p));
  fn(j);
  write_bytes(p, j.dump(2));
}

Args passkey_eval_args(const fs::path& model, const char* lengths = "512",
                       const char* depths = "0.5", const char* trials = "1") {
  return {"passkey", "eval", "--model", model, "--lengths", lengths, "--depths", depths,
          "--trials", trials};
}

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
      {"DataFileIsADevice",  // /dev/zero was read until memory ran out
       [](const fs::path&) { return eval_args(fixture().model, "/dev/zero"); },
       "/dev/zero is a device, not a regular file"},
      {"TokenizeTextFileIsADevice",
       [](const fs::path&) { return Args{"tokenize", "--text-file", "/dev/urandom"}; },
       "/dev/urandom is a device, not a regular file"},
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
       "--lr: must be a finite number", "run"},
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
      {"UnknownSubcommand", [](const fs::path&) { return Args{"frobnicate"}; },
       "unknown subcommand 'frobnicate'"},
      {"UnexpectedArgument",
       [](const fs::path&) { return Args{"eval", "--model", "m", "--data", "d", "extra"}; },
       "extra"},
      {"MissingRequiredFlag", [](const fs::path&) { return Args{"eval", "--data", "x"}; },
       "--model"},

      // ---- LoRA adapters: lora merge (and passkey eval --adapter), model/lora.cpp load_lora
      {"LoraRankZero",
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, [](json& c) { c["r"] = 0; }));
       },
       "adapter_config.json: 'r' = 0 is out of range [1, 65536]", "out"},
      {"LoraRankHuge",  // was "out of memory": the layout was allocated before any check
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, [](json& c) { c["r"] = int64_t(1) << 40; }));
       },
       "'r' = 1099511627776 is out of range", "out"},
      {"LoraRankNotAnInteger",
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, [](json& c) { c["r"] = 2.5; }));
       },
       "'r' = 2.5 must be an integer", "out"},
      {"LoraAlphaNegative",
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, [](json& c) { c["lora_alpha"] = -1; }));
       },
       "'lora_alpha' = -1 must be a positive finite number", "out"},
      {"LoraAlphaOverflowsTheMerge",  // finite factors, scale 5e299: was a model of Inf written
       [](const fs::path& d) {
         return merge_args(
             d, write_adapter(d, 2, [](json& c) { c["lora_alpha"] = 1e300; }, {}, 1.0f));
       },
       "merging gives a non-finite weight in layer 0 q_proj", "out"},
      {"LoraPeftTypeWrongType",  // was a bare "[json.exception.type_error.302] ..."
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, [](json& c) { c["peft_type"] = 5; }));
       },
       "adapter_config.json: peft_type is 5, not \"LORA\"", "out"},
      {"LoraFanInFanOutWrongType",
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, [](json& c) { c["fan_in_fan_out"] = "yes"; }));
       },
       "'fan_in_fan_out' must be true or false", "out"},
      {"LoraRsLora",  // scale alpha/sqrt(r): merging with alpha/r would be silently wrong
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, [](json& c) { c["use_rslora"] = true; }));
       },
       "use_rslora is not supported", "out"},
      {"LoraUnknownTargetModule",
       [](const fs::path& d) {
         return merge_args(
             d, write_adapter(d, 2, [](json& c) { c["target_modules"] = {"gate_proj"}; }));
       },
       "unsupported target module \"gate_proj\"", "out"},
      {"LoraConfigNotJson",
       [](const fs::path& d) {
         const fs::path a = write_adapter(d, 2);
         write_bytes(a / "adapter_config.json", "{\"r\": 2,");
         return merge_args(d, a);
       },
       "adapter_config.json: not a JSON object", "out"},
      {"LoraConfigIsADirectory",
       [](const fs::path& d) {
         const fs::path a = write_adapter(d, 2);
         fs::remove(a / "adapter_config.json");
         fs::create_directory(a / "adapter_config.json");
         return merge_args(d, a);
       },
       "adapter_config.json is a directory", "out"},
      {"LoraConfigMissing",
       [](const fs::path& d) {
         const fs::path a = write_adapter(d, 2);
         fs::remove(a / "adapter_config.json");
         return merge_args(d, a);
       },
       "not a LoRA adapter directory?", "out"},
      {"LoraMissingTensor",
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, {}, [](St& st) {
                             st.header.erase(std::string(kPeftPrefix) + "v_proj.lora_B.weight");
                           }));
       },
       "tensor 'base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight' is missing",
       "out"},
      {"LoraExtraTensor",  // was ignored: an adapter of other modules merged as a no-op
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, {}, [](St& st) {
                             add_f32(st,
                                     "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight",
                                     {2, 16}, 0.1f);
                           }));
       },
       "unexpected tensor 'base_model.model.model.layers.0.mlp.up_proj.lora_A.weight'", "out"},
      {"LoraTargetsDisagreeWithTensors",  // q_proj only in the config, all four in the file
       [](const fs::path& d) {
         return merge_args(
             d, write_adapter(d, 2, [](json& c) { c["target_modules"] = {"q_proj"}; }));
       },
       "unexpected tensor 'base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight'",
       "out"},
      {"LoraRankDisagreesWithTensors",
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, [](json& c) { c["r"] = 4; }));
       },
       "q_proj.lora_A.weight' has shape [2,16], the model needs [4,16]", "out"},
      {"LoraNanTensor",
       [](const fs::path& d) {
         return merge_args(d, write_adapter(d, 2, {}, [](St& st) {
                             const std::string name =
                                 std::string(kPeftPrefix) + "o_proj.lora_A.weight";
                             const uint64_t at = st.header[name]["data_offsets"][0].get<uint64_t>();
                             const float nan = std::nanf("");
                             std::memcpy(st.data.data() + at + 4, &nan, 4);
                           }));
       },
       "o_proj.lora_A.weight' has a non-finite value", "out"},
      {"LoraWeightsTruncated",
       [](const fs::path& d) {
         const fs::path a = write_adapter(d, 2);
         const std::string b = read_bytes(a / "adapter_model.safetensors");
         write_bytes(a / "adapter_model.safetensors", b.substr(0, b.size() - 100));
         return merge_args(d, a);
       },
       "adapter_model.safetensors: tensor", "out"},
      {"LoraWeightsMissing",
       [](const fs::path& d) {
         const fs::path a = write_adapter(d, 2);
         fs::remove(a / "adapter_model.safetensors");
         return merge_args(d, a);
       },
       "adapter_model.safetensors: cannot open: No such file or directory", "out"},
      {"LoraMergeOutIsTheBaseModel",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         return Args{"lora", "merge", "--model", m, "--adapter", write_adapter(d, 2), "--out",
                     m / "."};
       },
       "--out must differ from --model"},
      {"LoraMergeBaseTokenizerIsADirectory",  // was: merged, then the copy failed half-way
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::create_directory(m / "tokenizer.json");
         return Args{"lora", "merge", "--model", m, "--adapter", write_adapter(d, 2), "--out",
                     d / "out"};
       },
       "tokenizer.json is a directory", "out"},
      {"LoraMergeValid",
       [](const fs::path& d) { return merge_args(d, write_adapter(d, 2, {}, {}, 0.01f)); },
       nullptr},
      {"LoraMergeDiskFull",  // the output directory it created is removed again
       [](const fs::path& d) { return merge_args(d, write_adapter(d, 2)); }, "File too large",
       "out", 8192},
      {"PasskeyEvalBadAdapter",
       [](const fs::path& d) {
         Args a = passkey_eval_args(fixture().model);
         a.push_back("--adapter");
         a.push_back(write_adapter(d, 2, [](json& c) { c["r"] = -1; }));
         return a;
       },
       "'r' = -1 is out of range"},

      // ---- convert (Hugging Face checkpoints in) and export
      {"ConvertUnknownModelType",
       [](const fs::path& d) {
         return convert_args(d, hf_checkpoint(d, [](json& j) { j["model_type"] = "mistral"; }));
       },
       "unsupported model_type 'mistral'", "out"},
      {"ConvertRopeScaling",
       [](const fs::path& d) {
         return convert_args(d, hf_checkpoint(d, [](json& j) {
                               j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
                             }));
       },
       "config.json: rope_scaling is not supported", "out"},
      {"ConvertSlidingWindow",
       [](const fs::path& d) {
         return convert_args(d, hf_checkpoint(d, [](json& j) { j["use_sliding_window"] = true; }));
       },
       "config.json: use_sliding_window is not supported", "out"},
      {"ConvertHiddenActWrongType",  // a non-string hidden_act was not checked
       [](const fs::path& d) {
         return convert_args(d, hf_checkpoint(d, [](json& j) { j["hidden_act"] = 5; }));
       },
       "hidden_act 5 is not supported (silu only)", "out"},
      {"ConvertInfiniNotAnObject",  // was silently replaced by the defaults
       [](const fs::path& d) {
         return convert_args(d, hf_checkpoint(d, [](json& j) { j["infini"] = 5; }));
       },
       "config.json: key 'infini' must be an object", "out"},
      {"ConvertConfigMissing",
       [](const fs::path& d) {
         const fs::path h = hf_checkpoint(d);
         fs::remove(h / "config.json");
         return convert_args(d, h);
       },
       "cannot open", "out"},
      {"ConvertConfigIsADirectory",
       [](const fs::path& d) {
         const fs::path h = hf_checkpoint(d);
         fs::remove(h / "config.json");
         fs::create_directory(h / "config.json");
         return convert_args(d, h);
       },
       "config.json is a directory", "out"},
      {"ConvertShapeMismatch",  // was: the error, and an empty output directory left behind
       [](const fs::path& d) {
         return convert_args(d, hf_checkpoint(d, [](json& j) { j["hidden_size"] = 32; }));
       },
       "tensor 'model.embed_tokens.weight' has shape [258, 16], expected [258, 32]", "out"},
      {"ConvertIndexWeightMapNotAnObject",
       [](const fs::path& d) {
         const fs::path h = hf_checkpoint(d);
         fs::rename(h / "model.safetensors", h / "model-00001-of-00001.safetensors");
         write_bytes(h / "model.safetensors.index.json", "{\"weight_map\": []}");
         return convert_args(d, h);
       },
       "index.json: has no weight_map object", "out"},
      {"ConvertIndexShardMissing",
       [](const fs::path& d) {
         const fs::path h = hf_checkpoint(d);
         fs::remove(h / "model.safetensors");
         json idx = {{"weight_map",
                      {{"model.embed_tokens.weight", "model-00001-of-00002.safetensors"}}}};
         write_bytes(h / "model.safetensors.index.json", idx.dump());
         return convert_args(d, h);
       },
       "shard 'model-00001-of-00002.safetensors'", "out"},
      {"ConvertIndexIsADirectory",
       [](const fs::path& d) {
         const fs::path h = hf_checkpoint(d);
         fs::create_directory(h / "model.safetensors.index.json");
         return convert_args(d, h);
       },
       "index.json: is a directory", "out"},
      {"ConvertBf16Nan",
       [](const fs::path& d) {
         const fs::path h = hf_checkpoint(d);
         edit_header(h, [](St& st) {
           const uint64_t at = st.data.size();
           std::string bf(32, '\0');
           for (int i = 0; i < 16; ++i) bf[2 * i + 1] = '\x3f';  // 0x3f00 = 0.5
           bf[6] = '\xc0';
           bf[7] = '\x7f';  // 0x7fc0: a NaN
           st.data += bf;
           st.header["model.norm.weight"] = {
               {"dtype", "BF16"}, {"shape", {16}}, {"data_offsets", {at, at + 32}}};
         });
         return convert_args(d, h);
       },
       "tensor 'model.norm.weight' contains a non-finite value", "out"},
      {"ConvertOutIsTheInput",  // was: the checkpoint overwritten in place
       [](const fs::path& d) {
         const fs::path h = hf_checkpoint(d);
         return Args{"convert", "--from", h, "--out", h / "."};
       },
       "--out must differ from --from"},
      {"ConvertTokenizerIsADirectory",
       [](const fs::path& d) {
         const fs::path h = hf_checkpoint(d);
         fs::create_directory(h / "tokenizer.json");
         return convert_args(d, h);
       },
       "tokenizer.json is a directory", "out"},
      {"ConvertNanGateInit",
       [](const fs::path& d) {
         Args a = convert_args(d, hf_checkpoint(d));
         a.push_back("--gate-init");
         a.push_back("nan");
         return a;
       },
       "--gate-init: must be a finite number", "out"},
      {"ConvertValid", [](const fs::path& d) { return convert_args(d, hf_checkpoint(d)); },
       nullptr},
      {"ConvertDiskFull",
       [](const fs::path& d) { return convert_args(d, hf_checkpoint(d)); }, "File too large",
       "out", 8192},
      // ---- qwen2_moe (SPEC §7): configs, checkpoints, conversion
      {"MoeTopKAboveExperts",
       [](const fs::path& d) {
         return moe_init_args(d, [](json& j) { j["num_experts_per_tok"] = 5; });
       },
       "'num_experts_per_tok' (5) must not exceed 'num_experts' (4)", "out"},
      {"MoeMissingNumExperts",
       [](const fs::path& d) { return moe_init_args(d, [](json& j) { j.erase("num_experts"); }); },
       "missing required key 'num_experts'", "out"},
      {"MoeSharedExpertWidthZero",
       [](const fs::path& d) {
         return moe_init_args(d, [](json& j) { j["shared_expert_intermediate_size"] = 0; });
       },
       "'shared_expert_intermediate_size' = 0 is out of range", "out"},
      {"MoeSparseStepZero",  // (l + 1) % 0 would divide by zero
       [](const fs::path& d) {
         return moe_init_args(d, [](json& j) { j["decoder_sparse_step"] = 0; });
       },
       "'decoder_sparse_step' = 0 is out of range", "out"},
      {"MoeMlpOnlyLayerOutOfRange",
       [](const fs::path& d) {
         return moe_init_args(d, [](json& j) { j["mlp_only_layers"] = {2}; });
       },
       "'mlp_only_layers' entry 2 is out of range [0, 1]", "out"},
      {"MoeMlpOnlyLayerDuplicate",
       [](const fs::path& d) {
         return moe_init_args(d, [](json& j) { j["mlp_only_layers"] = {1, 1}; });
       },
       "'mlp_only_layers' lists layer 1 more than once", "out"},
      {"MoeMlpOnlyLayersNotAList",
       [](const fs::path& d) {
         return moe_init_args(d, [](json& j) { j["mlp_only_layers"] = "1"; });
       },
       "key 'mlp_only_layers' must be a list of layer indices", "out"},
      {"MoeAttentionBiasFalse",
       [](const fs::path& d) {
         return moe_init_args(d, [](json& j) { j["attention_bias"] = false; });
       },
       "qwen2_moe always has q/k/v biases", "out"},
      {"MoeConvertMissingExpert",
       [](const fs::path& d) {
         return convert_args(d, moe_hf_checkpoint(d, {}, [](St& st) {
                               st.header.erase("model.layers.0.mlp.experts.1.up_proj.weight");
                             }));
       },
       "tensor 'model.layers.0.mlp.experts.1.up_proj.weight' is missing", "out"},
      {"MoeConvertMissingRouter",
       [](const fs::path& d) {
         return convert_args(d, moe_hf_checkpoint(d, {}, [](St& st) {
                               st.header.erase("model.layers.0.mlp.gate.weight");
                             }));
       },
       "tensor 'model.layers.0.mlp.gate.weight' is missing", "out"},
      {"MoeConvertDenseLayerWhereConfigSaysSparse",
       [](const fs::path& d) {
         return convert_args(
             d, moe_hf_checkpoint(d, [](json& j) { j["mlp_only_layers"] = json::array(); }));
       },
       "has a dense MLP in layer 1", "out"},
      {"MoeConvertExpertCountMismatch",
       [](const fs::path& d) {
         return convert_args(d, moe_hf_checkpoint(d, [](json& j) { j["num_experts"] = 3; }));
       },
       "tensor 'model.layers.0.mlp.gate.weight' has shape [4, 16], expected [3, 16]", "out"},
      {"MoeConvertExpertNan",
       [](const fs::path& d) {
         return convert_args(d, moe_hf_checkpoint(d, {}, [](St& st) {
                               const size_t at =
                                   st.header["model.layers.0.mlp.experts.3.down_proj.weight"]
                                            ["data_offsets"][0];
                               const float nan = NAN;
                               std::memcpy(st.data.data() + at + 8, &nan, 4);
                             }));
       },
       "tensor 'model.layers.0.mlp.experts.3.down_proj.weight' contains a non-finite value",
       "out"},
      {"MoeConvertValid", [](const fs::path& d) { return convert_args(d, moe_hf_checkpoint(d)); },
       nullptr},
      {"MoeExportValid",
       [](const fs::path& d) { return Args{"export", "--model", moe_model(), "--out", d / "out"}; },
       nullptr},
      {"MoeConvertDiskFull",
       [](const fs::path& d) { return convert_args(d, moe_hf_checkpoint(d)); }, "File too large",
       "out", 8192},

      {"ExportOutIsTheModel",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         return Args{"export", "--model", m, "--out", m};
       },
       "--out must differ from --model"},
      {"ExportOutUnderARegularFile",
       [](const fs::path& d) {
         write_bytes(d / "file.txt", "x");
         return Args{"export", "--model", fixture().model, "--out", d / "file.txt" / "out"};
       },
       "file.txt/out: Not a directory"},
      {"ExportTokenizerLinkLoop",  // was a std::filesystem error after the weights were written
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::create_symlink("tokenizer.json", m / "tokenizer.json");
         return Args{"export", "--model", m, "--out", d / "out"};
       },
       "tokenizer.json: Too many levels of symbolic links", "out"},
      {"ExportDiskFull",
       [](const fs::path& d) {
         return Args{"export", "--model", fixture().model, "--out", d / "out"};
       },
       "File too large", "out", 8192},

      // ---- model directories: tokenizer.json and link loops, sizes claimed by config.json
      {"TokenizerIsADirectory",  // was: silently the byte tokenizer
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::create_directory(m / "tokenizer.json");
         return eval_args(m, fixture().data);
       },
       "tokenizer.json is a directory"},
      {"TokenizerLinkLoop",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::create_symlink("tokenizer.json", m / "tokenizer.json");
         return Args{"generate", "--model", m, "--prompt", "hi", "--max-new-tokens", "1"};
       },
       "tokenizer.json: Too many levels of symbolic links"},
      {"WeightsLinkLoop",  // was "no model.safetensors or model.safetensors.index.json"
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::remove(m / "model.safetensors");
         fs::create_symlink("model.safetensors", m / "model.safetensors");
         return eval_args(m, fixture().data);
       },
       "model.safetensors: cannot open: Too many levels of symbolic links"},
      {"ConfigLinkLoop",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::remove(m / "config.json");
         fs::create_symlink("config.json", m / "config.json");
         return eval_args(m, fixture().data);
       },
       "config.json: Too many levels of symbolic links"},
      {"ConfigClaimsHugeModel",  // 8.6e9 parameters: was allocated (34 GB) before any check
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_config(m, [](json& j) {
           j["vocab_size"] = 1 << 22;
           j["hidden_size"] = 1024;
           j["num_attention_heads"] = 8;
           j["num_key_value_heads"] = 8;
           j["head_dim"] = 128;
           j["intermediate_size"] = 4096;
         });
         return eval_args(m, fixture().data);
       },
       "tensor 'model.embed_tokens.weight' has shape [258, 16], expected [4194304, 1024]"},
      {"PasskeyEvalCorruptTokenizer",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         write_bytes(m / "tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": []}}");
         return passkey_eval_args(m);
       },
       "tokenizer.json: model.vocab"},

      // ---- train --resume from damaged checkpoints, train --model from a damaged model
      {"ResumeTrainerJsonStepNotAnInteger",  // 1e30 was converted to int64_t (undefined)
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         edit_json(run / kStep1 / "trainer.json", [](json& j) { j["step"] = 1e30; });
         return resume_args(run);
       },
       "trainer.json: 'step' is not a non-negative integer", "run/final", RLIM_INFINITY, true},
      {"ResumeTrainerJsonFormatNotAString",  // was a bare "[json.exception.type_error.302]"
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         edit_json(run / kStep1 / "trainer.json", [](json& j) { j["format"] = 5; });
         return resume_args(run);
       },
       "trainer.json is not a trainer state file", "run/final", RLIM_INFINITY, true},
      {"ResumeTrainerJsonOtherVersion",  // was accepted
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         edit_json(run / kStep1 / "trainer.json", [](json& j) { j["version"] = 2; });
         return resume_args(run);
       },
       "unsupported trainer state version 2", "run/final", RLIM_INFINITY, true},
      {"ResumeTrainerJsonThreadsNotANumber",  // was a bare json type_error; only a note now
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         edit_json(run / kStep1 / "trainer.json", [](json& j) { j["omp_threads"] = "x"; });
         return resume_args(run);
       },
       nullptr},
      {"ResumeTrainerJsonLrOutOfRange",  // was: one step, then "a weight non-finite"
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         edit_json(run / kStep1 / "trainer.json", [](json& j) { j["args"]["--lr"] = 1e300; });
         return resume_args(run);
       },
       "the record of --lr (1e+300) is not a valid value: Value 1e+300 not in range",
       "run/final", RLIM_INFINITY, true},
      {"ResumeTrainerJsonEmpty",
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         write_bytes(run / kStep1 / "trainer.json", "");
         return resume_args(run);
       },
       "has no record of the run's flags", "run/final"},
      {"ResumeOptimizerStepGarbage",  // was "stoll" (std::invalid_argument), exit code 2
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         const fs::path o = run / kStep1 / "optimizer.safetensors";
         St st = read_st(o);
         st.header["__metadata__"]["step"] = "abc";
         write_st(o, st);
         return resume_args(run);
       },
       "optimizer metadata 'step' is not a step count", "run/final", RLIM_INFINITY, true},
      {"ResumeOptimizerNan",  // was: one more step, then "the update made a weight non-finite"
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         const fs::path o = run / kStep1 / "optimizer.safetensors";
         St st = read_st(o);
         const uint64_t at = st.header["exp_avg_sq"]["data_offsets"][0].get<uint64_t>();
         const float neg = -1.0f;
         std::memcpy(st.data.data() + at, &neg, 4);
         write_st(o, st);
         return resume_args(run);
       },
       "tensor 'exp_avg_sq' contains a negative or non-finite value", "run/final",
       RLIM_INFINITY, true},
      {"ResumeOptimizerTruncated",
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         const fs::path o = run / kStep1 / "optimizer.safetensors";
         const std::string b = read_bytes(o);
         write_bytes(o, b.substr(0, 100));
         return resume_args(run);
       },
       "optimizer.safetensors: header length", "run/final", RLIM_INFINITY, true},
      {"ResumeModelTruncated",
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         const fs::path m = run / kStep1 / "model.safetensors";
         const std::string b = read_bytes(m);
         write_bytes(m, b.substr(0, b.size() / 2));
         return resume_args(run);
       },
       "beyond the data", "run/final", RLIM_INFINITY, true},
      {"ResumeConfigChanged",
       [](const fs::path& d) {
         const fs::path run = copy_run(d);
         edit_json(run / kStep1 / "config.json", [](json& j) { j["intermediate_size"] = 48; });
         return resume_args(run);
       },
       "expected [48, 16]", "run/final", RLIM_INFINITY, true},
      {"TrainModelCorrupt",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         edit_header(m, [](St& st) { st.header["model.norm.weight"]["dtype"] = "F64"; });
         return Args{"train", "--model", m, "--data", fixture().data, "--out", d / "run",
                     "--steps", "1", "--seq-len", "8"};
       },
       "has unsupported dtype 'F64'", "run"},
      {"PasskeyTrainModelCorrupt",
       [](const fs::path& d) {
         const fs::path m = copy_model(d);
         fs::remove(m / "config.json");
         return Args{"passkey", "train", "--model", m, "--out", d / "run", "--steps", "1"};
       },
       "config.json: No such file or directory", "run"},
      {"PasskeyTrainTooManyTokensPerStep",  // was "out of memory" after the model was built
       [](const fs::path& d) {
         return Args{"passkey", "train", "--config", fixture().config, "--out", d / "run",
                     "--batch", "4096", "--max-len", "16777216"};
       },
       "--batch x --max-len (68719476736 tokens per step) is above the limit of 2^28", "run"},
      {"TrainDataLinkLoop",  // was a bare std::filesystem error, exit code 2
       [](const fs::path& d) {
         fs::create_symlink("loop.txt", d / "loop.txt");
         return Args{"train", "--config", fixture().config, "--data", d / "loop.txt", "--out",
                     d / "run", "--steps", "1", "--seq-len", "8"};
       },
       "loop.txt: Too many levels of symbolic links", "run"},
      {"TrainDataLinkLoopInADirectoryIsSkipped",  // as a dangling link is
       [](const fs::path& d) {
         fs::create_directory(d / "docs");
         fs::copy_file(fixture().data, d / "docs" / "a.txt");
         fs::create_symlink("loop.txt", d / "docs" / "loop.txt");
         return Args{"train", "--config", fixture().config, "--data", d / "docs", "--out",
                     d / "run", "--steps", "1", "--seq-len", "8", "--eval-every", "0"};
       },
       nullptr},
      {"TrainDataIsADevice",  // was "does not exist"
       [](const fs::path& d) {
         return Args{"train", "--config", fixture().config, "--data", "/dev/null", "--out",
                     d / "run", "--steps", "1", "--seq-len", "8"};
       },
       "data path /dev/null is not a regular file or a directory", "run"},
      {"TrainDataIsADeviceOutWithNewParents",  // only the innermost directory was removed
       [](const fs::path& d) {
         return Args{"train", "--config", fixture().config, "--data", "/dev/null", "--out",
                     d / "new" / "deeper" / "run", "--steps", "1", "--seq-len", "8"};
       },
       "data path /dev/null is not a regular file or a directory", "new"},

      // ---- generate: saved states and outputs
      {"GenerateTruncatedStateFile",
       [](const fs::path& d) {
         const Result r = run_infini({"generate", "--model", fixture().model, "--prompt",
                                      "hello there", "--max-new-tokens", "0", "--state-out",
                                      d / "state.bin"});
         if (r.code != 0) throw std::runtime_error(r.err);
         const std::string b = read_bytes(d / "state.bin");
         write_bytes(d / "state.bin", b.substr(0, b.size() - 7));
         return Args{"generate", "--model", fixture().model, "--state-in", d / "state.bin",
                     "--max-new-tokens", "1"};
       },
       "state file"},
      {"GenerateStateInIsADirectory",
       [](const fs::path& d) {
         return Args{"generate", "--model", fixture().model, "--state-in", d,
                     "--max-new-tokens", "1"};
       },
       "is a directory"},
      {"GenerateStateOutIsADirectory",  // checked before the prompt is read, not after
       [](const fs::path& d) {
         return Args{"generate", "--model", fixture().model, "--prompt", "hi",
                     "--max-new-tokens", "0", "--state-out", d};
       },
       "--state-out", ""},

      // ---- passkey eval / sample: grids and outputs
      {"PasskeyEvalLengthsNotANumber",
       [](const fs::path&) { return passkey_eval_args(fixture().model, "abc"); },
       "--lengths: 'abc' is not a length"},
      {"PasskeyEvalLengthsHuge",
       [](const fs::path&) { return passkey_eval_args(fixture().model, "1e30"); },
       "--lengths: '1e30' is not a length"},
      {"PasskeyEvalLengthsZero",
       [](const fs::path&) { return passkey_eval_args(fixture().model, "0"); },
       "length 0 is below the shortest sample"},
      {"PasskeyEvalLengthsEmpty",
       [](const fs::path&) { return passkey_eval_args(fixture().model, ","); },
       "--lengths: no lengths given"},
      {"PasskeyEvalDepthsNan",
       [](const fs::path&) { return passkey_eval_args(fixture().model, "512", "nan"); },
       "--depths: 'nan' is not a depth in [0, 1]"},
      {"PasskeyEvalDepthsAboveOne",
       [](const fs::path&) { return passkey_eval_args(fixture().model, "512", "0,2"); },
       "--depths: '2' is not a depth in [0, 1]"},
      {"PasskeyEvalTrialsZero",
       [](const fs::path&) { return passkey_eval_args(fixture().model, "512", "0.5", "0"); },
       "--trials"},
      {"PasskeyEvalDigitsTooMany",
       [](const fs::path&) {
         Args a = passkey_eval_args(fixture().model);
         a.insert(a.end(), {"--digits", "19"});
         return a;
       },
       "--digits"},
      {"PasskeyEvalPlotUnderARegularFile",  // was found only after the whole evaluation
       [](const fs::path& d) {
         write_bytes(d / "file.txt", "x");
         Args a = passkey_eval_args(fixture().model);
         a.push_back("--plot");
         a.push_back(d / "file.txt" / "pk.svg");
         return a;
       },
       "--plot"},
      {"PasskeySampleLengthHuge",
       [](const fs::path&) { return Args{"passkey", "sample", "--length", "99999999M"}; },
       "--length"},

      // ---- tokenize / detokenize
      {"DetokenizeNegativeId",
       [](const fs::path&) { return Args{"detokenize", "--ids", "104 -1"}; },
       "--ids: '-1' is not a token id"},
      {"DetokenizeIdOutsideTheVocabulary",  // was dropped silently
       [](const fs::path&) { return Args{"detokenize", "--ids", "104 300"}; },
       "token id 300 is outside the tokenizer's vocabulary (size 258)"},
      {"DetokenizeUnclosedBracket",
       [](const fs::path&) { return Args{"detokenize", "--ids", "[104, 105"}; },
       "'[' without a closing ']'"},
      {"DetokenizeBinaryIdsFile",
       [](const fs::path& d) {
         write_bytes(d / "ids.bin", std::string("\x01\x02\n\x7f\xff", 5));
         return Args{"detokenize", "--ids-file", d / "ids.bin"};
       },
       "is not a token id"},
      {"DetokenizeIdsFileIsADirectory",  // was: success, no output
       [](const fs::path& d) { return Args{"detokenize", "--ids-file", d}; },
       "is a directory"},
      {"TokenizeTextFileIsADirectory",  // was: success, no output
       [](const fs::path& d) { return Args{"tokenize", "--text-file", d}; }, "is a directory"},
      {"TokenizeTokenizerIsADirectory",
       [](const fs::path& d) { return Args{"tokenize", "--tokenizer", d, "--text", "hi"}; },
       "is a directory"},

      // ---- numbers CLI11 lets through (cli/common.cpp check_numeric_options)
      {"TrainNanGradClip",  // was: trained with clipping off
       [](const fs::path& d) {
         return Args{"train", "--config", fixture().config, "--data", fixture().data, "--out",
                     d / "run", "--grad-clip", "nan", "--steps", "1", "--seq-len", "8"};
       },
       "--grad-clip: must be a finite number, got 'nan'", "run"},
      {"PasskeyTrainNanLoraAlpha",
       [](const fs::path& d) {
         return Args{"passkey", "train", "--model", fixture().model, "--out", d / "run",
                     "--lora-rank", "2", "--lora-alpha", "nan"};
       },
       "--lora-alpha: must be a finite number", "run"},
      {"GenerateNanTemperature",
       [](const fs::path&) {
         return Args{"generate", "--model", fixture().model, "--prompt", "hi", "--temperature",
                     "-nan"};
       },
       "--temperature: must be a finite number"},
      {"GenerateMaxNewTokensBeyond64Bits",  // CLI11 saturated it to 2^63-1 silently
       [](const fs::path&) {
         return Args{"generate", "--model", fixture().model, "--prompt", "hi",
                     "--max-new-tokens", "99999999999999999999"};
       },
       "--max-new-tokens: '99999999999999999999' is out of the 64-bit integer range"},
      {"InitSeedBeyond64Bits",  // CLI11 saturated it to 2^64-1 silently
       [](const fs::path& d) {
         return Args{"init", "--config", fixture().config, "--out", d / "out", "--seed",
                     "99999999999999999999"};
       },
       "--seed: '99999999999999999999' is out of the 64-bit integer range", "out"},
      {"BenchNegativeSeed",  // was wrapped to 2^64-1
       [](const fs::path&) {
         return Args{"bench", "--config", fixture().config, "--seed", "-1"};
       },
       "--seed: must be a non-negative integer"},
      {"BenchTooManyTokensPerStep",  // was "out of memory" (exit 3) after the model was built
       [](const fs::path&) {
         return Args{"bench", "--config", fixture().config, "--seq-len", "1073741824", "--batch",
                     "1048576"};
       },
       "--batch x --seq-len (1125899906842624 tokens per step) is above the limit of 2^28"},
      {"BenchConfigNotJson",
       [](const fs::path& d) {
         write_bytes(d / "config.json", "{");
         return Args{"bench", "--config", d / "config.json", "--steps", "1"};
       },
       "config.json: not valid JSON"},
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
