"""PyTorch-eager training/eval throughput of the reference twin (float32), for comparisons.

    /usr/bin/python3 reference/bench_torch.py --config CFG.json --seq-len T --batch B \
        --steps K --threads N [--json]

One training step = forward over all segments of a [B, T] batch of random tokens, the loss
of SPEC §2, full-BPTT backward, and a torch.optim.AdamW step. One warm-up step, then K timed
steps. Eval = the forward (and loss) only, under torch.no_grad(), also 1 warm-up + K timed.
--autocast bf16 runs forward and loss under torch.autocast(bfloat16), for comparison only.
CFG.json is a SPEC config (a model directory is accepted too: its config.json is used);
the weights are random.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infini_ref as ir  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="config.json (or a model dir)")
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none",
                    help="bf16: run forward and loss under torch.autocast (bfloat16 matrix "
                         "products, float32 weights, AdamW and gradients), as a PyTorch user "
                         "would to train faster on a CPU with AVX-512 BF16; not SPEC's float32 "
                         "arithmetic")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    path = args.config
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    cfg = ir.Config.load(path)
    dev = torch.device(args.device)

    P = {n: torch.nn.Parameter(t.to(dev)) for n, t in ir.init_params(cfg, seed=args.seed, dtype=torch.float32).items()}
    opt = torch.optim.AdamW(list(P.values()), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, min(cfg.vocab_size, 256), (args.batch, args.seq_len), generator=gen).to(dev)

    def autocast():
        if args.autocast == "bf16":
            return torch.autocast(dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss_of_batch():
        with autocast():
            return ir.lm_loss(ir.forward(cfg, P, x).float(), x)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of_batch()
        loss.backward()
        opt.step()
        return float(loss)

    def eval_step():
        with torch.no_grad():
            return float(loss_of_batch())

    tokens = args.batch * args.seq_len
    train_step()  # warm-up
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        loss = train_step()
    sync()
    t_train, c_train = time.perf_counter() - t0, time.process_time() - c0

    eval_step()  # warm-up
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        eval_step()
    sync()
    t_eval, c_eval = time.perf_counter() - t0, time.process_time() - c0

    res = {
        "train_tokens_per_s": tokens * args.steps / t_train,
        "eval_tokens_per_s": tokens * args.steps / t_eval,
        "threads": args.threads,
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "device": str(dev),
        "seq_len": args.seq_len,
        "batch": args.batch,
        "steps": args.steps,
        "segment_length": cfg.segment_length,
        "autocast": args.autocast,
        "final_loss": loss,
        # CPU seconds of all threads per step: insensitive to other load on the machine.
        "train_cpu_s_per_step": c_train / args.steps,
        "eval_cpu_s_per_step": c_eval / args.steps,
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"pytorch eager ({dev}, {args.threads} threads): B={args.batch} T={args.seq_len} "
              f"N={cfg.segment_length}: train {res['train_tokens_per_s']:.1f} tok/s, "
              f"eval {res['eval_tokens_per_s']:.1f} tok/s (loss {loss:.4f})")
        print(json.dumps(res))


if __name__ == "__main__":
    main()
