// infini: the command-line front end. Only this file decides to exit.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/error.hpp"

int main(int argc, char** argv) {
  // libgomp reads OMP_WAIT_POLICY once, when it loads. By default a waiting thread spins for
  // milliseconds, which on a busy shared machine costs more than the work (training measured
  // 1.5x slower, docs/benchmarks.md); passive waiting costs microseconds per barrier on an idle
  // one. Unless the user chose, restart once with passive waiting (on failure, carry on).
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  CLI::App app{"infini: Infini-attention transformers (compressive memory across segments)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Print help for every subcommand");
  infini::cli::register_init(app);
  infini::cli::register_eval(app);
  infini::cli::register_grad(app);
  infini::cli::register_convert(app);
  infini::cli::register_export(app);
  infini::cli::register_generate(app);
  infini::cli::register_tokenize(app);
  infini::cli::register_train(app);
  infini::cli::register_passkey(app);
  infini::cli::register_lora(app);
  infini::cli::register_bench(app);
  infini::cli::check_numeric_options(app);
  // Bare `infini` prints its usage (and, on stderr, the one-line reason of every bad input);
  // an unknown word where the subcommand goes is named, with the subcommands there are (CLI11
  // says only "A subcommand is required").
  if (argc == 1) {
    app.name(argv[0]);  // what parse() would set, for the usage line
    std::fputs(app.help().c_str(), stdout);
    std::fputs("infini: error: a subcommand is required (see --help)\n", stderr);
    return 1;
  }
  if (argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      known = known || sub->check_name(argv[1]);
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr,
                   "infini: error: unknown subcommand '%s' (subcommands: %s; see --help)\n",
                   argv[1], names.c_str());
      return 1;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const infini::Error& e) {
    std::fprintf(stderr, "infini: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "infini: error: out of memory\n");
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "infini: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
