"""Self-checks of the reference twin and of the committed goldens.

    /usr/bin/python3 reference/check_ref.py [--golden tests/golden] [--quick]

1. Every golden dir: reloading it and recomputing (float64) reproduces expected.json and
   grads.safetensors; gradient names are exactly the parameter names.
2. A second, deliberately naive implementation (numpy, float64, explicit loops over
   positions and heads, written again from SPEC §2-§4) agrees with the twin's logits.
3. Central finite differences (float64) agree with the autograd gradient on sampled entries
   of every parameter tensor, for a linear and a delta case.
4. Streaming in pieces (multiples of N, state carried) == one whole forward; a batch of two
   sequences == each sequence alone (independent states).
5. use_memory false with N >= T == a plain full causal-attention transformer (global RoPE
   positions); local RoPE positions == shifted positions up to rounding.
6. safetensors round trips; BF16 rounding == torch's float32 -> bfloat16 conversion.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infini_ref as ir  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAILS = []


def check(cond, msg):
    print(("  ok   " if cond else "  FAIL ") + msg)
    if not cond:
        FAILS.append(msg)


# ----------------------------------------------------------------------------------------
# The naive twin-of-the-twin
# ----------------------------------------------------------------------------------------


def naive_logits(cfg: ir.Config, P: dict, ids: list) -> np.ndarray:
    W = {n: t.detach().double().numpy() for n, t in P.items()}
    D, H, Hkv, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    G = H // Hkv
    N = cfg.segment_length
    eps = cfg.rms_norm_eps

    def rms(x, w):
        return x / math.sqrt(float(np.mean(x * x)) + eps) * w

    def sig(x):
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))

    def rope(x, p):
        y = x.copy()
        for i in range(d // 2):
            a = p * cfg.rope_theta ** (-2.0 * i / d)
            c, s = math.cos(a), math.sin(a)
            y[i] = x[i] * c - x[i + d // 2] * s
            y[i + d // 2] = x[i + d // 2] * c + x[i] * s
        return y

    def lin(name, x):
        y = W[name + ".weight"] @ x
        if name + ".bias" in W:
            y = y + W[name + ".bias"]
        return y

    Mem = [[np.zeros((d, d)) for _ in range(Hkv)] for _ in range(cfg.num_hidden_layers)]
    Z = [[np.zeros(d) for _ in range(Hkv)] for _ in range(cfg.num_hidden_layers)]
    out = []
    for s0 in range(0, len(ids), N):
        seg = ids[s0 : s0 + N]
        n = len(seg)
        hs = [W["model.embed_tokens.weight"][t].copy() for t in seg]
        for l in range(cfg.num_hidden_layers):
            p = f"model.layers.{l}."
            a = [rms(h, W[p + "input_layernorm.weight"]) for h in hs]
            q = [lin(p + "self_attn.q_proj", x).reshape(H, d) for x in a]
            k = [lin(p + "self_attn.k_proj", x).reshape(Hkv, d) for x in a]
            v = [lin(p + "self_attn.v_proj", x).reshape(Hkv, d) for x in a]
            new_h = []
            for t in range(n):
                O = np.zeros(H * d)
                for h in range(H):
                    g = h // G
                    qr = rope(q[t][h], t)
                    sc = np.array([qr @ rope(k[u][g], u) / math.sqrt(d) for u in range(t + 1)])
                    w = np.exp(sc - sc.max())
                    w /= w.sum()
                    a_dot = sum(w[u] * v[u][g] for u in range(t + 1))
                    if cfg.use_memory:
                        sq = sig(q[t][h])
                        a_mem = (sq @ Mem[l][g]) / (sq @ Z[l][g] + 1e-6)
                        gate = 1.0 / (1.0 + math.exp(-W[p + "self_attn.beta"][h]))
                        o = gate * a_mem + (1 - gate) * a_dot
                    else:
                        o = a_dot
                    O[h * d : (h + 1) * d] = o
                new_h.append(hs[t] + W[p + "self_attn.o_proj.weight"] @ O)
            if cfg.use_memory:  # update after every position of the segment has read
                for g in range(Hkv):
                    M0, z0 = Mem[l][g], Z[l][g]
                    M1, z1 = M0.copy(), z0.copy()
                    for t in range(n):
                        sk = sig(k[t][g])
                        if cfg.memory_update == "linear":
                            dv = v[t][g]
                        else:
                            dv = v[t][g] - (sk @ M0) / (sk @ z0 + 1e-6)
                        M1 += np.outer(sk, dv)
                        z1 += sk
                    Mem[l][g], Z[l][g] = M1, z1
            hs = []
            for h in new_h:
                m = rms(h, W[p + "post_attention_layernorm.weight"])
                gt = W[p + "mlp.gate_proj.weight"] @ m
                up = W[p + "mlp.up_proj.weight"] @ m
                hs.append(h + W[p + "mlp.down_proj.weight"] @ (gt / (1 + np.exp(-gt)) * up))
        lm = W["model.embed_tokens.weight"] if cfg.tie_word_embeddings else W["lm_head.weight"]
        for h in hs:
            out.append(lm @ rms(h, W["model.norm.weight"]))
    return np.stack(out)


def naive_loss(logits: np.ndarray, ids: list) -> float:
    tot = 0.0
    for t in range(1, len(ids)):
        z = logits[t - 1]
        m = z.max()
        tot += (m + math.log(np.exp(z - m).sum())) - z[ids[t]]
    return tot / (len(ids) - 1)


# ----------------------------------------------------------------------------------------


def golden_dirs(root):
    return sorted(os.path.join(root, c) for c in os.listdir(root) if os.path.isfile(os.path.join(root, c, "expected.json")))


def check_golden(d, quick):
    name = os.path.basename(d)
    print(f"[{name}]")
    cfg, P = ir.load_model(d, torch.float64)
    exp = json.load(open(os.path.join(d, "expected.json")))
    ids = ir.byte_tokenize(open(os.path.join(d, "data.txt"), "rb").read())
    x = torch.tensor([ids])
    loss, logits, grads = ir.loss_and_grads(cfg, P, x)
    check(exp["tokens"] == len(ids), f"tokens {len(ids)}")
    check(abs(float(loss) - exp["loss"]) < 1e-12, f"loss reproduces {float(loss):.12f} vs {exp['loss']:.12f}")
    check(abs(math.exp(exp["loss"]) - exp["ppl"]) < 1e-9, "ppl = exp(loss)")
    check(np.allclose(logits[0, 0, :8].numpy(), exp["logits_first"], rtol=0, atol=1e-12), "logits_first")
    check(np.allclose(logits[0, -1, :8].numpy(), exp["logits_last"], rtol=0, atol=1e-12), "logits_last")
    G, _ = ir.read_safetensors(os.path.join(d, "grads.safetensors"))
    check(set(G) == set(P) == set(ir.param_shapes(cfg)), "grad names == parameter names")
    worst = max(float(np.abs(G[n] - grads[n].numpy().astype(np.float32)).max()) for n in P)
    check(worst == 0.0, f"grads.safetensors reproduces (max diff {worst:.3g})")
    gmax = max(float(np.abs(g).max()) for g in G.values())
    check(all(float(np.abs(g).max()) > 0 for g in G.values()), f"every gradient tensor non-zero (max |g| {gmax:.3g})")

    # float32 twin close to float64
    cfg32, P32 = ir.load_model(d, torch.float32)
    with torch.no_grad():
        l32 = float(ir.lm_loss(ir.forward(cfg32, P32, x), x))
    check(abs(l32 - exp["loss"]) < 1e-5, f"float32 loss within 1e-5 ({l32 - exp['loss']:+.2e})")

    if not quick:
        nl = naive_logits(cfg, P, ids)
        diff = float(np.abs(nl - logits[0].numpy()).max())
        check(diff < 1e-10, f"naive loop implementation agrees (max logit diff {diff:.2e})")
        check(abs(naive_loss(nl, ids) - exp["loss"]) < 1e-10, "naive loss agrees")

    # streaming pieces vs whole
    N = cfg.segment_length
    with torch.no_grad():
        whole = ir.forward(cfg, P, x)
        pieces, st, s0 = [], None, 0
        for m in (1, 2, 1, 3, 100):
            lg, st = ir.forward(cfg, P, x[:, s0 : s0 + m * N], state=st, return_state=True)
            pieces.append(lg)
            s0 += m * N
            if s0 >= len(ids):
                break
        streamed = torch.cat(pieces, dim=1)
    check(torch.equal(streamed, whole), "streamed in pieces == whole forward (bitwise)")

    # batch independence: [x, reversed x] vs each alone
    xr = torch.flip(x, dims=[1])
    with torch.no_grad():
        both = ir.forward(cfg, P, torch.cat([x, xr], 0))
        alone = ir.forward(cfg, P, xr)
    dd = max(float((both[0] - whole[0]).abs().max()), float((both[1] - alone[0]).abs().max()))
    check(dd < 1e-12, f"batch of 2 == each alone ({dd:.1e})")
    return cfg, P, ids


def check_fd(d, n_per_tensor=3, seed=0):
    name = os.path.basename(d)
    print(f"[finite differences: {name}]")
    cfg, P = ir.load_model(d, torch.float64)
    ids = ir.byte_tokenize(open(os.path.join(d, "data.txt"), "rb").read())
    x = torch.tensor([ids])
    _, _, grads = ir.loss_and_grads(cfg, P, x)
    rs = np.random.RandomState(seed)
    eps = 1e-5
    worst_rel = 0.0
    for n, t in P.items():
        flat = t.view(-1)
        g = grads[n].view(-1)
        # largest-gradient entry plus random ones
        idx = [int(g.abs().argmax())] + list(rs.randint(0, flat.numel(), size=n_per_tensor))
        for i in idx:
            old = float(flat[i])
            with torch.no_grad():
                flat[i] = old + eps
                lp = float(ir.lm_loss(ir.forward(cfg, P, x), x))
                flat[i] = old - eps
                lm = float(ir.lm_loss(ir.forward(cfg, P, x), x))
                flat[i] = old
            fd = (lp - lm) / (2 * eps)
            an = float(g[i])
            # relative error, floored at 1e-3 (FD round-off is ~1e-11 absolute)
            worst_rel = max(worst_rel, abs(fd - an) / max(abs(an), 1e-3))
    check(worst_rel < 1e-5, f"autograd == finite differences on {len(P)} tensors "
                            f"(worst |fd-g|/max(|g|,1e-3) = {worst_rel:.2e})")


def check_full_attention():
    print("[use_memory false, one segment (N >= T): local RoPE positions == shifted global positions]")
    c = {"vocab_size": 260, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
         "tie_word_embeddings": False, "model_type": "llama",
         "infini": {"segment_length": 128, "memory_update": "linear", "use_memory": False}}
    cfg = ir.Config.from_dict(c)
    P = ir.init_params(cfg, seed=3, std=0.3, dtype=torch.float64)
    x = torch.randint(0, 256, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = ir.forward(cfg, P, x)
        # plain transformer with global positions: one "segment" is the whole sequence, and
        # RoPE computed with global positions offset by 1000 (relative => same scores).
        cos, sin = ir.rope_cos_sin(1100, cfg.head_dim, cfg.rope_theta, torch.float64)
        orig = ir.rope_cos_sin
        ir.rope_cos_sin = lambda n, d, th, dt: (cos[1000 : 1000 + n], sin[1000 : 1000 + n])
        try:
            shifted = ir.forward(cfg, P, x)
        finally:
            ir.rope_cos_sin = orig
    diff = float((ours - shifted).abs().max())
    check(diff < 1e-9, f"local positions == positions shifted by 1000 ({diff:.1e})")


def check_safetensors():
    print("[safetensors]")
    rs = np.random.RandomState(0)
    a = {"a": rs.randn(3, 5).astype(np.float32), "b": (rs.randn(7) * 1e3).astype(np.float32)}
    with tempfile.TemporaryDirectory() as td:
        for dt in ("F32", "F16", "BF16"):
            p = os.path.join(td, f"t_{dt}.safetensors")
            ir.write_safetensors(p, a, dt, {"k": "v"})
            r, meta = ir.read_safetensors(p)
            ok = all(np.array_equal(r[n], ir.round_to_storage(a[n], dt)) for n in a) and meta == {"k": "v"}
            check(ok, f"{dt} round trip")
    x = torch.from_numpy(rs.randn(10000).astype(np.float32) * 10)
    ours = ir.round_to_storage(x.numpy(), "BF16")
    theirs = x.to(torch.bfloat16).to(torch.float32).numpy()
    check(np.array_equal(ours, theirs), "BF16 rounding == torch bfloat16 (round to nearest even)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--golden", default=os.path.join(REPO, "tests", "golden"))
    ap.add_argument("--quick", action="store_true", help="skip the slow naive implementation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dirs = golden_dirs(args.golden)
    for d in dirs:
        check_golden(d, args.quick)
    for d in dirs:
        if os.path.basename(d) in ("llama_linear_tied", "llama_delta_mqa_headdim", "qwen2_delta_gqa_bias"):
            check_fd(d)
    check_full_attention()
    check_safetensors()
    print("ALL OK" if not FAILS else f"{len(FAILS)} FAILED")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
