// infini convert / infini export: Hugging Face Llama/Qwen2/Qwen2-MoE checkpoints in and out.
#include <cstdio>
#include <memory>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "model/convert.hpp"

namespace infini::cli {

void register_convert(CLI::App& app) {
  struct Opts {
    std::string from, out, memory_update, dtype = "f32";
    int64_t segment_length = 0;
    double gate_init = model::kDefaultConvertGateInit;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Convert a Hugging Face Llama/Qwen2/Qwen2-MoE checkpoint to an Infini-attention model");
  cmd->add_option("--from", o->from, "Hugging Face checkpoint directory")->required();
  cmd->add_option("--out", o->out, "Output model directory")->required();
  cmd->add_option("--segment-length", o->segment_length,
                  "Segment length N (default: the source's infini block, else 2048)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--memory-update", o->memory_update, "linear or delta (default linear)")
      ->check(CLI::IsMember({"linear", "delta"}));
  cmd->add_option("--gate-init", o->gate_init,
                  "Initial beta for checkpoints without gates; sigmoid(beta) is the starting "
                  "weight of memory. Default -2: keeps 88% of the pretrained attention")
      ->capture_default_str()
      ->check(CLI::Range(-60.0, 60.0));
  cmd->add_option("--dtype", o->dtype, "Weight dtype written: f32 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->callback([o] {
    model::ConvertOptions co;
    if (o->segment_length > 0) co.segment_length = o->segment_length;
    if (!o->memory_update.empty())
      co.memory_update =
          o->memory_update == "delta" ? model::MemoryUpdate::Delta : model::MemoryUpdate::Linear;
    co.gate_init = o->gate_init;
    co.bf16 = o->dtype == "bf16";
    std::printf("%s\n", model::convert_hf_checkpoint(o->from, o->out, co).c_str());
  });
}

void register_export(CLI::App& app) {
  struct Opts {
    std::string model, out, dtype = "f32";
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "export", "Write a model in Hugging Face layout (memory gates and infini block kept)");
  cmd->add_option("--model", o->model, "Infini model directory")->required();
  cmd->add_option("--out", o->out, "Output directory")->required();
  cmd->add_option("--dtype", o->dtype, "Weight dtype written: f32 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->callback([o] {
    std::printf("%s\n",
                model::export_hf_checkpoint(o->model, o->out, o->dtype == "bf16").c_str());
  });
}

}  // namespace infini::cli
