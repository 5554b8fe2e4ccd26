#!/usr/bin/env python3
"""Overlays the training curves of scripts/train_precision.sh (fp32 and bf16) in one SVG.

    python3 scripts/precision_curves.py [RUN_DIR] [OUT.svg]
        defaults: runs/precision docs/precision_austen.svg

Plots the training loss (mean over windows of 10 steps) and the validation loss of each
precision against the step, and prints the final validation losses, their relative difference
and the median tokens/s of each run as one JSON object. Standard library only.
"""
import json
import os
import statistics
import sys

RUN = sys.argv[1] if len(sys.argv) > 1 else "runs/precision"
OUT = sys.argv[2] if len(sys.argv) > 2 else "docs/precision_austen.svg"
COLORS = {"fp32": "#1f77b4", "bf16": "#d62728"}


def read(precision):
    train, val, speed = [], [], []
    with open(os.path.join(RUN, precision, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if "val_loss" in j:
                val.append((j["step"], j["val_loss"]))
            elif "loss" in j:
                train.append((j["step"], j["loss"]))
                speed.append(j["tokens_per_s"])
    window = 10
    smooth = [(train[i + window - 1][0], statistics.fmean(l for _, l in train[i:i + window]))
              for i in range(0, len(train) - window + 1, window)]
    return smooth, val, statistics.median(speed)


def main():
    runs = {p: read(p) for p in ("fp32", "bf16")}
    pts = [pt for s, v, _ in runs.values() for pt in s + v]
    x1 = max(x for x, _ in pts)
    y0, y1 = min(y for _, y in pts), max(y for _, y in pts)
    W, H, L, R, T, B = 720, 420, 60, 20, 30, 45
    sx = lambda x: L + (W - L - R) * x / x1
    sy = lambda y: T + (H - T - B) * (y1 - y) / (y1 - y0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle">Austen delta model, 500 steps: '
           f'fp32 and --precision bf16 (train: lines, validation on Persuasion: dots)</text>']
    for k in range(6):
        y = y0 + (y1 - y0) * k / 5
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
                   f'stroke="#ddd"/><text x="{L - 6}" y="{sy(y) + 4:.1f}" '
                   f'text-anchor="end">{y:.2f}</text>')
    for k in range(6):
        x = x1 * k / 5
        out.append(f'<text x="{sx(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x:.0f}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">step</text>')
    out.append(f'<text x="14" y="{(T + H - B) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(T + H - B) / 2})">loss (nats per byte)</text>')
    for i, (p, (smooth, val, _)) in enumerate(runs.items()):
        c = COLORS[p]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in smooth)
        dash = ' stroke-dasharray="6 3"' if p == "bf16" else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.5"{dash}/>')
        for x, y in val:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{c}" '
                       f'fill-opacity="0.6"/>')
        out.append(f'<text x="{W - R - 150}" y="{T + 20 + 16 * i}" fill="{c}">{p}: final val '
                   f'{val[-1][1]:.4f}</text>')
    out.append("</svg>")
    with open(OUT, "w") as f:
        f.write("\n".join(out) + "\n")
    f32, b16 = runs["fp32"][1][-1][1], runs["bf16"][1][-1][1]
    print(json.dumps({"final_val_loss_fp32": f32, "final_val_loss_bf16": b16,
                      "relative_difference": (b16 - f32) / f32,
                      "median_tokens_per_s_fp32": runs["fp32"][2],
                      "median_tokens_per_s_bf16": runs["bf16"][2], "svg": OUT}))


if __name__ == "__main__":
    main()
