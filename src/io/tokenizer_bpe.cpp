#include "io/tokenizer_bpe.hpp"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <queue>
#include <stdexcept>

#include "core/hash.hpp"
#include "io/tokenizer_unicode.hpp"

namespace infini::io::tok {

void BpeModel::PairMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  keys_.assign(cap, kEmpty);
  vals_.assign(cap, Merge{0, 0});
  mask_ = cap - 1;
  size_ = 0;
}

void BpeModel::PairMap::insert_or_assign(uint64_t key, Merge m) {
  if ((size_ + 1) * 2 > keys_.size()) {
    // Grow: rehash everything into a table twice the size.
    std::vector<uint64_t> old_keys = std::move(keys_);
    std::vector<Merge> old_vals = std::move(vals_);
    reserve(std::max<size_t>(old_keys.size(), 8));
    for (size_t i = 0; i < old_keys.size(); ++i)
      if (old_keys[i] != kEmpty) insert_or_assign(old_keys[i], old_vals[i]);
  }
  for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
    if (keys_[i] == kEmpty) {
      keys_[i] = key;
      vals_[i] = m;
      ++size_;
      return;
    }
    if (keys_[i] == key) {
      vals_[i] = m;
      return;
    }
  }
}

const BpeModel::Merge* BpeModel::PairMap::find(uint64_t key) const {
  if (keys_.empty()) return nullptr;
  for (size_t i = mix64(key) & mask_;; i = (i + 1) & mask_) {
    if (keys_[i] == key) return &vals_[i];
    if (keys_[i] == kEmpty) return nullptr;
  }
}

BpeModel::BpeModel(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options)
    : vocab_(std::move(vocab)), opt_(std::move(options)) {
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) max_id = std::max(max_id, id);
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [tok, id] : vocab_) {
    id_to_token_[static_cast<size_t>(id)] = tok;
    has_id_[static_cast<size_t>(id)] = true;
  }

  // Later duplicates of a merge overwrite earlier ones, as when the reference
  // implementation collects its merges into a hash map.
  merges_.reserve(merges.size());
  const size_t prefix_len = opt_.continuing_subword_prefix.size();
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end())
      throw std::invalid_argument("merge " + std::to_string(rank) + " ('" + a + "', '" + b +
                                  "') uses a token that is not in model.vocab");
    if (b.size() < prefix_len)
      throw std::invalid_argument("merge " + std::to_string(rank) +
                                  " has a right part shorter than continuing_subword_prefix");
    const std::string merged = a + b.substr(prefix_len);
    auto im = vocab_.find(merged);
    if (im == vocab_.end())
      throw std::invalid_argument("merge " + std::to_string(rank) + " produces '" + merged +
                                  "', which is not in model.vocab");
    merges_.insert_or_assign(pair_key(ia->second, ib->second),
                             Merge{static_cast<int32_t>(rank), im->second});
  }

  if (opt_.unk_token) {
    auto it = vocab_.find(*opt_.unk_token);
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = vocab_.find(std::string_view(name));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[static_cast<size_t>(id)])
    return nullptr;
  return &id_to_token_[static_cast<size_t>(id)];
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (opt_.ignore_merges) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::vector<int32_t> ids(out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
    std::unique_lock lock(cache_mu_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();  // bounded memory on endless streams
    cache_.emplace(std::string(word), std::move(ids));
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  // 1. One symbol per character (with the subword prefix / word suffix when
  //    configured), byte fallback or unk for characters not in the vocabulary.
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(w.size());
  auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back(Sym{id, n - 1, n + 1, true});
  };
  bool have_unk = false;  // a pending (possibly fused) unknown symbol
  std::string buf;
  for (size_t i = 0; i < w.size();) {
    const size_t start = i;
    i += utf8_len(static_cast<unsigned char>(w[i]));
    std::string_view s = w.substr(start, i - start);
    const bool add_prefix = start != 0 && !opt_.continuing_subword_prefix.empty();
    const bool add_suffix = i >= w.size() && !opt_.end_of_word_suffix.empty();
    if (add_prefix || add_suffix) {
      buf.clear();
      if (add_prefix) buf += opt_.continuing_subword_prefix;
      buf += s;
      if (add_suffix) buf += opt_.end_of_word_suffix;
      s = buf;
    }
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (have_unk) push(*unk_id_), have_unk = false;
      push(it->second);
      continue;
    }
    if (opt_.byte_fallback) {
      bool all = true;
      for (unsigned char c : s) all = all && byte_ids_[c] >= 0;
      if (all) {
        // As in the reference: a pending unk is not flushed before the bytes.
        for (unsigned char c : s) push(byte_ids_[c]);
        continue;
      }
    }
    if (opt_.unk_token) {
      if (!unk_id_)
        throw std::runtime_error("unk_token '" + *opt_.unk_token + "' is not in model.vocab");
      if (have_unk && !opt_.fuse_unk) push(*unk_id_);
      have_unk = true;
    }
    // No unk_token: the character is dropped, as the reference does.
  }
  if (have_unk) push(*unk_id_);
  if (syms.empty()) return;
  syms.back().next = -1;

  // 2. Apply merges lowest rank first (leftmost on ties) with a binary heap;
  //    stale heap entries are detected and skipped instead of being removed.
  struct Cand {
    int32_t rank, pos, new_id;
    bool operator<(const Cand& o) const {  // inverted: priority_queue is a max-heap
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Cand> init;
  init.reserve(syms.size());
  for (size_t p = 0; p + 1 < syms.size(); ++p)
    if (const Merge* m = merges_.find(pair_key(syms[p].id, syms[p + 1].id)))
      init.push_back(Cand{m->rank, static_cast<int32_t>(p), m->new_id});
  std::priority_queue<Cand> heap(std::less<Cand>(), std::move(init));
  while (!heap.empty()) {
    const Cand top = heap.top();
    heap.pop();
    Sym& cur = syms[static_cast<size_t>(top.pos)];
    if (!cur.alive || cur.next < 0) continue;
    Sym& right = syms[static_cast<size_t>(cur.next)];
    const Merge* m = merges_.find(pair_key(cur.id, right.id));
    if (!m || m->new_id != top.new_id) continue;  // stale entry
    cur.id = top.new_id;
    right.alive = false;
    cur.next = right.next;
    if (cur.next >= 0) syms[static_cast<size_t>(cur.next)].prev = top.pos;
    if (cur.prev >= 0) {
      if (const Merge* pm = merges_.find(pair_key(syms[static_cast<size_t>(cur.prev)].id, cur.id)))
        heap.push(Cand{pm->rank, cur.prev, pm->new_id});
    }
    if (cur.next >= 0) {
      if (const Merge* nm = merges_.find(pair_key(cur.id, syms[static_cast<size_t>(cur.next)].id)))
        heap.push(Cand{nm->rank, top.pos, nm->new_id});
    }
  }
  for (const Sym& s : syms)
    if (s.alive) out.push_back(s.id);
}

}  // namespace infini::io::tok
