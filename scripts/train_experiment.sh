#!/usr/bin/env bash
# The long-document experiment of docs/training.md: three byte-level models with the same
# shape, steps and tokens - Infini (linear), Infini (delta) and a local-attention-only
# baseline with the same segment length - trained one after another on five Jane Austen
# novels, validated on the sixth (Persuasion), whole, streamed through the memory.
# Usage: scripts/train_experiment.sh [BUILD_DIR] [RUN_DIR] [SEED] [VARIANTS]
#   defaults: build runs/austen 1 "linear delta local"
# Needs scripts/get_corpus.sh to have filled runs/corpus/austen. About 30 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
runs="${2:-runs/austen}"
seed="${3:-1}"
variants="${4:-linear delta local}"
corpus=runs/corpus/austen
mkdir -p "$runs"
# A private copy of the binary, so rebuilding during the runs cannot change them.
cp "$build/infini" "$runs/infini"
export OMP_NUM_THREADS=2
# Sleep instead of spinning in OpenMP barriers: on a shared machine spinning threads slow
# every parallel region by an order of magnitude. Results are the same either way.
export OMP_WAIT_POLICY=PASSIVE
for variant in $variants; do
  mkdir -p "$runs/$variant"
  /usr/bin/time -v "$runs/infini" train \
    --config configs/austen_"$variant".json \
    --data "$corpus"/emma.txt "$corpus"/mansfield_park.txt "$corpus"/northanger_abbey.txt \
           "$corpus"/pride_prejudice.txt "$corpus"/sense_sensibility.txt \
    --val-data "$corpus"/persuasion.txt --val-tokens 131072 \
    --token-cache "$runs"/tokens.bin \
    --out "$runs/$variant" --seq-len 2048 --batch 2 --steps 500 \
    --lr 2e-3 --gate-lr 2e-2 --warmup 50 --schedule cosine --weight-decay 0.1 --grad-clip 1 \
    --seed "$seed" --save-every 250 --eval-every 100 --log-every 25 \
    > "$runs/$variant/train.log" 2>&1
done
