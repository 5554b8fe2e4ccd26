// Trains the byte-level BPE tokenizer of the books experiment (docs/training.md) with Hugging
// Face's own `tokenizers` (npm), offline, on the training books only.
// Usage: node scripts/books_tokenizer.js VOCAB_SIZE OUT.json FILE...
//   (run `npm install tokenizers` first; scripts/train_books.sh does both)
// The library's Node binding trains with its default BPE trainer (no vocabulary size), so the
// vocabulary is cut afterwards: BPE merges are learned most frequent first, and the first M of
// them form a complete tokenizer. The written tokenizer.json has ids 0-255 for the 256 bytes
// (byte-level alphabet, so any text encodes), then the merges in learned order, then
// <|endoftext|> (the document separator) as the last id: VOCAB_SIZE ids in all.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { Tokenizer, BPE, byteLevelPreTokenizer, byteLevelAlphabet } = require("tokenizers");

const [vocabArg, outPath, ...files] = process.argv.slice(2);
const vocabSize = parseInt(vocabArg, 10);
if (!(vocabSize > 257) || !outPath || files.length === 0) {
  console.error("usage: node scripts/books_tokenizer.js VOCAB_SIZE OUT.json FILE...");
  process.exit(2);
}

const tok = new Tokenizer(BPE.empty());
tok.setPreTokenizer(byteLevelPreTokenizer(false, true));
tok.train(files);
const tmp = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "bpe-")), "full.json");
tok.save(tmp);
const full = JSON.parse(fs.readFileSync(tmp, "utf8"));
const merges = full.model.merges.map((m) => (Array.isArray(m) ? m : m.split(" ")));

// The byte-level alphabet in byte order: byte b is the character GPT-2's table maps it to.
const alphabet = byteLevelAlphabet();
const byteChar = [];
for (let b = 0; b < 256; ++b) {
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
    byteChar.push(String.fromCodePoint(b));
}
let extra = 0;
for (let b = 0; b < 256; ++b) {
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)))
    byteChar.splice(b, 0, String.fromCodePoint(256 + extra++));
}
if (byteChar.length !== 256 || !byteChar.every((c) => alphabet.includes(c)))
  throw new Error("byte-level alphabet mismatch");

const vocab = {};
byteChar.forEach((c, i) => (vocab[c] = i));
const kept = [];
for (const [a, b] of merges) {
  if (Object.keys(vocab).length >= vocabSize - 1) break;
  if (!(a in vocab) || !(b in vocab)) throw new Error(`merge ${a} ${b} before its parts`);
  if (!((a + b) in vocab)) vocab[a + b] = Object.keys(vocab).length;
  kept.push([a, b]);
}
const eos = "<|endoftext|>";
const eosId = Object.keys(vocab).length;
vocab[eos] = eosId;

const out = {
  version: "1.0",
  truncation: null,
  padding: null,
  added_tokens: [{ id: eosId, content: eos, single_word: false, lstrip: false, rstrip: false,
                   normalized: false, special: true }],
  normalizer: null,
  pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true,
                   use_regex: true },
  post_processor: null,
  decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null,
           end_of_word_suffix: null, fuse_unk: false, byte_fallback: false,
           ignore_merges: false, vocab, merges: kept },
};
fs.writeFileSync(outPath, JSON.stringify(out));
console.error(`${outPath}: ${eosId + 1} ids (${kept.length} merges of ${merges.length} learned)`);
