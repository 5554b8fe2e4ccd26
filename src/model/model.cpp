#include "model/model.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <vector>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "io/text.hpp"

namespace infini::model {

namespace fs = std::filesystem;

namespace {

// Box-Muller on a 64-bit Mersenne Twister: the same numbers on every platform.
class NormalRng {
 public:
  explicit NormalRng(uint64_t seed) : gen_(seed) {}
  double next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = (double(gen_() >> 11) + 0.5) * 0x1.0p-53;
    double u2 = (double(gen_() >> 11) + 0.5) * 0x1.0p-53;
    double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * M_PI * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * M_PI * u2);
  }

 private:
  std::mt19937_64 gen_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace

std::vector<std::vector<double>> memory_gates(const Model<float>& m) {
  std::vector<std::vector<double>> g;
  if (!m.config.use_memory) return g;
  for (const auto& lo : m.layout.layers) {
    std::vector<double>& row = g.emplace_back();
    for (int64_t h = 0; h < m.config.num_heads; ++h)
      row.push_back(1.0 / (1.0 + std::exp(-double(m.weights[size_t(lo.beta + h)]))));
  }
  return g;
}

Model<float> init_model(const ModelConfig& config, const InitOptions& opts) {
  validate_config(config, "config");
  Model<float> m;
  m.config = config;
  m.layout = ParamLayout::build(config);
  m.weights.assign(size_t(m.layout.total), 0.0f);
  NormalRng rng(opts.seed);
  for (const auto& p : m.layout.params) {
    float* w = m.weights.data() + p.offset;
    switch (p.kind) {
      case ParamKind::Embedding:
      case ParamKind::Matrix:
      case ParamKind::Router:  // Hugging Face inits the router like any linear layer
        for (int64_t i = 0; i < p.numel; ++i) w[i] = float(rng.next() * opts.init_std);
        break;
      case ParamKind::Norm:
        std::fill(w, w + p.numel, 1.0f);
        break;
      case ParamKind::Bias:
        break;
      case ParamKind::Gate:
        std::fill(w, w + p.numel, float(opts.gate_init));
        break;
    }
  }
  return m;
}

namespace {

// For a missing MLP tensor of layer l: a note when the checkpoint holds the other kind of MLP
// in that layer (dense where the config says sparse, or the reverse), "" otherwise.
std::string mlp_kind_hint(const std::string& name, const io::WeightStore& store) {
  const std::string layers = "model.layers.";
  const size_t mlp = name.find(".mlp.");
  if (name.rfind(layers, 0) != 0 || mlp == std::string::npos) return "";
  const std::string pre = name.substr(0, mlp + 5),
                    layer = name.substr(layers.size(), mlp - layers.size());
  const bool want_sparse = name.compare(mlp + 5, std::string::npos, "gate_proj.weight") != 0 &&
                           name.compare(mlp + 5, std::string::npos, "up_proj.weight") != 0 &&
                           name.compare(mlp + 5, std::string::npos, "down_proj.weight") != 0;
  if (want_sparse && store.has(pre + "gate_proj.weight"))
    return " (the checkpoint has a dense MLP in layer " + layer +
           ", which the config makes sparse: check decoder_sparse_step and mlp_only_layers)";
  if (!want_sparse && store.has(pre + "gate.weight"))
    return " (the checkpoint has experts in layer " + layer +
           ", which the config makes dense: check decoder_sparse_step and mlp_only_layers)";
  return "";
}

}  // namespace

void check_weights(const ParamLayout& layout, const io::WeightStore& store, const std::string& dir,
                   const LoadOptions& opts) {
  for (const auto& p : layout.params) {
    if (!store.has(p.name)) {
      if (p.kind == ParamKind::Gate && opts.allow_missing_gates) continue;
      throw Error(dir + ": tensor '" + p.name + "' is missing" +
                  (p.kind == ParamKind::Gate ? " (convert a plain checkpoint with infini convert)"
                                             : mlp_kind_hint(p.name, store)));
    }
    store.check_shape(p.name, p.shape);
  }
}

Model<float> load_weights(const ModelConfig& config, const std::string& dir,
                          const LoadOptions& opts) {
  Model<float> m;
  m.config = config;
  m.layout = ParamLayout::build(config);
  io::WeightStore store = io::WeightStore::open_dir(dir);
  // Every tensor is checked against the config before the weights are allocated: a config
  // that claims a huge model next to small files fails here, not by exhausting memory.
  check_weights(m.layout, store, dir, opts);
  m.weights.assign(size_t(m.layout.total), 0.0f);
  for (const auto& p : m.layout.params)
    read_param(store, p, dir, opts, m.weights.data() + p.offset);
  return m;
}

void read_param(const io::WeightStore& store, const ParamInfo& p, const std::string& dir,
                const LoadOptions& opts, float* dst) {
  if (!store.has(p.name)) {
    std::fill(dst, dst + p.numel, float(opts.gate_init));
    return;
  }
  store.read_f32(p.name, p.shape, dst);
  store.release(p.name);
  for (int64_t i = 0; i < p.numel; ++i)
    if (!std::isfinite(dst[i]))
      throw Error(dir + ": tensor '" + p.name + "' contains a non-finite value (NaN or Inf)");
}

ModelConfig load_model_config(const std::string& dir) {
  if (!fs::is_directory(dir)) throw Error("model directory " + dir + " does not exist");
  return load_config((fs::path(dir) / "config.json").string());
}

Model<float> load_model(const std::string& dir, const LoadOptions& opts) {
  return load_weights(load_model_config(dir), dir, opts);
}

std::string read_tokenizer_json(const std::string& model_dir) {
  const std::filesystem::path tj = std::filesystem::path(model_dir) / "tokenizer.json";
  std::error_code ec;
  // Anything at that name is read (and an unreadable one reported), as the tokenizer loader
  // does (io::load_tokenizer_for_model).
  return std::filesystem::exists(std::filesystem::symlink_status(tj, ec))
             ? io::read_file(tj.string())
             : std::string();
}

void write_tokenizer_json(const std::string& model_dir, const std::string& tokenizer_json) {
  if (!tokenizer_json.empty())
    write_file_atomic((std::filesystem::path(model_dir) / "tokenizer.json").string(),
                      tokenizer_json);
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw Error("cannot write " + path + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t w = ::write(fd, contents.data() + done, contents.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error("cannot write " + path + ": " + std::strerror(e ? e : EIO));
    }
    done += size_t(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error("cannot write " + path + ": " + std::strerror(e));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error("cannot write " + path + ": " + std::strerror(e));
  }
}

void save_tensors(const ParamLayout& layout, const float* values, const std::string& path) {
  std::vector<io::TensorView> views;
  views.reserve(layout.params.size());
  for (const auto& p : layout.params) views.push_back({p.name, p.shape, values + p.offset});
  io::write_safetensors(path, views, {{"format", "pt"}});
}

void write_model_dir(const std::string& dir, const std::function<void()>& write,
                     const std::string& what) {
  std::error_code ec;
  const bool existed = fs::exists(fs::symlink_status(dir, ec));
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec))
    throw Error("cannot create " + what + " " + dir + (ec ? ": " + ec.message() : ""));
  std::set<std::string> before;
  for (const auto& e : fs::directory_iterator(dir, ec)) before.insert(e.path().filename().string());
  try {
    write();
  } catch (...) {
    std::vector<fs::path> added;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (!before.count(e.path().filename().string())) added.push_back(e.path());
    for (const auto& p : added) fs::remove_all(p, ec);
    if (!existed) fs::remove(dir, ec);  // only when empty: nothing of anyone else is lost
    throw;
  }
}

void save_model(const Model<float>& m, const std::string& dir) {
  require_float_weights(m, "saving a model");
  write_model_dir(dir, [&] {
    save_tensors(m.layout, m.weights.data(), (fs::path(dir) / "model.safetensors").string());
    write_file_atomic((fs::path(dir) / "config.json").string(),
                      config_to_json(m.config).dump(2) + "\n");
  });
}

}  // namespace infini::model
