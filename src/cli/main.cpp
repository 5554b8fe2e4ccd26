// infini: the command-line front end. Only this file decides to exit.
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/error.hpp"
#include "ops/bf16_gemm.hpp"
#include "ops/sgemm.hpp"

namespace {

// `infini --version`: the release, and what this build and this CPU multiply with, which is
// what a bug report or a benchmark figure needs next to it.
std::string version_text() {
  std::string s = "infini " INFINI_VERSION "\n";
  s += "CPU: " + infini::cpu_model() + "\n";
  s += infini::ops::sgemm_native_available()
           ? "matrix products: infini's AVX-512 kernel (this CPU has AVX-512)\n"
           : "matrix products: OpenBLAS (no AVX-512 kernel on this CPU or build)\n";
  s += infini::ops::bf16_amx_active()
           ? "--precision bf16: native (Intel AMX TDPBF16PS tile kernel)\n"
       : infini::ops::bf16_native_available()
           ? "--precision bf16: native (AVX512-BF16 VDPBF16PS kernel)\n"
           : "--precision bf16: emulated (no AVX512-BF16 on this CPU or build: products of "
             "bf16-rounded inputs computed in fp32, same results, no speed-up)\n";
#ifdef INFINI_WITH_MPI
  s += "distributed training: MPI\n";
#else
  s += "distributed training: not built (no MPI found at build time)\n";
#endif
  const int threads = infini::omp_threads();
  s += "OpenMP: " + std::to_string(_OPENMP) + ", " + std::to_string(threads) +
       (threads == 1 ? " thread" : " threads");  // CLI11 ends the line
  return s;
}

// When thread binding is asked for (OMP_PROC_BIND, OMP_PLACES, GOMP_CPU_AFFINITY), libgomp
// binds the initial thread to the first place as it loads, and a restarted process inherits
// that one place: all its threads would share one core. Gives this thread the CPUs of all
// places back (the CPUs libgomp found allowed, as the binding asked), so that the restart
// computes the same places. False if that cannot be done.
bool unbind_for_restart() {
  if (omp_get_proc_bind() == omp_proc_bind_false) return true;  // nothing was bound
  std::vector<int> cpus;
  for (int p = 0; p < omp_get_num_places(); ++p) {
    std::vector<int> ids(static_cast<size_t>(omp_get_place_num_procs(p)));
    omp_get_place_proc_ids(p, ids.data());
    cpus.insert(cpus.end(), ids.begin(), ids.end());
  }
  if (cpus.empty()) return true;  // no places: libgomp bound nothing
  const int top = *std::max_element(cpus.begin(), cpus.end());
  cpu_set_t* set = CPU_ALLOC(top + 1);
  if (!set) return false;
  const size_t bytes = CPU_ALLOC_SIZE(top + 1);
  CPU_ZERO_S(bytes, set);
  for (const int c : cpus) CPU_SET_S(c, bytes, set);
  const bool ok = sched_setaffinity(0, bytes, set) == 0;
  CPU_FREE(set);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  // libgomp reads OMP_WAIT_POLICY once, when it loads. By default a waiting thread spins for
  // milliseconds, which on a busy shared machine costs more than the work (training measured
  // 1.5x slower, docs/benchmarks.md); passive waiting costs microseconds per barrier on an idle
  // one. Unless the user chose, restart once with passive waiting (on failure, carry on; where
  // the binding cannot be undone, carry on without the restart).
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT") &&
      unbind_for_restart()) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
  }
  CLI::App app{"infini: Infini-attention transformers (compressive memory across segments)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Print help for every subcommand");
  app.set_version_flag("--version", version_text);  // built only when asked for
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
