// splitmix64 (Steele, Lea and Flood, 2014): the small, well-mixed integer hash and generator
// behind the data order, passkey sampling and the tokenizer's pair table. Its output is the
// same on every platform, which is what reproducible runs need.
#pragma once
#include <cstdint>

namespace infini {

// The splitmix64 finaliser: a bijection that spreads every input bit over the whole output.
constexpr uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

constexpr uint64_t kSplitmixIncrement = 0x9e3779b97f4a7c15ULL;

// The value one splitmix64 step from `state` returns, without a state to advance.
constexpr uint64_t splitmix64_at(uint64_t state) { return mix64(state + kSplitmixIncrement); }

// One step of the splitmix64 generator: advances `state` and returns the next value.
inline uint64_t splitmix64(uint64_t& state) {
  state += kSplitmixIncrement;
  return mix64(state);
}

}  // namespace infini
