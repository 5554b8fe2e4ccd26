"""Generates the golden test cases in tests/golden/<case>/ from the reference twin.

    /usr/bin/python3 reference/make_goldens.py [--out tests/golden] [--only CASE ...]

Each case directory holds config.json, the weights (model.safetensors, or shards with
model.safetensors.index.json), data.txt, expected.json (float64 loss/ppl/tokens and a few
logits; for qwen2_moe also sparse_layers, min_topk_gap, aux_loss and router_counts) and
grads.safetensors (F32 gradient of the loss w.r.t. every parameter, full BPTT).

Everything is deterministic: weights come from numpy's legacy RandomState with a fixed
seed per case, and the expected values are computed in float64 from the weights exactly as
stored (after BF16/F16/F32 rounding), read back through the reference loader.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

# Bitwise reproducibility across x86 machines: the system torch uses OpenBLAS, whose kernel
# (and so the float64 rounding of every matrix product) depends on the CPU it detects. The
# committed goldens were made with the AVX2 (Haswell) kernel; pin it before torch loads OpenBLAS
# (an AVX-512 machine would otherwise pick another kernel and change the last bits).
os.environ["OPENBLAS_CORETYPE"] = "Haswell"

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infini_ref as ir  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------------------
# Texts (a few hundred bytes each, varied; one contains multi-byte UTF-8)
# ----------------------------------------------------------------------------------------

TEXTS = {
    "lighthouse": (
        "The lighthouse keeper climbed the spiral stairs at dusk, counting each step as his "
        "father had taught him: one hundred and twelve. Outside, the wind worried the shutters; "
        "inside, the lamp hissed awake. Ships would pass tonight -- three, perhaps four -- and "
        "none of them would ever know his name. He did not mind. The light was the point, not "
        "the keeper."
    ),
    "recipe": (
        "Recipe for a quiet Sunday:\n"
        "1. Warm 2 cups of milk (don't let it boil!).\n"
        "2. Whisk in 3 tbsp. cocoa, a pinch of salt, and sugar to taste.\n"
        "3. Pour into a chipped mug; the chip is essential.\n"
        "4. Sit by the window. Watch the rain. Repeat steps 1-3 as needed.\n"
        "Serves: one person, or two if they're patient.\n"
    ),
    "letter": (
        "Dear Margaret,\n\nYour letter arrived on Tuesday, creased and smelling faintly of the "
        "sea. I read it twice -- once quickly, once slowly -- and laughed at the part about the "
        "goat. Here, the orchard is heavy with plums; we can't pick them fast enough. Mother asks "
        "whether you'll come in August. Please say yes.\n\nWith love, and in haste,\nEleanor"
    ),
    "science": (
        "Why is the sky blue? Sunlight contains every color, but air molecules scatter short "
        "wavelengths (blue, violet) far more strongly than long ones (red) -- roughly as 1/λ^4. "
        "Our eyes are less sensitive to violet, so we see blue. At sunset the light crosses more "
        "air; the blue is scattered away, and the reds and oranges remain. Simple, yes? "
        "Not quite: clouds are white because droplets scatter all colors alike."
    ),
    "dialogue": (
        '"Are you sure this is the right road?" asked Tom.\n'
        '"Sure? No," said Ada. "Confident? Absolutely."\n'
        '"That\'s not the same thing."\n'
        '"It is when you\'re holding the map." She turned it upside down, frowned, and turned it '
        'back. "North is... that way. Probably."\n'
        "They walked on. Behind them, a sign they had not read said: BRIDGE OUT, 2 MILES."
    ),
    "garden": (
        "In April the garden is mostly promise: bare canes, a rake against the fence, seed packets "
        "in a shoebox sorted by the month they go in. Beans after the last frost; lettuce now, "
        "because lettuce forgives. My neighbour swears by crushed eggshells for the slugs. I have "
        "tried it twice. The slugs, I think, enjoy the crunch."
    ),
    "train": (
        "Platform 4, the 07:42 to Edinburgh: delayed 18 minutes (signal failure near York). "
        "Passengers for Newcastle should change at Darlington. Coach C is quiet; the buffet is in "
        "coach F and closes at 11:00. We apologise for the inconvenience -- and, on behalf of the "
        "driver, for the weather, which is not our fault either."
    ),
    "market": (
        "Saturday market, stall by stall: honey (three jars for 10), sourdough that sells out by "
        "nine, a man who sharpens knives while telling you about his daughter in Lisbon, tomatoes "
        "in five colours, and a fiddler who only knows two tunes but plays them with conviction. "
        "Bring cash; bring a bag; bring patience."
    ),
    "clock": (
        "The clock in the hall gains four minutes a week. Grandfather said a clock that runs fast "
        "is an optimist, and one that runs slow is a philosopher; a stopped clock, he said, is "
        "right twice a day and proud of it. Every Sunday I open the case, nudge the hand back, "
        "and listen to the pendulum think it over."
    ),
    "notes": (
        "Meeting notes, 14 March: (a) the server moved to rack 7B; (b) backups now run at 02:00 "
        "UTC instead of 03:30; (c) Priya will rotate the keys on Friday. Action items: update "
        "the wiki [owner: Sam], test restore from the 12/03 snapshot [owner: Lee], and order two "
        "spare fans. Next meeting: same time, same room -- bring coffee, the machine is broken. "
        "Questions? Ask in #ops."
    ),
}

# ----------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------


def config_dict(architecture, model_type, V, D, Fi, L, H, Hkv, N, update, use_memory, tie, eps, theta,
                own):
    """config.json's keys every case has, in Hugging Face's order, with the model kind's `own`
    keys between the shape and the dtype."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": V,
        "hidden_size": D,
        "intermediate_size": Fi,
        "num_hidden_layers": L,
        "num_attention_heads": H,
        "num_key_value_heads": Hkv,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "tie_word_embeddings": tie,
        **own,
        "torch_dtype": "float32",
        "infini": {"segment_length": N, "memory_update": update, "use_memory": use_memory},
    }


def hf_config(model_type, V, D, Fi, L, H, Hkv, N, update, use_memory=True, head_dim=None, tie=False,
              bias=False, eps=1e-6, theta=10000.0):
    c = config_dict("LlamaForCausalLM" if model_type == "llama" else "Qwen2ForCausalLM", model_type,
                    V, D, Fi, L, H, Hkv, N, update, use_memory, tie, eps, theta,
                    {"attention_bias": bias, "hidden_act": "silu", "max_position_embeddings": 4096})
    if head_dim is not None:
        c["head_dim"] = head_dim
    return c


def moe_config(V, D, L, H, Hkv, N, update, E, k, Fm, Fs, Fi=64, tie=False, eps=1e-6, theta=1000000.0,
               norm_topk_prob=None, decoder_sparse_step=None, mlp_only_layers=None, coef=None,
               output_router_logits=None):
    """A Hugging Face Qwen2MoeConfig-style config.json (SPEC §7). Optional MoE keys left as None
    are omitted, so their SPEC defaults are exercised. No attention_bias key: qwen2_moe always has
    q/k/v biases."""
    c = config_dict("Qwen2MoeForCausalLM", "qwen2_moe", V, D, Fi, L, H, Hkv, N, update, True, tie,
                    eps, theta,
                    {"hidden_act": "silu", "max_position_embeddings": 4096, "initializer_range": 0.02,
                     "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": L,
                     "attention_dropout": 0.0, "num_experts": E, "num_experts_per_tok": k,
                     "moe_intermediate_size": Fm, "shared_expert_intermediate_size": Fs})
    for key, val in (("norm_topk_prob", norm_topk_prob), ("decoder_sparse_step", decoder_sparse_step),
                     ("mlp_only_layers", mlp_only_layers), ("router_aux_loss_coef", coef),
                     ("output_router_logits", output_router_logits)):
        if val is not None:
            c[key] = val
    return c


CASES = [
    {
        "name": "llama_linear_tied",
        "about": "llama, MHA (H=Hkv=4, d=8), linear memory update, tied embeddings, no bias; "
                 "N=30, T not a multiple of N.",
        "config": hf_config("llama", V=260, D=32, Fi=64, L=2, H=4, Hkv=4, N=30, update="linear", tie=True,
                            eps=1e-5),
        "text": "lighthouse",
        "dtype": "F32",
        "shards": 1,
        "seed": 104,
    },
    {
        "name": "qwen2_delta_gqa_bias",
        "about": "qwen2, attention_bias (q/k/v biases), GQA (H=4, Hkv=2, d=8), delta memory update, "
                 "untied lm_head, rope_theta 1e6; N=24.",
        "config": hf_config("qwen2", V=260, D=32, Fi=48, L=2, H=4, Hkv=2, N=24, update="delta", bias=True,
                            theta=1000000.0),
        "text": "recipe",
        "dtype": "F32",
        "shards": 1,
        "seed": 208,
    },
    {
        "name": "llama_delta_mqa_headdim",
        "about": "llama, MQA (H=4, Hkv=1), explicit head_dim=12 != hidden/heads=8, delta memory update, "
                 "untied; N=16 (many segments).",
        "config": hf_config("llama", V=260, D=32, Fi=48, L=2, H=4, Hkv=1, N=16, update="delta", head_dim=12),
        "text": "letter",
        "dtype": "F32",
        "shards": 1,
        "seed": 310,
    },
    {
        "name": "llama_local_only",
        "about": "llama, use_memory false (local segment attention only, no gate, no beta tensors), "
                 "GQA (H=4, Hkv=2), untied; N=32.",
        "config": hf_config("llama", V=260, D=32, Fi=48, L=2, H=4, Hkv=2, N=32, update="linear",
                            use_memory=False),
        "text": "dialogue",
        "dtype": "F32",
        "shards": 1,
        "seed": 404,
    },
    {
        "name": "qwen2_linear_bf16_sharded",
        "about": "qwen2 with biases, GQA (H=4, Hkv=2), linear memory update, tied embeddings; weights stored "
                 "as BF16 in 2 shards with model.safetensors.index.json (expected values use the "
                 "BF16-rounded weights); N=40.",
        "config": hf_config("qwen2", V=300, D=32, Fi=64, L=2, H=4, Hkv=2, N=40, update="linear", bias=True,
                            tie=True, theta=1000000.0),
        "text": "science",
        "dtype": "BF16",
        "shards": 2,
        "seed": 507,
    },
    {
        "name": "llama_linear_f16",
        "about": "llama, MHA (H=Hkv=2, d=16), linear memory update, untied; weights stored as F16; "
                 "N=64 with T = 224 = 3.5 segments.",
        "config": hf_config("llama", V=260, D=32, Fi=64, L=2, H=2, Hkv=2, N=64, update="linear"),
        "text": "notes",
        "dtype": "F16",
        "shards": 1,
        "seed": 610,
        "length": 224,
    },
    # ---- SPEC §7: qwen2_moe (Qwen1.5-MoE layout). Seeds picked so that no routing decision is
    # near a tie (expected.json: min_topk_gap, the smallest p_(k) - p_(k+1) over every router row).
    {
        "name": "qwen2moe_linear_gqa_untied",
        "about": "qwen2_moe, GQA (H=4, Hkv=2), E=4 experts top-2, norm_topk_prob false (explicit), "
                 "every layer sparse, untied, linear memory update; N=60.",
        "config": moe_config(V=260, D=32, L=2, H=4, Hkv=2, N=60, update="linear", E=4, k=2, Fm=16, Fs=32,
                             norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
                             coef=0.001, output_router_logits=False),
        "text": "garden",
        "dtype": "F32",
        "shards": 1,
        "seed": 700,
    },
    {
        "name": "qwen2moe_delta_tied_norm_dense",
        "about": "qwen2_moe, MHA (H=Hkv=4), E=6 top-2, norm_topk_prob true, mlp_only_layers [1] (dense middle "
                 "layer, intermediate 64), tied embeddings, delta memory update, output_router_logits true "
                 "with router_aux_loss_coef 0.02; N=48.",
        "config": moe_config(V=260, D=32, L=3, H=4, Hkv=4, N=48, update="delta", E=6, k=2, Fm=24, Fs=48,
                             Fi=64, tie=True, norm_topk_prob=True, mlp_only_layers=[1], coef=0.02,
                             output_router_logits=True),
        "text": "train",
        "dtype": "F32",
        "shards": 1,
        "seed": 700,
    },
    {
        "name": "qwen2moe_delta_mqa_step2",
        "about": "qwen2_moe, MQA (H=4, Hkv=1), decoder_sparse_step 2 over 3 layers (only layer 1 sparse, "
                 "layers 0 and 2 dense with intermediate 48), E=5 top-3, norm_topk_prob / mlp_only_layers / "
                 "router_aux_loss_coef absent (defaults false / [] / 0.001), untied, delta; N=40.",
        "config": moe_config(V=260, D=32, L=3, H=4, Hkv=1, N=40, update="delta", E=5, k=3, Fm=20, Fs=40,
                             Fi=48, decoder_sparse_step=2),
        "text": "market",
        "dtype": "F32",
        "shards": 1,
        "seed": 801,
    },
    {
        "name": "qwen2moe_linear_bf16_sharded",
        "about": "qwen2_moe stored as BF16 in 2 shards + model.safetensors.index.json (expected values from the "
                 "BF16-rounded weights), GQA (H=4, Hkv=2), E=4 top-2, norm_topk_prob false, every layer sparse, "
                 "untied, linear; N=56.",
        "config": moe_config(V=260, D=32, L=2, H=4, Hkv=2, N=56, update="linear", E=4, k=2, Fm=16, Fs=32,
                             norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
                             coef=0.001, output_router_logits=True),
        "text": "clock",
        "dtype": "BF16",
        "shards": 2,
        "seed": 766,
    },
]


ROUTER_SCALE = 2.0


def random_params(cfg: ir.Config, seed: int) -> dict:
    """Non-trivial random weights: memory and gates must visibly matter.

    (Seeds in CASES were picked among a few so that switching the memory path off changes the
    loss by >= 0.05 nats; the mean KL between the two predictive distributions is 0.2-0.4.)
    """
    rs = np.random.RandomState(seed)
    P = {}
    for name, shape in ir.param_shapes(cfg).items():
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rs.randn(*shape)
        elif name.endswith("self_attn.beta"):
            a = rs.uniform(-2.0, 2.0, size=shape)
        elif name.endswith(".bias"):
            a = 0.1 * rs.randn(*shape)
        elif name == "model.embed_tokens.weight":
            # tied: it is also the output matrix, keep logits moderate (std ~1)
            a = (0.18 if cfg.tie_word_embeddings else 0.5) * rs.randn(*shape)
        elif name == "lm_head.weight":
            a = 0.18 * rs.randn(*shape)
        elif name.endswith("q_proj.weight") or name.endswith("k_proj.weight"):
            # ~ 1.2 / sqrt(fan_in) so attention scores and memory reads are not flat
            a = (1.2 / math.sqrt(shape[1])) * rs.randn(*shape)
        elif name.endswith("mlp.gate.weight"):
            # SPEC §7 router: logits of std ~2, so routing is decisive and top-k gaps not tiny
            a = (ROUTER_SCALE / math.sqrt(shape[1])) * rs.randn(*shape)
        elif name.endswith("v_proj.weight") or name.endswith("o_proj.weight"):
            # larger, so the attention (and memory) output weighs in the residual stream
            a = (1.6 / math.sqrt(shape[1])) * rs.randn(*shape)
        else:  # MLP
            a = (1.0 / math.sqrt(shape[1])) * rs.randn(*shape)
        P[name] = torch.from_numpy(np.asarray(a, dtype=np.float64)).to(torch.float32)
    return P


def routing_summary(cfg: ir.Config, P64: dict, x: torch.Tensor) -> dict:
    """SPEC §7 routing facts of the whole sequence (float64): the smallest top-k gap
    p_(k) - p_(k+1) over every router row of every sparse layer, the load-balancing loss of the
    sequence as one step, and the tokens each expert got per sparse layer."""
    log = []
    with torch.no_grad():
        ir.forward(cfg, P64, x, router_log=log)
        aux = float(ir.aux_loss(cfg, log))
    k, E = cfg.num_experts_per_tok, cfg.num_experts
    gaps = []
    counts = {}
    for r in log:
        srt = torch.sort(r["probs"], dim=-1, descending=True).values
        gaps.append(srt[:, k - 1] - srt[:, k])
        c = counts.setdefault(str(r["layer"]), [0] * E)
        for e in r["idx"].reshape(-1).tolist():
            c[e] += 1
    return {"min_topk_gap": float(torch.cat(gaps).min()), "aux_loss": aux, "router_counts": counts}


def write_case(case: dict, out_root: str) -> dict:
    name = case["name"]
    d = os.path.join(out_root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    cfg_dict = dict(case["config"])
    cfg_dict["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[case["dtype"]]
    cfg = ir.Config.from_dict(cfg_dict)
    P = random_params(cfg, case["seed"])
    ir.save_model(d, cfg_dict, P, dtype=case["dtype"], shards=case["shards"])

    text = TEXTS[case["text"]].encode("utf-8")
    if "length" in case:
        assert len(text) >= case["length"], (name, len(text))
        text = text[: case["length"]]
    with open(os.path.join(d, "data.txt"), "wb") as f:
        f.write(text)

    # Expected values: float64, from the weights as a reader gets them back.
    cfg, P64 = ir.load_model(d, torch.float64)
    ids = ir.byte_tokenize(text)
    x = torch.tensor([ids], dtype=torch.long)
    loss, logits, grads = ir.loss_and_grads(cfg, P64, x)
    loss = float(loss)
    T = len(ids)
    exp = {
        "loss": loss,
        "ppl": math.exp(loss),
        "tokens": T,
        "logits_first": [float(v) for v in logits[0, 0, :8]],
        "logits_last": [float(v) for v in logits[0, T - 1, :8]],
    }
    info = {"T": T, "N": cfg.segment_length, "segments": math.ceil(T / cfg.segment_length), "loss": loss}
    if cfg.model_type == "qwen2_moe":
        rs = routing_summary(cfg, P64, x)
        exp["sparse_layers"] = cfg.sparse_layers()
        exp["min_topk_gap"] = rs["min_topk_gap"]
        exp["aux_loss"] = rs["aux_loss"]
        exp["router_counts"] = rs["router_counts"]
        info.update(rs)
    if cfg.use_memory:
        # Same weights, memory path off: the memory must change the loss meaningfully.
        cfg_nm = ir.Config.from_dict({**cfg_dict, "infini": {**cfg_dict["infini"], "use_memory": False}})
        P_nm = {n: t for n, t in P64.items() if not n.endswith("self_attn.beta")}
        with torch.no_grad():
            logits_nm = ir.forward(cfg_nm, P_nm, x)
            loss_nm = float(ir.lm_loss(logits_nm, x))
            lp, lq = torch.log_softmax(logits, -1), torch.log_softmax(logits_nm, -1)
            info["kl_no_memory"] = float((lp.exp() * (lp - lq)).sum(-1).mean())
        exp["loss_same_weights_use_memory_false"] = loss_nm
        info["loss_no_memory"] = loss_nm
        # Same model, memory emptied at every segment start (A_mem = 0, gate kept):
        # measures how much the memory *content* carried across segments matters.
        with torch.no_grad():
            parts = [ir.forward_segment(cfg, P64, x[:, s0:s0 + cfg.segment_length],
                                        ir.init_state(cfg, 1, torch.float64))[0]
                     for s0 in range(0, T, cfg.segment_length)]
            info["loss_reset"] = float(ir.lm_loss(torch.cat(parts, dim=1), x))
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(exp, f, indent=2)
        f.write("\n")
    ir.write_safetensors(os.path.join(d, "grads.safetensors"),
                         {n: g.numpy() for n, g in grads.items()}, "F32")
    size = sum(os.path.getsize(os.path.join(d, fn)) for fn in os.listdir(d))
    info["bytes"] = size
    # tiny models only (MoE cases carry E experts per sparse layer, so they get more room)
    assert size < (640 if cfg.model_type == "qwen2_moe" else 300) * 1024, (name, size)
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "golden"))
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bitwise-reproducible float64 reductions
    os.makedirs(args.out, exist_ok=True)
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        info = write_case(case, args.out)
        extra = ""
        if "loss_no_memory" in info:
            extra = (f"  use_memory=false: {info['loss_no_memory']:.6f} (diff {info['loss'] - info['loss_no_memory']:+.6f})"
                     f" KL {info['kl_no_memory']:.3f};  memory reset per segment: diff {info['loss'] - info['loss_reset']:+.6f}")
        if "min_topk_gap" in info:
            extra += f"  min_topk_gap={info['min_topk_gap']:.3g} aux={info['aux_loss']:.6g}"
        print(f"{case['name']:28s} T={info['T']:4d} N={info['N']:3d} S={info['segments']:2d} "
              f"loss={info['loss']:.6f}{extra}  [{info['bytes'] // 1024} KB]")


if __name__ == "__main__":
    main()
