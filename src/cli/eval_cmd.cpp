// infini eval: the loss (SPEC §2) of a whole file read as one sequence.
#include <cmath>
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "io/text.hpp"
#include "model/bptt.hpp"
#include "model/packed_weights.hpp"

namespace infini::cli {

void register_eval(CLI::App& app) {
  struct Opts {
    std::string model, data, precision = "fp32";
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Loss and perplexity of a text file read as one sequence through the memory");
  cmd->add_option("--model", o->model, "Model directory")->required();
  cmd->add_option("--data", o->data, "Text file; tokenized whole, no special tokens added")
      ->required();
  cmd->add_flag("--json", o->json, "Print one JSON object instead of text");
  add_precision_option(cmd, o->precision, /*inference=*/true);
  cmd->callback([o] {
    Stopwatch sw;
    const model::Precision precision = model::parse_precision(o->precision, "--precision");
    const model::Model<float> m = model::load_inference_model(o->model, precision);
    const auto tok = io::load_tokenizer_for_model(o->model);
    const std::vector<int32_t> ids = io::tokenize_file(*tok, o->data, 2);
    model::ForwardContext<float> ctx(m.config);
    ctx.precision = precision;
    model::SequenceWorkspace<float> ws;
    const model::LossResult r = model::sequence_loss<float>(
        m, ctx, ids.data(), 1, int64_t(ids.size()), nullptr, {}, ws);
    const double loss = r.mean(), secs = sw.seconds();
    if (o->json) {
      nlohmann::json j = {{"loss", loss},
                          {"ppl", std::exp(loss)},
                          {"tokens", ids.size()},
                          {"predicted", r.predicted},
                          {"precision", o->precision},
                          {"segments", (int64_t(ids.size()) + m.config.segment_length - 1) /
                                           m.config.segment_length},
                          {"seconds", secs},
                          {"peak_rss_mb", peak_rss_mb()}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("loss %.6f  ppl %.4f  tokens %zu  %s  (%.2f s)\n", loss, std::exp(loss),
                  ids.size(), o->precision.c_str(), secs);
    }
  });
}

}  // namespace infini::cli
