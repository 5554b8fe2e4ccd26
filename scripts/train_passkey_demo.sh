#!/usr/bin/env bash
# Trains the passkey demo model (models/passkey-demo/) from scratch, in two stages, with
# `infini passkey train` (docs/passkey.md, "The demo model"):
#   1. short prompts (256..640 tokens = 8..20 segments of 32): the memory learns to store and
#      find the key's digits while the filler is short;
#   2. fine-tuning on 256..4096 tokens (up to 128 segments): the keys of the filler are pushed
#      further from the digits'. No training sequence is longer than 4096 tokens.
# The run is deterministic for a fixed thread count; the committed model was trained with
# THREADS=1 (about 20 + 45 minutes on one core of the development machine).
#
# Usage: scripts/train_passkey_demo.sh [OUT]       (default OUT=runs/passkey-demo)
# Environment: THREADS (default 1), CONFIG (default configs/passkey_demo.json; the linear and
# local-only baselines are configs/passkey_demo_linear.json and configs/passkey_demo_local.json),
# STAGE1_STEPS (3000), STAGE2_STEPS (2000; 0 skips stage 2), SEED (1).
# The model ends up in OUT/stage2/final (OUT/stage1/final when stage 2 is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/passkey-demo}
THREADS=${THREADS:-1}
CONFIG=${CONFIG:-configs/passkey_demo.json}
STAGE1_STEPS=${STAGE1_STEPS:-3000}
STAGE2_STEPS=${STAGE2_STEPS:-2000}
SEED=${SEED:-1}
BIN=./build/infini
[ -x "$BIN" ] || { echo "build first: bash scripts/build.sh" >&2; exit 1; }
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=1

resume=()
[ -f "$OUT/stage1/latest" ] && resume=(--resume)
if [ ! -d "$OUT/stage1/final" ]; then
  "$BIN" passkey train --config "$CONFIG" --out "$OUT/stage1" "${resume[@]}" \
    --steps "$STAGE1_STEPS" --batch 32 --min-len 256 --max-len 640 --loss answer \
    --lr 2e-3 --gate-lr 0.1 --seed "$SEED" \
    --eval-every 500 --eval-lengths 512,1K --eval-depths 0,0.5,0.9 --eval-trials 4 \
    --save-every 250 --log-every 100
fi
final="$OUT/stage1/final"
if [ "$STAGE2_STEPS" -gt 0 ]; then
  resume=()
  [ -f "$OUT/stage2/latest" ] && resume=(--resume)
  if [ ! -d "$OUT/stage2/final" ]; then
    "$BIN" passkey train --model "$OUT/stage1/final" --out "$OUT/stage2" "${resume[@]}" \
      --steps "$STAGE2_STEPS" --batch 16 --min-len 256 --max-len 4096 --loss answer \
      --lr 1e-3 --gate-lr 0.05 --seed $((SEED + 1)) \
      --eval-every 500 --eval-lengths 4K,16K,64K --eval-depths 0,0.5,0.9 --eval-trials 4 \
      --save-every 250 --log-every 100
  fi
  final="$OUT/stage2/final"
fi
echo "model: $final"
