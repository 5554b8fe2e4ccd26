#!/usr/bin/env python3
"""Streaming inference cost against prompt length: `infini generate --json` on prompts of
1K..1M tokens with an Infini-attention model, and on a full-attention baseline
(use_memory: false, segment_length = whole context) while it fits.

For every prompt it records decode tokens/s, prefill tokens/s (with model-FLOP utilisation
against SGEMM measured on the spot) and peak RSS, then prints Markdown tables relative to
the 1K row. Standard library only (no torch, no numpy).

    python3 bench/inference_flat.py --infini build/infini
    python3 bench/inference_flat.py --infini build/infini --sizes 1024,32768 --baseline 1024  # quick

Prompts are English-like text of exactly N bytes; the model uses the byte tokenizer, so N bytes
are N tokens. Decoding generates one whole segment of tokens (--new-tokens defaults to the
segment length) so that every run averages over the same positions within a segment, the
segment's fold into memory included, whatever the prompt length.

Decode speed is reported twice: tokens per second of wall time, and tokens per second of the
process's CPU time (decode of a small model runs on one thread). On a shared machine the wall
figure follows the load of other programs; the CPU figure measures the work per token.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

INFINI_CFG = {
    "vocab_size": 258, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "tie_word_embeddings": True, "model_type": "llama",
    "infini": {"segment_length": 1024, "memory_update": "linear", "use_memory": True},
}

WORDS = ("the of and to in memory segment attention long context model a is that it for "
         "with as was on be by this which at from or an were are not have had").split()


def write_prompt(path, n_bytes, seed=0):
    """Deterministic text of exactly n_bytes, written in 1 MB pieces."""
    if os.path.exists(path) and os.path.getsize(path) == n_bytes:
        return
    rng = random.Random(seed)
    left = n_bytes
    with open(path, "w", encoding="ascii") as f:
        while left > 0:
            words, size = [], 0
            while size < min(left, 1 << 20):
                w = rng.choice(WORDS) + ("\n" if rng.random() < 0.08 else " ")
                words.append(w)
                size += len(w)
            piece = "".join(words)[: min(left, 1 << 20)]
            f.write(piece)
            left -= len(piece)


def make_model(infini, cfg, out_dir):
    if os.path.exists(os.path.join(out_dir, "config.json")):
        return
    cfg_path = out_dir + ".json"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    subprocess.run([infini, "init", "--config", cfg_path, "--out", out_dir, "--seed", "1"],
                   check=True, stdout=subprocess.DEVNULL)


def model_flops_prefill(cfg, tokens):
    """Useful FLOPs of streaming prefill of `tokens` tokens (docs/inference.md). The lm_head is
    not counted: prefill computes only the last token's logits."""
    D, F = cfg["hidden_size"], cfg["intermediate_size"]
    H, Hkv, L = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim", D // H)
    N = cfg["infini"]["segment_length"]
    p_mm = L * (D * H * d + 2 * D * Hkv * d + H * d * D + 3 * D * F)
    pairs = 0  # causal (query, key) pairs, summed over segments
    s = 0
    while s * N < tokens:
        n = min(N, tokens - s * N)
        pairs += n * (n + 1) / 2
        s += 1
    flops = 2 * p_mm * tokens + L * 4 * d * H * pairs
    if cfg["infini"].get("use_memory", True):
        u = 2 if cfg["infini"]["memory_update"] == "delta" else 1
        flops += L * 2 * d * d * tokens * (H + Hkv * u)
    return flops


def sgemm_gflops(infini, model_dir):
    """SGEMM GFLOP/s measured by `infini bench`: the faster of OpenBLAS and infini's kernel on
    1024^3 and 4096x1024x1024, rows 1024 and 1040 floats apart."""
    r = subprocess.run([infini, "bench", "--config", model_dir, "--seq-len", "256", "--steps", "1",
                        "--warmup", "0", "--json"], check=True, capture_output=True, text=True)
    return json.loads(r.stdout)["sgemm_gflops"]


def run_generate(infini, model_dir, prompt, new_tokens):
    cmd = [infini, "generate", "--model", model_dir, "--prompt-file", prompt, "--max-new-tokens",
           str(new_tokens), "--temperature", "0", "--ignore-eos", "--json"]
    t0 = time.time()
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    j = json.loads(r.stdout)
    j.pop("text", None)
    j["wall_s"] = time.time() - t0
    return j


def table(title, rows, cfgs, sgemm):
    base = rows[0]
    out = [f"\n### {title}\n",
           "| prompt tokens | decode tok/CPU-s | vs first | decode tok/s (wall) | vs first "
           "| peak RSS MB | vs first | prefill tok/s | prefill GFLOP/s | MFU vs SGEMM |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cfg = cfgs[r["prompt_tokens"]]
        gf = model_flops_prefill(cfg, r["prompt_tokens"]) / r["prefill_model_seconds"] / 1e9
        out.append(f"| {r['prompt_tokens']:,} | {r['decode_tokens_per_cpu_s']:.1f} | "
                   f"{100 * r['decode_tokens_per_cpu_s'] / base['decode_tokens_per_cpu_s']:.1f}% | "
                   f"{r['decode_tokens_per_s']:.1f} | "
                   f"{100 * r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.1f}% | "
                   f"{r['peak_rss_mb']:.1f} | {100 * r['peak_rss_mb'] / base['peak_rss_mb']:.1f}% | "
                   f"{r['prefill_tokens_per_s']:.0f} | {gf:.1f} | {100 * gf / sgemm:.1f}% |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--infini", default="build/infini", help="path of the infini binary")
    ap.add_argument("--work", default="/tmp/infini_bench_inference", help="models, prompts, results")
    ap.add_argument("--sizes", default="1024,32768,262144,1048576", help="Infini prompt lengths")
    ap.add_argument("--baseline", default="1024,8192,32768", help="full-attention prompt lengths")
    ap.add_argument("--new-tokens", type=int, default=0, help="decode tokens (0: one segment)")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    infini = os.path.abspath(a.infini)

    mdir = os.path.join(a.work, "infini_model")
    make_model(infini, INFINI_CFG, mdir)
    new_tokens = a.new_tokens or INFINI_CFG["infini"]["segment_length"]
    sgemm = sgemm_gflops(infini, mdir)
    print(f"SGEMM {sgemm:.1f} GFLOP/s; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results = {"sgemm_gflops": sgemm, "new_tokens": new_tokens, "infini": [], "baseline": []}
    cfgs = {}

    for n in [int(x) for x in a.sizes.split(",") if x]:
        prompt = os.path.join(a.work, f"prompt_{n}.txt")
        write_prompt(prompt, n)
        r = run_generate(infini, mdir, prompt, new_tokens)
        cfgs[r["prompt_tokens"]] = INFINI_CFG
        results["infini"].append(r)
        print(json.dumps({"model": "infini", **r}), flush=True)

    base_cfgs = {}
    for n in [int(x) for x in a.baseline.split(",") if x]:
        cfg = json.loads(json.dumps(INFINI_CFG))
        cfg["infini"] = {"segment_length": n + new_tokens, "memory_update": "linear",
                         "use_memory": False}
        bdir = os.path.join(a.work, f"full_{n + new_tokens}")
        make_model(infini, cfg, bdir)
        prompt = os.path.join(a.work, f"prompt_{n}.txt")
        write_prompt(prompt, n)
        r = run_generate(infini, bdir, prompt, new_tokens)
        base_cfgs[r["prompt_tokens"]] = cfg
        results["baseline"].append(r)
        print(json.dumps({"model": "full-attention", **r}), flush=True)

    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    with open(os.path.join(a.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if results["infini"]:
        print(table(f"Infini-attention (segment {INFINI_CFG['infini']['segment_length']}), "
                    f"{new_tokens} new tokens", results["infini"], cfgs, sgemm))
    if results["baseline"]:
        print(table(f"Full attention (use_memory false, segment = prompt + {new_tokens}), "
                    f"{new_tokens} new tokens", results["baseline"], base_cfgs, sgemm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
