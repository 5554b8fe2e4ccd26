#!/usr/bin/env bash
# Issue #27's training-curve check: the Austen delta model of docs/training.md trained 500 steps
# in fp32 and in bf16 (--precision bf16), side by side with one thread each, same seed, data
# and schedule. scripts/precision_curves.py then overlays the curves in one SVG.
# Usage: scripts/train_precision.sh [BUILD_DIR] [RUN_DIR] [SEED]   (defaults: build runs/precision 1)
# Needs scripts/get_corpus.sh to have filled runs/corpus/austen. About 25 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
runs="${2:-runs/precision}"
seed="${3:-1}"
corpus=runs/corpus/austen
for precision in fp32 bf16; do
  if [ -e "$runs/$precision" ]; then
    echo "train_precision.sh: $runs/$precision exists; give another RUN_DIR (or remove it)" >&2
    exit 1
  fi
done
mkdir -p "$runs"
cp "$build/infini" "$runs/infini"  # rebuilding during the runs cannot change them
export OMP_NUM_THREADS=1
for precision in fp32 bf16; do
  mkdir -p "$runs/$precision"
  /usr/bin/time -v "$runs/infini" train --precision "$precision" \
    --config configs/austen_delta.json \
    --data "$corpus"/emma.txt "$corpus"/mansfield_park.txt "$corpus"/northanger_abbey.txt \
           "$corpus"/pride_prejudice.txt "$corpus"/sense_sensibility.txt \
    --val-data "$corpus"/persuasion.txt --val-tokens 131072 \
    --out "$runs/$precision" --seq-len 2048 --batch 2 --steps 500 \
    --lr 2e-3 --gate-lr 2e-2 --warmup 50 --schedule cosine --weight-decay 0.1 --grad-clip 1 \
    --seed "$seed" --save-every 250 --eval-every 100 --log-every 25 \
    > "$runs/$precision/train.log" 2>&1 &
done
wait
for precision in fp32 bf16; do
  "$runs/infini" eval --precision "$precision" --model "$runs/$precision/final" \
    --data "$corpus"/persuasion.txt --json > "$runs/$precision/eval_persuasion.json"
done
