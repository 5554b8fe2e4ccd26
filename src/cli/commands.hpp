// Each subcommand lives in its own file and registers itself on the app.
#pragma once
#include <CLI/CLI.hpp>

namespace infini::cli {

void register_init(CLI::App& app);
void register_eval(CLI::App& app);
void register_grad(CLI::App& app);
void register_convert(CLI::App& app);
void register_export(CLI::App& app);
void register_generate(CLI::App& app);
void register_tokenize(CLI::App& app);  // also registers detokenize
void register_train(CLI::App& app);
void register_passkey(CLI::App& app);  // passkey train | eval | sample
void register_lora(CLI::App& app);     // lora merge
void register_bench(CLI::App& app);

}  // namespace infini::cli
