// Text in and out of a streaming session without holding a whole prompt or a whole output:
// chunked reading of prompts, incremental detokenization that emits only complete UTF-8
// characters, and stop strings that may span tokens.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "io/tokenizer.hpp"

namespace infini::infer {

// Length of s without a trailing incomplete UTF-8 sequence (invalid bytes count as complete).
size_t utf8_complete_len(std::string_view s);

// Where to cut a buffer of text so that tokenizing the two sides separately gives what
// tokenizing it whole gives, as far as a whitespace-splitting pre-tokenizer goes: at the last
// whitespace run followed by a word, before the run's last character (a space or tab joins the
// next word) or, when the run ends in a line break, after it. Without such a run, after the
// last complete UTF-8 character. Returns 0 only for an empty buffer.
size_t safe_split_point(std::string_view s);

// Reads text in pieces of at most chunk_bytes, each cut at safe_split_point; memory use is
// O(chunk_bytes) whatever the size of the file. For the byte tokenizer the concatenated
// tokens equal those of the whole text; for BPE tokenizers they may differ at the cuts.
class TextChunkReader {
 public:
  static constexpr size_t kDefaultChunk = size_t(64) << 10;
  // path "-" reads standard input.
  static TextChunkReader open_file(const std::string& path, size_t chunk_bytes = kDefaultChunk);
  static TextChunkReader from_string(std::string_view text, size_t chunk_bytes = kDefaultChunk);
  TextChunkReader(TextChunkReader&& o) noexcept;
  TextChunkReader& operator=(TextChunkReader&&) = delete;
  ~TextChunkReader();
  // Replaces `out` with the next piece; false (and `out` empty) at the end.
  bool next(std::string& out);
  uint64_t bytes_read() const { return bytes_; }

 private:
  TextChunkReader() = default;
  std::FILE* f_ = nullptr;
  bool owns_ = false;
  std::string path_;
  std::string_view text_;  // string source
  size_t chunk_ = kDefaultChunk;
  std::string buf_;
  bool eof_ = false;
  uint64_t bytes_ = 0;
};

// Turns generated token ids into text as they arrive. Emits text only when the decoded
// window ends on a complete UTF-8 character (byte-level tokens split characters), and decodes
// new tokens after the tokens of the last emitted piece, as context, so that decoders which
// drop a leading space (SentencePiece) do not drop it mid-text and byte-fallback groups stay
// whole (the approach of Hugging Face's DecodeStream). Holds only a few ids at any time.
class TokenTextStream {
 public:
  explicit TokenTextStream(const io::Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  // Whatever is still held at the end (possibly an incomplete character).
  std::string flush();

 private:
  const io::Tokenizer& tok_;
  std::vector<int32_t> ids_;  // ids_[0 .. read_) are context already emitted
  size_t read_ = 0;
};

// Holds back text that could be the start of a stop string; reports when one appears.
// The stop string and everything after it are never emitted.
class StopFilter {
 public:
  explicit StopFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {
    std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
  }
  std::string push(std::string_view text);
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace infini::infer
