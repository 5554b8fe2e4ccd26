"""infini: Infini-attention transformers with a compressive memory, from Python.

The same C++ library as the `infini` command line (docs/python.md):

    import infini
    m = infini.load("models/passkey-demo")
    ids = m.tokenizer.encode("The grass is green.")
    m.loss(ids)                  # == `infini eval` on the same tokens
    m.logits(ids)                # numpy float32 [len(ids), vocab_size]
    s = m.session(); s.feed(ids)
    s.generate(16, temperature=0)   # greedy, == `infini generate --temperature 0`

Errors raise infini.Error (a RuntimeError) with the command line's message. Long calls
release the GIL, so other Python threads run meanwhile.
"""

from ._infini import Error, Model, Session, Tokenizer, init, load, passkey

__all__ = ["Error", "Model", "Session", "Tokenizer", "init", "load", "passkey"]
