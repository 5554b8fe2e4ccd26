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
7. qwen2_moe (SPEC §7): the stored tensors are exactly the §7 names; routing facts in
   expected.json (sparse layers, min_topk_gap, aux_loss, router_counts) reproduce, the aux loss
   also from an independent one-hot formula; the float32 twin picks the same experts as float64
   and its gradients are within 1e-4 of each tensor's largest entry; an expert's gradient is
   non-zero iff some token chose it (exactly zero otherwise); finite differences through the
   routing (router, shared-expert gate, expert and shared-expert weights) and of the aux loss;
   the gather/scatter expert compute == a dense all-experts formulation; top-k ties go to the
   lower index.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

# Same OpenBLAS kernel as make_goldens.py, so recomputed values match the files bit for bit.
os.environ["OPENBLAS_CORETYPE"] = "Haswell"

import numpy as np  # noqa: E402
import torch  # noqa: E402

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
                if cfg.model_type == "qwen2_moe" and l not in cfg.mlp_only_layers \
                        and (l + 1) % cfg.decoder_sparse_step == 0:
                    hs.append(h + naive_moe(W, p + "mlp.", m, cfg))
                    continue
                gt = W[p + "mlp.gate_proj.weight"] @ m
                up = W[p + "mlp.up_proj.weight"] @ m
                hs.append(h + W[p + "mlp.down_proj.weight"] @ (gt / (1 + np.exp(-gt)) * up))
        lm = W["model.embed_tokens.weight"] if cfg.tie_word_embeddings else W["lm_head.weight"]
        for h in hs:
            out.append(lm @ rms(h, W["model.norm.weight"]))
    return np.stack(out)


def naive_moe(W: dict, p: str, m: np.ndarray, cfg: ir.Config) -> np.ndarray:
    """SPEC §7 for one token, written again: softmax router, k largest (ties to the lower
    index), optional renormalisation, the chosen experts and the sigmoid-gated shared expert."""

    def mlp(q, x):
        gt = W[q + "gate_proj.weight"] @ x
        up = W[q + "up_proj.weight"] @ x
        return W[q + "down_proj.weight"] @ (gt / (1 + np.exp(-gt)) * up)

    r = W[p + "gate.weight"] @ m
    pr = np.exp(r - r.max())
    pr /= pr.sum()
    chosen = sorted(range(cfg.num_experts), key=lambda e: (-pr[e], e))[: cfg.num_experts_per_tok]
    wsum = sum(pr[e] for e in chosen) if cfg.norm_topk_prob else 1.0
    y = sum((pr[e] / wsum) * mlp(f"{p}experts.{e}.", m) for e in chosen)
    g = 1.0 / (1.0 + math.exp(-float(W[p + "shared_expert_gate.weight"][0] @ m)))
    return y + g * mlp(p + "shared_expert.", m)


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


def stored_names(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        wmap = json.load(open(index))["weight_map"]
        names = set()
        for shard in sorted(set(wmap.values())):
            t, _ = ir.read_safetensors(os.path.join(d, shard))
            names |= set(t)
        return names if names == set(wmap) else None
    return set(ir.read_safetensors(os.path.join(d, "model.safetensors"))[0])


def unchosen_expert_params(cfg, exp):
    """Names of the expert tensors of experts that no token chose (from expected.json)."""
    out = set()
    for l, counts in (exp.get("router_counts") or {}).items():
        for e, c in enumerate(counts):
            if c == 0:
                out |= {f"model.layers.{l}.mlp.experts.{e}.{w}_proj.weight" for w in ("gate", "up", "down")}
    return out


def load_golden(d):
    """A golden directory's model in float64, its expected.json, and its text as tokens [1, T]."""
    cfg, P = ir.load_model(d, torch.float64)
    exp = json.load(open(os.path.join(d, "expected.json")))
    ids = ir.byte_tokenize(open(os.path.join(d, "data.txt"), "rb").read())
    return cfg, P, exp, ids, torch.tensor([ids])


def check_golden(d, quick):
    name = os.path.basename(d)
    print(f"[{name}]")
    cfg, P, exp, ids, x = load_golden(d)
    loss, logits, grads = ir.loss_and_grads(cfg, P, x)
    check(exp["tokens"] == len(ids), f"tokens {len(ids)}")
    check(abs(float(loss) - exp["loss"]) < 1e-12, f"loss reproduces {float(loss):.12f} vs {exp['loss']:.12f}")
    check(abs(math.exp(exp["loss"]) - exp["ppl"]) < 1e-9, "ppl = exp(loss)")
    check(np.allclose(logits[0, 0, :8].numpy(), exp["logits_first"], rtol=0, atol=1e-12), "logits_first")
    check(np.allclose(logits[0, -1, :8].numpy(), exp["logits_last"], rtol=0, atol=1e-12), "logits_last")
    G, _ = ir.read_safetensors(os.path.join(d, "grads.safetensors"))
    check(set(G) == set(P) == set(ir.param_shapes(cfg)), "grad names == parameter names")
    check(stored_names(d) == set(ir.param_shapes(cfg)), "stored tensors == the SPEC's names for this config")
    worst = max(float(np.abs(G[n] - grads[n].numpy().astype(np.float32)).max()) for n in P)
    check(worst == 0.0, f"grads.safetensors reproduces (max diff {worst:.3g})")
    gmax = max(float(np.abs(g).max()) for g in G.values())
    unused = unchosen_expert_params(cfg, exp)
    check(all((float(np.abs(g).max()) > 0) == (n not in unused) for n, g in G.items()),
          f"every gradient tensor non-zero (max |g| {gmax:.3g})"
          + (f", except the {len(unused)} of experts no token chose: exactly zero" if unused else ""))

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
    cfg, P, _, ids, x = load_golden(d)
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


# ----------------------------------------------------------------------------------------
# SPEC §7: qwen2_moe
# ----------------------------------------------------------------------------------------


def aux_loss_onehot(cfg, probs: np.ndarray) -> float:
    """Hugging Face's load_balancing_loss_func written again in numpy: one-hot masks of the top-k
    per row [T', k, E], mean over rows, times the mean router probability, summed, times E."""
    k, E = cfg.num_experts_per_tok, cfg.num_experts
    idx = np.stack([sorted(range(E), key=lambda e: (-row[e], e))[:k] for row in probs])  # [T', k]
    mask = np.eye(E)[idx]  # [T', k, E]
    tokens_per_expert = mask.mean(axis=0)  # [k, E]
    prob_per_expert = probs.mean(axis=0)  # [E]
    return cfg.router_aux_loss_coef * E * float((tokens_per_expert * prob_per_expert[None, :]).sum())


def check_moe_golden(d):
    name = os.path.basename(d)
    print(f"[qwen2_moe routing: {name}]")
    cfg, P, exp, ids, x = load_golden(d)
    k = cfg.num_experts_per_tok
    check(exp["sparse_layers"] == cfg.sparse_layers() and
          exp["sparse_layers"] == [l for l in range(cfg.num_hidden_layers)
                                   if l not in cfg.mlp_only_layers and (l + 1) % cfg.decoder_sparse_step == 0],
          f"sparse layers {cfg.sparse_layers()} (step {cfg.decoder_sparse_step}, mlp_only {list(cfg.mlp_only_layers)})")
    log = []
    with torch.no_grad():
        ir.forward(cfg, P, x, router_log=log)
        aux = float(ir.aux_loss(cfg, log))
    probs = torch.cat([r["probs"] for r in log]).numpy()
    idx64 = torch.cat([r["idx"] for r in log]).numpy()
    srt = -np.sort(-probs, axis=1)
    gap = float((srt[:, k - 1] - srt[:, k]).min())
    check(probs.shape[0] == len(ids) * len(cfg.sparse_layers()), f"T' = {probs.shape[0]} router rows")
    check(abs(gap - exp["min_topk_gap"]) < 1e-15 and gap > 1e-4, f"min top-k gap {gap:.3g} > 1e-4 (reproduces)")
    check(abs(aux - exp["aux_loss"]) < 1e-15, f"aux_loss reproduces ({aux:.9g})")
    alt = aux_loss_onehot(cfg, probs)
    check(abs(alt - aux) < 1e-15, f"aux_loss == Hugging Face style one-hot formula ({abs(alt - aux):.1e})")
    counts = {}
    for r in log:
        c = counts.setdefault(str(r["layer"]), [0] * cfg.num_experts)
        for e in r["idx"].reshape(-1).tolist():
            c[e] += 1
    check(counts == exp["router_counts"] and all(sum(c) == k * len(ids) for c in counts.values()),
          f"router_counts reproduce, sum k*T per layer (min {min(min(c) for c in counts.values())}, "
          f"max {max(max(c) for c in counts.values())})")

    # float32 twin: same experts, loss/logits/gradients within the C++ tolerances
    cfg32, P32 = ir.load_model(d, torch.float32)
    log32 = []
    with torch.no_grad():
        ir.forward(cfg32, P32, x, router_log=log32)
    idx32 = torch.cat([r["idx"] for r in log32]).numpy()
    check(np.array_equal(idx32, idx64), "float32 twin selects the same experts as float64 on every row")
    l32, lg32, g32 = ir.loss_and_grads(cfg32, P32, x)
    G, _ = ir.read_safetensors(os.path.join(d, "grads.safetensors"))
    dl = abs(float(l32) - exp["loss"])
    dlog = max(float(np.abs(lg32[0, 0, :8].double().numpy() - exp["logits_first"]).max()),
               float(np.abs(lg32[0, -1, :8].double().numpy() - exp["logits_last"]).max()))
    rel = max(float(np.abs(g32[n].numpy() - G[n]).max()) / max(float(np.abs(G[n]).max()), 1e-12) for n in G)
    check(dl < 1e-5 * exp["loss"] and dlog < 1e-4 and rel < 1e-4,
          f"float32 twin: |dloss| {dl:.1e}, |dlogit| {dlog:.1e}, grad err/max {rel:.1e}")
    TOL32[name] = (dl, dlog, rel)

    # expert gradients non-zero exactly for the experts some token chose
    ok = True
    for l, c in counts.items():
        for e in range(cfg.num_experts):
            nz = [float(np.abs(G[f"model.layers.{l}.mlp.experts.{e}.{w}_proj.weight"]).max()) > 0
                  for w in ("gate", "up", "down")]
            ok &= all(nz) if c[e] > 0 else not any(nz)
    check(ok, "expert gradients non-zero iff the expert was chosen by some token")


def check_fd_moe(d, n_per_tensor=3, seed=1):
    """Finite differences through the routing on a few tensors of every kind (the selection is
    fixed: every top-k gap exceeds the perturbation's effect by orders of magnitude)."""
    name = os.path.basename(d)
    print(f"[finite differences through routing: {name}]")
    cfg, P, exp, ids, x = load_golden(d)
    _, _, grads = ir.loss_and_grads(cfg, P, x)
    # gradient of the aux loss (through P_e only)
    Pg = {n: t.detach().clone().requires_grad_(True) for n, t in P.items()}
    log = []
    ir.forward(cfg, Pg, x, router_log=log)
    ir.aux_loss(cfg, log).backward()
    aux_grads = {n: (t.grad if t.grad is not None else torch.zeros_like(t)) for n, t in Pg.items()}

    def aux_of(P_):
        lg = []
        ir.forward(cfg, P_, x, router_log=lg)
        return float(ir.aux_loss(cfg, lg)), torch.cat([r["idx"] for r in lg])

    _, idx0 = aux_of(P)
    sl = cfg.sparse_layers()
    # a used expert of the first sparse layer, and a dense layer's MLP if there is one
    counts = exp["router_counts"][str(sl[0])]
    e_used = max(range(cfg.num_experts), key=lambda e: (counts[e], -e))
    names = [f"model.layers.{l}.mlp.gate.weight" for l in sl]
    names += [f"model.layers.{sl[-1]}.mlp.shared_expert_gate.weight",
              f"model.layers.{sl[0]}.mlp.experts.{e_used}.gate_proj.weight",
              f"model.layers.{sl[0]}.mlp.experts.{e_used}.down_proj.weight",
              f"model.layers.{sl[-1]}.mlp.shared_expert.up_proj.weight",
              "model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.beta",
              "model.embed_tokens.weight"]
    dense = [l for l in range(cfg.num_hidden_layers) if l not in sl]
    if dense:
        names.append(f"model.layers.{dense[0]}.mlp.down_proj.weight")
    rs = np.random.RandomState(seed)
    eps = 1e-5
    worst, worst_aux, same_sel = 0.0, 0.0, True
    for n in names:
        flat = P[n].view(-1)
        g = grads[n].view(-1)
        ga = aux_grads[n].view(-1)
        idx = [int(g.abs().argmax())] + list(rs.randint(0, flat.numel(), size=n_per_tensor))
        if n.endswith("mlp.gate.weight"):
            idx.append(int(ga.abs().argmax()))
        for i in idx:
            old = float(flat[i])
            vals = []
            with torch.no_grad():
                for v in (old + eps, old - eps):
                    flat[i] = v
                    lg = []
                    lv = float(ir.lm_loss(ir.forward(cfg, P, x, router_log=lg), x))
                    same_sel &= bool(torch.equal(torch.cat([r["idx"] for r in lg]), idx0))
                    vals.append((lv, float(ir.aux_loss(cfg, lg))))
                flat[i] = old
            fd = (vals[0][0] - vals[1][0]) / (2 * eps)
            worst = max(worst, abs(fd - float(g[i])) / max(abs(float(g[i])), 1e-3))
            fda = (vals[0][1] - vals[1][1]) / (2 * eps)
            worst_aux = max(worst_aux, abs(fda - float(ga[i])) / max(abs(float(ga[i])), 1e-5))
    check(same_sel, "no perturbation changed an expert selection")
    check(worst < 1e-5, f"LM loss: autograd == finite differences on {len(names)} tensors incl. routers, an expert, "
                        f"the shared expert and its gate (worst {worst:.2e})")
    check(worst_aux < 1e-5, f"aux loss: autograd == finite differences (worst {worst_aux:.2e})")
    # tensors after the last router: that layer's experts/shared expert, later layers, the head
    after = [n for n in aux_grads
             if (n.startswith(f"model.layers.{sl[-1]}.mlp.") and not n.endswith("mlp.gate.weight"))
             or any(n.startswith(f"model.layers.{l}.") for l in range(sl[-1] + 1, cfg.num_hidden_layers))
             or n in ("model.norm.weight", "lm_head.weight")]
    check(all(float(aux_grads[n].abs().max()) > 0 for n in names if n.endswith("mlp.gate.weight"))
          and all(float(aux_grads[n].abs().max()) == 0 for n in after),
          f"aux loss reaches every router, and none of the {len(after)} tensors after the last router")


def check_moe_synthetic():
    print("[qwen2_moe: unchosen experts, dense formulation, ties]")
    c = {"vocab_size": 260, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
         "tie_word_embeddings": False, "model_type": "qwen2_moe", "num_experts": 12, "num_experts_per_tok": 1,
         "moe_intermediate_size": 8, "shared_expert_intermediate_size": 12, "mlp_only_layers": [0],
         "infini": {"segment_length": 3, "memory_update": "delta", "use_memory": True}}
    cfg = ir.Config.from_dict(c)
    check(cfg.attention_bias and "model.layers.0.self_attn.q_proj.bias" in ir.param_shapes(cfg)
          and "model.layers.0.mlp.gate_proj.weight" in ir.param_shapes(cfg)
          and "model.layers.1.mlp.gate.weight" in ir.param_shapes(cfg),
          "qwen2_moe: q/k/v biases without attention_bias; mlp_only layer dense, the other sparse")
    P = ir.init_params(cfg, seed=5, std=0.5, dtype=torch.float64)
    x = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    log = []
    with torch.no_grad():
        ir.forward(cfg, P, x, router_log=log)
    used = set(torch.cat([r["idx"] for r in log]).reshape(-1).tolist())
    _, _, grads = ir.loss_and_grads(cfg, P, x)
    ok = len(used) < cfg.num_experts
    for e in range(cfg.num_experts):
        for w in ("gate", "up", "down"):
            nz = float(grads[f"model.layers.1.mlp.experts.{e}.{w}_proj.weight"].abs().max()) > 0
            ok &= nz == (e in used)
    check(ok, f"7 tokens, top-1 of 12: gradients of exactly the {len(used)} chosen experts are non-zero")

    # the gather/scatter compute == every expert on every token, weighted by a dense [T, E] matrix
    for norm in (False, True):
        cfg.norm_topk_prob = norm
        m = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        cfg.num_experts_per_tok = 3
        y = ir.moe_mlp(cfg, P, "model.layers.1.", m)
        mf = m.reshape(10, 16)
        pr = torch.softmax(mf @ P["model.layers.1.mlp.gate.weight"].T, -1)
        w, idx = torch.topk(pr, 3, dim=-1)
        if norm:
            w = w / w.sum(-1, keepdim=True)
        dense = torch.zeros(10, cfg.num_experts, dtype=torch.float64).scatter(1, idx, w)
        ref = sum(dense[:, e:e + 1] * ir.swiglu(mf, *[P[f"model.layers.1.mlp.experts.{e}.{q}_proj.weight"]
                                                      for q in ("gate", "up", "down")])
                  for e in range(cfg.num_experts))
        ref = ref + torch.sigmoid(mf @ P["model.layers.1.mlp.shared_expert_gate.weight"].T) * ir.swiglu(
            mf, *[P[f"model.layers.1.mlp.shared_expert.{q}_proj.weight"] for q in ("gate", "up", "down")])
        dd = float((y.reshape(10, 16) - ref).abs().max())
        check(dd < 1e-14, f"gather/scatter experts == dense all-experts formulation, norm_topk_prob={norm} ({dd:.1e})")
    cfg.num_experts_per_tok, cfg.norm_topk_prob = 1, False

    p = torch.tensor([[0.1, 0.3, 0.2, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25, 0.0]], dtype=torch.float64)
    _, i2 = ir.topk_lower_index(p, 2)
    _, i3 = ir.topk_lower_index(p, 3)
    check(i2.tolist() == [[1, 3], [0, 1]] and i3.tolist() == [[1, 3, 2], [0, 1, 2]], "top-k ties go to the lower index")
    p32 = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float32)
    check(ir.topk_lower_index(p32, 1)[1].tolist() == [[0], [0]], "... also in float32")

    # config validation
    bad = 0
    for patch in ({"num_experts_per_tok": 13}, {"mlp_only_layers": [2]}, {"num_experts_per_tok": 0}):
        try:
            ir.Config.from_dict({**c, **patch})
        except AssertionError:
            bad += 1
    check(bad == 3, "bad MoE configs refused (k > E, k = 0, mlp_only_layers out of range)")


TOL32 = {}


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
    moe = [d for d in dirs if ir.Config.load(os.path.join(d, "config.json")).model_type == "qwen2_moe"]
    for d in moe:
        check_moe_golden(d)
    for d in moe:
        check_fd_moe(d)
    check_moe_synthetic()
    check_full_attention()
    check_safetensors()
    if TOL32:
        print("float32 twin vs float64 goldens (qwen2_moe): max |dloss| %.1e, |dlogit| %.1e, grad err/max %.1e"
              % tuple(max(v[i] for v in TOL32.values()) for i in range(3)))
    print("ALL OK" if not FAILS else f"{len(FAILS)} FAILED")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
