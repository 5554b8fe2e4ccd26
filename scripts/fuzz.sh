#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzz.cpp) with clang in ./build-fuzz, replays every
# committed corpus input (seeds and regression inputs), then fuzzes each target for a bounded
# time. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 40 s, all targets)
# Example, a long local run of one target: scripts/fuzz.sh 3600 safetensors
# Found crashes are written to build-fuzz/artifacts/ and make the script fail; new
# interesting inputs go to build-fuzz/corpus/<target>/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-40}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  for f in fuzz/*_fuzz.cpp; do targets+=("$(basename "$f" _fuzz.cpp)"); done
fi

cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="-O1" -DINFINI_FUZZ=ON -DINFINI_NATIVE=OFF -DINFINI_BUILD_TESTS=OFF \
  -DINFINI_BUILD_BENCH=OFF >/dev/null
bins=()
for t in "${targets[@]}"; do bins+=("${t}_fuzz"); done
cmake --build build-fuzz -j"$(nproc)" --target "${bins[@]}"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
mkdir -p build-fuzz/artifacts
failed=()
for t in "${targets[@]}"; do
  bin="build-fuzz/${t}_fuzz"
  seeds="fuzz/corpus/$t"
  work="build-fuzz/corpus/$t"
  mkdir -p "$seeds" "$work"
  log="build-fuzz/$t.log"
  echo "== fuzz $t: replay $(ls "$seeds" | wc -l) committed inputs, then ${secs} s"
  # -rss_limit_mb: an input must not make the parsers allocate without bound.
  common=(-timeout=20 -rss_limit_mb=2048 -artifact_prefix="build-fuzz/artifacts/$t-")
  if ! timeout 600 "$bin" "${common[@]}" -runs=0 "$seeds" >"$log" 2>&1; then
    tail -n 40 "$log"
    failed+=("$t (replay)")
    continue
  fi
  if ! timeout $((secs + 120)) "$bin" "${common[@]}" -max_total_time="$secs" \
      -print_final_stats=1 "$work" "$seeds" >"$log" 2>&1; then
    tail -n 40 "$log"
    failed+=("$t")
    continue
  fi
  grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$log" | tr '\n' ' '
  echo
done
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]} (inputs in build-fuzz/artifacts/, logs in build-fuzz/*.log)" >&2
  exit 1
fi
echo "fuzz: all targets clean"
