"""The Python package against the command line on the same model (run by CTest: PythonPackage).

Needs PYTHONPATH=build/python and INFINI_BINARY (CMake sets both).
"""

import json
import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

import infini

BIN = os.environ.get("INFINI_BINARY", "build/infini")
ROOT = os.environ.get("INFINI_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
PASSKEY = os.path.join(ROOT, "models", "passkey-demo")

TINY = {
    "model_type": "llama", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "infini": {"segment_length": 16, "memory_update": "delta", "use_memory": True},
}
TEXT = "It is a truth universally acknowledged, that a single man in possession of a good " \
       "fortune, must be in want of a wife. " * 3


def cli(*args):
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True).stdout


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        assert t["dtype"] == "F32"
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"])
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    m = infini.init(TINY, seed=3)
    m.save(str(d / "model"))
    (d / "text.txt").write_text(TEXT)
    return d


def test_loss_equals_infini_eval(tiny):
    m = infini.load(str(tiny / "model"))
    ids = m.tokenizer.encode(TEXT)
    want = json.loads(cli("eval", "--model", str(tiny / "model"), "--data",
                          str(tiny / "text.txt"), "--json"))
    assert want["tokens"] == len(ids)
    assert m.loss(ids) == pytest.approx(want["loss"], rel=1e-6)
    assert m.loss(np.array(ids, dtype=np.int32)) == pytest.approx(want["loss"], rel=1e-6)


def test_logits_shape_dtype_and_they_give_the_loss(tiny):
    m = infini.load(str(tiny / "model"))
    ids = m.tokenizer.encode(TEXT)
    lg = m.logits(ids)
    assert lg.dtype == np.float32 and lg.shape == (len(ids), 258)
    lp = lg.astype(np.float64)
    lp = lp - lp.max(axis=1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))
    nll = -lp[np.arange(len(ids) - 1), ids[1:]].mean()
    assert nll == pytest.approx(m.loss(ids), rel=1e-5)


def test_grad_equals_infini_grad(tiny):
    m = infini.load(str(tiny / "model"))
    out = tiny / "grad.safetensors"
    cli("grad", "--model", str(tiny / "model"), "--data", str(tiny / "text.txt"), "--out",
        str(out))
    want = read_safetensors(str(out))
    got = m.grad(m.tokenizer.encode(TEXT))
    assert set(got) == set(want) == set(m.parameters())
    for name, g in got.items():
        assert g.dtype == np.float32 and g.shape == want[name].shape, name
        scale = max(np.abs(want[name]).max(), 1e-12)
        assert np.abs(g - want[name]).max() <= 1e-5 * scale, name


def test_bf16_precision_equals_the_cli_and_stays_near_fp32(tiny):
    m = infini.load(str(tiny / "model"), precision="bf16")
    assert m.precision == "bf16"
    ids = m.tokenizer.encode(TEXT)
    want = json.loads(cli("eval", "--model", str(tiny / "model"), "--data",
                          str(tiny / "text.txt"), "--json", "--precision", "bf16"))
    assert want["precision"] == "bf16"
    bf16 = m.loss(ids)
    assert bf16 == pytest.approx(want["loss"], rel=1e-6)
    m.precision = "fp32"
    fp32 = m.loss(ids)
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.01)
    out = tiny / "grad_bf16.safetensors"
    cli("grad", "--model", str(tiny / "model"), "--data", str(tiny / "text.txt"), "--out",
        str(out), "--precision", "bf16")
    m.precision = "bf16"
    got, ref = m.grad(ids), read_safetensors(str(out))
    for name, g in got.items():
        assert np.abs(g - ref[name]).max() <= 1e-5 * max(np.abs(ref[name]).max(), 1e-12), name
    with pytest.raises(infini.Error, match="precision must be fp32 or bf16"):
        m.precision = "fp16"
    # Loaded for inference, the bf16 weights are held in bf16 only where the CPU has
    # AVX512-BF16: the same losses, and what needs the float32 weights refuses the model.
    r = infini.load(str(tiny / "model"), precision="bf16", inference=True)
    assert r.bf16_resident == ("--precision bf16: native" in cli("--version"))
    assert r.loss(ids) == bf16
    if r.bf16_resident:
        for needs_floats in (lambda: r.grad(ids), lambda: r.parameters(),
                             lambda: r.save(str(tiny / "never")),
                             lambda: setattr(r, "precision", "fp32")):
            with pytest.raises(infini.Error, match="bf16"):
                needs_floats()
    assert not infini.load(str(tiny / "model"), precision="fp32", inference=True).bf16_resident


def test_greedy_generate_equals_the_cli():
    m = infini.load(PASSKEY)
    prompt = "The grass is green. The sky is blue. The pass key is 31415. Remember it."
    s = m.session()
    s.feed(m.tokenizer.encode(prompt))
    ids = s.generate(24, temperature=0)
    assert len(ids) == 24 and all(isinstance(t, int) for t in ids)
    want = cli("generate", "--model", PASSKEY, "--prompt", prompt, "--max-new-tokens", "24",
               "--temperature", "0")
    assert m.tokenizer.decode(ids) + "\n" == want


def test_state_round_trip_continues_exactly(tmp_path):
    m = infini.load(PASSKEY)
    ids = m.tokenizer.encode("The sun is yellow. Here we go. " * 4)
    a = m.session()
    a.feed(ids)
    a.save(str(tmp_path / "s.state"))
    b = m.load_session(str(tmp_path / "s.state"))
    assert b.position == a.position == len(ids)
    mem_a, mem_b = a.memory(), b.memory()
    assert mem_a["M"].shape == (3, 4, 16, 16) and mem_a["z"].shape == (3, 4, 16)
    assert np.array_equal(mem_a["M"], mem_b["M"]) and np.abs(mem_a["z"]).max() > 0
    assert a.generate(12, temperature=0) == b.generate(12, temperature=0)
    # The CLI reads the same file.
    want = cli("generate", "--model", PASSKEY, "--state-in", str(tmp_path / "s.state"),
               "--max-new-tokens", "12", "--temperature", "0")
    c = m.load_session(str(tmp_path / "s.state"))
    assert m.tokenizer.decode(c.generate(12, temperature=0)) + "\n" == want


def test_parameters_are_read_only_views(tiny):
    m = infini.load(str(tiny / "model"))
    p = m.parameters()
    assert p["model.embed_tokens.weight"].shape == (258, 32)
    assert p["model.layers.0.self_attn.beta"].shape == (4,)
    w = p["model.norm.weight"]
    with pytest.raises(ValueError):
        w[0] = 5.0
    del m  # the view keeps the model alive
    assert np.isfinite(w).all()


def test_bad_inputs_raise_infini_error(tiny):
    m = infini.load(str(tiny / "model"))
    assert issubclass(infini.Error, RuntimeError)
    for bad in ([1], [0, 258], [-1, 3], np.zeros((2, 2), dtype=np.int64),
                np.array([1.5, 2.0])):
        with pytest.raises(infini.Error):
            m.loss(bad)
    with pytest.raises(infini.Error, match="does not exist"):
        infini.load(str(tiny / "nope"))
    with pytest.raises(infini.Error):
        infini.init(dict(TINY, num_attention_heads=3))
    with pytest.raises(infini.Error):
        m.session().generate(4)  # nothing fed yet
    with pytest.raises(infini.Error):
        m.load_session(str(tiny / "text.txt"))


def test_init_from_path_and_save_round_trip(tiny, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY))
    a = infini.init(str(cfg), seed=3)
    assert a.config["hidden_size"] == 32 and a.config["infini"]["segment_length"] == 16
    b = infini.load(str(tiny / "model"))  # init(TINY, seed=3), saved
    ids = a.tokenizer.encode(TEXT)
    assert a.loss(ids) == b.loss(ids)


def test_threads_run_loss_concurrently(tiny):
    m = infini.load(str(tiny / "model"))
    ids = m.tokenizer.encode(TEXT * 4)
    want = m.loss(ids)
    got = []
    threads = [threading.Thread(target=lambda: got.append(m.loss(ids))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [want] * 3


def test_logits_go_to_torch_without_copy():
    torch = pytest.importorskip("torch")
    m = infini.load(PASSKEY)
    lg = m.logits(m.tokenizer.encode("The pass key is"))
    t = torch.from_numpy(lg)
    assert t.shape == lg.shape and t.dtype == torch.float32
    assert t.data_ptr() == lg.ctypes.data


def test_passkey_evaluate_equals_the_cli_and_sample_has_the_key():
    m = infini.load(PASSKEY)
    got = infini.passkey.evaluate(m, [1024, 4096], [0.0, 1.0], trials=2, seed=5)
    want = json.loads(cli("passkey", "eval", "--model", PASSKEY, "--lengths", "1K,4K",
                          "--depths", "0,1", "--trials", "2", "--seed", "5", "--json"))
    strip = lambda j: [(r["length"], r["depth"], r["keys"], r["outputs"]) for r in j["results"]]
    assert strip(got) == strip(want)
    assert got["accuracy"] == want["accuracy"] == 1.0
    assert np.allclose(got["gates"], want["gates"], rtol=1e-9)
    s = infini.passkey.sample(m, 400, 0.5, seed=2)
    assert len(s["prompt"]) + len(s["answer"]) == 400
    assert m.tokenizer.decode(s["answer"]) == " " + s["key"]
    assert s["key"] in m.tokenizer.decode(s["prompt"])
    with pytest.raises(infini.Error):
        infini.passkey.sample(m, 10, 0.5)  # shorter than the prompt without filler


def train_flags(tiny, out, **more):
    flags = dict(config=str(tiny / "config.json"), data=[str(tiny / "text.txt")],
                 out=str(out), seq_len=64, batch=2, steps=4, save_every=2, eval_every=0,
                 val_fraction=0.2, seed=7)
    flags.update(more)
    return flags


@pytest.fixture(scope="module")
def tiny_train(tiny):
    (tiny / "config.json").write_text(json.dumps(TINY))
    (tiny / "text.txt").write_text(TEXT * 20)
    return tiny


def test_train_equals_infini_train_and_calls_back_every_step(tiny_train, tmp_path):
    seen = []
    r = infini.train(callback=seen.append, **train_flags(tiny_train, tmp_path / "py"))
    assert isinstance(r, list) and isinstance(r, infini.TrainResult)
    assert r.outcome == "finished" and r.step == 4 and r.final == str(tmp_path / "py" / "final")
    assert [m["step"] for m in seen] == [1, 2, 3, 4] and seen == list(r)
    assert all(np.isfinite(m["loss"]) for m in r)
    cli("train", "--config", str(tiny_train / "config.json"), "--data",
        str(tiny_train / "text.txt"), "--out", str(tmp_path / "cli"), "--seq-len", "64",
        "--batch", "2", "--steps", "4", "--save-every", "2", "--eval-every", "0",
        "--val-fraction", "0.2", "--seed", "7")
    py_w = read_safetensors(tmp_path / "py" / "final" / "model.safetensors")
    cli_w = read_safetensors(tmp_path / "cli" / "final" / "model.safetensors")
    assert py_w.keys() == cli_w.keys()
    for k in py_w:  # one thread both ways (CTest sets OMP_NUM_THREADS=1): the same bits
        assert np.array_equal(py_w[k], cli_w[k]), k
    with open(tmp_path / "cli" / "metrics.jsonl") as f:
        cli_loss = [json.loads(line)["loss"] for line in f]
    assert [m["loss"] for m in r] == cli_loss


def test_train_bad_flags_raise_the_cli_message(tiny_train, tmp_path):
    with pytest.raises(infini.Error, match=r"--lr: Value -1 not in range"):
        infini.train(**train_flags(tiny_train, tmp_path / "a", lr=-1))
    with pytest.raises(infini.Error, match=r"not expected.*--no-such-flag"):
        infini.train(**train_flags(tiny_train, tmp_path / "b", no_such_flag=1))
    with pytest.raises(infini.Error, match=r"--out is required"):
        infini.train(config=str(tiny_train / "config.json"), data=[str(tiny_train / "text.txt")])
    with pytest.raises(infini.Error, match=r"--warmup 9 must be less than --steps 4"):
        infini.train(**train_flags(tiny_train, tmp_path / "c", warmup=9))


def test_a_raising_callback_stops_with_a_checkpoint_and_resume_finishes(tiny_train, tmp_path):
    def stop_at_three(m):
        if m["step"] == 3:
            raise ValueError("enough")

    out = tmp_path / "run"
    with pytest.raises(ValueError, match="enough"):
        infini.train(callback=stop_at_three, **train_flags(tiny_train, out, steps=6))
    assert sorted(os.listdir(out / "checkpoints"))[-1] == "step-00000003"
    assert not (out / "final").exists()
    r = infini.train(out=str(out), resume=True)
    assert r.outcome == "finished" and r.step == 6 and [m["step"] for m in r] == [4, 5, 6]
    full = infini.train(**train_flags(tiny_train, tmp_path / "whole", steps=6))
    a = read_safetensors(out / "final" / "model.safetensors")
    b = read_safetensors(tmp_path / "whole" / "final" / "model.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # resume is exact
    assert [m["loss"] for m in r] == [m["loss"] for m in full][3:]


CTRL_C_TRAIN = r"""
import os, signal, sys, infini
flags = dict(config=sys.argv[1], data=[sys.argv[2]], out=sys.argv[3], seq_len=64, batch=2,
             steps=1000, save_every=0, eval_every=0, val_fraction=0.2)
def press_ctrl_c(m):
    if m["step"] == 2:
        os.kill(os.getpid(), signal.SIGINT)
try:
    infini.train(callback=press_ctrl_c, **flags)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
print(infini.load(sys.argv[1].replace("config.json", "model")).loss([1, 2, 3]) > 0)
"""


def test_ctrl_c_stops_training_after_its_step_with_a_checkpoint(tiny_train, tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", CTRL_C_TRAIN, str(tiny_train / "config.json"),
                        str(tiny_train / "text.txt"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["KeyboardInterrupt", "True"]  # raised, interpreter still fine
    ckpts = sorted(os.listdir(out / "checkpoints"))
    assert len(ckpts) == 1 and 2 <= int(ckpts[0].split("-")[1]) < 1000, ckpts
    assert "interrupted at step" in p.stderr and "continue with --resume" in p.stderr


CTRL_C_LOSS = r"""
import os, signal, sys, threading, time, infini
m = infini.load(sys.argv[1])
ids = [int(i % 250) for i in range(int(sys.argv[2]))]
for name in ("loss", "grad", "logits"):
    n = len(ids) // 8 if name == "logits" else len(ids)  # logits hold [n, vocab] floats
    t0 = time.monotonic()
    getattr(m, name)(ids[: n // 16])
    small = time.monotonic() - t0  # a sixteenth of the whole call's time
    threading.Timer(small, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    try:
        getattr(m, name)(ids[:n])
        print("finished")
    except KeyboardInterrupt:  # stopped long before the end (16 * small)
        print("KeyboardInterrupt", time.monotonic() - t0 < 6 * small)
print(m.loss(ids[:100]) > 0)
"""


def test_ctrl_c_stops_a_long_loss_grad_and_logits(tiny):
    # 4M tokens: a minute or more of work for each call, stopped after half a second.
    p = subprocess.run([sys.executable, "-c", CTRL_C_LOSS, str(tiny / "model"), str(4 << 20)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["KeyboardInterrupt", "True"] * 3 + ["True"], p.stdout


def test_grad_equals_the_pytorch_twin(tiny):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(ROOT, "reference"))
    try:
        import infini_ref as ref
    finally:
        sys.path.pop(0)
    m = infini.load(str(tiny / "model"))
    ids = m.tokenizer.encode(TEXT)
    cfg, P = ref.load_model(str(tiny / "model"), dtype=torch.float64)
    loss, _, want = ref.loss_and_grads(cfg, P, torch.tensor([ids]))
    got = m.grad(ids)
    assert abs(m.loss(ids) - float(loss)) <= 1e-5 * float(loss)
    assert got.keys() == want.keys()
    for name, g in got.items():
        w = want[name].numpy()
        assert g.shape == w.shape, name
        assert np.abs(g - w).max() <= 1e-4 * max(np.abs(w).max(), 1e-6), name


def test_token_losses_average_to_the_loss(tiny):
    m = infini.load(str(tiny / "model"))
    ids = m.tokenizer.encode(TEXT)
    tl = m.token_losses(np.array(ids, dtype=np.int32))
    assert tl.dtype == np.float64 and tl.shape == (len(ids) - 1,)
    assert abs(tl.mean() - m.loss(ids)) <= 1e-9 * m.loss(ids)
    lg = m.logits(ids).astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
    want = lse[:-1] - lg[np.arange(len(ids) - 1), ids[1:]]
    assert np.allclose(tl, want, rtol=1e-5, atol=1e-5)
