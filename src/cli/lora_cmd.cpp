// infini lora merge: fold a LoRA adapter (PEFT layout, model/lora.hpp) into a model directory.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "io/text.hpp"
#include "io/tokenizer.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"

namespace infini::cli {

namespace fs = std::filesystem;

void register_lora(CLI::App& app) {
  struct Opts {
    std::string model, adapter, out;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* lora = app.add_subcommand("lora", "LoRA adapters (PEFT layout)");
  lora->require_subcommand(1);
  CLI::App* cmd = lora->add_subcommand(
      "merge", "Fold an adapter into its base model: W += (alpha/r)·B·A on q/k/v/o, gates "
               "beta replaced by the adapter's");
  cmd->add_option("--model", o->model, "Base model directory")->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--adapter", o->adapter,
                  "Adapter directory (adapter_config.json, adapter_model.safetensors)")
      ->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--out", o->out, "Output model directory (created; tokenizer.json copied)")
      ->required();
  cmd->callback([o] {
    std::error_code same_ec;
    if (fs::equivalent(o->out, o->model, same_ec))
      throw Error("--out must differ from --model (the base model is not overwritten)");
    const model::Model<float> base = model::load_model(o->model);
    // The base model's tokenizer goes into the merged model: check that it loads before
    // anything is written.
    (void)io::load_tokenizer_for_model(o->model);
    const std::string tokenizer_json = model::read_tokenizer_json(o->model);
    const model::LoraAdapter<float> a = model::load_lora(o->adapter, base);
    const model::Model<float> merged = model::lora_merge(base, a);
    model::write_model_dir(o->out, [&] {
      model::save_model(merged, o->out);
      model::write_tokenizer_json(o->out, tokenizer_json);
    });
    std::printf("merged %s (rank %lld, alpha %g) into %s\n", o->adapter.c_str(),
                (long long)a.layout.config.rank, a.layout.config.alpha, o->out.c_str());
  });
}

}  // namespace infini::cli
