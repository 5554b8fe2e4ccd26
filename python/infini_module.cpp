// The Python front end (`import infini`): a thin layer over the same library calls as the
// command line. Models, tokenizers and streaming sessions are C++ objects; token ids come in
// as lists or 1-D integer numpy arrays; arrays go out as numpy float32. Long calls release the
// GIL; infini::Error becomes infini.Error (a RuntimeError) with the CLI's message.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/common.hpp"
#include "cli/train_cmd.hpp"
#include "core/error.hpp"
#include "infer/generate.hpp"
#include "infer/sampler.hpp"
#include "infer/session.hpp"
#include "io/text.hpp"
#include "io/tokenizer.hpp"
#include "model/bptt.hpp"
#include "model/config.hpp"
#include "model/model.hpp"
#include "tasks/passkey.hpp"
#include "tasks/passkey_eval.hpp"
#include "train/run.hpp"

namespace py = pybind11;
using namespace infini;

namespace {

// A model and its tokenizer, shared by the Python objects that use it (sessions, parameter
// views), so that it outlives them whatever order Python frees them in.
struct ModelHolder {
  model::Model<float> m;
  std::shared_ptr<const io::Tokenizer> tok;
  std::string tokenizer_json;  // written next to the model on save ("" for the byte tokenizer)
  model::Precision precision = model::Precision::FP32;  // of every call's products
  // The context every call runs the model with (the model's precision).
  model::ForwardContext<float> context() const {
    model::ForwardContext<float> ctx(m.config);
    ctx.precision = precision;
    return ctx;
  }
};
using ModelPtr = std::shared_ptr<ModelHolder>;

struct TokenizerHandle {
  std::shared_ptr<const io::Tokenizer> tok;
};

struct SessionHandle {
  ModelPtr model;  // declared first: destroyed after the session that refers to it
  std::unique_ptr<infer::Session> session;
};

nlohmann::json to_json(const py::object& o) {
  const std::string text = py::module_::import("json").attr("dumps")(o).cast<std::string>();
  return nlohmann::json::parse(text);
}

py::object from_json(const nlohmann::json& j) {
  return py::module_::import("json").attr("loads")(j.dump());
}

// Runs fn(stop) on a worker thread while the calling thread waits without the GIL and, every
// 50 ms, lets Python handle signals. Ctrl-C (KeyboardInterrupt, or whatever the SIGINT
// handler raises) sets `stop`, which fn checks between segments or steps; the exception is
// raised here once fn has returned, so nothing is left half-done. Only the main thread sees
// signals; called from another thread this is a plain call without the GIL.
template <class F>
auto run_interruptible(F&& fn) -> decltype(fn(static_cast<std::atomic<bool>*>(nullptr))) {
  using R = decltype(fn(static_cast<std::atomic<bool>*>(nullptr)));
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr failure;
  std::optional<R> result;
  std::thread worker([&] {
    try {
      result.emplace(fn(&stop));
    } catch (...) {
      failure = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(mu);
    done = true;
    cv.notify_all();
  });
  std::optional<py::error_already_set> signal_error;
  for (;;) {
    {
      py::gil_scoped_release nogil;
      std::unique_lock<std::mutex> lock(mu);
      if (cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return done; })) break;
    }
    if (!signal_error && PyErr_CheckSignals() != 0) {
      signal_error.emplace();  // fetches the exception the handler raised
      stop = true;
    }
  }
  {
    py::gil_scoped_release nogil;
    worker.join();
  }
  if (signal_error) {
    if (failure) {
      try {
        std::rethrow_exception(failure);
      } catch (const model::Interrupted&) {  // the stop it asked for
      }
    }
    throw std::move(*signal_error);
  }
  if (failure) std::rethrow_exception(failure);
  return std::move(*result);
}

// Token ids from a list of ints or a 1-D integer numpy array, checked against the vocabulary.
std::vector<int32_t> token_ids(const py::handle& ids, const model::ModelConfig& c,
                               const char* what, int64_t at_least) {
  std::vector<int32_t> v;
  auto push = [&](int64_t t) {
    if (t < 0 || t >= c.vocab_size)
      throw Error(std::string(what) + ": token id " + std::to_string(t) +
                  " is outside the vocabulary (" + std::to_string(c.vocab_size) + ")");
    v.push_back(int32_t(t));
  };
  if (py::isinstance<py::array>(ids)) {
    const py::array a = py::reinterpret_borrow<py::array>(ids);
    if (a.ndim() != 1) throw Error(std::string(what) + ": token ids must be a 1-D array");
    if (a.dtype().kind() != 'i' && a.dtype().kind() != 'u')
      throw Error(std::string(what) + ": token ids must be integers, got dtype " +
                  py::str(a.dtype()).cast<std::string>());
    const py::array_t<int64_t, py::array::forcecast> b(a);
    v.reserve(size_t(b.size()));
    for (py::ssize_t i = 0; i < b.size(); ++i) push(b.at(i));
  } else {
    for (const py::handle& h : ids) {
      if (!py::isinstance<py::int_>(h))
        throw Error(std::string(what) + ": token ids must be ints");
      push(h.cast<int64_t>());
    }
  }
  if (int64_t(v.size()) < at_least)
    throw Error(std::string(what) + ": needs at least " + std::to_string(at_least) +
                " tokens, got " + std::to_string(v.size()));
  return v;
}

ModelPtr load(const std::string& path, const std::string& precision, bool inference) {
  auto h = std::make_shared<ModelHolder>();
  h->precision = model::parse_precision(precision, "precision");
  h->m = inference ? model::load_inference_model(path, h->precision) : model::load_model(path);
  h->tok = std::shared_ptr<const io::Tokenizer>(io::load_tokenizer_for_model(path));
  h->tokenizer_json = model::read_tokenizer_json(path);
  return h;
}

ModelPtr init(const py::object& config, uint64_t seed, const std::string& precision) {
  model::ModelConfig c;
  if (py::isinstance<py::dict>(config))
    c = model::config_from_json(to_json(config), "config");
  else
    c = model::load_config(py::str(config).cast<std::string>());
  auto h = std::make_shared<ModelHolder>();
  h->precision = model::parse_precision(precision, "precision");
  model::InitOptions io;
  io.seed = seed;
  h->m = model::init_model(c, io);
  h->tok = std::make_shared<io::ByteTokenizer>();
  return h;
}

double loss(const ModelHolder& h, const py::handle& ids_in) {
  const std::vector<int32_t> ids = token_ids(ids_in, h.m.config, "loss", 2);
  return run_interruptible([&](std::atomic<bool>* stop) {
    const model::ForwardContext<float> ctx = h.context();
    model::SequenceWorkspace<float> ws;
    model::SequenceOptions so;
    so.interrupt = stop;
    return model::sequence_loss<float>(h.m, ctx, ids.data(), 1, int64_t(ids.size()), nullptr,
                                       so, ws)
        .mean();
  });
}

// Per-position losses: [T-1] float64, entry t the loss of predicting ids[t+1] from ids[0..t].
py::array_t<double> token_losses(const ModelHolder& h, const py::handle& ids_in) {
  const std::vector<int32_t> ids = token_ids(ids_in, h.m.config, "token_losses", 2);
  const int64_t T = int64_t(ids.size());
  py::array_t<double> out(T - 1);
  std::vector<double> all(static_cast<size_t>(T));
  run_interruptible([&](std::atomic<bool>* stop) {
    const model::ForwardContext<float> ctx = h.context();
    model::SequenceWorkspace<float> ws;
    model::SequenceOptions so;
    so.interrupt = stop;
    so.token_losses = all.data();
    return model::sequence_loss<float>(h.m, ctx, ids.data(), 1, T, nullptr, so, ws);
  });
  std::copy_n(all.data(), T - 1, out.mutable_data());
  return out;
}

// Logits of every position, segment by segment through the memory: [T, V] float32.
py::array_t<float> logits(const ModelHolder& h, const py::handle& ids_in) {
  const std::vector<int32_t> ids = token_ids(ids_in, h.m.config, "logits", 1);
  const int64_t T = int64_t(ids.size()), V = h.m.config.vocab_size;
  py::array_t<float> out({T, V});
  float* dst = out.mutable_data();
  run_interruptible([&](std::atomic<bool>* stop) {
    const model::ForwardContext<float> ctx = h.context();
    model::MemoryState<float> state = model::MemoryState<float>::zeros(h.m.config, 1);
    model::SegmentActs<float> acts;
    const int64_t N = h.m.config.segment_length;
    for (int64_t s = 0; s < T; s += N) {
      if (stop->load()) throw model::Interrupted();
      const int64_t n = std::min(N, T - s);
      model::forward_chunk<float>(h.m, ctx, ids.data() + s, 1, n, state, acts);
      std::copy_n(acts.logits.data(), n * V, dst + s * V);
    }
    return 0;
  });
  return out;
}

py::dict grad(const ModelHolder& h, const py::handle& ids_in) {
  const std::vector<int32_t> ids = token_ids(ids_in, h.m.config, "grad", 2);
  std::vector<float> g(size_t(h.m.layout.total), 0.0f);
  run_interruptible([&](std::atomic<bool>* stop) {
    const model::ForwardContext<float> ctx = h.context();
    model::SequenceWorkspace<float> ws;
    model::SequenceOptions so;
    so.interrupt = stop;
    return model::sequence_loss<float>(h.m, ctx, ids.data(), 1, int64_t(ids.size()), g.data(),
                                       so, ws);
  });
  py::dict d;
  for (const auto& p : h.m.layout.params) {
    py::array_t<float> a(p.shape);
    std::copy_n(g.data() + p.offset, p.numel, a.mutable_data());
    d[py::str(p.name)] = a;
  }
  return d;
}

// Read-only views of the weights; each keeps the model alive.
py::dict parameters(const ModelPtr& h) {
  model::require_float_weights(h->m, "parameters()");
  py::dict d;
  py::object owner = py::cast(h);
  for (const auto& p : h->m.layout.params) {
    std::vector<py::ssize_t> strides(p.shape.size());
    py::ssize_t s = sizeof(float);
    for (size_t i = p.shape.size(); i-- > 0;) {
      strides[i] = s;
      s *= py::ssize_t(p.shape[i]);
    }
    py::array_t<float> a(std::vector<py::ssize_t>(p.shape.begin(), p.shape.end()), strides,
                         h->m.weights.data() + p.offset, owner);
    py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    d[py::str(p.name)] = a;
  }
  return d;
}

void save(const ModelHolder& h, const std::string& dir) {
  model::save_model(h.m, dir);
  model::write_tokenizer_json(dir, h.tokenizer_json);
}

std::unique_ptr<SessionHandle> make_session(const ModelPtr& h) {
  auto s = std::make_unique<SessionHandle>();
  s->model = h;
  infer::SessionOptions so;
  so.precision = h->precision;
  s->session = std::make_unique<infer::Session>(h->m, so);
  return s;
}

std::vector<int32_t> generate(SessionHandle& s, int64_t max_new_tokens, double temperature,
                              int64_t top_k, double top_p, uint64_t seed,
                              const std::vector<std::string>& stop) {
  if (!s.session->has_logits())
    throw Error("generate: feed the session at least one token first");
  if (max_new_tokens < 0) throw Error("generate: max_new_tokens must be >= 0");
  infer::SamplingOptions so;
  so.temperature = temperature;
  so.top_k = top_k;
  so.top_p = top_p;
  so.seed = seed;
  infer::GenerateOptions go;
  go.max_new_tokens = max_new_tokens;
  go.stop = stop;
  go.keep_state = true;
  std::vector<int32_t> out;
  const int32_t eos = s.model->tok->eos_id();
  go.on_token = [&](int32_t t) {
    if (t != eos) out.push_back(t);
  };
  py::gil_scoped_release nogil;
  infer::Sampler sampler(so);
  infer::generate(*s.session, *s.model->tok, sampler, go, [](std::string_view) {});
  return out;
}

py::dict memory(const SessionHandle& s) {
  const infer::StateSnapshot snap = s.session->snapshot();
  py::dict d;
  const model::ModelConfig& c = s.model->m.config;
  if (snap.M.empty()) return d;
  py::array_t<float> M({c.num_layers, c.num_kv_heads, c.head_dim, c.head_dim});
  py::array_t<float> z({c.num_layers, c.num_kv_heads, c.head_dim});
  std::copy(snap.M.begin(), snap.M.end(), M.mutable_data());
  std::copy(snap.z.begin(), snap.z.end(), z.mutable_data());
  d["M"] = M;
  d["z"] = z;
  return d;
}

// The keyword arguments of infini.train as `infini train` arguments: lr=1e-3 -> --lr 0.001,
// data=[a, b] -> --data a --data b, resume=True -> --resume (False and None: left out).
std::vector<std::string> train_args(const py::dict& flags) {
  std::vector<std::string> args;
  for (const auto& item : flags) {
    std::string flag = "--" + py::str(item.first).cast<std::string>();
    for (char& ch : flag)
      if (ch == '_') ch = '-';
    const py::handle v = item.second;
    if (v.is_none()) continue;
    if (py::isinstance<py::bool_>(v)) {
      if (v.cast<bool>()) args.push_back(flag);
    } else if (py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v)) {
      for (const py::handle x : v) {
        args.push_back(flag);
        args.push_back(py::str(x).cast<std::string>());
      }
    } else {
      args.push_back(flag);
      args.push_back(py::str(v).cast<std::string>());
    }
  }
  return args;
}

// `infini train`'s flag declarations on an app of their own (no --help: Python has help()).
cli::TrainCommand train_command(CLI::App& app) {
  app.set_help_flag();
  cli::TrainCommand c = cli::add_train_flags(&app);
  cli::check_numeric_options(app);
  return c;
}

std::string train_flags_help() {
  CLI::App app("infini.train keyword arguments: the flags of `infini train`, with underscores",
               "infini.train");
  train_command(app);
  return app.help();
}

const char* outcome_name(train::Trainer::Outcome o) {
  switch (o) {
    case train::Trainer::Outcome::Finished: return "finished";
    case train::Trainer::Outcome::Stopped: return "stopped";
    case train::Trainer::Outcome::Interrupted: return "interrupted";
  }
  return "?";
}

// infini.train: parses the flags as the command line does, then runs train::run_training with
// the callback on every step's metrics. A callback that raises, like Ctrl-C, ends the run with
// a checkpoint, and the exception is raised once it is written.
py::tuple train_run(const py::dict& flags, const py::object& callback) {
  CLI::App app("infini.train", "infini.train");
  const cli::TrainCommand c = train_command(app);
  std::vector<std::string> args = train_args(flags);
  std::reverse(args.begin(), args.end());  // CLI11 takes them last first
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    throw Error(std::string("infini.train: ") + e.what() +
                " (keyword arguments are `infini train` flags with underscores: "
                "seq_len=512 for --seq-len 512)");
  }
  py::list metrics;
  std::optional<py::error_already_set> callback_error;
  train::TrainRunResult r = run_interruptible([&](std::atomic<bool>* stop) {
    train::Distributed dist;
    auto on_step = [&](const nlohmann::json& line) {
      py::gil_scoped_acquire gil;
      py::object d = from_json(line);
      metrics.append(d);
      if (callback.is_none() || callback_error) return;
      try {
        callback(d);
      } catch (py::error_already_set& e) {
        callback_error.emplace(std::move(e));
        *stop = true;
      }
    };
    return cli::run_train_command(c, dist, on_step, stop, stderr);
  });
  if (callback_error) throw std::move(*callback_error);
  py::dict info;
  info["outcome"] = outcome_name(r.outcome);
  info["step"] = r.step;
  info["final"] = r.final_dir.empty() ? py::object(py::none()) : py::str(r.final_dir);
  info["checkpoint"] =
      r.last_checkpoint.empty() ? py::object(py::none()) : py::str(r.last_checkpoint);
  return py::make_tuple(metrics, info);
}

}  // namespace

PYBIND11_MODULE(_infini, mod) {
  mod.doc() = "Infini-attention transformers (C++ library bindings); see docs/python.md";
  py::register_exception<Error>(mod, "Error", PyExc_RuntimeError);

  py::class_<TokenizerHandle>(mod, "Tokenizer", "The model's tokenizer (tokenizer.json or bytes)")
      .def(
          "encode",
          [](const TokenizerHandle& t, const std::string& text) { return t.tok->encode(text); },
          py::arg("text"), "Token ids of `text`, no special tokens added")
      .def(
          "decode",
          [](const TokenizerHandle& t, const py::handle& ids) {
            model::ModelConfig c;
            c.vocab_size = t.tok->vocab_size();
            const std::vector<int32_t> v = token_ids(ids, c, "decode", 0);
            const std::string s = t.tok->decode(v);
            return py::str(PyUnicode_DecodeUTF8(s.data(), py::ssize_t(s.size()), "replace"));
          },
          py::arg("ids"), "Text of token ids (invalid UTF-8 becomes U+FFFD)")
      .def_property_readonly("vocab_size", [](const TokenizerHandle& t) { return t.tok->vocab_size(); })
      .def_property_readonly("eos_id", [](const TokenizerHandle& t) { return t.tok->eos_id(); })
      .def_property_readonly("bos_id", [](const TokenizerHandle& t) { return t.tok->bos_id(); });

  py::class_<ModelHolder, ModelPtr>(mod, "Model", "An Infini-attention model (SPEC §2-§4)")
      .def_property_readonly(
          "config", [](const ModelHolder& h) { return from_json(model::config_to_json(h.m.config)); },
          "config.json as a dict")
      .def_property_readonly(
          "tokenizer", [](const ModelHolder& h) { return TokenizerHandle{h.tok}; },
          "The model's Tokenizer")
      .def_property(
          "precision", [](const ModelHolder& h) { return model::precision_name(h.precision); },
          [](ModelHolder& h, const std::string& p) {
            const model::Precision want = model::parse_precision(p, "precision");
            if (want != model::Precision::BF16 && h.m.bf16_weights)
              throw Error("precision: this model holds its linear weights in bf16 (loaded with "
                          "inference=True), so it runs in bf16 only");
            h.precision = want;
          },
          "'fp32' or 'bf16': the products of loss, token_losses, logits, grad and new sessions "
          "(SPEC §8; `--precision` of the command line)")
      .def_property_readonly(
          "bf16_resident", [](const ModelHolder& h) { return bool(h.m.bf16_weights); },
          "True when the linear weights are held in bf16 only (load(..., inference=True))")
      .def("save", &save, py::arg("path"),
           "Writes config.json, model.safetensors (and tokenizer.json) into directory `path`")
      .def("loss", &loss, py::arg("ids"),
           "Mean next-token loss (natural log) of `ids` read as one sequence through the memory; "
           "equals `infini eval` on the same tokens")
      .def("token_losses", &token_losses, py::arg("ids"),
           "Loss of every prediction, numpy float64 [len(ids) - 1]: entry t is -log p(ids[t+1] "
           "| ids[..t]); their mean is loss(ids)")
      .def("logits", &logits, py::arg("ids"),
           "Logits of every position, numpy float32 [len(ids), vocab_size]")
      .def("grad", &grad, py::arg("ids"),
           "Full-BPTT gradient of loss(ids) for every parameter: dict name -> float32 array "
           "(copies); equals `infini grad`")
      .def("parameters", &parameters,
           "Weights by name: read-only numpy views of the model's memory (no copy)")
      .def("session", &make_session, "A new streaming Session (empty memory)")
      .def(
          "load_session",
          [](const ModelPtr& h, const std::string& path) {
            auto s = make_session(h);
            s->session->load_state(path);
            return s;
          },
          py::arg("path"), "A Session restored from a state file (`--state-out` format)");

  py::class_<SessionHandle>(mod, "Session",
                            "Streaming generation in constant memory (one sequence)")
      .def(
          "feed",
          [](SessionHandle& s, const py::handle& ids) {
            const std::vector<int32_t> v = token_ids(ids, s.model->m.config, "feed", 0);
            // In pieces of whole segments, so that Ctrl-C can stop a long prompt between
            // them; cut at segment ends, the session computes exactly what one call would.
            // What was fed before a stop stays fed (`position` tells how far it got).
            const int64_t N = s.model->m.config.segment_length;
            run_interruptible([&](std::atomic<bool>* stop) {
              for (size_t i = 0; i < v.size();) {
                if (stop->load()) throw model::Interrupted();
                const int64_t to_end = N - s.session->segment_position() % N;
                const size_t take = std::min(v.size() - i, size_t(to_end + 15 * N));
                s.session->feed(std::span<const int32_t>(v.data() + i, take));
                i += take;
              }
              return 0;
            });
          },
          py::arg("ids"),
          "Runs token ids through the model (Ctrl-C stops between pieces; `position` tells how "
          "many were fed)")
      .def("generate", &generate, py::arg("max_new_tokens"), py::arg("temperature") = 1.0,
           py::arg("top_k") = 0, py::arg("top_p") = 1.0, py::arg("seed") = 0,
           py::arg("stop") = std::vector<std::string>{},
           "Samples up to max_new_tokens ids (temperature 0: greedy, as `infini generate "
           "--temperature 0`); stops at <eos> (not returned) or after a stop string's last "
           "token. The session keeps every returned token, so it can continue.")
      .def("save", [](const SessionHandle& s, const std::string& p) { s.session->save_state(p); },
           py::arg("path"), "Writes the state file (`--state-out` format)")
      .def("memory", &memory,
           "The compressive memory: {'M': [layers, kv_heads, d, d], 'z': [layers, kv_heads, d]} "
           "(copies)")
      .def_property_readonly("position", [](const SessionHandle& s) { return s.session->position(); },
                             "Tokens fed since the start");

  py::module_ pk = mod.def_submodule("passkey", "Passkey retrieval (docs/passkey.md)");
  pk.def(
      "sample",
      [](const ModelPtr& h, int64_t length, double depth, uint64_t seed, int digits) {
        const tasks::PasskeyGenerator gen(h->tok, digits);
        std::mt19937_64 rng(seed);
        const tasks::PasskeyPrompt p = gen.make(length, depth, gen.random_key(rng));
        if (p.length > (int64_t(1) << 24))
          throw Error("passkey.sample: prompts above 16M tokens are not materialised");
        py::dict d;
        d["key"] = p.key;
        d["prompt"] = p.all_tokens();
        d["answer"] = p.answer;
        d["info_begin"] = p.info_begin;
        return d;
      },
      py::arg("model"), py::arg("length"), py::arg("depth"), py::arg("seed") = 0,
      py::arg("digits") = 5,
      "One passkey prompt for `model`'s tokenizer: {'key', 'prompt' (ids), 'answer' (ids), "
      "'info_begin'}; length counts prompt and answer tokens, as `infini passkey sample`");
  pk.def(
      "evaluate",
      [](const ModelPtr& h, const std::vector<int64_t>& lengths, const std::vector<double>& depths,
         int64_t trials, uint64_t seed, int digits) {
        const tasks::PasskeyGenerator gen(h->tok, digits);
        tasks::PasskeyEvalOptions o;
        o.lengths = lengths;
        o.depths = depths;
        o.trials = trials;
        o.seed = seed;
        o.precision = h->precision;
        nlohmann::json j;
        {
          py::gil_scoped_release nogil;
          j = tasks::evaluate_passkey(h->m, gen, o).to_json();
        }
        j["gates"] = model::memory_gates(h->m);  // as `infini passkey eval --json`
        return from_json(j);
      },
      py::arg("model"), py::arg("lengths"), py::arg("depths"), py::arg("trials") = 1,
      py::arg("seed") = 0, py::arg("digits") = 5,
      "The accuracy grid of `infini passkey eval --json` as a dict (results[].length/.depth/"
      ".accuracy, lengths, gates), streamed through the memory at any length");

  mod.def("_train", &train_run, py::arg("flags"), py::arg("callback"),
          "infini.train's engine; call infini.train(**flags)");
  mod.def("_train_flags_help", &train_flags_help, "The help text of infini.train's flags");
  mod.def("load", &load, py::arg("path"), py::arg("precision") = "fp32",
          py::arg("inference") = false,
          "Loads a model directory; precision 'fp32' or 'bf16' (Model.precision). With "
          "inference=True and precision='bf16' (on a CPU with AVX512-BF16) the linear weights "
          "are held in bf16 only, half their memory, as `infini eval/generate --precision bf16` "
          "do: such a model runs loss, token_losses, logits, sessions and passkey evaluation, "
          "but not grad, save or parameters()");
  mod.def("init", &init, py::arg("config"), py::arg("seed") = 0, py::arg("precision") = "fp32",
          "A new randomly initialised model from a config dict or config.json path "
          "(byte tokenizer)");
}
