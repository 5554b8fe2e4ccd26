#!/usr/bin/env python3
"""Which heads of a passkey model read the key from memory, and how that read scales with length.

    /usr/bin/python3 reference/passkey_memory_weights.py --model models/passkey-demo \
        [--length 4096] [--depth 0.3] [--seed 7] [--infini build/infini]

Runs one passkey prompt (from `infini passkey sample`) followed by its answer through the
PyTorch twin (infini_ref.py) and, for every layer and query head, looks at the memory read of
the five positions that predict the key's digits. A read is a weighted mean of the values of
all earlier segments' tokens, with weights w_t = σ(q)·σ(k_t) (SPEC §4). Printed per head:
the gate sigmoid(β) and, per digit, the ratio

    (mean weight of a non-info token) x 2^20 / (summed weight of the info line's tokens)

i.e. how many times more the filler would weigh than the key in the same read at about 1M
tokens, the filler growing linearly with length while the key's weight stays. Below 1 the key
dominates the read at 1M; heads with ratios of 1e3-1e4 and a gate near 1 read the average of
the context (a constant-like input), not the key. Needs Debian's python3-torch; not used by CI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infini_ref as ir  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--depth", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--infini", default=os.path.join(ROOT, "build", "infini"))
    args = ap.parse_args()

    cfg, P = ir.load_model(args.model)
    if not cfg.use_memory:
        sys.exit("the model has no memory (use_memory: false)")
    if os.path.exists(os.path.join(args.model, "tokenizer.json")):
        sys.exit("this tool assumes the byte tokenizer")
    r = subprocess.run([args.infini, "passkey", "sample", "--length", str(args.length), "--depth",
                        str(args.depth), "--seed", str(args.seed), "--ids"],
                       capture_output=True, text=True, check=True)
    prompt = [int(t) for t in r.stdout.split()]
    key = r.stderr.split("key ")[1].split(",")[0]
    ib, ie = (int(x) for x in r.stderr.split("info line at tokens [")[1].split(")")[0].split(", "))
    ids = prompt + [ord(" ")] + [ord(c) for c in key]  # teacher-forced answer
    T, N, P_len = len(ids), cfg.segment_length, len(prompt)
    H, Hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    G = H // Hkv
    last_start = (T - 1) // N * N
    if not (P_len - 1 >= last_start and ie <= last_start):
        sys.exit("choose a length that is a multiple of the segment length and a depth that puts "
                 "the info line before the last segment")

    keys = [[] for _ in range(cfg.num_hidden_layers)]  # pre-RoPE keys of every token, per layer
    queries = [None] * cfg.num_hidden_layers  # the 5 digit-predicting queries, per layer
    state = ir.init_state(cfg, 1, torch.float32)
    x = torch.tensor([ids])
    with torch.no_grad():
        for s0 in range(0, T, N):
            seg = x[:, s0:s0 + N]
            n = seg.shape[1]
            cos, sin = ir.rope_cos_sin(n, d, cfg.rope_theta, torch.float32)
            h = P["model.embed_tokens.weight"][seg]
            new_state = []
            for l in range(cfg.num_hidden_layers):
                p = f"model.layers.{l}."
                a = ir.rms_norm(h, P[p + "input_layernorm.weight"], cfg.rms_norm_eps)
                q = F.linear(a, P[p + "self_attn.q_proj.weight"], P.get(p + "self_attn.q_proj.bias"))
                k = F.linear(a, P[p + "self_attn.k_proj.weight"], P.get(p + "self_attn.k_proj.bias"))
                v = F.linear(a, P[p + "self_attn.v_proj.weight"], P.get(p + "self_attn.v_proj.bias"))
                q = q.view(1, n, H, d).transpose(1, 2)
                k = k.view(1, n, Hkv, d).transpose(1, 2)
                v = v.view(1, n, Hkv, d).transpose(1, 2)
                keys[l].append(k[0])
                if s0 == last_start:
                    queries[l] = q[0, :, P_len - s0:P_len - s0 + 5]
                A_dot = ir.local_attention(q, k, v, cos, sin)
                M, z = state[l]
                A_mem = ir.memory_retrieve(q, M, z)
                new_state.append(ir.memory_update(k, v, M, z, cfg.memory_update))
                g = torch.sigmoid(P[p + "self_attn.beta"]).view(1, H, 1, 1)
                O = (g * A_mem + (1.0 - g) * A_dot).transpose(1, 2).reshape(1, n, H * d)
                h = h + F.linear(O, P[p + "self_attn.o_proj.weight"])
                m = ir.rms_norm(h, P[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
                mlp = F.silu(F.linear(m, P[p + "mlp.gate_proj.weight"])) * F.linear(m, P[p + "mlp.up_proj.weight"])
                h = h + F.linear(mlp, P[p + "mlp.down_proj.weight"])
            state = new_state

    print(f"{args.model}: prompt of {args.length} tokens, depth {args.depth}, key {key}, "
          f"info line at [{ib}, {ie})")
    print("filler/key weight ratio at 1M tokens for the queries of digits 1..5 (below 1: the key dominates)")
    for l in range(cfg.num_hidden_layers):
        K = torch.cat(keys[l], dim=1)[:, :last_start]  # [Hkv, t, d]: what the memory holds
        gates = torch.sigmoid(P[f"model.layers.{l}.self_attn.beta"])
        for hq in range(H):
            w = ir.sigma(K[hq // G]) @ ir.sigma(queries[l][hq]).T  # [t, 5]
            w_info = w[ib:ie].sum(0)
            others = w.clone()
            others[ib:ie] = 0
            ratio = others.sum(0) / (K.shape[1] - (ie - ib)) * 2 ** 20 / w_info
            print(f"  layer {l} head {hq}  gate {gates[hq]:.3f}  " + " ".join(f"{v:9.3g}" for v in ratio.tolist()))


if __name__ == "__main__":
    main()
