#!/usr/bin/env python3
"""Issue #27's accuracy checks on trained models: --precision bf16 against fp32.

    python3 scripts/precision_check.py [--infini build/infini] [--out docs/precision_check.json]

For each model (the book models, the passkey demo, and the Austen runs of
scripts/train_precision.sh when present) it runs `infini eval` in both precisions on a long
text (loss within 1% relative is the bar), and `infini grad` in both on a shorter one, then
the cosine similarity of the two gradients for every parameter tensor (0.99 is the bar).
Needs numpy (safetensors are read with reference/infini_ref.py's reader).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "reference"))
from infini_ref import read_safetensors  # noqa: E402


def run(cmd):
    p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"precision_check: {' '.join(cmd)} failed: {p.stderr.strip()[-400:]}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infini", default="build/infini")
    ap.add_argument("--out", default="docs/precision_check.json")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="precision_check_")
    persuasion = "runs/corpus/austen/persuasion.txt"
    luke = "runs/corpus/kjv/42_luke.txt"
    # A 32K-token passkey prompt (byte tokenizer) as eval text for the passkey demo model.
    passkey_text = os.path.join(tmp, "passkey_32k.txt")
    with open(passkey_text, "w") as f:
        f.write(run([args.infini, "passkey", "sample", "--length", "32K", "--seed", "7"]))
    # (model, eval text, grad text: the first 16 KiB of it)
    cases = [("models/books/infini", persuasion), ("models/books/local", persuasion),
             ("models/books/infini", luke), ("models/passkey-demo", passkey_text)]
    for run_dir in ("runs/precision/fp32/final", "runs/precision/bf16/final"):
        if os.path.isdir(os.path.join(ROOT, run_dir)):
            cases.append((run_dir, persuasion))
    results = []
    for model, text in cases:
        if not os.path.exists(os.path.join(ROOT, text)) and not os.path.exists(text):
            print(f"skip {model}: {text} missing (scripts/get_corpus.sh)")
            continue
        ev = {p: json.loads(run([args.infini, "eval", "--model", model, "--data", text,
                                 "--precision", p, "--json"]).strip().splitlines()[-1])
              for p in ("fp32", "bf16")}
        short = os.path.join(tmp, "short.txt")
        with open(text if os.path.isabs(text) else os.path.join(ROOT, text), "rb") as f:
            data = f.read(16384)
        with open(short, "wb") as f:
            f.write(data)
        grads = {}
        for p in ("fp32", "bf16"):
            out = os.path.join(tmp, f"grad_{p}.safetensors")
            run([args.infini, "grad", "--model", model, "--data", short, "--out", out,
                 "--precision", p])
            grads[p] = read_safetensors(out)[0]
        cos = {}
        for name, a in grads["fp32"].items():
            b = grads["bf16"][name]
            a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
            if na == 0 and nb == 0:
                continue
            cos[name] = float(a64 @ b64 / (na * nb)) if na and nb else 0.0
        worst = min(cos, key=cos.get)
        r = {"model": model, "text": os.path.basename(text), "tokens": ev["fp32"]["tokens"],
             "loss_fp32": ev["fp32"]["loss"], "loss_bf16": ev["bf16"]["loss"],
             "loss_relative_difference": (ev["bf16"]["loss"] - ev["fp32"]["loss"]) /
             ev["fp32"]["loss"],
             "grad_tensors": len(cos), "grad_min_cosine": cos[worst], "grad_min_cosine_tensor": worst,
             "grad_bytes": len(data)}
        results.append(r)
        print(json.dumps(r), flush=True)
    with open(os.path.join(ROOT, args.out), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    ok = all(abs(r["loss_relative_difference"]) <= 0.01 and r["grad_min_cosine"] >= 0.99
             for r in results)
    print("all within the bars (loss 1%, cosine 0.99)" if ok else "SOME CHECK FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
