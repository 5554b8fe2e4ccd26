#include "tasks/passkey_eval.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/process.hpp"
#include "io/tokenizer_unicode.hpp"
#include "model/forward.hpp"

namespace infini::tasks {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The digits of a decoded answer: leading whitespace skipped, then the run of digits.
std::string leading_digits(const std::string& text, bool* stopped) {
  size_t i = 0;
  while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n')) ++i;
  std::string d;
  while (i < text.size() && is_digit(text[i])) d.push_back(text[i++]);
  if (stopped) *stopped = i < text.size();
  return d;
}

int32_t argmax_row(const float* row, int64_t V) {
  return int32_t(std::max_element(row, row + V) - row);
}

// Streams prompt tokens [from, length) through the cache on top of `state` (the memory after
// `from` tokens, `from` a segment boundary), then decodes greedily.
std::string finish_and_decode(const model::Model<float>& m, const model::ForwardContext<float>& ctx,
                              const PasskeyPrompt& p, int64_t from,
                              model::MemoryState<float>& state, model::SegmentActs<float>& acts,
                              const io::Tokenizer& tok, int64_t max_new,
                              const model::PackedWeights* packed) {
  const int64_t N = m.config.segment_length, V = m.config.vocab_size;
  model::KVCache<float> cache = model::KVCache<float>::make(m.config);
  std::vector<int32_t> buf(static_cast<size_t>(N));
  int64_t pos = from;
  while (pos < p.length) {
    // Up to the end of the current segment; logits only for the prompt's last token.
    const int64_t room = N - cache.pos, left = p.length - pos;
    int64_t n = std::min(room, left);
    const bool last = n == left;
    if (last && n > 1) n -= 1;  // the final token runs alone, with logits
    p.tokens(pos, n, buf.data());
    model::forward_chunk<float>(m, ctx, buf.data(), 1, n, state, acts, &cache, last && n == left,
                                packed);
    pos += n;
  }
  std::vector<int32_t> out;
  std::string text;
  for (int64_t i = 0; i < max_new; ++i) {
    int32_t t = argmax_row(acts.logits.data(), V);
    out.push_back(t);
    text = tok.decode(out);
    bool stopped = false;
    leading_digits(text, &stopped);
    if (stopped || i + 1 == max_new) break;
    model::forward_chunk<float>(m, ctx, &t, 1, 1, state, acts, &cache, true, packed);
  }
  return text;
}

std::string fmt_pct(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.0f%%", 100.0 * x);
  return b;
}

std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o.push_back(c);
  }
  return o;
}

}  // namespace

PasskeyTrial score_answer(const std::string& key, const std::string& decoded) {
  PasskeyTrial t;
  t.key = key;
  t.text = decoded;
  t.predicted = leading_digits(decoded, nullptr);
  t.exact = t.predicted == key;
  int64_t ok = 0;
  for (size_t i = 0; i < key.size(); ++i) ok += i < t.predicted.size() && t.predicted[i] == key[i];
  t.digit_accuracy = key.empty() ? 0.0 : double(ok) / double(key.size());
  return t;
}

double PasskeyCell::accuracy() const {
  if (trials.empty()) return 0;
  double s = 0;
  for (const auto& t : trials) s += t.exact;
  return s / double(trials.size());
}

double PasskeyCell::digit_accuracy() const {
  if (trials.empty()) return 0;
  double s = 0;
  for (const auto& t : trials) s += t.digit_accuracy;
  return s / double(trials.size());
}

double PasskeyEvalResult::accuracy() const {
  double s = 0, n = 0;
  for (const auto& c : cells)
    for (const auto& t : c.trials) s += t.exact, n += 1;
  return n ? s / n : 0;
}

double PasskeyEvalResult::digit_accuracy() const {
  double s = 0, n = 0;
  for (const auto& c : cells)
    for (const auto& t : c.trials) s += t.digit_accuracy, n += 1;
  return n ? s / n : 0;
}

std::string answer_prompt(const model::Model<float>& m, const PasskeyPrompt& p,
                          const io::Tokenizer& tok, int64_t max_new) {
  model::ForwardContext<float> ctx(m.config);
  // A bf16-resident model runs in bf16; any other in fp32.
  if (m.bf16_weights) ctx.precision = model::Precision::BF16;
  model::MemoryState<float> state = model::MemoryState<float>::zeros(m.config, 1);
  model::SegmentActs<float> acts;
  model::PackedWeights packed;
  model::pack_weights(m, false, model::kDefaultMaxPackedWeightBytes, packed, ctx.precision);
  return finish_and_decode(m, ctx, p, 0, state, acts, tok, max_new, &packed);
}

PasskeyEvalResult evaluate_passkey(const model::Model<float>& m, const PasskeyGenerator& gen,
                                   const PasskeyEvalOptions& o, const PasskeyProgress& progress) {
  if (o.lengths.empty() || o.depths.empty()) throw Error("passkey eval: no lengths or no depths");
  if (o.trials < 1) throw Error("passkey eval: --trials must be >= 1");
  for (double d : o.depths)
    if (!(d >= 0 && d <= 1)) throw Error("passkey eval: depth " + std::to_string(d) + " is outside [0, 1]");
  for (int64_t L : o.lengths)
    if (L < gen.min_length())
      throw Error("passkey eval: length " + std::to_string(L) + " is below the shortest sample (" +
                  std::to_string(gen.min_length()) + " tokens)");
  const model::ModelConfig& c = m.config;
  const int64_t N = c.segment_length;
  model::ForwardContext<float> ctx(c);
  ctx.precision = o.precision;
  model::SegmentActs<float> acts;
  PasskeyEvalResult res;
  // The weights packed once for every prompt (native GEMM), as a generation session does.
  model::PackedWeights packed;
  model::pack_weights(m, false, model::kDefaultMaxPackedWeightBytes, packed, o.precision);

  for (size_t li = 0; li < o.lengths.size(); ++li) {
    const int64_t L = o.lengths[li];
    const double t0 = now_s();
    // Every prompt of this length: depth-major, trial-minor.
    std::vector<PasskeyPrompt> prompts;
    for (size_t di = 0; di < o.depths.size(); ++di)
      for (int64_t t = 0; t < o.trials; ++t) {
        std::mt19937_64 rng(splitmix64_at(o.seed ^ splitmix64_at(uint64_t(L) * 1315423911ULL +
                                                                 uint64_t(di) * 2654435761ULL +
                                                                 uint64_t(t))));
        prompts.push_back(gen.make(L, o.depths[di], gen.random_key(rng)));
      }
    std::vector<std::string> decoded(prompts.size());
    // Whole segments before the last token's segment run batched; the rest per prompt.
    int64_t shortest = prompts[0].length;  // prompts differ when keys tokenize differently
    for (const auto& p : prompts) shortest = std::min(shortest, p.length);
    const int64_t full = (shortest - 1) / N;
    const int64_t per_batch =
        std::max<int64_t>(1, std::min<int64_t>(int64_t(prompts.size()), o.max_batch_rows / N));
    for (int64_t b0 = 0; b0 < int64_t(prompts.size()); b0 += per_batch) {
      const int64_t B = std::min(per_batch, int64_t(prompts.size()) - b0);
      model::MemoryState<float> state = model::MemoryState<float>::zeros(c, B);
      std::vector<int32_t> seg(static_cast<size_t>(B * N));
      for (int64_t s = 0; s < full; ++s) {
        for (int64_t b = 0; b < B; ++b) prompts[size_t(b0 + b)].tokens(s * N, N, seg.data() + b * N);
        model::forward_chunk<float>(m, ctx, seg.data(), B, N, state, acts, nullptr, false,
                                    &packed);
      }
      for (int64_t b = 0; b < B; ++b) {
        const PasskeyPrompt& p = prompts[size_t(b0 + b)];
        model::MemoryState<float> one = model::MemoryState<float>::zeros(c, 1);
        if (c.use_memory) state.copy_sequence(b, one, 0);
        decoded[size_t(b0 + b)] = finish_and_decode(m, ctx, p, full * N, one, acts, gen.tokenizer(),
                                                     int64_t(p.answer.size()), &packed);
      }
    }
    std::vector<PasskeyCell> cells;
    for (size_t di = 0; di < o.depths.size(); ++di) {
      PasskeyCell cell;
      cell.length = L;
      cell.depth = o.depths[di];
      for (int64_t t = 0; t < o.trials; ++t) {
        const size_t k = di * size_t(o.trials) + size_t(t);
        cell.trials.push_back(score_answer(prompts[k].key, decoded[k]));
      }
      cells.push_back(cell);
    }
    PasskeyLengthStats st;
    st.length = L;
    st.prompts = int64_t(prompts.size());
    st.seconds = now_s() - t0;
    st.peak_rss_mb = peak_rss_mb();
    res.per_length.push_back(st);
    res.cells.insert(res.cells.end(), cells.begin(), cells.end());
    if (progress) progress(st, cells);
  }
  return res;
}

nlohmann::json PasskeyEvalResult::to_json() const {
  nlohmann::json results = nlohmann::json::array(), lens = nlohmann::json::array();
  for (const auto& c : cells) {
    nlohmann::json keys = nlohmann::json::array(), preds = nlohmann::json::array();
    nlohmann::json outs = nlohmann::json::array();
    int64_t correct = 0;
    for (const auto& t : c.trials) {
      keys.push_back(t.key);
      preds.push_back(t.predicted);
      // The decoded answer is raw model output: with the byte tokenizer it may be invalid
      // UTF-8, which JSON cannot hold; U+FFFD stands in for such bytes.
      outs.push_back(io::tok::utf8_lossy(t.text));
      correct += t.exact;
    }
    results.push_back({{"length", c.length},
                       {"depth", c.depth},
                       {"accuracy", c.accuracy()},
                       {"digit_accuracy", c.digit_accuracy()},
                       {"trials", c.trials.size()},
                       {"correct", correct},
                       {"keys", keys},
                       {"predictions", preds},
                       {"outputs", outs}});
  }
  for (const auto& s : per_length)
    lens.push_back({{"length", s.length},
                    {"prompts", s.prompts},
                    {"seconds", s.seconds},
                    {"seconds_per_prompt", s.prompts ? s.seconds / double(s.prompts) : 0.0},
                    {"tokens_per_s", s.seconds > 0 ? double(s.length * s.prompts) / s.seconds : 0.0},
                    {"peak_rss_mb", s.peak_rss_mb}});
  return {{"results", results},
          {"lengths", lens},
          {"accuracy", accuracy()},
          {"digit_accuracy", digit_accuracy()}};
}

std::string PasskeyEvalResult::markdown() const {
  std::vector<double> depths;
  std::vector<int64_t> lengths;
  for (const auto& c : cells) {
    if (std::find(depths.begin(), depths.end(), c.depth) == depths.end()) depths.push_back(c.depth);
    if (std::find(lengths.begin(), lengths.end(), c.length) == lengths.end())
      lengths.push_back(c.length);
  }
  std::ostringstream s;
  s << "Exact-match accuracy (digit accuracy in parentheses) by length and depth\n\n| length |";
  for (double d : depths) s << " depth " << fmt("%g", d) << " |";
  s << " all | s/prompt | peak RSS |\n|---:|";
  for (size_t i = 0; i < depths.size(); ++i) s << "---:|";
  s << "---:|---:|---:|\n";
  for (int64_t L : lengths) {
    s << "| " << length_label(L) << " |";
    double acc = 0, dacc = 0, n = 0;
    for (double d : depths)
      for (const auto& c : cells)
        if (c.length == L && c.depth == d) {
          s << " " << fmt_pct(c.accuracy()) << " (" << fmt_pct(c.digit_accuracy()) << ") |";
          acc += c.accuracy() * double(c.trials.size());
          dacc += c.digit_accuracy() * double(c.trials.size());
          n += double(c.trials.size());
        }
    s << " " << fmt_pct(n ? acc / n : 0) << " (" << fmt_pct(n ? dacc / n : 0) << ") |";
    for (const auto& st : per_length)
      if (st.length == L)
        s << " " << fmt("%.2f", st.prompts ? st.seconds / double(st.prompts) : 0) << " | "
          << fmt("%.0f MB", st.peak_rss_mb) << " |";
    s << "\n";
  }
  s << "\nOverall: exact match " << fmt("%.1f%%", 100 * accuracy()) << ", digits "
    << fmt("%.1f%%", 100 * digit_accuracy()) << "\n";
  return s.str();
}

std::string length_label(int64_t n) {
  if (n >= (1 << 20) && n % (1 << 20) == 0) return std::to_string(n >> 20) + "M";
  if (n >= 1024 && n % 1024 == 0) return std::to_string(n >> 10) + "K";
  return std::to_string(n);
}

int64_t parse_length(const std::string& s, const std::string& flag) {
  if (s.empty()) throw Error(flag + ": empty length");
  int64_t mult = 1;
  std::string num = s;
  const char last = s.back();
  if (last == 'K' || last == 'k') mult = 1024, num.pop_back();
  else if (last == 'M' || last == 'm') mult = 1 << 20, num.pop_back();
  if (num.empty() || !std::all_of(num.begin(), num.end(), is_digit) || num.size() > 12)
    throw Error(flag + ": '" + s + "' is not a length (e.g. 4096, 4K, 1M)");
  return std::stoll(num) * mult;
}

std::string passkey_heatmap_svg(const PasskeyEvalResult& r, const std::string& title) {
  std::vector<double> depths;
  std::vector<int64_t> lengths;
  for (const auto& c : r.cells) {
    if (std::find(depths.begin(), depths.end(), c.depth) == depths.end()) depths.push_back(c.depth);
    if (std::find(lengths.begin(), lengths.end(), c.length) == lengths.end())
      lengths.push_back(c.length);
  }
  const int cw = 72, ch = 40, left = 110, top = 60;
  const int W = left + cw * int(depths.size()) + 130, H = top + ch * int(lengths.size()) + 70;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"13\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 << "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">"
    << xml_escape(title) << "</text>\n";
  // Colour: red (0) through yellow (0.5) to green (1).
  auto colour = [](double a) {
    const int rr = a < 0.5 ? 215 : int(215 - (a - 0.5) * 2 * (215 - 26));
    const int gg = a < 0.5 ? int(48 + a * 2 * (190 - 48)) : int(190 - (a - 0.5) * 2 * (190 - 150));
    const int bb = a < 0.5 ? 39 : int(39 + (a - 0.5) * 2 * (80 - 39));
    char b[16];
    std::snprintf(b, sizeof b, "#%02x%02x%02x", rr, gg, bb);
    return std::string(b);
  };
  for (size_t li = 0; li < lengths.size(); ++li) {
    const int y = top + ch * int(li);
    s << "<text x=\"" << left - 8 << "\" y=\"" << y + ch / 2 + 5 << "\" text-anchor=\"end\">"
      << length_label(lengths[li]) << "</text>\n";
    for (size_t di = 0; di < depths.size(); ++di) {
      const int x = left + cw * int(di);
      for (const auto& c : r.cells)
        if (c.length == lengths[li] && c.depth == depths[di]) {
          s << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << cw << "\" height=\"" << ch
            << "\" fill=\"" << colour(c.accuracy()) << "\" stroke=\"white\"/>\n"
            << "<text x=\"" << x + cw / 2 << "\" y=\"" << y + ch / 2 + 5
            << "\" text-anchor=\"middle\">" << fmt("%.0f", 100 * c.accuracy()) << "</text>\n";
        }
    }
  }
  for (size_t di = 0; di < depths.size(); ++di)
    s << "<text x=\"" << left + cw * int(di) + cw / 2 << "\" y=\""
      << top + ch * int(lengths.size()) + 18 << "\" text-anchor=\"middle\">"
      << fmt("%g", depths[di]) << "</text>\n";
  s << "<text x=\"" << left + cw * int(depths.size()) / 2 << "\" y=\""
    << top + ch * int(lengths.size()) + 44
    << "\" text-anchor=\"middle\">depth of the passkey (fraction of filler before it)</text>\n"
    << "<text transform=\"translate(22," << top + ch * int(lengths.size()) / 2
    << ") rotate(-90)\" text-anchor=\"middle\">context length (tokens)</text>\n";
  // Legend.
  const int lx = left + cw * int(depths.size()) + 30;
  for (int i = 0; i <= 10; ++i)
    s << "<rect x=\"" << lx << "\" y=\"" << top + (10 - i) * 12 << "\" width=\"18\" height=\"12\" fill=\""
      << colour(i / 10.0) << "\"/>\n";
  s << "<text x=\"" << lx + 24 << "\" y=\"" << top + 10 << "\">100%</text>\n"
    << "<text x=\"" << lx + 24 << "\" y=\"" << top + 130 << "\">0%</text>\n"
    << "<text x=\"" << lx << "\" y=\"" << top + 152 << "\">exact match</text>\n"
    << "</svg>\n";
  return s.str();
}

}  // namespace infini::tasks
