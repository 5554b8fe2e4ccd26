#include "infer/text_stream.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"

namespace infini::infer {

size_t utf8_complete_len(std::string_view s) {
  // Look back at most 3 bytes for the lead byte of the last character.
  const size_t n = s.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    const size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                                     : (c & 0xF8) == 0xF0 ? 4 : 1;
    return need > back ? n - back : n;
  }
  return n;  // only continuation bytes: invalid, pass through
}

size_t safe_split_point(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; };
  // The last whitespace run that is followed by a non-space inside the buffer (a run touching
  // the end may continue in the next read). GPT-2-style pre-tokenizers give the run's last
  // space or tab to the word after it, and a run ending in a line break stays whole: cutting
  // before that last character, or after the line break, gives the same pieces as the whole.
  for (size_t j = s.size(); j-- > 1;) {
    if (space(s[j]) || !space(s[j - 1])) continue;
    const size_t cut = (s[j - 1] == '\n' || s[j - 1] == '\r') ? j : j - 1;
    if (cut > 0) return cut;
    break;
  }
  const size_t u = utf8_complete_len(s);
  return u > 0 ? u : s.size();
}

TextChunkReader TextChunkReader::open_file(const std::string& path, size_t chunk_bytes) {
  TextChunkReader r;
  r.chunk_ = std::max<size_t>(chunk_bytes, 16);
  r.path_ = path;
  if (path == "-") {
    r.f_ = stdin;
    return r;
  }
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error(path + " is a directory, not a file");
  r.f_ = std::fopen(path.c_str(), "rb");
  if (!r.f_) throw Error("cannot open " + path + ": " + std::strerror(errno));
  r.owns_ = true;
  return r;
}

TextChunkReader TextChunkReader::from_string(std::string_view text, size_t chunk_bytes) {
  TextChunkReader r;
  r.chunk_ = std::max<size_t>(chunk_bytes, 16);
  r.text_ = text;
  return r;
}

TextChunkReader::TextChunkReader(TextChunkReader&& o) noexcept
    : f_(o.f_), owns_(o.owns_), path_(std::move(o.path_)), text_(o.text_), chunk_(o.chunk_),
      buf_(std::move(o.buf_)), eof_(o.eof_), bytes_(o.bytes_) {
  o.f_ = nullptr;
  o.owns_ = false;
}

TextChunkReader::~TextChunkReader() {
  if (owns_ && f_) std::fclose(f_);
}

bool TextChunkReader::next(std::string& out) {
  out.clear();
  // Top the buffer up to chunk_ bytes (it holds the tail left by the previous cut).
  if (!eof_ && buf_.size() < chunk_) {
    const size_t want = chunk_ - buf_.size();
    if (f_) {
      const size_t old = buf_.size();
      buf_.resize(chunk_);
      const size_t got = std::fread(buf_.data() + old, 1, want, f_);
      buf_.resize(old + got);
      bytes_ += got;
      if (got < want) {
        if (std::ferror(f_)) throw Error("cannot read " + path_ + ": " + std::strerror(errno));
        eof_ = true;
      }
    } else {
      const size_t got = std::min(want, text_.size());
      buf_.append(text_.substr(0, got));
      text_.remove_prefix(got);
      bytes_ += got;
      if (text_.empty()) eof_ = true;
    }
  }
  if (buf_.empty()) return false;
  const size_t cut = eof_ ? buf_.size() : safe_split_point(buf_);
  out.assign(buf_, 0, cut);
  buf_.erase(0, cut);
  return true;
}

std::string TokenTextStream::push(int32_t id) {
  ids_.push_back(id);
  const std::vector<int32_t> context(ids_.begin(), ids_.begin() + ptrdiff_t(read_));
  const std::string before = read_ ? tok_.decode(context) : std::string();
  const std::string all = tok_.decode(ids_);
  const size_t pending = ids_.size() - read_;
  // Wait while the text ends inside a character: raw trailing bytes, or a decoder's U+FFFD
  // replacement (give up waiting after 4 tokens, a UTF-8 character has at most 4 bytes).
  const bool partial = utf8_complete_len(all) < all.size() ||
                       (pending < 4 && all.size() >= 3 && all.compare(all.size() - 3, 3, "\xEF\xBF\xBD") == 0);
  const bool extends = all.size() >= before.size() && all.compare(0, before.size(), before) == 0;
  // A decoder that never settles must not make us hold ids forever.
  if ((partial || !extends) && pending < 8) return {};
  std::string out = all.size() > before.size() ? all.substr(before.size()) : std::string();
  // The tokens just emitted become the context of the next ones. All of them, not only the
  // last: a byte-fallback decoder turns an incomplete group of byte tokens into U+FFFD.
  ids_.erase(ids_.begin(), ids_.begin() + ptrdiff_t(read_));
  read_ = ids_.size();
  return out;
}

std::string TokenTextStream::flush() {
  if (ids_.size() <= read_) return {};
  const std::vector<int32_t> context(ids_.begin(), ids_.begin() + ptrdiff_t(read_));
  const std::string before = read_ ? tok_.decode(context) : std::string();
  const std::string all = tok_.decode(ids_);
  ids_.erase(ids_.begin(), ids_.begin() + ptrdiff_t(read_));
  read_ = ids_.size();
  if (all.size() < before.size() || all.compare(0, before.size(), before) != 0) return all;
  return all.substr(before.size());
}

std::string StopFilter::push(std::string_view text) {
  if (stopped_) return {};
  held_.append(text);
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    std::string out = held_.substr(0, first);
    held_.clear();
    stopped_ = true;
    return out;
  }
  // Keep the longest tail that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const auto& s : stops_)
    for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len)
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopFilter::flush() {
  if (stopped_) return {};
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace infini::infer
