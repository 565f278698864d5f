"""Exact resume with dropout when the model's generator gives no state to save, as CuPy 14's does.

In CuPy 14 `BitGenerator.state` is a method, not a dict, so a checkpoint has
no state of the model's generator on the GPU to save, and a resumed run could
not restore it. Dropout masks must therefore not come from that generator's
history: the dist branch keys them by (seed, iteration, micro-batch, row)
(minigpt/parallel.py's RowRNG). This runs the GPU's code path on the CPU: the
model's generator is replaced by one whose `bit_generator.state` is a method.
"""

import numpy as np

import minigpt.model
import minigpt.parallel
from tests.test_train import TINY, read_log, run_main, train_losses



class StatelessBitGenerator:
    """CuPy 14's shape: `state` is a method, so getattr(bg, "state") is no dict."""

    def state(self):
        raise NotImplementedError


class CupyLikeGenerator:
    """A NumPy Generator whose bit generator, like CuPy 14's, gives no state to save or restore."""

    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)
        self.bit_generator = StatelessBitGenerator()

    def __getattr__(self, name):
        return getattr(self._rng, name)


def test_resume_with_dropout_is_exact_when_the_model_generator_has_no_state(tmp_path, monkeypatch):
    monkeypatch.setattr(minigpt.model, "make_rng", lambda device="cpu", seed=None: CupyLikeGenerator(seed))
    corpus = tmp_path / "pigs.txt"
    corpus.write_text("".join(f"{i} little pigs went to market on day {i % 7}.\n" for i in range(300)))
    common = [*TINY, "--data", corpus, "--dropout", 0.2, "--eval_interval", 3, "--lr_decay_iters", 8]
    run_main(*common, "--max_iters", 8, "--out_dir", tmp_path / "straight")
    run_main(*common, "--max_iters", 4, "--out_dir", tmp_path / "split")
    run_main("--init_from", "resume", "--max_iters", 8, "--out_dir", tmp_path / "split")
    straight, split = train_losses(read_log(tmp_path / "straight")), train_losses(read_log(tmp_path / "split"))
    assert sorted(split) == list(range(8))
    assert split == straight  # exact: the resumed masks are the uninterrupted run's
