#!/usr/bin/env bash
# The books experiment of docs/training.md (issue #26): does the memory lower perplexity on
# held-out books? Two models with the same config but `use_memory` (configs/books_infini.json,
# configs/books_local.json: 4.5M parameters, BPE 4096, segment 32), the same data, steps,
# tokens and seed, trained side by side (one thread each), then evaluated on two held-out
# books read whole: Persuasion (Austen) and the Gospel of Luke (King James Bible).
#
# Usage: scripts/train_books.sh [BUILD_DIR] [RUN_DIR] [STEPS] [SEED]
#   defaults: build runs/books 1200 1. Run it again with the same arguments to continue a
#   run that was interrupted (each training resumes from its last checkpoint).
# Needs node/npm (the tokenizer is trained by Hugging Face's `tokenizers` from npm) and
# scripts/get_corpus.sh's corpus in runs/corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
runs="${2:-runs/books}"
steps="${3:-1200}"
seed="${4:-1}"
corpus=runs/corpus
[ -d "$corpus/tdavid" ] || bash scripts/get_corpus.sh "$corpus"
mkdir -p "$runs"
mkdir -p "$runs/bin"
cp "$build/infini" "$runs/bin/infini"  # rebuilding during the runs cannot change them

# Training documents: every book but the two held out.
ls "$corpus"/austen/*.txt | grep -v persuasion > "$runs/train_files.txt"
ls "$corpus"/kjv/*.txt | grep -v 42_luke >> "$runs/train_files.txt"
ls "$corpus"/tdavid/*.txt >> "$runs/train_files.txt"
mapfile -t train < "$runs/train_files.txt"

if [ ! -f "$runs/tokenizer.json" ]; then
  if [ ! -d "$runs/npm/node_modules/tokenizers" ]; then
    mkdir -p "$runs/npm"
    (cd "$runs/npm" && npm init -y > /dev/null && npm install --silent tokenizers)
  fi
  NODE_PATH="$runs/npm/node_modules" node scripts/books_tokenizer.js 4096 \
    "$runs/tokenizer.json" "${train[@]}"
fi

export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
for variant in infini local; do
  out="$runs/$variant"
  resume=()
  [ -L "$out/latest" ] && resume=(--resume)
  mkdir -p "$out"
  /usr/bin/time -v "$runs/bin/infini" train "${resume[@]}" \
    --config configs/books_"$variant".json --tokenizer "$runs/tokenizer.json" \
    --data "${train[@]}" --val-data "$corpus"/austen/persuasion.txt --val-tokens 32768 \
    --out "$out" --seq-len 1024 --batch 8 --steps "$steps" \
    --lr 2e-3 --gate-lr 2e-2 --warmup 100 --schedule cosine --weight-decay 0.1 --grad-clip 1 \
    --seed "$seed" --save-every 100 --eval-every 200 --log-every 25 \
    >> "$out/train.log" 2>&1 &
done
wait

for variant in infini local; do
  for book in austen/persuasion kjv/42_luke; do
    OMP_NUM_THREADS=2 "$runs/bin/infini" eval --json --model "$runs/$variant/final" \
      --data "$corpus/$book.txt" > "$runs/$variant/eval_$(basename "$book").json"
  done
done
grep -h '"ppl"\|"perplexity"' "$runs"/*/eval_*.json || true
