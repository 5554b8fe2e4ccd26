#!/usr/bin/env python3
"""Side-by-side training/eval throughput: the PyTorch eager twin against `infini bench`.

    python3 bench/compare.py [--infini build/infini] [--threads 2] [--steps 3]
                             [--torch-steps 2] [--configs small,medium]
                             [--torch-env fair|plain|both] [--markdown]

For each configuration it runs, one right after the other, `/usr/bin/python3
reference/bench_torch.py ... --threads N --json` and `infini bench ... --threads N --json`,
and prints the tokens/s of both, their ratio, and infini's model-FLOP utilisation against the
SGEMM throughput infini measured in the same run. It needs no torch itself (the twin runs
under /usr/bin/python3, Debian's torch).

The twin's environment (--torch-env):
  fair   OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = N and OMP_WAIT_POLICY=passive, i.e. one
         pool of N threads and the waiting policy infini uses (default).
  plain  the environment as given: torch.set_num_threads(N) only. Debian's torch then also
         starts OpenBLAS's own pthread pool (one thread per core), both pools spinning.
infini always gets OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = N (and restarts itself with
passive waiting unless OMP_WAIT_POLICY is set). The machine's load average is printed with
every row: numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (config file, T, B), the fixed benchmark configurations of docs/benchmarks.md
CONFIGS = {
    "small": ("configs/bench_small.json", 2048, 2),
    "medium": ("configs/bench_medium.json", 4096, 1),
}


def load_avg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def run_json(cmd, env) -> dict:
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if p.returncode != 0:
        sys.exit(f"compare.py: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"compare.py: no JSON from {' '.join(cmd)}")
    res = json.loads(lines[-1])
    res["wall_s"] = round(time.time() - t0, 1)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infini", default=os.path.join(ROOT, "build", "infini"),
                    help="the infini binary (default: build/infini)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps of infini (median)")
    ap.add_argument("--torch-steps", type=int, default=2,
                    help="timed steps of the PyTorch twin (its figure is their mean)")
    ap.add_argument("--configs", default="small,medium",
                    help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--torch-env", default="fair", choices=["fair", "plain", "both", "none"],
                    help="environment of the PyTorch twin (see above); none: infini only")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table at the end")
    args = ap.parse_args()

    n = str(args.threads)
    inf_env = dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    torch_envs = {
        "fair": dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n,
                     OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive")),
        "plain": dict(os.environ),
    }
    wanted = {"fair": ["fair"], "plain": ["plain"], "both": ["fair", "plain"], "none": []}
    wanted = wanted[args.torch_env]

    rows = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            sys.exit(f"compare.py: unknown config '{name}' (known: {', '.join(CONFIGS)})")
        cfg, T, B = CONFIGS[name]
        common = ["--config", cfg, "--seq-len", str(T), "--batch", str(B), "--json"]
        load_before = load_avg()
        torch = {}
        for te in wanted:
            torch[te] = run_json(["/usr/bin/python3", "reference/bench_torch.py", *common,
                                  "--steps", str(args.torch_steps), "--threads", n],
                                 torch_envs[te])
        inf = run_json([args.infini, "bench", *common, "--steps", str(args.steps),
                        "--threads", n], inf_env)
        row = {"config": name, "T": T, "B": B, "threads": args.threads, "infini": inf,
               "torch": torch, "load_before": load_before, "load_after": load_avg()}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    hdr = ("| config | T x B | threads | PyTorch env | PyTorch train tok/s | infini train tok/s | "
           "ratio | PyTorch eval tok/s | infini eval tok/s | ratio | infini prefill tok/s | "
           "infini train GFLOP/s | SGEMM GFLOP/s | train MFU | eval MFU | prefill MFU | "
           "train MFU per CPU s | train CPU s/step PyTorch / infini | load |")
    lines = [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in rows:
        i = r["infini"]
        for te, t in (r["torch"].items() or [("-", None)]):
            tt = t["train_tokens_per_s"] if t else math.nan
            te_ = t["eval_tokens_per_s"] if t else math.nan
            tc = t.get("train_cpu_s_per_step", math.nan) if t else math.nan
            lines.append(
                f"| {r['config']} | {r['T']} x {r['B']} | {r['threads']} | {te} | {tt:.1f} | "
                f"{i['train_tokens_per_s']:.1f} | {i['train_tokens_per_s'] / tt:.1f}x | "
                f"{te_:.1f} | {i['eval_tokens_per_s']:.1f} | {i['eval_tokens_per_s'] / te_:.1f}x | "
                f"{i['prefill_tokens_per_s']:.1f} | {i['train_gflops']:.1f} | "
                f"{i['sgemm_gflops']:.1f} | {100 * i['train_mfu']:.1f}% | "
                f"{100 * i['eval_mfu']:.1f}% | {100 * i['prefill_mfu']:.1f}% | "
                f"{100 * i['train_cpu_efficiency']:.1f}% | "
                f"{tc:.2f} / {i['train_cpu_s_per_step']:.2f} | "
                f"{r['load_before']}-{r['load_after']} |")
    if args.markdown:
        print("\n".join(lines))
        return
    for r in rows:
        i = r["infini"]
        print(f"{r['config']}: infini train {i['train_tokens_per_s']:.1f} tok/s, "
              f"MFU {100 * i['train_mfu']:.1f}% of {i['sgemm_gflops']:.1f} GFLOP/s SGEMM")
        for te, t in r["torch"].items():
            print(f"  PyTorch ({te}): train {t['train_tokens_per_s']:.1f} tok/s, ratio "
                  f"{i['train_tokens_per_s'] / t['train_tokens_per_s']:.1f}x; eval "
                  f"{t['eval_tokens_per_s']:.1f} tok/s, ratio "
                  f"{i['eval_tokens_per_s'] / t['eval_tokens_per_s']:.1f}x")


if __name__ == "__main__":
    main()
