// Byte-pair-encoding model with Hugging Face `tokenizers` semantics (internal).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace infini::io::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;  // "" when absent
  std::string end_of_word_suffix;         // "" when absent
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  // merges: (left, right) token strings in rank order. Throws std::invalid_argument
  // naming the offending merge when a part or the merged token is not in vocab.
  BpeModel(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           BpeOptions options);

  // Appends the ids of one pre-token. Throws std::runtime_error when an unknown
  // character needs unk_token and that token is not in the vocabulary.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  const Vocab& vocab() const { return vocab_; }
  // The token string for id, or nullptr when the id is not in the vocabulary.
  const std::string* id_to_token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  // Open-addressing map from a packed (left id, right id) pair to its merge.
  class PairMap {
   public:
    void reserve(size_t n);
    void insert_or_assign(uint64_t key, Merge m);
    const Merge* find(uint64_t key) const;

   private:
    static constexpr uint64_t kEmpty = ~uint64_t{0};
    std::vector<uint64_t> keys_;
    std::vector<Merge> vals_;
    size_t mask_ = 0, size_ = 0;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  Vocab vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  PairMap merges_;
  BpeOptions opt_;
  std::optional<int32_t> unk_id_;
  int32_t byte_ids_[256];  // ids of "<0xNN>" for byte fallback, -1 when absent

  // Cache of pre-token -> ids for short pre-tokens (text repeats words a lot).
  static constexpr size_t kCacheMaxWordBytes = 256;
  static constexpr size_t kCacheCapacity = 1 << 17;
  mutable std::shared_mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace infini::io::tok
