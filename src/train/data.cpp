#include "train/data.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "io/text.hpp"
#include "model/model.hpp"

namespace infini::train {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'I', 'N', 'F', 'T', 'O', 'K', 'C', '1'};
constexpr uint32_t kCacheVersion = 1;

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

uint64_t hash_file(const std::string& path, uint64_t h) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open data file " + path + ": " + std::strerror(errno));
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), std::streamsize(buf.size()));
    h = fnv1a(buf.data(), size_t(f.gcount()), h);
  }
  if (f.bad()) throw Error("cannot read data file " + path);
  return h;
}

}  // namespace

uint64_t fnv1a(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

int64_t Corpus::train_tokens() const {
  int64_t n = 0;
  for (const auto& d : train) n += int64_t(d.tokens.size());
  return n;
}

int64_t Corpus::val_tokens() const {
  int64_t n = 0;
  for (const auto& d : val) n += int64_t(d.tokens.size());
  return n;
}

std::vector<std::string> list_input_files(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) {
      out.push_back(p);
    } else if (fs::is_directory(p, ec)) {
      std::vector<std::string> found;
      auto it =
          fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied, ec);
      if (ec) throw Error("cannot list data directory " + p + ": " + ec.message());
      for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) throw Error("cannot list data directory " + p + ": " + ec.message());
        const std::string name = it->path().filename().string();
        // The error_code forms: an entry that cannot be resolved (a link loop) is skipped
        // like a dangling link, not thrown as a std::filesystem error.
        std::error_code entry_ec;
        if (!name.empty() && name[0] == '.') {  // hidden files and directories
          if (it->is_directory(entry_ec)) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file(entry_ec)) found.push_back(it->path().string());
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) throw Error("data directory " + p + " contains no files");
      out.insert(out.end(), found.begin(), found.end());
    } else {
      std::error_code sec;
      const fs::file_status st = fs::status(p, sec);
      if (fs::exists(st)) throw Error("data path " + p + " is not a regular file or a directory");
      if (sec && sec != std::errc::no_such_file_or_directory)  // a link loop, no permission
        throw Error("data path " + p + ": " + sec.message());
      throw Error("data path " + p + " does not exist");
    }
  }
  return out;
}

std::string serialize_token_cache(const std::string& fingerprint,
                                  const std::vector<CachedDoc>& docs) {
  nlohmann::json header = {{"fingerprint", fingerprint}, {"documents", nlohmann::json::array()}};
  int64_t total = 0;
  for (const auto& d : docs) {
    header["documents"].push_back(
        {{"name", d.name}, {"val", d.val}, {"tokens", int64_t(d.tokens.size())}});
    total += int64_t(d.tokens.size());
  }
  header["total_tokens"] = total;
  const std::string h = header.dump();
  std::string out;
  out.reserve(size_t(32 + h.size()) + size_t(total) * 4);
  out.append(kMagic, sizeof kMagic);
  put<uint32_t>(out, kCacheVersion);
  put<uint32_t>(out, 0);
  put<uint64_t>(out, h.size());
  out += h;
  const size_t tokens_at = out.size();
  for (const auto& d : docs)
    out.append(reinterpret_cast<const char*>(d.tokens.data()), d.tokens.size() * 4);
  put<uint64_t>(out, fnv1a(out.data() + tokens_at, out.size() - tokens_at));
  return out;
}

void save_token_cache(const std::string& path, const std::string& fingerprint,
                      const std::vector<CachedDoc>& docs) {
  std::error_code ec;
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path(), ec);
  model::write_file_atomic(path, serialize_token_cache(fingerprint, docs));
}

bool parse_token_cache(std::string_view bytes, const std::string& fingerprint,
                       std::vector<CachedDoc>& docs, std::string& why) {
  const size_t fixed = sizeof kMagic + 4 + 4 + 8;
  if (bytes.size() < fixed || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    why = "not a token cache file";
    return false;
  }
  uint32_t version = 0;
  uint64_t hlen = 0;
  std::memcpy(&version, bytes.data() + 8, 4);
  std::memcpy(&hlen, bytes.data() + 16, 8);
  if (version != kCacheVersion) {
    why =
        "cache version " + std::to_string(version) + ", expected " + std::to_string(kCacheVersion);
    return false;
  }
  if (hlen > bytes.size() - fixed) {
    why = "truncated header";
    return false;
  }
  const nlohmann::json header =
      nlohmann::json::parse(bytes.substr(fixed, hlen), nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object() || !header.contains("fingerprint") ||
      !header["fingerprint"].is_string() || !header.contains("documents") ||
      !header["documents"].is_array()) {
    why = "corrupt header";
    return false;
  }
  if (header["fingerprint"].get<std::string>() != fingerprint) {
    why = "inputs or tokenizer changed";
    return false;
  }
  // Every count is checked against the bytes that are there before its tokens are allocated:
  // a hostile header could otherwise ask for 2^64 - 1 tokens, or make the sum wrap around.
  const size_t tokens_at = fixed + hlen;
  const uint64_t room = bytes.size() - tokens_at < 8 ? 0 : (bytes.size() - tokens_at - 8) / 4;
  std::vector<CachedDoc> read;
  uint64_t total = 0;
  for (const auto& d : header["documents"]) {
    const auto n = d.is_object() ? d.find("tokens") : d.end();
    const auto name = d.is_object() ? d.find("name") : d.end();
    const auto val = d.is_object() ? d.find("val") : d.end();
    if (!d.is_object() || n == d.end() || !n->is_number_unsigned() ||
        (name != d.end() && !name->is_string()) || (val != d.end() && !val->is_boolean())) {
      why = "corrupt header";
      return false;
    }
    if (n->get<uint64_t>() > room - total) {
      why = "truncated or oversized token data";
      return false;
    }
    total += n->get<uint64_t>();
    read.push_back({name != d.end() ? name->get<std::string>() : std::string(),
                    val != d.end() && val->get<bool>(), std::vector<int32_t>(n->get<size_t>())});
  }
  if (bytes.size() - tokens_at != total * 4 + 8) {
    why = "truncated or oversized token data";
    return false;
  }
  uint64_t sum = 0;
  std::memcpy(&sum, bytes.data() + tokens_at + total * 4, 8);
  if (sum != fnv1a(bytes.data() + tokens_at, total * 4)) {
    why = "checksum mismatch";
    return false;
  }
  size_t at = tokens_at;
  for (CachedDoc& c : read) {
    if (!c.tokens.empty()) std::memcpy(c.tokens.data(), bytes.data() + at, c.tokens.size() * 4);
    at += c.tokens.size() * 4;
  }
  docs = std::move(read);
  return true;
}

bool load_token_cache(const std::string& path, const std::string& fingerprint,
                      std::vector<CachedDoc>& docs, std::string& why) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    why = "no cache file yet";
    return false;
  }
  return parse_token_cache(io::read_file(path), fingerprint, docs, why);
}

Corpus load_corpus(const io::Tokenizer& tok, const DataOptions& opts, std::string* log) {
  if (opts.train_paths.empty()) throw Error("--data: no training data given");
  if (!(opts.val_fraction >= 0 && opts.val_fraction < 1))
    throw Error("--val-fraction must be in [0, 1)");
  struct Input {
    std::string path;
    bool val;
  };
  std::vector<Input> inputs;
  for (const auto& f : list_input_files(opts.train_paths)) inputs.push_back({f, false});
  if (!opts.val_paths.empty())
    for (const auto& f : list_input_files(opts.val_paths)) inputs.push_back({f, true});

  // The fingerprint covers the tokenizer, each file's name and role, and its bytes.
  uint64_t h = fnv1a("infini-corpus-v1", 16);
  h = fnv1a(opts.tokenizer_id.data(), opts.tokenizer_id.size(), h);
  for (const auto& in : inputs) {
    const std::string tag = (in.val ? "val:" : "train:") + in.path + '\n';
    h = fnv1a(tag.data(), tag.size(), h);
    h = hash_file(in.path, h);
  }
  Corpus corpus;
  corpus.fingerprint = hex64(h);

  std::vector<CachedDoc> docs;
  std::string why = "caching disabled";
  if (!opts.cache_path.empty() &&
      load_token_cache(opts.cache_path, corpus.fingerprint, docs, why)) {
    corpus.from_cache = true;
    if (log)
      *log += "token cache: reused " + opts.cache_path + " (" + std::to_string(docs.size()) +
              " documents)\n";
  } else {
    docs.clear();
    for (const auto& in : inputs)
      docs.push_back({in.path, in.val, tok.encode(io::read_file(in.path))});
    if (!opts.cache_path.empty()) save_token_cache(opts.cache_path, corpus.fingerprint, docs);
    if (log)
      *log += "token cache: tokenized " + std::to_string(docs.size()) + " files" +
              (opts.cache_path.empty() ? std::string()
                                       : " into " + opts.cache_path + " (" + why + ")") +
              "\n";
  }

  std::vector<Document> train, val;
  for (auto& d : docs) {
    if (d.tokens.empty()) continue;  // empty files carry no text
    (d.val ? val : train).push_back({d.name, std::move(d.tokens)});
  }
  if (train.empty()) throw Error("--data: the training files contain no text");
  if (opts.val_paths.empty() && opts.val_fraction > 0) {
    const int64_t n = int64_t(train.size());
    const int64_t k = std::min<int64_t>(std::llround(opts.val_fraction * double(n)), n - 1);
    if (k >= 1) {
      // k documents spread evenly over the sorted list, so the held-out set is not one author.
      std::vector<bool> held(size_t(n), false);
      for (int64_t j = 0; j < k; ++j) held[size_t((2 * j + 1) * n / (2 * k))] = true;
      std::vector<Document> keep;
      for (int64_t i = 0; i < n; ++i)
        (held[size_t(i)] ? val : keep).push_back(std::move(train[size_t(i)]));
      train = std::move(keep);
    } else {
      Document& last = train.back();
      const int64_t len = int64_t(last.tokens.size());
      const int64_t tail = std::llround(opts.val_fraction * double(len));
      if (tail >= 2 && len - tail >= 2) {
        Document t{last.name + "#tail",
                   std::vector<int32_t>(last.tokens.end() - tail, last.tokens.end())};
        last.tokens.resize(size_t(len - tail));
        val.push_back(std::move(t));
      }
    }
  }
  corpus.train = std::move(train);
  corpus.val = std::move(val);
  return corpus;
}

WindowSource::WindowSource(const std::vector<Document>& docs, int32_t eos, int64_t seq_len,
                           uint64_t seed, std::string data_fingerprint)
    : seq_len_(seq_len), seed_(seed), data_fingerprint_(std::move(data_fingerprint)) {
  if (seq_len < 2) throw Error("--seq-len must be at least 2");
  for (const auto& d : docs) {
    stream_.insert(stream_.end(), d.tokens.begin(), d.tokens.end());
    stream_.push_back(eos);
  }
  if (int64_t(stream_.size()) < seq_len)
    throw Error("the training data has " + std::to_string(stream_.size()) +
                " tokens, fewer than --seq-len " + std::to_string(seq_len));
  start_epoch(0);
}

void WindowSource::start_epoch(int64_t epoch) {
  epoch_ = epoch;
  index_ = 0;
  uint64_t s = seed_ * 0x2545f4914f6cdd1dULL + uint64_t(epoch) + 1;
  const int64_t L = int64_t(stream_.size());
  // A new offset each epoch shifts the window boundaries, so epochs differ in more than order.
  offset_ = int64_t(splitmix64(s) % uint64_t(seq_len_));
  if (L - offset_ < seq_len_) offset_ = 0;
  const int64_t count = (L - offset_) / seq_len_;
  order_.resize(size_t(count));
  for (int64_t i = 0; i < count; ++i) order_[size_t(i)] = offset_ + i * seq_len_;
  for (int64_t i = count - 1; i > 0; --i)  // Fisher-Yates
    std::swap(order_[size_t(i)], order_[size_t(splitmix64(s) % uint64_t(i + 1))]);
}

void WindowSource::next(int64_t batch, int64_t seq_len, Batch& out) {
  if (seq_len != seq_len_)
    throw Error("WindowSource: built for --seq-len " + std::to_string(seq_len_) + ", asked for " +
                std::to_string(seq_len));
  out.batch = batch;
  out.seq_len = seq_len;
  out.tokens.resize(size_t(batch * seq_len));
  out.loss_mask.clear();
  for (int64_t b = 0; b < batch; ++b) {
    if (index_ >= int64_t(order_.size())) start_epoch(epoch_ + 1);
    const int64_t at = order_[size_t(index_++)];
    std::copy_n(stream_.begin() + at, seq_len, out.tokens.begin() + b * seq_len);
  }
}

nlohmann::json WindowSource::state() const {
  return {{"kind", "windows"}, {"epoch", epoch_}, {"index", index_}};
}

void WindowSource::restore(const nlohmann::json& st) {
  try {
    if (st.at("kind").get<std::string>() != "windows") throw Error("");
    const int64_t epoch = st.at("epoch").get<int64_t>(), index = st.at("index").get<int64_t>();
    if (epoch < 0) throw Error("");
    start_epoch(epoch);
    if (index < 0 || index > int64_t(order_.size())) throw Error("");
    index_ = index;
  } catch (const std::exception&) {
    throw Error("checkpoint data state " + st.dump() + " does not fit this data");
  }
}

std::string WindowSource::fingerprint() const {
  return "windows:" + data_fingerprint_ + ":T=" + std::to_string(seq_len_) +
         ":seed=" + std::to_string(seed_);
}

}  // namespace infini::train
