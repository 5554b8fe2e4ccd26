#!/usr/bin/env bash
# Builds infini and the unit tests with AddressSanitizer + UndefinedBehaviorSanitizer in
# ./build-asan (Debug, -O1: about 3x faster than -O0 and still exact reports) and runs the
# tests there, the CLI tests included (they run the ASan build of the binary). Any sanitizer
# report aborts the process, so it fails its test. Time-boxed for CI: see docs/hardening.md.
# Usage: scripts/sanitize.sh [extra ctest args...]   e.g. scripts/sanitize.sh -R BadInput
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${SANITIZE_BUDGET_S:-2400}"  # seconds for the whole ctest run

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS="-O1" \
  -DINFINI_SANITIZE=ON -DINFINI_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j"$(nproc)"

# abort_on_error: a report kills the process with SIGABRT, which no test can mistake for a
# normal error exit. Leak checking stays on; scripts/lsan.supp lists the leaks of libraries
# we do not own (MPI initialisation).
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:check_initialization_order=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:abort_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan.supp:print_suppressions=0}"

# Skipped here, run in the main (Release) stage: MemoryStability takes minutes at ASan speed and
# exercises no code the other tests do not (docs/hardening.md); peak-RSS checks cannot hold under
# ASan, whose quarantine keeps freed memory resident.
skip='^MemoryStability\.|^PasskeyEval\.MemoryDoesNotGrowWithLength$'

cd build-asan
timeout --kill-after=30 "$budget" \
  ctest --output-on-failure -j"$(nproc)" --timeout 1500 -E "$skip" "$@"
