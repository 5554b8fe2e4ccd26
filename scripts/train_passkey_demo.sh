#!/usr/bin/env bash
# Trains the passkey demo models from scratch, in up to four stages, with `infini passkey
# train` (docs/passkey.md, "The demo models"): OUT/stage2/final is models/passkey-demo-4k/,
# OUT/stage4/final is models/passkey-demo/.
#   1. short prompts (256..640 tokens = 8..20 segments of 32): the memory learns to store and
#      find the key's digits while the filler is short;
#   2. fine-tuning on 256..4096 tokens (up to 128 segments): the keys of the filler are pushed
#      further from the digits'. No training sequence is longer than 4096 tokens: this is
#      the model of the issue's 4K goal.
#   3. fine-tuning on 4K..32K tokens and
#   4. on 16K..128K tokens: longer training pushes the retrieval horizon out (docs/passkey.md
#      has the accuracy after each stage). Both are skipped with STAGE3_STEPS=0 / STAGE4_STEPS=0.
# The run is deterministic for a fixed thread count; the committed model was trained with
# THREADS=1 (about 21 + 45 + 27 + 35 minutes on one core of the development machine).
# A stage whose OUT/stageN/final exists is skipped, so copying a model to OUT/stage2/final
# fine-tunes it with stages 3 and 4 only.
#
# Usage: scripts/train_passkey_demo.sh [OUT]       (default OUT=runs/passkey-demo)
# Environment: THREADS (default 1), CONFIG (default configs/passkey_demo.json; the linear and
# local-only baselines are configs/passkey_demo_linear.json and configs/passkey_demo_local.json),
# STAGE1_STEPS (3000), STAGE2_STEPS (2000; 0 skips stages 2-4), STAGE3_STEPS (800; 0 skips
# stages 3-4), STAGE4_STEPS (400), SEED (1).
# The model ends up in OUT/stageN/final for the last stage that ran.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/passkey-demo}
THREADS=${THREADS:-1}
CONFIG=${CONFIG:-configs/passkey_demo.json}
STAGE1_STEPS=${STAGE1_STEPS:-3000}
STAGE2_STEPS=${STAGE2_STEPS:-2000}
STAGE3_STEPS=${STAGE3_STEPS:-800}
STAGE4_STEPS=${STAGE4_STEPS:-400}
SEED=${SEED:-1}
BIN=./build/infini
[ -x "$BIN" ] || { echo "build first: bash scripts/build.sh" >&2; exit 1; }
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=1

# run_stage N FLAGS...: `passkey train` into OUT/stageN unless OUT/stageN/final exists,
# resuming a run that was killed; `final` names the stage's model.
run_stage() {
  local n=$1
  shift
  local resume=()
  [ -f "$OUT/stage$n/latest" ] && resume=(--resume)
  if [ ! -d "$OUT/stage$n/final" ]; then
    "$BIN" passkey train --out "$OUT/stage$n" "${resume[@]}" --loss answer "$@"
  fi
  final="$OUT/stage$n/final"
}

final="$OUT/stage1/final"
if [ ! -d "$OUT/stage2/final" ]; then
  run_stage 1 --config "$CONFIG" --steps "$STAGE1_STEPS" --batch 32 --min-len 256 --max-len 640 \
    --lr 2e-3 --gate-lr 0.1 --seed "$SEED" \
    --eval-every 500 --eval-lengths 512,1K --eval-depths 0,0.5,0.9 --eval-trials 4 \
    --save-every 250 --log-every 100
fi
if [ "$STAGE2_STEPS" -gt 0 ]; then
  run_stage 2 --model "$OUT/stage1/final" --steps "$STAGE2_STEPS" --batch 16 \
    --min-len 256 --max-len 4096 --lr 1e-3 --gate-lr 0.05 --seed $((SEED + 1)) \
    --eval-every 500 --eval-lengths 4K,16K,64K --eval-depths 0,0.5,0.9 --eval-trials 4 \
    --save-every 250 --log-every 100
  # Stages 3 and 4: fewer, longer sequences (the tokens per step stay near stage 2's).
  if [ "$STAGE3_STEPS" -gt 0 ]; then
    run_stage 3 --model "$OUT/stage2/final" --steps "$STAGE3_STEPS" --batch 4 \
      --min-len 4096 --max-len 32768 --lr 5e-4 --gate-lr 0.02 --seed $((SEED + 3)) \
      --eval-every 400 --eval-lengths 64K,256K --eval-depths 0,0.5,0.9 --eval-trials 2 \
      --save-every 100 --log-every 50
    if [ "$STAGE4_STEPS" -gt 0 ]; then
      run_stage 4 --model "$OUT/stage3/final" --steps "$STAGE4_STEPS" --batch 2 \
        --min-len 16384 --max-len 131072 --lr 3e-4 --gate-lr 0.01 --seed $((SEED + 4)) \
        --eval-every 200 --eval-lengths 256K,1M --eval-depths 0,0.5,0.9 --eval-trials 1 \
        --save-every 50 --log-every 25
    fi
  fi
fi
echo "model: $final"
