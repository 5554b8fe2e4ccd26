// Passkey evaluation: a grid of (length, depth) cells, each with several random keys. Each
// prompt streams through the model segment by segment with the memory carried (activations of
// one segment, prompt tokens generated per segment, logits only at the end), then the answer
// is decoded greedily. Memory use does not grow with the length.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.hpp"
#include "model/precision.hpp"
#include "tasks/passkey.hpp"

namespace infini::tasks {

struct PasskeyEvalOptions {
  std::vector<int64_t> lengths;  // sample tokens (prompt + answer)
  std::vector<double> depths;    // in [0, 1]
  int64_t trials = 1;            // keys per cell
  uint64_t seed = 0;             // keys of cell (length i, depth j, trial t) depend on all four
  // Prompts of one length run as a batch through the whole segments; at most this many rows
  // (sequences x segment length) at once bounds the activation memory.
  int64_t max_batch_rows = 8192;
  model::Precision precision = model::Precision::FP32;  // of the products
};

struct PasskeyTrial {
  std::string key, predicted;  // predicted: the digits decoded (may be shorter or longer)
  std::string text;            // the decoded answer as generated
  bool exact = false;
  double digit_accuracy = 0;   // fraction of the key's digits predicted at their position
};

struct PasskeyCell {
  int64_t length = 0;
  double depth = 0;
  std::vector<PasskeyTrial> trials;
  double accuracy() const;        // exact-match rate
  double digit_accuracy() const;  // mean per-digit accuracy
};

struct PasskeyLengthStats {
  int64_t length = 0;
  int64_t prompts = 0;
  double seconds = 0;         // wall time for all prompts of this length
  double peak_rss_mb = 0;     // the process's peak resident memory after this length
};

struct PasskeyEvalResult {
  std::vector<PasskeyCell> cells;  // lengths outer, depths inner, in the order given
  std::vector<PasskeyLengthStats> per_length;
  // {"results": [{length, depth, accuracy, digit_accuracy, trials, correct, keys,
  //  predictions, outputs}], "lengths": [{length, prompts, seconds, seconds_per_prompt, tokens_per_s,
  //  peak_rss_mb}], "accuracy", "digit_accuracy"}
  nlohmann::json to_json() const;
  std::string markdown() const;  // the grid (rows: lengths, columns: depths) and per-length stats
  double accuracy() const;
  double digit_accuracy() const;
};

// Called after each length with the cells of that length (for progress output).
using PasskeyProgress = std::function<void(const PasskeyLengthStats&, const std::vector<PasskeyCell>&)>;

PasskeyEvalResult evaluate_passkey(const model::Model<float>& m, const PasskeyGenerator& gen,
                                   const PasskeyEvalOptions& opts,
                                   const PasskeyProgress& progress = {});

// One prompt streamed through the model and answered greedily (batch 1). Returns the decoded
// text of the generated tokens (at most max_new tokens; stops at the first non-digit after a
// digit).
std::string answer_prompt(const model::Model<float>& m, const PasskeyPrompt& p,
                          const io::Tokenizer& tok, int64_t max_new);

// "1K" for 1024, "1M" for 1048576, otherwise the number.
std::string length_label(int64_t n);
// Parses "4096", "4K" (x1024), "1M" (x1048576); throws naming `flag`.
int64_t parse_length(const std::string& s, const std::string& flag);

// A self-contained SVG heatmap: depth on x, length on y, colour = exact-match accuracy, with
// the value printed in every cell and labelled axes.
std::string passkey_heatmap_svg(const PasskeyEvalResult& r, const std::string& title);

// Scores a decoded answer against the key.
PasskeyTrial score_answer(const std::string& key, const std::string& decoded);

}  // namespace infini::tasks
