// Passkey retrieval (Mohtashami & Jaggi 2023; Infini-attention paper §4.2): a random number
// hidden at a chosen depth in periodic filler text, asked for at the end.
//
// A prompt is the concatenation of separately tokenized parts (no special tokens):
//
//   head    = enc(HEADER + "\n")
//   prefix  = the first n_pre tokens of the filler stream
//   info    = enc("\n" + "The pass key is K. Remember it. K is the pass key." + "\n")
//   suffix  = the first n_suf tokens of the filler stream
//   tail    = enc("\n" + "What is the pass key? The pass key is")
//   answer  = enc(" " + K)                      (not part of the prompt; the target)
//
// The filler stream is enc(FILLER + " ") repeated: the filler text joined by single spaces,
// cut at a token boundary. The LENGTH of a sample counts every token of prompt + answer, so a
// model answering a 1M-token sample has seen exactly 1M tokens when it emits the last digit;
// n_pre + n_suf = length - |head| - |info| - |tail| - |answer|, n_pre = round(depth *
// (n_pre + n_suf)). (Counting the answer also keeps the question in the answer's segment when
// the length is a multiple of the segment length, as every length of the usual grid is.) Building from token pieces makes lengths exact for any tokenizer; for a
// BPE tokenizer the ids can differ slightly from tokenizing the decoded text in one go (only
// at the joins), and the model sees exactly these ids.
//
// Prompts are lazy: tokens(start, count) produces any window without materialising the whole
// prompt, so a 1M-token prompt costs a few kilobytes.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/tokenizer.hpp"
#include "train/data.hpp"

namespace infini::tasks {

inline constexpr const char* kPasskeyHeader =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there.";
inline constexpr const char* kPasskeyFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
inline constexpr const char* kPasskeyQuestion = "What is the pass key? The pass key is";

// One prompt, described by its pieces; the tokens are produced on demand.
struct PasskeyPrompt {
  std::string key;                  // the passkey digits, e.g. "40213"
  int64_t length = 0;               // prompt tokens: the sample's length minus the answer's
  double depth = 0;                 // the requested depth
  int64_t n_pre = 0, n_suf = 0;     // filler tokens before / after the info line
  int64_t info_begin = 0;           // index of the info line's first token
  // Tokens [recall_begin, recall_end) of the prompt spell the key's second occurrence in the
  // info line ("Remember it. K is ..."): predictable from the first one, locally or from
  // memory when a segment boundary falls between them.
  int64_t recall_begin = 0, recall_end = 0;
  std::shared_ptr<const std::vector<int32_t>> head, filler, tail;  // shared by all prompts
  std::vector<int32_t> info, answer;

  int64_t info_end() const { return info_begin + int64_t(info.size()); }
  int64_t total_length() const { return length + int64_t(answer.size()); }  // as requested
  // Writes prompt tokens [start, start + count) into out; throws when out of range.
  void tokens(int64_t start, int64_t count, int32_t* out) const;
  std::vector<int32_t> all_tokens() const;  // the whole prompt (small lengths only)
};

class PasskeyGenerator {
 public:
  // digits: length of the passkey (1 .. 18); keys are uniform over [10^(digits-1), 10^digits).
  PasskeyGenerator(std::shared_ptr<const io::Tokenizer> tok, int digits = 5);

  // The shortest sample (prompt + answer, no filler) this generator can build for keys of its
  // digit count (exact for the byte tokenizer; the worst of 64 keys for a BPE tokenizer).
  int64_t min_length() const { return min_length_; }
  int digits() const { return digits_; }
  const io::Tokenizer& tokenizer() const { return *tok_; }
  // Largest number of answer tokens over keys of this digit count (for sizing sequences).
  int64_t max_answer_tokens() const { return max_answer_; }

  // A sample of exactly `length` tokens (prompt + answer) with the info line at `depth` in
  // [0, 1]. Throws infini::Error naming the length when it is below what the key needs.
  PasskeyPrompt make(int64_t length, double depth, const std::string& key) const;
  std::string random_key(std::mt19937_64& rng) const;
  // Tokens [start, start + count) of the endless filler stream (the background text of
  // passkey training with state passing, train/background_state.hpp).
  void filler_tokens(int64_t start, int64_t count, int32_t* out) const;

 private:
  std::shared_ptr<const io::Tokenizer> tok_;
  int digits_;
  std::shared_ptr<const std::vector<int32_t>> head_, filler_, tail_;
  int64_t min_length_ = 0, max_answer_ = 0;
};

// Training data for `infini passkey train`: each batch is `batch` samples (prompt + answer) of
// one length. The length is drawn uniformly from
// [min_len, cur_max], where cur_max grows linearly from min_len to max_len over the first
// curriculum_steps batches (0: always max_len); depths uniform in [0, 1] (or 1 for a share
// end_fraction of the samples); keys random.
// loss: which predictions count (the loss mask).
enum class PasskeyLoss {
  All,     // every token
  Answer,  // the answer tokens only
  Recall,  // the answer and the key's second occurrence in the info line (twice the digit
           // targets; the second copy is often in the first copy's segment, an easy lesson in
           // content-based lookup that the memory path shares q and k with)
};
PasskeyLoss parse_passkey_loss(const std::string& s);  // "all" | "answer" | "recall"
const char* passkey_loss_name(PasskeyLoss l);

struct PasskeySourceOptions {
  int64_t min_len = 256, max_len = 2048;
  int64_t curriculum_steps = 0;
  int64_t len_multiple = 1;  // lengths are rounded down to a multiple of this (>= min_len)
  PasskeyLoss loss = PasskeyLoss::Answer;
  // Share of samples whose info line sits at depth 1 (just before the question, in the
  // question's segment for short segments): the only case that local attention must solve
  // alone, and one a uniform depth almost never draws.
  double end_fraction = 0.0;
  uint64_t seed = 0;
};

class PasskeySource final : public train::BatchSource {
 public:
  PasskeySource(std::shared_ptr<const PasskeyGenerator> gen, PasskeySourceOptions opts);
  // seq_len is ignored: each batch carries its own length (<= max_len).
  void next(int64_t batch, int64_t seq_len, train::Batch& out) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  std::string fingerprint() const override;
  int64_t batches_drawn() const { return index_; }

 private:
  std::shared_ptr<const PasskeyGenerator> gen_;
  PasskeySourceOptions opts_;
  int64_t index_ = 0;  // batches drawn; each batch's randomness comes from (seed, index)
};

}  // namespace infini::tasks
