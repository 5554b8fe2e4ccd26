#!/usr/bin/env python3
"""Where the memory's gain comes from, for the books experiment (docs/training.md, issue #26).

Reads each held-out book whole through both models (the Python package: Model.token_losses)
and writes, for every book:
  - the loss by segment index (log-spaced buckets) and by position within the segment,
    both models in one SVG each;
  - the loss on tokens whose previous occurrence is more than one segment back (only the
    memory can carry them), against tokens seen within the segment and tokens never seen;
  - the memory gates sigmoid(beta) per layer and head.
Usage (PYTHONPATH=build/python):
  /usr/bin/python3 scripts/books_analysis.py RUN_DIR OUT_DIR BOOK.txt...
RUN_DIR holds infini/final and local/final (scripts/train_books.sh); OUT_DIR gets
books_<book>_by_segment.svg, books_<book>_in_segment.svg and books_analysis.json.
"""
import json
import math
import os
import sys

import numpy as np

import infini


def polyline_svg(title, xlabel, ylabel, series, log_x=False, width=640, height=360):
    """A small line chart: series is [(name, colour, xs, ys)]."""
    ml, mr, mt, mb = 60, 20, 30, 45
    xs_all = np.concatenate([np.asarray(s[2], float) for s in series])
    ys_all = np.concatenate([np.asarray(s[3], float) for s in series])
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    x0, x1 = fx(xs_all.min()), fx(xs_all.max())
    y0, y1 = float(ys_all.min()), float(ys_all.max())
    pad = 0.05 * (y1 - y0 or 1)
    y0, y1 = y0 - pad, y1 + pad
    X = lambda v: ml + (fx(v) - x0) / ((x1 - x0) or 1) * (width - ml - mr)
    Y = lambda v: height - mb - (v - y0) / (y1 - y0) * (height - mt - mb)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="18" font-size="14">%s</text>' % (ml, title),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (
               ml, height - mb, width - mr, height - mb),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (ml, mt, ml, height - mb)]
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        out.append('<text x="%d" y="%.1f" text-anchor="end">%.2f</text>' % (ml - 4, Y(v) + 4, v))
    ticks = [10 ** k for k in range(int(math.ceil(x0)), int(math.floor(x1)) + 1)] if log_x else \
        list(np.linspace(xs_all.min(), xs_all.max(), 5))
    for v in ticks:
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (
            X(v), height - mb + 16, ("%g" % v)))
    out.append('<text x="%d" y="%d" text-anchor="middle">%s</text>' % (
        (ml + width - mr) // 2, height - 8, xlabel))
    out.append('<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">%s</text>'
               % ((mt + height - mb) // 2, (mt + height - mb) // 2, ylabel))
    for k, (name, colour, xs, ys) in enumerate(series):
        pts = " ".join("%.1f,%.1f" % (X(x), Y(y)) for x, y in zip(xs, ys))
        out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (
            colour, pts))
        out.append('<text x="%d" y="%d" fill="%s">%s</text>' % (
            width - mr - 150, mt + 16 + 16 * k, colour, name))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def occurrence_groups(ids, N):
    """For each prediction t (of ids[t+1]): 0 = the token occurred earlier in the segment
    (local attention sees it), 1 = it occurred before, but only more than the segment's
    start back (only the memory can carry it), 2 = first occurrence in the book."""
    last = {}
    g = np.empty(len(ids) - 1, dtype=np.int8)
    for j, tok in enumerate(ids):
        if j > 0:
            p = last.get(tok)
            seg_start = (j - 1) // N * N  # the predicting position's segment (j-1 predicts j)
            g[j - 1] = 2 if p is None else (0 if p >= seg_start else 1)
        last[tok] = j
    return g


def main():
    if len(sys.argv) < 4:
        print(__doc__)
        sys.exit(2)
    run, out_dir, books = sys.argv[1], sys.argv[2], sys.argv[3:]
    models = {v: infini.load(os.path.join(run, v, "final")) for v in ("infini", "local")}
    N = models["infini"].config["infini"]["segment_length"]
    report = {"segment_length": N, "books": {}}
    beta = {n: p for n, p in models["infini"].parameters().items() if n.endswith(".beta")}
    report["gates"] = [[round(1 / (1 + math.exp(-float(b))), 3) for b in beta[n]]
                       for n in sorted(beta, key=lambda n: int(n.split(".")[2]))]
    colours = {"infini": "#c0392b", "local": "#2c3e50"}
    for path in books:
        name = os.path.splitext(os.path.basename(path))[0].lstrip("0123456789_")
        text = open(path, encoding="utf-8").read()
        ids = models["infini"].tokenizer.encode(text)
        tl = {v: m.token_losses(ids) for v, m in models.items()}
        groups = occurrence_groups(ids, N)
        seg = np.arange(len(ids) - 1) // N
        pos = np.arange(len(ids) - 1) % N
        S = int(seg.max()) + 1
        edges = sorted(set([0, 1, 2, 3] + [int(round(x)) for x in np.geomspace(4, S, 24)]))
        buckets = [(a, b) for a, b in zip(edges, edges[1:] + [S + 1]) if a < S]
        book = {"tokens": len(ids), "segments": S}
        for v in tl:
            book[v] = {
                "loss": float(tl[v].mean()), "ppl": math.exp(tl[v].mean()),
                "by_group": {k: float(tl[v][groups == i].mean())
                             for i, k in enumerate(["seen_in_segment", "seen_only_before_segment",
                                                    "first_occurrence"])},
                "by_position_in_segment": [float(tl[v][pos == p].mean()) for p in range(N)],
                "by_segment_bucket": [float(tl[v][(seg >= a) & (seg < b)].mean())
                                      for a, b in buckets],
            }
        book["group_counts"] = {k: int((groups == i).sum()) for i, k in enumerate(
            ["seen_in_segment", "seen_only_before_segment", "first_occurrence"])}
        book["segment_buckets"] = buckets
        book["ppl_reduction"] = 1 - book["infini"]["ppl"] / book["local"]["ppl"]
        report["books"][name] = book
        mids = [math.sqrt(max(a, 0.5) * max(b - 1, 0.5)) + 1 for a, b in buckets]
        with open(os.path.join(out_dir, "books_%s_by_segment.svg" % name), "w") as f:
            f.write(polyline_svg(
                "%s: loss by segment index (%d tokens, segment %d)" % (name, len(ids), N),
                "segment index + 1 (log scale, buckets)", "loss (nats/token)",
                [(v, colours[v], mids, book[v]["by_segment_bucket"]) for v in tl], log_x=True))
        with open(os.path.join(out_dir, "books_%s_in_segment.svg" % name), "w") as f:
            f.write(polyline_svg(
                "%s: loss by position within the segment" % name, "position in segment",
                "loss (nats/token)",
                [(v, colours[v], list(range(N)), book[v]["by_position_in_segment"]) for v in tl]))
        print("%s: infini ppl %.3f, local ppl %.3f (%.2f%% lower)" % (
            name, book["infini"]["ppl"], book["local"]["ppl"], 100 * book["ppl_reduction"]))
        for k in book["group_counts"]:
            print("  %-26s %7d tokens  infini %.3f  local %.3f" % (
                k, book["group_counts"][k], book["infini"]["by_group"][k],
                book["local"]["by_group"][k]))
    with open(os.path.join(out_dir, "books_analysis.json"), "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
