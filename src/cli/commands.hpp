// Each subcommand lives in its own file and registers itself on the app.
#pragma once
#include <CLI/CLI.hpp>

namespace infini::cli {

void register_init(CLI::App& app);
void register_eval(CLI::App& app);
void register_grad(CLI::App& app);

}  // namespace infini::cli
