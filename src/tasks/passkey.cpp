#include "tasks/passkey.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace infini::tasks {

namespace {

std::string info_text(const std::string& key) {
  return "\nThe pass key is " + key + ". Remember it. " + key + " is the pass key.\n";
}

uint64_t pow10(int d) {
  uint64_t p = 1;
  for (int i = 0; i < d; ++i) p *= 10;
  return p;
}

}  // namespace

void PasskeyPrompt::tokens(int64_t start, int64_t count, int32_t* out) const {
  if (start < 0 || count < 0 || start + count > length)
    throw Error("passkey prompt: tokens [" + std::to_string(start) + ", " +
                std::to_string(start + count) + ") outside a prompt of " +
                std::to_string(length) + " tokens");
  const int64_t h = int64_t(head->size()), U = int64_t(filler->size());
  // The sections in order: head, filler prefix, info, filler suffix, tail.
  const int64_t b1 = h, b2 = b1 + n_pre, b3 = b2 + int64_t(info.size()), b4 = b3 + n_suf;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t p = start + i;
    int32_t t;
    if (p < b1) t = (*head)[size_t(p)];
    else if (p < b2) t = (*filler)[size_t((p - b1) % U)];
    else if (p < b3) t = info[size_t(p - b2)];
    else if (p < b4) t = (*filler)[size_t((p - b3) % U)];
    else t = (*tail)[size_t(p - b4)];
    out[i] = t;
  }
}

std::vector<int32_t> PasskeyPrompt::all_tokens() const {
  std::vector<int32_t> v(static_cast<size_t>(length));
  tokens(0, length, v.data());
  return v;
}

PasskeyGenerator::PasskeyGenerator(std::shared_ptr<const io::Tokenizer> tok, int digits)
    : tok_(std::move(tok)), digits_(digits) {
  if (!tok_) throw Error("passkey generator: no tokenizer");
  if (digits < 1 || digits > 18)
    throw Error("passkey: --digits must be in [1, 18], got " + std::to_string(digits));
  head_ = std::make_shared<std::vector<int32_t>>(tok_->encode(std::string(kPasskeyHeader) + "\n"));
  filler_ = std::make_shared<std::vector<int32_t>>(tok_->encode(std::string(kPasskeyFiller) + " "));
  tail_ = std::make_shared<std::vector<int32_t>>(
      tok_->encode(std::string("\n") + kPasskeyQuestion));
  if (filler_->empty()) throw Error("passkey generator: the tokenizer encodes the filler as nothing");
  // The key's token count can vary with a BPE tokenizer: take the worst case over a fixed set
  // of keys (exact for the byte tokenizer, where every key has the same length).
  std::mt19937_64 rng(12345);
  int64_t worst_info = 0;
  for (int i = 0; i < 64; ++i) {
    const std::string k = random_key(rng);
    worst_info = std::max(worst_info, int64_t(tok_->encode(info_text(k)).size()));
    max_answer_ = std::max(max_answer_, int64_t(tok_->encode(" " + k).size()));
  }
  min_length_ = int64_t(head_->size()) + worst_info + int64_t(tail_->size()) + max_answer_;
}

std::string PasskeyGenerator::random_key(std::mt19937_64& rng) const {
  const uint64_t lo = pow10(digits_ - 1), hi = pow10(digits_);
  const uint64_t k = lo + rng() % (hi - lo);
  return std::to_string(k);
}

void PasskeyGenerator::filler_tokens(int64_t start, int64_t count, int32_t* out) const {
  const int64_t U = int64_t(filler_->size());
  for (int64_t i = 0; i < count; ++i) out[i] = (*filler_)[size_t((start + i) % U)];
}

PasskeyPrompt PasskeyGenerator::make(int64_t length, double depth, const std::string& key) const {
  if (!(depth >= 0.0 && depth <= 1.0))
    throw Error("passkey: depth " + std::to_string(depth) + " is outside [0, 1]");
  if (key.empty() || !std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; }))
    throw Error("passkey: key '" + key + "' is not a string of digits");
  PasskeyPrompt p;
  p.key = key;
  p.depth = depth;
  p.head = head_;
  p.filler = filler_;
  p.tail = tail_;
  p.info = tok_->encode(info_text(key));
  p.answer = tok_->encode(" " + key);
  const int64_t fixed = int64_t(head_->size() + p.info.size() + tail_->size() + p.answer.size());
  if (length < fixed)
    throw Error("passkey: length " + std::to_string(length) + " is below the " +
                std::to_string(fixed) + " tokens a sample needs without filler");
  const int64_t filler = length - fixed;
  p.length = length - int64_t(p.answer.size());
  p.n_pre = std::llround(depth * double(filler));
  p.n_suf = filler - p.n_pre;
  p.info_begin = int64_t(head_->size()) + p.n_pre;
  // The second key spans these characters of the info text; find the tokens that cover them.
  const std::string text = info_text(key);
  const size_t c0 = text.find("Remember it. ") + std::string("Remember it. ").size();
  const size_t c1 = c0 + key.size();
  p.recall_begin = p.recall_end = -1;
  size_t done = 0;  // characters decoded before token i
  for (size_t i = 0; i < p.info.size(); ++i) {
    const size_t upto = tok_->decode(std::vector<int32_t>(p.info.begin(), p.info.begin() + long(i) + 1)).size();
    if (upto > c0 && done < c1) {
      if (p.recall_begin < 0) p.recall_begin = p.info_begin + int64_t(i);
      p.recall_end = p.info_begin + int64_t(i) + 1;
    }
    done = upto;
  }
  if (p.recall_begin < 0) p.recall_begin = p.recall_end = p.info_begin;
  return p;
}

// ---------------------------------------------------------------------------------------

PasskeyLoss parse_passkey_loss(const std::string& s) {
  if (s == "all") return PasskeyLoss::All;
  if (s == "answer") return PasskeyLoss::Answer;
  if (s == "recall") return PasskeyLoss::Recall;
  throw Error("--loss must be answer, recall or all, got '" + s + "'");
}

const char* passkey_loss_name(PasskeyLoss l) {
  switch (l) {
    case PasskeyLoss::All: return "all";
    case PasskeyLoss::Answer: return "answer";
    case PasskeyLoss::Recall: return "recall";
  }
  return "?";
}

PasskeySource::PasskeySource(std::shared_ptr<const PasskeyGenerator> gen, PasskeySourceOptions o)
    : gen_(std::move(gen)), opts_(o) {
  const int64_t need = gen_->min_length();
  if (opts_.min_len < need)
    throw Error("passkey: --min-len " + std::to_string(opts_.min_len) +
                " is below the shortest sample (" + std::to_string(need) + " tokens)");
  if (opts_.max_len < opts_.min_len)
    throw Error("passkey: --max-len must be >= --min-len");
  if (opts_.len_multiple < 1) opts_.len_multiple = 1;
  if (!(opts_.end_fraction >= 0 && opts_.end_fraction <= 1))
    throw Error("passkey: --end-fraction must be in [0, 1]");
}

void PasskeySource::next(int64_t batch, int64_t /*seq_len*/, train::Batch& out) {
  // Each batch depends only on (seed, index): a resumed run sees the same data.
  std::mt19937_64 rng(opts_.seed * 0x9E3779B97F4A7C15ULL + uint64_t(index_) + 1);
  int64_t hi = opts_.max_len;
  if (opts_.curriculum_steps > 0 && index_ < opts_.curriculum_steps)
    hi = opts_.min_len +
         (opts_.max_len - opts_.min_len) * (index_ + 1) / opts_.curriculum_steps;
  int64_t T = opts_.min_len + int64_t(rng() % uint64_t(hi - opts_.min_len + 1));
  T = std::max(opts_.min_len, T / opts_.len_multiple * opts_.len_multiple);
  ++index_;

  out.batch = batch;
  out.seq_len = T;
  out.tokens.assign(size_t(batch * T), 0);
  out.loss_mask.clear();
  if (opts_.loss != PasskeyLoss::All) out.loss_mask.assign(size_t(batch * T), 0);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int64_t b = 0; b < batch; ++b) {
    const std::string key = gen_->random_key(rng);
    const double u = unit(rng), depth = unit(rng);
    const PasskeyPrompt p = gen_->make(T, u < opts_.end_fraction ? 1.0 : depth, key);
    const int64_t P = p.length;
    int32_t* row = out.tokens.data() + b * T;
    p.tokens(0, P, row);
    std::copy(p.answer.begin(), p.answer.end(), row + P);
    // Position t predicts token t+1: the answer tokens are predicted from P-1 .. T-2.
    if (opts_.loss != PasskeyLoss::All)
      for (int64_t t = P - 1; t < T - 1; ++t) out.loss_mask[size_t(b * T + t)] = 1;
    if (opts_.loss == PasskeyLoss::Recall)
      for (int64_t t = p.recall_begin - 1; t < p.recall_end - 1; ++t)
        if (t >= 0) out.loss_mask[size_t(b * T + t)] = 1;
  }
}

nlohmann::json PasskeySource::state() const { return {{"batches", index_}}; }

void PasskeySource::restore(const nlohmann::json& state) {
  if (!state.is_object() || !state.contains("batches") || !state["batches"].is_number_integer())
    throw Error("passkey: the checkpoint's data state is not a passkey source state");
  index_ = state["batches"].get<int64_t>();
}

std::string PasskeySource::fingerprint() const {
  return "passkey(digits=" + std::to_string(gen_->digits()) +
         ",min=" + std::to_string(opts_.min_len) + ",max=" + std::to_string(opts_.max_len) +
         ",curriculum=" + std::to_string(opts_.curriculum_steps) +
         ",multiple=" + std::to_string(opts_.len_multiple) +
         ",loss=" + passkey_loss_name(opts_.loss) +
         (opts_.end_fraction > 0 ? ",end=" + std::to_string(opts_.end_fraction) : std::string()) +
         ",seed=" + std::to_string(opts_.seed) + ")";
}

}  // namespace infini::tasks
