#!/usr/bin/env python3
"""Side-by-side training/eval throughput: the PyTorch eager twin against `infini bench`.

    python3 bench/compare.py [--infini build/infini] [--threads 2] [--steps 3]
                             [--torch-steps 2] [--configs small,medium]
                             [--torch-env fair|plain|both] [--torch-bf16] [--rounds R]
                             [--gemm-ab] [--precision-ab] [--markdown]

For each configuration it runs, one right after the other, `/usr/bin/python3
reference/bench_torch.py ... --threads N --json` and `infini bench ... --threads N --json`,
and prints the tokens/s of both, their ratio, and infini's model-FLOP utilisation against the
SGEMM throughput infini measured in the same run. With --rounds R all of it is repeated R
times, one round after the other, and a summary gives the median ratios and what 4x the
twin's training speed would ask of the machine: its model FLOP/s as a share of the FMA
ceiling `infini bench` measured (over 100%: no float32 program can do it here); --gemm-ab
adds a run of infini with its GEMMs on OpenBLAS (`infini bench --gemm openblas`). It needs no
torch itself (the twin runs under /usr/bin/python3, Debian's torch).

The twin's environment (--torch-env):
  fair   OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = N and OMP_WAIT_POLICY=passive, i.e. one
         pool of N threads and the waiting policy infini uses (default).
  plain  the environment as given: torch.set_num_threads(N) only. Debian's torch then also
         starts OpenBLAS's own pthread pool (one thread per core), both pools spinning.
--torch-bf16 also runs the twin, in each of those environments, with `--autocast bf16`
(torch.autocast to bfloat16 around forward and loss, as "<env>-bf16"): what a PyTorch user
gets from BF16 matrix products. --precision-ab adds a run of `infini bench --precision bf16`
(its rows say "<gemm>+bf16"), and the summary then gives its speed over infini's float32.
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
    "moe": ("configs/bench_moe.json", 2048, 2),
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


def median(xs):
    xs = sorted(x for x in xs if not math.isnan(x))
    if not xs:
        return math.nan
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else 0.5 * (xs[k - 1] + xs[k])


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
    ap.add_argument("--torch-bf16", action="store_true",
                    help="also run the twin under torch.autocast(bfloat16) in each environment")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the whole comparison this many times; the summary gives the "
                         "median ratio over the rounds (default 1)")
    ap.add_argument("--gemm-ab", action="store_true",
                    help="also run infini with --gemm openblas (its GEMMs on OpenBLAS)")
    ap.add_argument("--precision-ab", action="store_true",
                    help="also run infini with --precision bf16 (SPEC §8 mixed precision)")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables at the end")
    args = ap.parse_args()

    n = str(args.threads)
    inf_env = dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    torch_envs = {
        "fair": dict(os.environ, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n,
                     OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive")),
        "plain": dict(os.environ),
    }
    wanted = {"fair": ["fair"], "plain": ["plain"], "both": ["fair", "plain"], "none": []}
    # (label, environment, extra arguments of bench_torch.py)
    wanted = [(te, te, []) for te in wanted[args.torch_env]]
    if args.torch_bf16:
        wanted += [(te + "-bf16", te, ["--autocast", "bf16"]) for _, te, _ in wanted]
    gemms = ["default", "openblas"] if args.gemm_ab else ["default"]
    if args.precision_ab:
        gemms.append("bf16")
    variant_args = {"default": [], "openblas": ["--gemm", "openblas"],
                    "bf16": ["--precision", "bf16"]}

    rows = []
    for rnd in range(1, args.rounds + 1):
        for name in args.configs.split(","):
            if name not in CONFIGS:
                sys.exit(f"compare.py: unknown config '{name}' (known: {', '.join(CONFIGS)})")
            cfg, T, B = CONFIGS[name]
            common = ["--config", cfg, "--seq-len", str(T), "--batch", str(B), "--json"]
            load_before = load_avg()
            torch = {}
            for label, te, extra in wanted:
                torch[label] = run_json(["/usr/bin/python3", "reference/bench_torch.py", *common,
                                         "--steps", str(args.torch_steps), "--threads", n,
                                         *extra], torch_envs[te])
            inf = {}
            for g in gemms:
                extra = variant_args[g]
                inf[g] = run_json([args.infini, "bench", *common, "--steps", str(args.steps),
                                   "--threads", n, *extra], inf_env)
            row = {"round": rnd, "config": name, "T": T, "B": B, "threads": args.threads,
                   "infini": inf, "torch": torch, "load_before": load_before,
                   "load_after": load_avg()}
            rows.append(row)
            print(json.dumps(row), flush=True)

    print()
    hdr = ("| round | config | T x B | infini GEMM | PyTorch env | PyTorch train tok/s | "
           "infini train tok/s | ratio | PyTorch eval tok/s | infini eval tok/s | ratio | "
           "infini prefill tok/s | infini train GFLOP/s | SGEMM GFLOP/s (OpenBLAS / native) | "
           "train MFU | eval MFU | prefill MFU | train CPU s/step PyTorch / infini | load |")
    lines = [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    ratios = {}  # (config, gemm, env) -> [train ratio, ...], [eval ratio, ...]

    def label(g, i):  # "native-avx512", "openblas", "native-avx512+bf16"
        return i.get("gemm", g) + ("+bf16" if i.get("precision") == "bf16" else "")

    for r in rows:
        for g, i in r["infini"].items():
            for te, t in (r["torch"].items() or [("-", None)]):
                tt = t["train_tokens_per_s"] if t else math.nan
                te_ = t["eval_tokens_per_s"] if t else math.nan
                tc = t.get("train_cpu_s_per_step", math.nan) if t else math.nan
                tr, er = i["train_tokens_per_s"] / tt, i["eval_tokens_per_s"] / te_
                acc = ratios.setdefault((r["config"], label(g, i), te), ([], [], []))
                acc[0].append(tr)
                acc[1].append(er)
                # What 4x the twin would ask of the hardware: model FLOP/s over the FMA ceiling.
                peak = i.get("fma_peak_gflops", 0)
                acc[2].append(4 * tt * i["model_gflop_per_train_step"] / (r["T"] * r["B"]) / peak
                              if peak else math.nan)
                lines.append(
                    f"| {r['round']} | {r['config']} | {r['T']} x {r['B']} | "
                    f"{label(g, i)} | {te} | {tt:.1f} | "
                    f"{i['train_tokens_per_s']:.1f} | {tr:.2f}x | "
                    f"{te_:.1f} | {i['eval_tokens_per_s']:.1f} | {er:.2f}x | "
                    f"{i['prefill_tokens_per_s']:.1f} | {i['train_gflops']:.1f} | "
                    f"{i.get('sgemm_openblas_gflops', math.nan):.1f} / "
                    f"{i.get('sgemm_native_gflops', math.nan):.1f} | "
                    f"{100 * i['train_mfu']:.1f}% | "
                    f"{100 * i['eval_mfu']:.1f}% | {100 * i['prefill_mfu']:.1f}% | "
                    f"{tc:.2f} / {i['train_cpu_s_per_step']:.2f} | "
                    f"{r['load_before']}-{r['load_after']} |")
    summary = ["| config | infini GEMM | PyTorch env | rounds | median train ratio | "
               "median eval ratio | 4x the twin's training needs, of the FMA ceiling |",
               "|---|---|---|---|---|---|---|"]
    for (cfg, g, te), (tr, er, need) in ratios.items():
        summary.append(f"| {cfg} | {g} | {te} | {len(tr)} | {median(tr):.2f}x | "
                       f"{median(er):.2f}x | {100 * median(need):.0f}% |")
    if args.precision_ab:
        # infini bf16 over infini fp32, per round, and where the bf16 run stands.
        summary += ["", "| config | rounds | bf16 / fp32 train | eval | prefill | "
                    "bf16 train, of the bf16 ceiling |", "|---|---|---|---|---|---|"]
        for cfg in dict.fromkeys(r["config"] for r in rows):
            rs = [r["infini"] for r in rows if r["config"] == cfg]
            q = {k: [i["bf16"][k] / i["default"][k] for i in rs]
                 for k in ("train_tokens_per_s", "eval_tokens_per_s", "prefill_tokens_per_s")}
            peak = [i["bf16"].get("train_bf16_peak_fraction", math.nan) for i in rs]
            summary.append(f"| {cfg} | {len(rs)} | {median(q['train_tokens_per_s']):.2f}x | "
                           f"{median(q['eval_tokens_per_s']):.2f}x | "
                           f"{median(q['prefill_tokens_per_s']):.2f}x | "
                           f"{100 * median(peak):.0f}% |")
    # The ratio depends on the CPU: where AVX-512 FMAs run at AVX2's rate (Zen 4), OpenBLAS's
    # kernels reach the same peak as infini's and the twin's products are as fast as infini's.
    cpus = sorted({i.get("cpu", "?") for r in rows for i in r["infini"].values()})
    cores = sorted({i.get("blas_core", "?") for r in rows for i in r["infini"].values()})
    machine = (f"CPU: {', '.join(cpus)}; OpenBLAS kernels: {', '.join(cores)} "
               f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    if args.markdown:
        print(machine)
        print()
        print("\n".join(lines))
        print()
        print("\n".join(summary))
        return
    for r in rows:
        for g, i in r["infini"].items():
            print(f"round {r['round']} {r['config']}: infini ({label(g, i)}) train "
                  f"{i['train_tokens_per_s']:.1f} tok/s, MFU {100 * i['train_mfu']:.1f}% of "
                  f"{i['sgemm_gflops']:.1f} GFLOP/s SGEMM")
            for te, t in r["torch"].items():
                print(f"  PyTorch ({te}): train {t['train_tokens_per_s']:.1f} tok/s, ratio "
                      f"{i['train_tokens_per_s'] / t['train_tokens_per_s']:.2f}x; eval "
                      f"{t['eval_tokens_per_s']:.1f} tok/s, ratio "
                      f"{i['eval_tokens_per_s'] / t['eval_tokens_per_s']:.2f}x")
    print(machine)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
