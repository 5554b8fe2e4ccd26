// libFuzzer target: config.json loading (model::config_from_json on JSON parsed from bytes).
// A config that loads must survive config_to_json -> config_from_json unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

using namespace infini;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Same parse call as model::load_config.
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  model::ModelConfig c;
  try {
    c = model::config_from_json(j, "fuzz/config.json");
  } catch (const Error&) {
    return 0;
  }
  const nlohmann::json out = model::config_to_json(c);
  model::ModelConfig back;
  try {
    back = model::config_from_json(out, "round-trip");
  } catch (const Error&) {
    std::abort();  // a config we accepted must write out as one we accept
  }
  if (model::config_to_json(back) != out) std::abort();
  // The parameter registry of any accepted config must be buildable (no allocation of
  // weights: only names, shapes and offsets) and add up.
  const model::ParamLayout layout = model::ParamLayout::build(c);
  int64_t total = 0;
  for (const auto& p : layout.params) {
    int64_t n = 1;
    for (int64_t d : p.shape) n *= d;
    if (n != p.numel || p.offset != total) std::abort();
    total += p.numel;
  }
  if (total != layout.total) std::abort();
  return 0;
}
