#include "infer/generate.hpp"

#include <algorithm>

#include "core/process.hpp"

namespace infini::infer {

FeedStats feed_text(Session& s, const io::Tokenizer& tok, TextChunkReader& reader) {
  FeedStats st;
  const double t0 = now_s(), c0 = process_cpu_seconds();
  std::string piece;
  while (reader.next(piece)) {
    const std::vector<int32_t> ids = tok.encode(piece);
    const double m0 = now_s();
    s.feed(ids);
    st.model_seconds += now_s() - m0;
    st.tokens += int64_t(ids.size());
  }
  st.bytes = reader.bytes_read();
  st.seconds = now_s() - t0;
  st.cpu_seconds = process_cpu_seconds() - c0;
  return st;
}

GenerateResult generate(Session& s, const io::Tokenizer& tok, Sampler& sampler,
                        const GenerateOptions& o,
                        const std::function<void(std::string_view)>& emit) {
  GenerateResult r;
  r.stop_reason = "length";
  const double t0 = now_s(), c0 = process_cpu_seconds();
  const int64_t allowed = std::min<int64_t>(s.config().vocab_size, tok.vocab_size());
  const int32_t eos = o.ignore_eos ? -1 : tok.eos_id();
  TokenTextStream text(tok);
  StopFilter stop(o.stop);
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    const int32_t t = sampler.sample(s.logits(), allowed);
    ++r.new_tokens;
    if (o.on_token) o.on_token(t);
    const bool last = i + 1 == o.max_new_tokens;
    if (t == eos) {
      r.stop_reason = "eos";
      if (o.keep_state) s.feed(t);
      break;
    }
    const std::string out = stop.push(text.push(t));
    if (!out.empty()) emit(out);
    if (stop.stopped()) {
      r.stop_reason = "stop";
      if (o.keep_state) s.feed(t);
      break;
    }
    if (!last || o.keep_state) s.feed(t);
  }
  if (!stop.stopped()) {
    const std::string tail = stop.push(text.flush());
    const std::string rest = stop.stopped() ? tail : tail + stop.flush();
    if (!rest.empty()) emit(rest);
    if (stop.stopped()) r.stop_reason = "stop";
  }
  r.seconds = now_s() - t0;
  r.cpu_seconds = process_cpu_seconds() - c0;
  return r;
}

}  // namespace infini::infer
