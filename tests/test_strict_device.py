"""The GPU path's discipline, run whole under the strict device stand-in (tests/device_standin.py; no GPU).

The trainer (from scratch, resumed, with gradient accumulation and dropout),
generate.py, evaluate.py and a tiny bench_gpu.py run with `--device gpu` on a
fake CuPy that refuses every implicit trip between host and device and
computes real values. What is asserted:

* a training step (Trainer.train_step: forward, backward, clipping, AdamW)
  never synchronises and never copies to the host; the loss and gradient norm
  are read explicitly, outside it, at log intervals;
* the losses are those of the CPU run to float32 rounding, and resuming is exact;
* generation copies back at most the B ids of each token (8 B bytes), never a
  row of logits, and draws the CPU's tokens (GPT-2 and the modern variant,
  past the context, where the KV cache slides);
* evaluation and the benchmark run through, reading back only scalars, and the
  benchmark's timed steps hold no synchronisation but the two that bracket them.
"""

import math
import runpy
from pathlib import Path

import numpy as np
import pytest

from minigpt.backend import get_xp, to_host
from minigpt.model import GPT, GPTConfig
from minigpt.parallel import RowRNG
from minigpt.trainer import Trainer
from tests import device_standin
from tests.device_standin import EVENTS, ndarray
from tests.test_train import TEXT, read_log, run_main, train_losses

REPO = Path(__file__).resolve().parent.parent
TINY = ["--n_layer", 2, "--n_head", 2, "--n_embd", 32, "--block_size", 16, "--batch_size", 4, "--eval_iters", 2,
        "--log_interval", 1, "--sample_tokens", 8, "--warmup_iters", 2, "--eval_interval", 2, "--lr_decay_iters", 4,
        "--workers", 1, "--grad_clip", 1.0]


def script(name):
    """A script's module namespace (its `main`), loaded from scripts/ without running it."""
    return runpy.run_path(str(REPO / "scripts" / name))


def kinds(events):
    return [kind for kind, _ in events]


@pytest.fixture
def cupy():
    """The stand-in, past backend's import probe (one explicit sync per process, before any work)."""
    with device_standin.installed() as module:
        get_xp("gpu")
        device_standin.LAUNCHES.clear()
        EVENTS.clear()
        yield module


@pytest.fixture
def steps(monkeypatch):
    """The events (syncs, copies) of every Trainer.train_step, one list per step."""
    record = []
    train_step = Trainer.train_step

    def watched(self, it):
        start = len(EVENTS)
        result = train_step(self, it)
        record.append(EVENTS[start:])
        return result

    monkeypatch.setattr(Trainer, "train_step", watched)
    return record


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny model trained on the CPU, and the same run's options, shared by the tests below."""
    root = tmp_path_factory.mktemp("strict")
    corpus = root / "pigs.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    common = [*TINY, "--data", corpus, "--gradient_accumulation_steps", 2, "--dropout", 0.1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIGPT_DATA_DIR", str(root / "data"))
        mp.setattr(RowRNG, "COUNTER_BASED", ("cpu", "gpu"))  # the GPU's dropout streams, by their NumPy twin
        assert run_main(*common, "--max_iters", 4, "--out_dir", root / "cpu") == 0
    return root, common


def test_training_on_the_gpu_path_never_syncs_in_a_step_and_matches_the_cpu(runs, cupy, steps, monkeypatch):
    """Scratch, then a resume, with accumulation 2 and dropout 0.1: losses of the CPU run, no sync in any step."""
    root, common = runs
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(root / "data"))
    out = root / "gpu"
    assert run_main(*common, "--device", "gpu", "--max_iters", 2, "--out_dir", out) == 0
    assert run_main("--init_from", "resume", "--device", "gpu", "--max_iters", 4, "--out_dir", out) == 0

    assert len(steps) == 4
    for it, events in enumerate(steps):
        assert not [e for e in events if e[0] in ("sync", "d2h")], f"iteration {it} waited for the device: {events}"
        assert "h2d" in kinds(events)  # the batch went up, explicitly
    assert device_standin.LAUNCHES["kernel adamw_flat_step"] == 4  # the GPU path ran: one fused update per step
    assert device_standin.LAUNCHES["sync"] > 0  # the loop did read the losses, outside the steps

    cpu, gpu = read_log(root / "cpu"), read_log(out)
    assert sorted(train_losses(gpu)) == [0, 1, 2, 3]
    for name in ("train_loss", "grad_norm", "val_loss"):
        ours = [r[name] for r in gpu if name in r]
        assert ours and all(math.isfinite(x) for x in ours), name
        np.testing.assert_allclose(ours, [r[name] for r in cpu if name in r], rtol=2e-5, err_msg=name)


def test_generate_script_copies_back_only_the_ids_of_each_token(runs, cupy, capsys):
    root, _ = runs
    args = ["--checkpoint", root / "cpu", "--prompt", "7 little", "--max-new-tokens", 12, "--seed", 3, "--top-k", 5]
    main = script("generate.py")["main"]
    main([str(a) for a in [*args, "--device", "cpu"]])
    on_cpu = capsys.readouterr().out
    EVENTS.clear()
    main([str(a) for a in [*args, "--device", "gpu"]])
    on_gpu = capsys.readouterr().out

    copies = [n for kind, n in EVENTS if kind == "d2h"]
    assert 1 <= len(copies) <= 12 and all(n <= 1 * 8 for n in copies)  # B = 1: one int64 id per token
    assert kinds(EVENTS).count("sync") == len(copies)  # each sync is one of those reads
    assert on_gpu == on_cpu and on_gpu.startswith("7 little")


@pytest.mark.parametrize("switches", [{}, dict(norm="rmsnorm", activation="swiglu", position="rotary",
                                                tie_embeddings=False, n_kv_head=1)], ids=["gpt2", "modern"])
def test_generation_past_the_context_copies_b_ids_per_token(cupy, switches):
    """B = 2 sequences, 12 tokens past a context of 8 (the KV cache slides), sampled with top-k and top-p."""
    config = GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=8, vocab_size=19), **switches})
    cpu = GPT(config, seed=0)
    gpu = GPT(config, device="gpu", seed=0)
    for name, value in cpu.params.items():
        gpu.params[name][...] = cupy.asarray(value)
    prompt, sampling = np.array([[1, 2, 3], [4, 5, 6]]), dict(temperature=0.9, top_k=4, top_p=0.8, seed=1)
    EVENTS.clear()
    out = gpu.generate(prompt, 12, **sampling)
    assert [e for e in EVENTS if e[0] != "h2d"] == [("sync", "ndarray.get"), ("d2h", 2 * 8)] * 12
    np.testing.assert_array_equal(to_host(out), cpu.generate(prompt, 12, **sampling))


def test_evaluate_script_reads_back_only_the_loss_of_each_batch(runs, cupy, capsys):
    root, _ = runs
    data = root / "pigs.txt"
    main = script("evaluate.py")["main"]
    main(["--checkpoint", str(root / "cpu"), "--data", str(data), "--device", "cpu", "--batch-size", "8"])
    on_cpu = capsys.readouterr().out.splitlines()[-1]
    EVENTS.clear()
    main(["--checkpoint", str(root / "cpu"), "--data", str(data), "--device", "gpu", "--batch-size", "8"])
    on_gpu = capsys.readouterr().out.splitlines()[-1]

    copies = [n for kind, n in EVENTS if kind == "d2h"]
    assert copies and all(n <= 8 for n in copies)  # one float per batch
    cpu_loss, gpu_loss = (float(line.split()[1]) for line in (on_cpu, on_gpu))
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4) and math.isfinite(gpu_loss)


def test_bench_gpu_runs_tiny_with_no_sync_inside_its_timed_steps(cupy, capsys):
    script("bench/bench_gpu.py")["main"](["--tiny", "--no-torch", "--batch-size", "2", "--seq-len", "16",
                                          "--warmup", "1", "--steps", "2", "--gen-prompt", "4", "--gen-tokens", "3"])
    report = capsys.readouterr().out
    assert "minigpt (CuPy)" in report and "training tokens/s" in report

    syncs = [what for kind, what in EVENTS if kind == "sync"]
    brackets = [i for i, what in enumerate(syncs) if what == "Device.synchronize"]
    assert len(brackets) == 6  # the matmul, the training steps, generation: each timed between two
    _, _, train_start, train_end, gen_start, gen_end = brackets
    assert train_end == train_start + 1  # the two timed training steps: not one sync between
    assert gen_end - gen_start - 1 == 3  # generation: one read of the ids per token


def test_the_stand_in_refuses_implicit_host_device_mixing(cupy):
    """What CuPy refuses, or would do only with a hidden copy and sync, the stand-in refuses."""
    x = cupy.asarray(np.arange(6, dtype=np.float32))
    host = np.ones(6, dtype=np.float32)
    implicit_reads = [lambda: np.asarray(x), lambda: float(x[0]), lambda: int(x[0]), lambda: bool(x[0] > 0),
                      lambda: x[0].item(), lambda: x.tolist(), lambda: f"{x[0]:.3f}"]
    host_operands = [lambda: x + host, lambda: host * x, lambda: cupy.exp(host), lambda: cupy.where(x > 0, host, 0),
                     lambda: cupy.concatenate([x, host]), lambda: x.__setitem__(slice(None), host),
                     lambda: x[np.array([0, 1])], lambda: x.reshape(2, 3) @ host.reshape(3, 2)]
    for attempt in implicit_reads + host_operands:
        with pytest.raises(TypeError):
            attempt()
    assert device_standin.LAUNCHES["sync"] == 0

    y = (x * 2 + 1.5).sum()  # scalars are fine; the result stays on the device
    assert isinstance(y, ndarray) and y.shape == ()
    assert float(y.get()) == 39.0 and cupy.asnumpy(x[1:3]).tolist() == [1.0, 2.0]
    assert kinds(EVENTS) == ["h2d", "sync", "d2h", "sync", "d2h"] and EVENTS[-1] == ("d2h", 8)


@pytest.mark.parametrize("switches", [{}, dict(norm="rmsnorm", activation="swiglu", position="rotary",
                                                tie_embeddings=False, n_kv_head=1)], ids=["gpt2", "modern"])
def test_steered_ragged_and_speculative_generation_copy_back_only_ids(cupy, switches):
    """Penalties, n-gram bans and min-p run on the device (B ids back per token), for a ragged batch past the
    context too; speculative rounds copy back at most their k + 1 ids. All draw the CPU's tokens."""
    config = GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=8, vocab_size=19), **switches})
    cpu = GPT(config, seed=0)
    gpu = GPT(config, device="gpu", seed=0)
    for name, value in cpu.params.items():
        gpu.params[name][...] = cupy.asarray(value)
    controls = dict(temperature=0.9, top_k=6, min_p=0.05, repetition_penalty=1.3, frequency_penalty=0.2,
                    presence_penalty=0.1, no_repeat_ngram_size=2, seed=1)
    for prompt in (np.array([[1, 2, 3]]), [np.array([1, 2, 3]), np.array([4])]):
        B = len(prompt)
        EVENTS.clear()
        out = gpu.generate(prompt, 12, **controls)
        assert [e for e in EVENTS if e[0] != "h2d"] == [("sync", "ndarray.get"), ("d2h", B * 8)] * 12
        np.testing.assert_array_equal(to_host(out), cpu.generate(prompt, 12, **controls))

    prompt, k = np.array([[1, 2, 3, 1, 2, 3, 1, 2]]), 3
    for sampling in (dict(temperature=0), dict(temperature=0.9, seed=2)):
        EVENTS.clear()
        out = gpu.generate(prompt, 12, prompt_lookup=k, **sampling)
        copies = [n for kind, n in EVENTS if kind == "d2h"]
        assert 1 <= len(copies) <= 12 and all(n <= (k + 1) * 8 for n in copies)
        assert kinds(EVENTS).count("sync") == len(copies)
        if sampling["temperature"] == 0:
            np.testing.assert_array_equal(to_host(out), cpu.generate(prompt, 12, temperature=0))
