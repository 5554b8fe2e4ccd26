// infini tokenize / infini detokenize: run a tokenizer from the command line.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "io/text.hpp"
#include "io/tokenizer.hpp"

namespace infini::cli {
namespace {

std::unique_ptr<io::Tokenizer> open_tokenizer(const std::string& path) {
  if (path.empty()) return std::make_unique<io::ByteTokenizer>();
  return io::load_hf_tokenizer(path);
}

// A word of an ids file for a message: short, printable, on one line.
std::string quote_word(const std::string& w) {
  std::string out;
  for (size_t i = 0; i < w.size() && i < 40; ++i) {
    const unsigned char c = static_cast<unsigned char>(w[i]);
    out += c < 0x20 || c >= 0x7f ? '?' : char(c);
  }
  return "'" + out + (w.size() > 40 ? "...'" : "'");
}

// Ids separated by whitespace or commas, optionally inside one pair of [ ] so that the output
// of `tokenize --json` can be fed back. Every id must be a token of `tok`.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& source,
                               const io::Tokenizer& tok) {
  std::vector<int32_t> ids;
  size_t i = 0, n = text.size();
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (i < n && is_space(text[i])) ++i;
  while (n > i && is_space(text[n - 1])) --n;
  if (i < n && text[i] == '[') {
    if (text[n - 1] != ']') throw Error(source + ": '[' without a closing ']'");
    ++i;
    --n;
  }
  auto is_sep = [&](char c) { return is_space(c) || c == ','; };
  while (i < n) {
    if (is_sep(text[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && !is_sep(text[j])) ++j;
    const std::string word = text.substr(i, j - i);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(word.c_str(), &end, 10);
    if (end != word.c_str() + word.size() || errno == ERANGE || v < 0 || v > INT32_MAX)
      throw Error(source + ": " + quote_word(word) + " is not a token id");
    if (v >= tok.vocab_size())
      throw Error(source + ": token id " + word + " is outside the tokenizer's vocabulary (size " +
                  std::to_string(tok.vocab_size()) + ")");
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

void add_detokenize(CLI::App& app) {
  struct Opts {
    std::string tokenizer, ids, ids_file;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "detokenize",
      "Print the text of token ids exactly, with no newline added (special tokens are kept)");
  cmd->add_option("--tokenizer", o->tokenizer,
                  "Hugging Face tokenizer.json (default: the byte tokenizer)");
  auto* ids = cmd->add_option("--ids", o->ids, "Token ids, e.g. \"1 2 3\" or \"[1, 2, 3]\"");
  auto* file = cmd->add_option("--ids-file", o->ids_file, "File holding the token ids");
  ids->excludes(file);
  file->excludes(ids);
  cmd->callback([o, ids, file] {
    if (ids->count() == 0 && file->count() == 0)
      throw Error("detokenize: give --ids or --ids-file");
    const auto tokenizer = open_tokenizer(o->tokenizer);
    const std::vector<int32_t> list =
        file->count() ? parse_ids(io::read_file(o->ids_file), o->ids_file, *tokenizer)
                      : parse_ids(o->ids, "--ids", *tokenizer);
    const std::string text = tokenizer->decode(list);
    std::fwrite(text.data(), 1, text.size(), stdout);
  });
}

}  // namespace

// Registers both `tokenize` and `detokenize`.
void register_tokenize(CLI::App& app) {
  struct Opts {
    std::string tokenizer, text, text_file;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd =
      app.add_subcommand("tokenize", "Print the token ids of a text (no special tokens are added)");
  cmd->add_option("--tokenizer", o->tokenizer,
                  "Hugging Face tokenizer.json (default: the byte tokenizer)");
  auto* text = cmd->add_option("--text", o->text, "Text to encode");
  auto* file = cmd->add_option("--text-file", o->text_file, "File whose bytes are encoded");
  text->excludes(file);
  file->excludes(text);
  cmd->add_flag("--json", o->json, "Print a JSON array instead of space-separated ids");
  cmd->callback([o, text, file] {
    if (text->count() == 0 && file->count() == 0)
      throw Error("tokenize: give --text or --text-file");
    const auto tokenizer = open_tokenizer(o->tokenizer);
    const std::string input = file->count() ? io::read_file(o->text_file) : o->text;
    const std::vector<int32_t> ids = tokenizer->encode(input);
    std::string out = o->json ? "[" : "";
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) out += o->json ? ", " : " ";
      out += std::to_string(ids[i]);
    }
    if (o->json) out += "]";
    out += "\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
  });
  add_detokenize(app);
}

}  // namespace infini::cli
