"""infini: Infini-attention transformers with a compressive memory, from Python.

The same C++ library as the `infini` command line (docs/python.md):

    import infini
    m = infini.load("models/passkey-demo")
    ids = m.tokenizer.encode("The grass is green.")
    m.loss(ids)                  # == `infini eval` on the same tokens
    m.logits(ids)                # numpy float32 [len(ids), vocab_size]
    s = m.session(); s.feed(ids)
    s.generate(16, temperature=0)   # greedy, == `infini generate --temperature 0`
    infini.train(config="configs/tiny.json", data=["corpus/"], out="runs/t", steps=100,
                 callback=lambda m: print(m["step"], m["loss"]))

Errors raise infini.Error (a RuntimeError) with the command line's message. Long calls
release the GIL, so other Python threads run meanwhile; Ctrl-C stops them cleanly (a training
run first writes its checkpoint) and raises KeyboardInterrupt.
"""

from ._infini import Error, Model, Session, Tokenizer, init, load, passkey
from . import _infini


class TrainResult(list):
    """The metrics of every step a train() call ran (dicts, as the lines of metrics.jsonl),
    with how the run ended:

    outcome     "finished" (steps reached), "stopped" (stop_at reached)
    step        optimizer steps done, resumed ones included
    final       OUT/final, the trained model directory (None unless finished)
    checkpoint  the newest checkpoint this call wrote (None if none)
    """

    def __init__(self, metrics, info):
        super().__init__(metrics)
        self.outcome = info["outcome"]
        self.step = info["step"]
        self.final = info["final"]
        self.checkpoint = info["checkpoint"]

    def __repr__(self):
        return "TrainResult(outcome=%r, step=%d, final=%r, %d metric lines)" % (
            self.outcome, self.step, self.final, len(self))


def train(callback=None, **flags):
    """Trains as `infini train` does, with its flags as keyword arguments (underscores for
    dashes): train(config="c.json", data=["books/"], out="runs/x", seq_len=512, steps=200).
    A list gives a flag several times (data=[a, b]); True gives a switch (resume=True).
    Returns a TrainResult: the metrics of each step, plus outcome, step, final, checkpoint.

    callback(metrics) is called after every step with that step's dict (step, loss, lr,
    grad_norm, tokens, tokens_per_s, and val_loss/val_ppl on evaluation steps). If it raises,
    or on Ctrl-C, the run stops after the current step, writes its checkpoint (continue with
    resume=True) and the exception is raised. Bad flags raise infini.Error with the command
    line's message. Threads: OMP_NUM_THREADS, as for the command line.
    """
    return TrainResult(*_infini._train(flags, callback))


train.__doc__ += "\n" + _infini._train_flags_help()

__all__ = ["Error", "Model", "Session", "Tokenizer", "TrainResult", "init", "load", "passkey",
           "train"]
