// infini generate: streaming text generation with constant memory, saved states and an
// interactive mode. Nothing here holds the whole prompt: it is read, tokenized and fed in
// pieces (src/infer/generate.hpp).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/error.hpp"
#include "infer/generate.hpp"
#include "model/packed_weights.hpp"

namespace infini::cli {

namespace {

struct GenerateOpts {
  std::string model, prompt, prompt_file, state_in, state_out, precision = "fp32";
  bool has_prompt = false;
  int64_t max_new_tokens = 128;
  infer::SamplingOptions sampling;
  std::vector<std::string> stop;
  bool json = false, interactive = false, add_bos = false, ignore_eos = false;
  int64_t prefill_chunk = 256;
  int decode_threads = 0;
};

// An integer range up to 2^63-1 shown as `name` in --help. (CLI::NonNegativeNumber checks a
// double against [0, DBL_MAX]: its message prints DBL_MAX in full, 300 digits.)
CLI::Validator at_least(int64_t lo, const char* name) {
  return CLI::Range(lo, std::numeric_limits<int64_t>::max()).description(name);
}

std::string dump(const nlohmann::json& j) {
  // Generated text may hold invalid UTF-8 (a model can emit any byte): replace, never throw.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Feeds a prompt given as text or file, if any.
infer::FeedStats feed_prompt(infer::Session& s, const io::Tokenizer& tok, const GenerateOpts& o) {
  if (!o.prompt_file.empty()) {
    auto reader = infer::TextChunkReader::open_file(o.prompt_file);
    return infer::feed_text(s, tok, reader);
  }
  if (o.has_prompt) {
    auto reader = infer::TextChunkReader::from_string(o.prompt);
    return infer::feed_text(s, tok, reader);
  }
  return {};
}

// Generation needs logits: an empty sequence starts from <bos> when the tokenizer has one.
void ensure_logits(infer::Session& s, const io::Tokenizer& tok) {
  if (s.has_logits()) return;
  if (tok.bos_id() < 0)
    throw Error("nothing to continue from: give a non-empty --prompt, --prompt-file or --state-in");
  s.feed(tok.bos_id());
}

void emit_stdout(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

void run_once(infer::Session& s, const io::Tokenizer& tok, const GenerateOpts& o) {
  Stopwatch sw;
  const infer::FeedStats fed = feed_prompt(s, tok, o);
  if (o.max_new_tokens > 0) ensure_logits(s, tok);
  infer::Sampler sampler(o.sampling);
  infer::GenerateOptions g;
  g.max_new_tokens = o.max_new_tokens;
  g.stop = o.stop;
  g.keep_state = !o.state_out.empty();
  g.ignore_eos = o.ignore_eos;
  std::string text;
  const infer::GenerateResult r = infer::generate(s, tok, sampler, g, [&](std::string_view t) {
    if (o.json)
      text.append(t);
    else
      emit_stdout(t);
  });
  if (!o.state_out.empty()) s.save_state(o.state_out);
  if (!o.json) {
    if (o.max_new_tokens > 0) emit_stdout("\n");
    return;
  }
  const nlohmann::json j = {
      {"text", text},
      {"prompt_tokens", fed.tokens},
      {"prompt_bytes", fed.bytes},
      {"new_tokens", r.new_tokens},
      {"stop_reason", r.stop_reason},
      {"precision", o.precision},
      {"position", s.position()},
      {"prefill_seconds", fed.seconds},
      {"prefill_model_seconds", fed.model_seconds},
      {"prefill_tokens_per_s", fed.seconds > 0 ? double(fed.tokens) / fed.seconds : 0.0},
      {"prefill_cpu_seconds", fed.cpu_seconds},
      {"decode_seconds", r.seconds},
      {"decode_tokens_per_s", r.seconds > 0 ? double(r.new_tokens) / r.seconds : 0.0},
      {"decode_cpu_seconds", r.cpu_seconds},
      {"decode_tokens_per_cpu_s", r.cpu_seconds > 0 ? double(r.new_tokens) / r.cpu_seconds : 0.0},
      {"prefill_chunk", s.chunk_tokens()},
      {"segment_length", s.config().segment_length},
      {"seconds", sw.seconds()},
      {"peak_rss_mb", peak_rss_mb()}};
  std::printf("%s\n", dump(j).c_str());
}

// One prompt per line of stdin; the state carries across turns. EOF ends the session.
void run_interactive(infer::Session& s, const io::Tokenizer& tok, const GenerateOpts& o) {
  feed_prompt(s, tok, o);  // an optional document to talk about
  const bool tty = isatty(STDIN_FILENO);
  infer::Sampler sampler(o.sampling);  // one stream of random numbers for the whole session
  infer::GenerateOptions g;
  g.max_new_tokens = o.max_new_tokens;
  g.stop = o.stop;
  g.keep_state = true;
  g.ignore_eos = o.ignore_eos;
  std::string line;
  for (int turn = 0;; ++turn) {
    if (tty) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    line.push_back('\n');  // the model sees the line as typed, newline included
    auto reader = infer::TextChunkReader::from_string(line);
    const infer::FeedStats fed = infer::feed_text(s, tok, reader);
    if (o.max_new_tokens > 0) ensure_logits(s, tok);
    std::string text;
    const infer::GenerateResult r = infer::generate(s, tok, sampler, g, [&](std::string_view t) {
      if (o.json)
        text.append(t);
      else
        emit_stdout(t);
    });
    if (o.json) {
      const nlohmann::json j = {{"turn", turn},
                                {"text", text},
                                {"prompt_tokens", fed.tokens},
                                {"new_tokens", r.new_tokens},
                                {"stop_reason", r.stop_reason},
                                {"position", s.position()},
                                {"decode_tokens_per_s", r.seconds > 0 ? double(r.new_tokens) / r.seconds : 0.0},
                                {"peak_rss_mb", peak_rss_mb()}};
      std::printf("%s\n", dump(j).c_str());
      std::fflush(stdout);
    } else {
      emit_stdout("\n");
    }
  }
  if (!std::cin.eof()) throw Error("cannot read standard input");
  if (!o.state_out.empty()) s.save_state(o.state_out);
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateOpts>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Generate text by streaming a prompt through the memory (constant memory use)");
  cmd->add_option("--model", o->model, "Model directory")->required();
  auto* prompt = cmd->add_option("--prompt", o->prompt, "Prompt text (no special tokens added)");
  auto* prompt_file = cmd->add_option(
      "--prompt-file", o->prompt_file,
      "Prompt file of any size, read and tokenized in 64 KiB pieces cut at whitespace; - reads stdin");
  prompt->excludes(prompt_file);
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "Most tokens to generate (0: only read the prompt)")
      ->capture_default_str()
      ->check(at_least(0, "NONNEGATIVE"));
  cmd->add_option("--temperature", o->sampling.temperature, "Sampling temperature; 0 is greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--top-k", o->sampling.top_k, "Sample among the k most likely tokens (0: all)")
      ->capture_default_str()
      ->check(at_least(0, "NONNEGATIVE"));
  cmd->add_option("--top-p", o->sampling.top_p,
                  "Sample among the most likely tokens whose probability reaches p (1: all)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", o->sampling.seed, "Random seed of the sampler")
      ->capture_default_str()
      ->check(non_negative_integer());
  cmd->add_option("--stop", o->stop,
                  "Stop before this string appears in the output (repeatable); <eos> always stops")
      ->each([](const std::string& s) {
        if (s.empty()) throw CLI::ValidationError("--stop", "the stop string must not be empty");
      });
  cmd->add_option("--state-in", o->state_in,
                  "Resume from a state saved by --state-out (the prompt, if any, continues it)");
  cmd->add_option("--state-out", o->state_out,
                  "Save the state after generating (memory, current segment, last token) to FILE");
  cmd->add_flag("--interactive", o->interactive,
                "Read prompts from stdin line by line, keeping the state across turns; EOF exits");
  cmd->add_flag("--add-bos", o->add_bos, "Start a new sequence with the tokenizer's <bos>");
  cmd->add_flag("--ignore-eos", o->ignore_eos,
                "Do not stop at <eos> (benchmarks that must generate exactly --max-new-tokens)");
  cmd->add_option("--prefill-chunk", o->prefill_chunk,
                  "Most prompt tokens per forward call (also capped by the segment length)")
      ->capture_default_str()
      ->check(at_least(1, "POSITIVE"));
  cmd->add_option("--decode-threads", o->decode_threads,
                  "OpenMP threads for decode steps (0: 1 for models under 32M weights, else "
                  "OMP_NUM_THREADS or all cores)")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  add_precision_option(cmd, o->precision, /*inference=*/true);
  cmd->add_flag("--json", o->json,
                "Print one JSON object (per turn when interactive) with the text and timings "
                "instead of streaming text");
  cmd->callback([o, prompt] {
    o->has_prompt = prompt->count() > 0;
    if (o->interactive && o->prompt_file == "-")
      throw Error("--interactive reads stdin, so --prompt-file - cannot be used with it");
    check_output_file(o->state_out, "--state-out");
    infer::SessionOptions so;
    so.precision = model::parse_precision(o->precision, "--precision");
    const model::Model<float> m = model::load_inference_model(o->model, so.precision);
    const auto tok = io::load_tokenizer_for_model(o->model);
    so.prefill_chunk = o->prefill_chunk;
    so.decode_threads = o->decode_threads;
    infer::Session s(m, so);
    if (!o->state_in.empty()) s.load_state(o->state_in);
    if (o->add_bos && s.position() == 0) {
      if (tok->bos_id() < 0) throw Error("--add-bos: the tokenizer of " + o->model + " has no <bos>");
      s.feed(tok->bos_id());
    }
    if (o->interactive)
      run_interactive(s, *tok, *o);
    else
      run_once(s, *tok, *o);
  });
}

}  // namespace infini::cli
