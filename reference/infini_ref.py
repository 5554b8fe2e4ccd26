"""Independent PyTorch reference implementation ("twin") of the Infini-attention model.

Written from /work/shared/SPEC.md (sections 2-5, and 7 for `model_type: "qwen2_moe"`) only.
It is deliberately plain: one function per piece of math, batched over the batch and head
dimensions with tensor ops, autograd for gradients (full back-propagation through time across
segments). qwen2_moe: `moe_mlp` (router, top-k, routed and shared experts), `aux_loss` (the
load-balancing loss, separate from the LM loss) and `training_loss`.

Usage as a library:

    import infini_ref as ir
    cfg, params = ir.load_model("tests/golden/llama_linear_tied", dtype=torch.float64)
    ids = ir.byte_tokenize(open("data.txt", "rb").read())            # list[int]
    x = torch.tensor([ids])                                          # [1, T]
    logits = ir.forward(cfg, params, x)                              # [1, T, V]
    loss = ir.lm_loss(logits, x)

Usage as a tool (prints the SPEC §6 `eval` JSON, optionally writes `grad` output):

    /usr/bin/python3 reference/infini_ref.py --model DIR --data FILE [--grad-out G.safetensors]

Only torch, numpy and the standard library are needed (no `safetensors` package: a small
reader/writer is included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

MEM_EPS = 1e-6  # SPEC §1: ε, the memory denominator guard

BOS_ID = 256
EOS_ID = 257


# ----------------------------------------------------------------------------------------
# Configuration (SPEC §5)
# ----------------------------------------------------------------------------------------


@dataclass
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    attention_bias: bool
    model_type: str
    segment_length: int
    memory_update: str
    use_memory: bool
    beta_init: float = 0.0  # used only when a checkpoint lacks beta tensors
    # SPEC §7 (qwen2_moe only; a dense model has num_experts 0)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: Tuple[int, ...] = ()
    router_aux_loss_coef: float = 0.001
    output_router_logits: bool = False
    raw: Optional[dict] = None  # the config.json dict as read

    @staticmethod
    def from_dict(c: dict) -> "Config":
        H = int(c["num_attention_heads"])
        D = int(c["hidden_size"])
        inf = c.get("infini", {}) or {}
        head_dim = c.get("head_dim")
        if head_dim is None:
            assert D % H == 0, "hidden_size must be divisible by num_attention_heads"
            head_dim = D // H
        Hkv = int(c.get("num_key_value_heads", H) or H)
        model_type = str(c.get("model_type", "llama"))
        moe = model_type == "qwen2_moe"
        cfg = Config(
            vocab_size=int(c["vocab_size"]),
            hidden_size=D,
            intermediate_size=int(c.get("intermediate_size", 0) if moe else c["intermediate_size"]),
            num_hidden_layers=int(c["num_hidden_layers"]),
            num_attention_heads=H,
            num_key_value_heads=Hkv,
            head_dim=int(head_dim),
            rms_norm_eps=float(c["rms_norm_eps"]),
            rope_theta=float(c["rope_theta"]),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            # SPEC §7: q, k, v always carry biases in qwen2_moe
            attention_bias=True if moe else bool(c.get("attention_bias", False)),
            model_type=model_type,
            segment_length=int(inf["segment_length"]),
            memory_update=str(inf.get("memory_update", "linear")),
            use_memory=bool(inf.get("use_memory", True)),
            beta_init=float(inf.get("beta_init", 0.0)),
            raw=c,
        )
        if moe:
            cfg.num_experts = int(c["num_experts"])
            cfg.num_experts_per_tok = int(c["num_experts_per_tok"])
            cfg.moe_intermediate_size = int(c["moe_intermediate_size"])
            cfg.shared_expert_intermediate_size = int(c["shared_expert_intermediate_size"])
            cfg.norm_topk_prob = bool(c.get("norm_topk_prob", False))
            cfg.decoder_sparse_step = int(c.get("decoder_sparse_step", 1))
            cfg.mlp_only_layers = tuple(int(l) for l in (c.get("mlp_only_layers") or []))
            cfg.router_aux_loss_coef = float(c.get("router_aux_loss_coef", 0.001))
            cfg.output_router_logits = bool(c.get("output_router_logits", False))
            assert 1 <= cfg.num_experts_per_tok <= cfg.num_experts, "need 1 <= num_experts_per_tok <= num_experts"
            assert cfg.moe_intermediate_size >= 1 and cfg.shared_expert_intermediate_size >= 1
            assert cfg.decoder_sparse_step >= 1
            assert all(0 <= l < cfg.num_hidden_layers for l in cfg.mlp_only_layers), "bad mlp_only_layers"
            if any(not cfg.is_sparse(l) for l in range(cfg.num_hidden_layers)):
                assert cfg.intermediate_size >= 1, "a dense layer needs intermediate_size"
        assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
        assert cfg.head_dim % 2 == 0, "rotate-half RoPE needs an even head_dim"
        assert cfg.memory_update in ("linear", "delta"), cfg.memory_update
        assert cfg.model_type in ("llama", "qwen2", "qwen2_moe"), cfg.model_type
        assert cfg.segment_length >= 1
        return cfg

    def is_sparse(self, l: int) -> bool:
        """SPEC §7: layer l has the MoE MLP iff l ∉ mlp_only_layers and (l+1) % decoder_sparse_step == 0."""
        return (self.model_type == "qwen2_moe" and l not in self.mlp_only_layers
                and (l + 1) % self.decoder_sparse_step == 0)

    def sparse_layers(self) -> List[int]:
        return [l for l in range(self.num_hidden_layers) if self.is_sparse(l)]

    @staticmethod
    def load(path: str) -> "Config":
        with open(path) as f:
            return Config.from_dict(json.load(f))


def param_shapes(cfg: Config) -> Dict[str, Tuple[int, ...]]:
    """Every parameter tensor the model has, in canonical (SPEC §5) order."""
    D, V, Fi = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    H, Hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    s: Dict[str, Tuple[int, ...]] = {"model.embed_tokens.weight": (V, D)}
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        s[p + "input_layernorm.weight"] = (D,)
        s[p + "self_attn.q_proj.weight"] = (H * d, D)
        if cfg.attention_bias:
            s[p + "self_attn.q_proj.bias"] = (H * d,)
        s[p + "self_attn.k_proj.weight"] = (Hkv * d, D)
        if cfg.attention_bias:
            s[p + "self_attn.k_proj.bias"] = (Hkv * d,)
        s[p + "self_attn.v_proj.weight"] = (Hkv * d, D)
        if cfg.attention_bias:
            s[p + "self_attn.v_proj.bias"] = (Hkv * d,)
        s[p + "self_attn.o_proj.weight"] = (D, H * d)
        if cfg.use_memory:
            s[p + "self_attn.beta"] = (H,)
        s[p + "post_attention_layernorm.weight"] = (D,)
        if cfg.is_sparse(l):  # SPEC §7 tensors, Hugging Face module order
            E, Fm, Fs = cfg.num_experts, cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size
            s[p + "mlp.gate.weight"] = (E, D)
            for e in range(E):
                s[p + f"mlp.experts.{e}.gate_proj.weight"] = (Fm, D)
                s[p + f"mlp.experts.{e}.up_proj.weight"] = (Fm, D)
                s[p + f"mlp.experts.{e}.down_proj.weight"] = (D, Fm)
            s[p + "mlp.shared_expert.gate_proj.weight"] = (Fs, D)
            s[p + "mlp.shared_expert.up_proj.weight"] = (Fs, D)
            s[p + "mlp.shared_expert.down_proj.weight"] = (D, Fs)
            s[p + "mlp.shared_expert_gate.weight"] = (1, D)
        else:
            s[p + "mlp.gate_proj.weight"] = (Fi, D)
            s[p + "mlp.up_proj.weight"] = (Fi, D)
            s[p + "mlp.down_proj.weight"] = (D, Fi)
    s["model.norm.weight"] = (D,)
    if not cfg.tie_word_embeddings:
        s["lm_head.weight"] = (V, D)
    return s


# ----------------------------------------------------------------------------------------
# safetensors (minimal reader / writer, numpy based)
# ----------------------------------------------------------------------------------------


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (NaN kept NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Returns ({name: float32/float64 numpy array}, metadata). BF16/F16 become float32."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n :]
    meta = header.pop("__metadata__", {}) or {}
    out: Dict[str, np.ndarray] = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        dt = info["dtype"]
        buf = data[b:e]
        if dt == "F32":
            a = np.frombuffer(buf, dtype="<f4").astype(np.float32)
        elif dt == "F64":
            a = np.frombuffer(buf, dtype="<f8").astype(np.float64)
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(buf, dtype="<u2"))
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        out[name] = a.reshape(shape)
    return out, meta


def write_safetensors(
    path: str,
    tensors: Dict[str, np.ndarray],
    dtype: str = "F32",
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Writes tensors (any float numpy arrays) converted to dtype F32, F16 or BF16."""
    header: Dict[str, object] = {}
    blobs: List[bytes] = []
    off = 0
    for name, arr in tensors.items():
        a = np.asarray(arr, dtype=np.float32)
        if dtype == "F32":
            b = a.astype("<f4").tobytes()
        elif dtype == "F16":
            b = a.astype("<f2").tobytes()
        elif dtype == "BF16":
            b = f32_to_bf16_bits(a).astype("<u2").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # pad header so the data section is 8-aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def round_to_storage(a: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values a reader gets back after storing `a` as dtype."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.copy()
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        return bf16_bits_to_f32(f32_to_bf16_bits(a))
    raise ValueError(dtype)


# ----------------------------------------------------------------------------------------
# Model directories (SPEC §5)
# ----------------------------------------------------------------------------------------


def load_model(model_dir: str, dtype: torch.dtype = torch.float32) -> Tuple[Config, Dict[str, torch.Tensor]]:
    cfg = Config.load(os.path.join(model_dir, "config.json"))
    index = os.path.join(model_dir, "model.safetensors.index.json")
    arrays: Dict[str, np.ndarray] = {}
    if os.path.exists(index):
        with open(index) as f:
            wmap = json.load(f)["weight_map"]
        for shard in sorted(set(wmap.values())):
            t, _ = read_safetensors(os.path.join(model_dir, shard))
            for name, a in t.items():
                if wmap.get(name) == shard:
                    arrays[name] = a
        missing = [n for n in wmap if n not in arrays]
        if missing:
            raise ValueError(f"index names tensors missing from their shard: {missing[:3]}")
    else:
        arrays, _ = read_safetensors(os.path.join(model_dir, "model.safetensors"))

    shapes = param_shapes(cfg)
    params: Dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name not in arrays:
            if name.endswith("self_attn.beta"):
                # A plain Llama/Qwen2 checkpoint: add the gate with its initial value.
                arrays[name] = np.full(shape, cfg.beta_init, dtype=np.float32)
            else:
                raise ValueError(f"missing tensor {name}")
        a = arrays[name]
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"tensor {name}: shape {a.shape}, expected {shape}")
        params[name] = torch.from_numpy(np.array(a)).to(dtype)
    return cfg, params


def save_model(
    model_dir: str,
    cfg_dict: dict,
    params: Dict[str, torch.Tensor],
    dtype: str = "F32",
    shards: int = 1,
) -> None:
    """Writes config.json and the weights (F32 unless told), optionally split in shards."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
        f.write("\n")
    arrays = {n: t.detach().to(torch.float32).cpu().numpy() for n, t in params.items()}
    if shards <= 1:
        write_safetensors(os.path.join(model_dir, "model.safetensors"), arrays, dtype, {"format": "pt"})
        return
    names = list(arrays)
    per = math.ceil(len(names) / shards)
    wmap = {}
    total = 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(model_dir, fn), {n: arrays[n] for n in part}, dtype, {"format": "pt"})
        for n in part:
            wmap[n] = fn
            total += arrays[n].size * (4 if dtype == "F32" else 2)
    with open(os.path.join(model_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------------------
# Byte tokenizer (SPEC §5)
# ----------------------------------------------------------------------------------------


def byte_tokenize(data: bytes) -> List[int]:
    """The whole file, one sequence, no special tokens: ids are the bytes."""
    return list(data)


def byte_detokenize(ids: List[int]) -> bytes:
    return bytes(i for i in ids if 0 <= i < 256)


# ----------------------------------------------------------------------------------------
# The math (SPEC §2-§4)
# ----------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) * w, over the last dimension."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


def sigma(x: torch.Tensor) -> torch.Tensor:
    """σ(x) = ELU(x) + 1."""
    return F.elu(x) + 1.0


def rope_cos_sin(n: int, d: int, theta: float, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [n, d] for local positions 0..n-1, rotate-half layout.

    Angles are computed in float64 then cast, so float32 and float64 runs share the tables.
    """
    i = torch.arange(d // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * i / d)  # θ^(−2i/d)
    p = torch.arange(n, dtype=torch.float64)
    ang = p[:, None] * inv_freq[None, :]  # [n, d/2]
    ang = torch.cat([ang, ang], dim=-1)  # pair (i, i+d/2) shares the angle
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., n, d]. (x_i, x_{i+d/2}) -> (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos, sin) -> torch.Tensor:
    """SPEC §3. q [B,H,n,d], k,v [B,Hkv,n,d] (pre-RoPE) -> [B,H,n,d]."""
    B, H, n, d = q.shape
    G = H // k.shape[1]
    qr = apply_rope(q, cos, sin)
    kr = apply_rope(k, cos, sin)
    # GQA: query head h uses kv head h // G  <=>  repeat each kv head G times, in order.
    kr = kr.repeat_interleave(G, dim=1)
    vv = v.repeat_interleave(G, dim=1)
    scores = torch.matmul(qr, kr.transpose(-1, -2)) / math.sqrt(d)  # [B,H,n,n]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), vv)


def memory_retrieve(q: torch.Tensor, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SPEC §4 retrieve. q [B,H,n,d] (pre-RoPE), M [B,Hkv,d,d], z [B,Hkv,d] -> [B,H,n,d]."""
    B, H, n, d = q.shape
    Hkv = M.shape[1]
    G = H // Hkv
    sq = sigma(q).view(B, Hkv, G, n, d)  # query head h = g*G + j reads memory g
    num = torch.matmul(sq, M.unsqueeze(2))  # [B,Hkv,G,n,d]
    den = torch.matmul(sq, z[:, :, None, :, None]) + MEM_EPS  # [B,Hkv,G,n,1]
    return (num / den).reshape(B, H, n, d)


def memory_update(k: torch.Tensor, v: torch.Tensor, M: torch.Tensor, z: torch.Tensor, rule: str):
    """SPEC §4 update. k, v [B,Hkv,n,d] (pre-RoPE). Returns the new (M, z); out of place."""
    sk = sigma(k)
    if rule == "linear":
        delta_v = v
    elif rule == "delta":
        # Retrieval of the keys from the state BEFORE this update (segment s-1).
        ret = torch.matmul(sk, M) / (torch.matmul(sk, z.unsqueeze(-1)) + MEM_EPS)
        delta_v = v - ret
    else:
        raise ValueError(rule)
    M_new = M + torch.matmul(sk.transpose(-1, -2), delta_v)  # Σ_t σ(k_t)ᵀ Δv_t
    z_new = z + sk.sum(dim=2)  # Σ_t σ(k_t)
    return M_new, z_new


def init_state(cfg: Config, B: int, dtype: torch.dtype, device=None):
    """Zero (M, z) per layer, per sequence, per kv head."""
    d, Hkv = cfg.head_dim, cfg.num_key_value_heads
    return [
        (torch.zeros(B, Hkv, d, d, dtype=dtype, device=device), torch.zeros(B, Hkv, d, dtype=dtype, device=device))
        for _ in range(cfg.num_hidden_layers)
    ]


def swiglu(m: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """W_down( silu(W_gate m) ⊙ (W_up m) )."""
    return F.linear(F.silu(F.linear(m, w_gate)) * F.linear(m, w_up), w_down)


def topk_lower_index(p: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of p (descending), ties to the lower index.

    A stable descending sort keeps equal values in index order, so of two equal
    probabilities the lower expert index comes first.
    """
    vals, idx = torch.sort(p, dim=-1, descending=True, stable=True)
    return vals[..., :k], idx[..., :k]


def router_probs(cfg: Config, m: torch.Tensor, w_router: torch.Tensor) -> torch.Tensor:
    """SPEC §7: p = softmax(m W_routerᵀ), in float32 (float64 when the twin runs in float64)."""
    dt = torch.float64 if m.dtype == torch.float64 else torch.float32
    return torch.softmax(F.linear(m, w_router).to(dt), dim=-1)


def moe_mlp(cfg: Config, P: Dict[str, torch.Tensor], p: str, m: torch.Tensor, router_log: Optional[list] = None,
            layer: int = -1) -> torch.Tensor:
    """SPEC §7 sparse MLP of one layer. m [B, n, D] (after post_attention_layernorm) -> [B, n, D].

    Routed experts are computed on their own tokens only (gather, expert, weighted scatter-add):
    an expert no token chose gets no gradient at all. The gradient reaches the router through
    the top-k weights w; the selection idx is piecewise constant.
    """
    B, n, D = m.shape
    k, E = cfg.num_experts_per_tok, cfg.num_experts
    mf = m.reshape(B * n, D)
    probs = router_probs(cfg, mf, P[p + "mlp.gate.weight"])  # [B*n, E]
    w, idx = topk_lower_index(probs, k)  # [B*n, k]
    if cfg.norm_topk_prob:
        w = w / w.sum(dim=-1, keepdim=True)
    w = w.to(m.dtype)
    if router_log is not None:
        router_log.append({"layer": layer, "probs": probs, "idx": idx.detach()})
    y = torch.zeros_like(mf)
    for e in range(E):
        tok, slot = (idx == e).nonzero(as_tuple=True)  # each token at most once per expert
        if tok.numel() == 0:
            continue
        q = f"{p}mlp.experts.{e}."
        out = swiglu(mf[tok], P[q + "gate_proj.weight"], P[q + "up_proj.weight"], P[q + "down_proj.weight"])
        y = y.index_add(0, tok, w[tok, slot].unsqueeze(-1) * out)
    q = p + "mlp.shared_expert."
    shared = swiglu(mf, P[q + "gate_proj.weight"], P[q + "up_proj.weight"], P[q + "down_proj.weight"])
    y = y + torch.sigmoid(F.linear(mf, P[p + "mlp.shared_expert_gate.weight"])) * shared
    return y.view(B, n, D)


def forward_segment(cfg: Config, P: Dict[str, torch.Tensor], x: torch.Tensor, state, router_log: Optional[list] = None):
    """One segment. x [B, n] token ids; state: list of (M, z) per layer (or None without memory).

    Returns (logits [B, n, V], new state). With router_log (a list), every sparse layer appends
    {"layer", "probs" [B*n, E], "idx" [B*n, k]} (SPEC §7 router rows, for the aux loss).
    """
    B, n = x.shape
    H, Hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    emb = P["model.embed_tokens.weight"]
    dtype = emb.dtype
    cos, sin = rope_cos_sin(n, d, cfg.rope_theta, dtype)
    cos, sin = cos.to(emb.device), sin.to(emb.device)

    h = emb[x]  # [B, n, D]
    new_state = []
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        a = rms_norm(h, P[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = F.linear(a, P[p + "self_attn.q_proj.weight"], P.get(p + "self_attn.q_proj.bias"))
        k = F.linear(a, P[p + "self_attn.k_proj.weight"], P.get(p + "self_attn.k_proj.bias"))
        v = F.linear(a, P[p + "self_attn.v_proj.weight"], P.get(p + "self_attn.v_proj.bias"))
        q = q.view(B, n, H, d).transpose(1, 2)  # [B,H,n,d]
        k = k.view(B, n, Hkv, d).transpose(1, 2)  # [B,Hkv,n,d]
        v = v.view(B, n, Hkv, d).transpose(1, 2)

        A_dot = local_attention(q, k, v, cos, sin)
        if cfg.use_memory:
            M, z = state[l]
            A_mem = memory_retrieve(q, M, z)  # state of segments 1..s-1
            new_state.append(memory_update(k, v, M, z, cfg.memory_update))
            g = torch.sigmoid(P[p + "self_attn.beta"]).view(1, H, 1, 1)
            O = g * A_mem + (1.0 - g) * A_dot
        else:
            O = A_dot
        O = O.transpose(1, 2).reshape(B, n, H * d)
        h = h + F.linear(O, P[p + "self_attn.o_proj.weight"])

        m = rms_norm(h, P[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        if cfg.is_sparse(l):
            h = h + moe_mlp(cfg, P, p, m, router_log, l)
        else:
            h = h + swiglu(m, P[p + "mlp.gate_proj.weight"], P[p + "mlp.up_proj.weight"], P[p + "mlp.down_proj.weight"])

    hf = rms_norm(h, P["model.norm.weight"], cfg.rms_norm_eps)
    w_lm = P["model.embed_tokens.weight"] if cfg.tie_word_embeddings else P["lm_head.weight"]
    return F.linear(hf, w_lm), (new_state if cfg.use_memory else None)


def forward(cfg: Config, P: Dict[str, torch.Tensor], x: torch.Tensor, state=None, return_state: bool = False,
            router_log: Optional[list] = None):
    """Sequences x [B, T], segment by segment (the last segment may be shorter). -> [B,T,V].

    `state` continues from an earlier call (streaming); it is zero when None. Streaming in
    pieces whose lengths are multiples of segment_length gives the same result as one call.
    `router_log` (qwen2_moe): a list that collects the router rows of every segment and sparse layer.
    """
    B, T = x.shape
    N = cfg.segment_length
    if cfg.use_memory and state is None:
        state = init_state(cfg, B, P["model.embed_tokens.weight"].dtype, x.device)
    out = []
    for s0 in range(0, T, N):
        logits, state = forward_segment(cfg, P, x[:, s0 : s0 + N], state, router_log)
        out.append(logits)
    logits = torch.cat(out, dim=1)
    return (logits, state) if return_state else logits


def lm_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over all predicted positions t=1..T-1 of -log softmax(logits_{t-1})[x_t]."""
    V = logits.shape[-1]
    lp = torch.log_softmax(logits[:, :-1].reshape(-1, V), dim=-1)
    tgt = x[:, 1:].reshape(-1)
    return -lp.gather(1, tgt[:, None]).mean()


def aux_loss(cfg: Config, router_log: list) -> torch.Tensor:
    """SPEC §7 load-balancing loss over the router rows of one step (all sparse layers pooled).

    router_aux_loss_coef · E · Σ_e f_e P_e, with f_e = (1/T') Σ_t [e ∈ idx_t] (Σ_e f_e = k) and
    P_e = (1/T') Σ_t p_t,e over all T' rows. Differentiable through P (f is piecewise constant).
    Training adds it to the LM loss when output_router_logits is true; eval/grad never do.
    """
    E = cfg.num_experts
    probs = torch.cat([r["probs"] for r in router_log], dim=0)  # [T', E]
    idx = torch.cat([r["idx"] for r in router_log], dim=0)  # [T', k]
    Tp = probs.shape[0]
    counts = torch.zeros(E, dtype=probs.dtype).index_add_(0, idx.reshape(-1), torch.ones(idx.numel(), dtype=probs.dtype))
    f = counts / Tp
    Pm = probs.mean(dim=0)
    return cfg.router_aux_loss_coef * E * (f * Pm).sum()


def training_loss(cfg: Config, P: Dict[str, torch.Tensor], x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(LM loss + aux loss when output_router_logits, aux loss) of one step on x [B, T]."""
    log: list = []
    lm = lm_loss(forward(cfg, P, x, router_log=log), x)
    if not log:
        z = torch.zeros((), dtype=lm.dtype)
        return lm, z
    aux = aux_loss(cfg, log)
    return (lm + aux if cfg.output_router_logits else lm), aux


def loss_and_grads(cfg: Config, P: Dict[str, torch.Tensor], x: torch.Tensor):
    """Loss (full BPTT) and its gradient with respect to every parameter."""
    Pg = {n: t.detach().clone().requires_grad_(True) for n, t in P.items()}
    logits = forward(cfg, Pg, x)
    loss = lm_loss(logits, x)
    loss.backward()
    # A parameter the loss does not reach (an expert no token chose) has gradient exactly zero.
    return loss.detach(), logits.detach(), {
        n: (t.grad.detach() if t.grad is not None else torch.zeros_like(t.detach())) for n, t in Pg.items()}


def init_params(cfg: Config, seed: int = 0, std: float = 0.02, dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """A simple random init (normal(0, std) linears, ones for norms, beta_init for gates)."""
    gen = torch.Generator().manual_seed(seed)
    P = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            P[name] = torch.ones(shape, dtype=dtype)
        elif name.endswith("self_attn.beta"):
            P[name] = torch.full(shape, cfg.beta_init, dtype=dtype)
        elif name.endswith(".bias"):
            P[name] = torch.zeros(shape, dtype=dtype)
        else:
            P[name] = (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(dtype)
    return P


# ----------------------------------------------------------------------------------------
# Command line: eval (+ optional grad) of a model dir on a data file, in float64
# ----------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description="Reference eval/grad of an infini model dir (float64).")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--grad-out", default=None, help="write F32 gradients here")
    ap.add_argument("--float32", action="store_true", help="compute in float32 instead of float64")
    args = ap.parse_args(argv)
    dtype = torch.float32 if args.float32 else torch.float64
    cfg, P = load_model(args.model, dtype)
    with open(args.data, "rb") as f:
        ids = byte_tokenize(f.read())
    x = torch.tensor([ids], dtype=torch.long)
    if args.grad_out:
        loss, _, grads = loss_and_grads(cfg, P, x)
        write_safetensors(args.grad_out, {n: g.cpu().numpy() for n, g in grads.items()}, "F32")
    else:
        with torch.no_grad():
            loss = lm_loss(forward(cfg, P, x), x)
    loss = float(loss)
    print(json.dumps({"loss": loss, "ppl": math.exp(loss), "tokens": len(ids)}))


if __name__ == "__main__":
    main()
