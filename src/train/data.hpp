// Training data: documents tokenized once into a validated binary cache, a train/validation
// split by documents, and the pluggable BatchSource that the trainer pulls [B, T] batches from.
//
// Seam for other trainers (passkey fine-tuning, data-parallel training): implement
// BatchSource. A source yields the GLOBAL batch of a step ([batch, seq_len] tokens plus an
// optional loss mask); the trainer splits it into micro-batches (and, data-parallel, into
// per-rank rows). Sources must be deterministic: the batches depend only on how the source
// was built and on the state it was restored from, so a resumed run sees the same data.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/tokenizer.hpp"
#include "model/state.hpp"

namespace infini::train {

// ---------------------------------------------------------------------------------------
// Batches

struct Batch {
  int64_t batch = 0, seq_len = 0;
  std::vector<int32_t> tokens;  // [batch, seq_len], row-major
  // Empty (every prediction counts) or [batch, seq_len]: position t's prediction of token t+1
  // counts only when loss_mask[b*seq_len + t] != 0 (model::SequenceOptions::loss_mask).
  std::vector<uint8_t> loss_mask;
  // Empty (every sequence starts from the zero memory, SPEC §4) or the memory each of the
  // `batch` sequences starts from (state passing, train/background_state.hpp). No gradient
  // flows into it.
  model::MemoryState<float> initial_state;
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // Fills `out` with the next global batch: `batch` sequences of `seq_len` tokens each.
  virtual void next(int64_t batch, int64_t seq_len, Batch& out) = 0;
  // Position in the data stream, saved in trainer.json and restored on --resume.
  virtual nlohmann::json state() const = 0;
  // Throws infini::Error when `state` was not written by an equivalent source.
  virtual void restore(const nlohmann::json& state) = 0;
  // Identifies the data and its order (recorded in checkpoints; a resume must match it).
  virtual std::string fingerprint() const = 0;
};

// ---------------------------------------------------------------------------------------
// Documents and the token cache

struct Document {
  std::string name;             // file path (a held-out tail is named "<path>#tail")
  std::vector<int32_t> tokens;  // no special tokens
};

struct Corpus {
  std::vector<Document> train, val;
  std::string fingerprint;  // hex FNV-1a of the inputs' bytes, their names and the tokenizer
  bool from_cache = false;  // true when the token cache was valid and reused
  int64_t train_tokens() const;
  int64_t val_tokens() const;
};

struct DataOptions {
  std::vector<std::string> train_paths;  // files or directories (searched recursively)
  std::vector<std::string> val_paths;    // explicit validation documents; overrides the fraction
  // Without val_paths: round(val_fraction * documents) documents, spread evenly over the
  // sorted list, are held out; when that rounds to 0 (e.g. one document) the last
  // val_fraction of the last document's tokens is held out instead. 0 disables validation.
  double val_fraction = 0.05;
  std::string cache_path;    // binary token cache; empty disables caching
  std::string tokenizer_id;  // identifies the tokenizer (e.g. "byte", or a hash of tokenizer.json)
};

// Lists the files of `paths` (directories recursively, hidden entries skipped, sorted).
std::vector<std::string> list_input_files(const std::vector<std::string>& paths);

// Reads, tokenizes (or loads from the cache when its fingerprint matches), and splits.
// `log` (may be null) receives one line per notable event ("token cache: reused ...").
Corpus load_corpus(const io::Tokenizer& tok, const DataOptions& opts, std::string* log = nullptr);

// The binary token cache: magic "INFTOKC1", u32 version, u32 0, u64 header length, a JSON
// header (fingerprint, documents with their roles and lengths), int32 tokens, u64 FNV-1a of
// the tokens. load_token_cache returns false (with `why`) when the file is missing, of
// another version or fingerprint, truncated or corrupt; it never trusts a partial file, and
// no header, however hostile, makes it allocate more than the file holds.
struct CachedDoc {
  std::string name;
  bool val = false;
  std::vector<int32_t> tokens;
};
void save_token_cache(const std::string& path, const std::string& fingerprint,
                      const std::vector<CachedDoc>& docs);
bool load_token_cache(const std::string& path, const std::string& fingerprint,
                      std::vector<CachedDoc>& docs, std::string& why);
// The file's bytes, and their reading (what save and load do after and before the I/O).
std::string serialize_token_cache(const std::string& fingerprint,
                                  const std::vector<CachedDoc>& docs);
bool parse_token_cache(std::string_view bytes, const std::string& fingerprint,
                       std::vector<CachedDoc>& docs, std::string& why);

// 64-bit FNV-1a, for fingerprints and checksums.
uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ULL);
std::string hex64(uint64_t v);

// ---------------------------------------------------------------------------------------
// The default source: windows of seq_len tokens over the training documents

// The training documents are concatenated, each followed by `eos`, into one stream. Each
// epoch cuts it into windows of seq_len tokens starting at an epoch-dependent offset in
// [0, seq_len) and visits them in a seeded random order; a batch takes the next `batch`
// windows, rolling over into the next epoch. State: {epoch, index}.
class WindowSource final : public BatchSource {
 public:
  WindowSource(const std::vector<Document>& docs, int32_t eos, int64_t seq_len, uint64_t seed,
               std::string data_fingerprint);
  void next(int64_t batch, int64_t seq_len, Batch& out) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  std::string fingerprint() const override;

  int64_t stream_tokens() const { return int64_t(stream_.size()); }
  int64_t windows_per_epoch() const { return int64_t(order_.size()); }
  int64_t epoch() const { return epoch_; }

 private:
  void start_epoch(int64_t epoch);
  std::vector<int32_t> stream_;
  int64_t seq_len_;
  uint64_t seed_;
  std::string data_fingerprint_;
  int64_t epoch_ = 0, index_ = 0, offset_ = 0;
  std::vector<int64_t> order_;  // window start offsets in this epoch's visiting order
};

}  // namespace infini::train
