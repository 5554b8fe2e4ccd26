#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (small valid and near-valid inputs).

Run from anywhere with a plain python3 (no torch): python3 fuzz/make_corpus.py
Seeds are derived from the committed goldens, configs and tokenizers, plus hand-made
near-misses. Regression inputs found by fuzzing live next to them as crash-*/regress-* and
are never rewritten by this script.
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- safetensors
def st(header, data=b"", hlen=None, pad=True):
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


def golden_safetensors():
    gdir = os.path.join(ROOT, "tests", "golden")
    for case in sorted(os.listdir(gdir)):
        cdir = os.path.join(gdir, case)
        if not os.path.isdir(cdir):
            continue
        for fn in sorted(os.listdir(cdir)):
            if not fn.endswith(".safetensors") or fn == "grads.safetensors":
                continue
            raw = open(os.path.join(cdir, fn), "rb").read()
            (n,) = struct.unpack("<Q", raw[:8])
            header = json.loads(raw[8:8 + n])
            # The real header over a small data section: offsets shrunk to fit one float each.
            small, off = {}, 0
            for k, v in header.items():
                if k == "__metadata__":
                    small[k] = v
                    continue
                size = 4 if v["dtype"] == "F32" else 2
                small[k] = {"dtype": v["dtype"], "shape": [1], "data_offsets": [off, off + size]}
                off += size
            put("safetensors", f"golden-{case}-{fn}-small", st(small, bytes(off)))
            # The real header with its data cut off (near-valid: offsets beyond the data).
            put("safetensors", f"golden-{case}-{fn}-truncated", raw[:8 + n + 16])
    shard = os.path.join(gdir, "qwen2_linear_bf16_sharded", "model-00002-of-00002.safetensors")
    if os.path.exists(shard):
        put("safetensors", "golden-shard-full", open(shard, "rb").read())


def synthetic_safetensors():
    three = {"__metadata__": {"format": "pt"},
             "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
             "b": {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]},
             "c": {"dtype": "BF16", "shape": [], "data_offsets": [22, 24]},
             "empty": {"dtype": "F32", "shape": [0, 5], "data_offsets": [24, 24]}}
    put("safetensors", "valid-three-dtypes", st(three, bytes(range(24))))
    put("safetensors", "valid-empty-header", st({}))
    put("safetensors", "near-hlen-too-big", st(three, bytes(24), hlen=1 << 20))
    put("safetensors", "near-hlen-huge", st(three, bytes(24), hlen=(1 << 64) - 1))
    put("safetensors", "near-short-file", b"\x10\x00\x00")
    over = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    put("safetensors", "near-overlap", st(over, bytes(12)))
    oob = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    put("safetensors", "near-out-of-range", st(oob, bytes(8)))
    put("safetensors", "near-shape-mismatch",
        st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, bytes(16)))
    put("safetensors", "near-dtype-i64",
        st({"a": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16)))
    put("safetensors", "near-negative-dim",
        st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)))
    put("safetensors", "near-float-dim",
        st({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, bytes(4)))
    put("safetensors", "near-overflow-shape",
        st({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}))
    put("safetensors", "near-duplicate-key",
        st(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
           b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)))
    put("safetensors", "near-deep-nesting", st(b'{"__metadata__":' + b"[" * 100 + b"]" * 100 + b"}"))
    put("safetensors", "near-nul-in-header", st(b'{"a":\x00}'))
    put("safetensors", "near-metadata-not-string", st({"__metadata__": {"k": 1}}))


# ---------------------------------------------------------------- config.json
def configs():
    for d in ("tests/golden", "configs"):
        base = os.path.join(ROOT, d)
        for dirpath, _, files in os.walk(base):
            for fn in sorted(files):
                if fn.endswith(".json") and (d == "configs" or fn == "config.json"):
                    rel = os.path.relpath(os.path.join(dirpath, fn), ROOT).replace("/", "-")
                    put("config", rel, open(os.path.join(dirpath, fn), "rb").read())
    base = {"model_type": "llama", "vocab_size": 260, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "infini": {"segment_length": 16, "memory_update": "delta", "use_memory": True}}

    def variant(name, **changes):
        c = json.loads(json.dumps(base))
        for k, v in changes.items():
            if k.startswith("infini_"):
                c["infini"][k[7:]] = v
            elif v is None:
                c.pop(k, None)
            else:
                c[k] = v
        put("config", name, json.dumps(c))

    variant("valid-base")
    variant("valid-qwen2-headdim", model_type="qwen2", head_dim=6, attention_bias=True)
    variant("valid-local-only", infini_use_memory=False, infini_memory_update="linear")
    variant("near-heads-not-dividing", num_attention_heads=5, num_key_value_heads=5)
    variant("near-kv-not-dividing", num_key_value_heads=3)
    variant("near-segment-zero", infini_segment_length=0)
    variant("near-negative-vocab", vocab_size=-1)
    variant("near-huge-hidden", hidden_size=1 << 40)
    variant("near-float-layers", num_hidden_layers=2.5)
    variant("near-big-uint", vocab_size=18446744073709551615)
    variant("near-missing-vocab", vocab_size=None)
    variant("near-bad-type", model_type="gpt2")
    variant("near-eps-zero", rms_norm_eps=0)
    variant("near-update-unknown", infini_memory_update="hebbian")
    variant("near-string-number", hidden_size="32")
    put("config", "near-not-object", "[1, 2, 3]")
    put("config", "near-extra-nested", json.dumps(dict(base, extra={"a": [[[[{"b": None}]]]]})))


# ---------------------------------------------------------------- saved state
def states():
    # Header of docs/state_format.md without the trailing checksum: the fuzz target tries
    # every input as is and with a valid checksum appended.
    def state(L=1, G=1, d=2, D=4, N=4, pos=0, mem=True, fill=0.5):
        cache = pos % N
        has_last = pos > 0
        flags = (1 if mem else 0) | (2 if has_last else 0)
        h = b"INFSTATE" + struct.pack("<II", 1, flags) + struct.pack("<QQ", 0x1234, 0x5678)
        h += struct.pack("<7q", L, G, d, D, N, pos, cache)
        n = (L * G * d * d + L * G * d if mem else 0) + 3 * L * cache * G * d + (D if has_last else 0)
        return h + struct.pack(f"<{n}f", *([fill] * n))

    put("state", "valid-empty", state())
    put("state", "valid-mid-segment", state(pos=5))
    put("state", "valid-two-layers-gqa", state(L=2, G=2, d=4, D=8, N=3, pos=7))
    put("state", "valid-no-memory", state(mem=False, pos=2))
    put("state", "near-bad-version", state().replace(b"\x01\x00\x00\x00", b"\x02\x00\x00\x00", 1))
    put("state", "near-cache-mismatch", state(pos=5)[:80] + struct.pack("<q", 3) + state(pos=5)[88:])
    put("state", "near-truncated", state(pos=5)[:100])
    put("state", "near-bad-magic", b"INFSTATX" + state()[8:])


# ---------------------------------------------------------------- tokenizers
def small_tokenizer(name, keep_pred):
    """The real tokenizer.json with its vocabulary cut to a few hundred entries (renumbered)
    and the merges that still apply: same pipeline, small enough to mutate."""
    d = json.load(open(os.path.join(ROOT, "tests", "data", "tokenizers", name, "tokenizer.json")))
    m = d["model"]
    kept = [t for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]) if keep_pred(t)]
    vocab = {t: i for i, t in enumerate(kept)}
    merges = []
    for mg in m["merges"]:
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    m["vocab"], m["merges"] = vocab, merges
    nxt = len(vocab)
    for t in d["added_tokens"]:
        if t["content"] in vocab:
            t["id"] = vocab[t["content"]]
        else:
            t["id"] = nxt
            nxt += 1
    d["added_tokens"] = d["added_tokens"][:6]
    return d


def byte_level_alphabet():
    """The 256 characters GPT-2's ByteLevel maps bytes to."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            cs.append(256 + n)
            n += 1
    return {chr(c) for c in cs}


def first_n(pred, n):
    """pred, but true for at most n tokens of length 2 (in id order)."""
    count = [0]

    def keep(t):
        if not pred(t):
            return False
        if len(t) == 2:
            count[0] += 1
            return count[0] <= n
        return True
    return keep


def tokenizers():
    ascii_or_meta = lambda t: all(ord(c) < 128 or c == "\u2581" for c in t)
    llama = small_tokenizer("llama2", first_n(
        lambda t: t.startswith("<0x") or t in ("<unk>", "<s>", "</s>") or
        (len(t) <= 2 and ascii_or_meta(t)), 200))
    put("tokenizer_json", "small-llama2.json", json.dumps(llama, ensure_ascii=False))
    alpha = byte_level_alphabet()
    qwen = small_tokenizer("qwen3", first_n(lambda t: len(t) <= 2 and set(t) <= alpha, 200))
    put("tokenizer_json", "small-qwen3.json", json.dumps(qwen, ensure_ascii=False))
    # Pipeline variants on the small byte-level one.
    v = json.loads(json.dumps(qwen))
    v["normalizer"] = None
    v["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                          "use_regex": True}
    put("tokenizer_json", "variant-bytelevel-prefix.json", json.dumps(v, ensure_ascii=False))
    v = json.loads(json.dumps(llama))
    v["normalizer"] = None
    v["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                          "split": False}
    v["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                    "split": False}
    put("tokenizer_json", "variant-metaspace.json", json.dumps(v, ensure_ascii=False))
    v = json.loads(json.dumps(llama))
    v["model"]["byte_fallback"] = False
    put("tokenizer_json", "variant-no-byte-fallback.json", json.dumps(v, ensure_ascii=False))
    put("tokenizer_json", "near-wordpiece.json",
        json.dumps({"version": "1.0", "model": {"type": "WordPiece", "vocab": {"a": 0}}}))
    put("tokenizer_json", "near-merge-missing.json", json.dumps(
        {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}))
    put("tokenizer_json", "minimal-bpe.json", json.dumps(
        {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
         "added_tokens": [{"id": 3, "content": "<s>", "special": True}]}))

    texts = json.load(open(os.path.join(ROOT, "tests", "data", "tokenizers", "texts.json")))
    for i, t in enumerate(texts):
        b = bytes.fromhex(t["hex"].replace(" ", "")) if isinstance(t, dict) else t.encode()
        if len(b) > 2048:
            continue
        put("tokenizer", f"text-{i:02d}-llama2", b"\x00" + b)
        put("tokenizer", f"text-{i:02d}-qwen3", b"\x01" + b)
    put("tokenizer", "invalid-utf8-llama2", b"\x00ab\xff\xfe\xc3(\xed\xa0\x80z")
    put("tokenizer", "invalid-utf8-qwen3", b"\x01ab\xff\xfe\xc3(\xed\xa0\x80z")


# ---------------------------------------------------------------- token cache
def token_caches():
    # The layout of src/train/data.cpp (serialize_token_cache) with fingerprint "fp", the one
    # the target expects; the target also tries every input with its checksum made valid.
    def fnv1a(b):
        h = 0xcbf29ce484222325
        for x in b:
            h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
        return h

    def cache(docs, fp="fp", version=1, counts=None):
        # counts: the header's token counts when they should lie about the data.
        counts = counts or [len(t) for _, _, t in docs]
        header = json.dumps({"fingerprint": fp, "documents": [
            {"name": n, "val": v, "tokens": c} for (n, v, _), c in zip(docs, counts)]},
            separators=(",", ":")).encode()
        data = b"".join(struct.pack(f"<{len(t)}i", *t) for _, _, t in docs)
        return (b"INFTOKC1" + struct.pack("<IIQ", version, 0, len(header)) + header + data +
                struct.pack("<Q", fnv1a(data)))

    put("token_cache", "valid-two-docs", cache([("a.txt", False, [1, 2, 3]), ("b", True, [4])]))
    put("token_cache", "valid-empty-doc", cache([("e", False, []), ("f", False, [7, 8])]))
    put("token_cache", "valid-no-docs", cache([]))
    put("token_cache", "near-other-fingerprint", cache([("a", False, [1])], fp="other"))
    put("token_cache", "near-bad-version", cache([("a", False, [1])], version=2))
    put("token_cache", "near-truncated", cache([("a", False, [1, 2, 3, 4])])[:-5])
    # 2^64 - 1 + 5 wraps around to the 4 tokens there are.
    put("token_cache", "near-wrapping-counts",
        cache([("a", False, [1, 2, 3, 4]), ("b", False, [])], counts=[2**64 - 1, 5]))


if __name__ == "__main__":
    golden_safetensors()
    synthetic_safetensors()
    configs()
    states()
    tokenizers()
    token_caches()
    for t in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, t))
        size = sum(os.path.getsize(os.path.join(OUT, t, f)) for f in files)
        print(f"{t}: {len(files)} files, {size} bytes")
