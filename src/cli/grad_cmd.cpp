// infini grad: the full-BPTT gradient of the eval loss with respect to every parameter.
#include <cstdio>
#include <memory>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "io/text.hpp"
#include "model/bptt.hpp"

namespace infini::cli {

void register_grad(CLI::App& app) {
  struct Opts {
    std::string model, data, out, precision = "fp32";
    // One call: keeping activations would fault in fresh pages for no reuse (2.5 s against
    // 8.8 s for 64K tokens of configs/tiny.json), so the default keeps none.
    int64_t activation_mb = 0;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "grad", "Write the gradient of the eval loss for every parameter (F32 safetensors)");
  cmd->add_option("--model", o->model, "Model directory")->required();
  cmd->add_option("--data", o->data, "Text file; tokenized whole, no special tokens added")
      ->required();
  cmd->add_option("--out", o->out, "Output .safetensors file; tensors named as the parameters")
      ->required();
  add_activation_memory_option(cmd, o->activation_mb);
  add_precision_option(cmd, o->precision);
  cmd->callback([o] {
    const model::Model<float> m = model::load_model(o->model);
    const auto tok = io::load_tokenizer_for_model(o->model);
    const std::vector<int32_t> ids = io::tokenize_file(*tok, o->data, 2);
    model::ForwardContext<float> ctx(m.config);
    ctx.precision = model::parse_precision(o->precision, "--precision");
    model::SequenceWorkspace<float> ws;
    model::SequenceOptions so;
    so.keep_activations_bytes = o->activation_mb << 20;
    std::vector<float> grads(size_t(m.layout.total), 0.0f);
    const model::LossResult r = model::sequence_loss<float>(
        m, ctx, ids.data(), 1, int64_t(ids.size()), grads.data(), so, ws);
    model::save_tensors(m.layout, grads.data(), o->out);
    std::printf("loss %.6f  wrote %s  (%s)\n", r.mean(), o->out.c_str(), o->precision.c_str());
  });
}

}  // namespace infini::cli
