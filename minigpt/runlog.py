"""A training run's log: out_dir/log.jsonl, one JSON record per logged iteration, and loss.png.

A record holds its iteration's training step (`iter`, `lr`, `train_loss`,
`grad_norm`), then, at an evaluation, the two loss estimates (`val_loss`,
`train_loss_eval`), then its timing (`tokens_per_sec`, `elapsed_s`). An
iteration never has two records: the evaluation made at iteration `it` (before
its training step) waits in `RunLog.pending` until that step's record is
written. The checkpoint keeps `pending` (its `last_eval`), so a run stopped in
between still logs the evaluation once it resumes.
"""

import json
import time
from contextlib import contextmanager
from pathlib import Path

from minigpt import schema
from minigpt.atomic import write_file, write_text
from minigpt.health import plot_layers

LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"
BAD_SUFFIX = ".bad"  # log.jsonl.bad: the lines a resumed run found unreadable, kept for a human to look at


class RunLog:
    """out_dir/log.jsonl: the records in order, each flushed as it is written.

    `open` starts the file: a resumed run first drops the records at or after
    the iteration it resumes from (a crashed run may have logged past its last
    checkpoint; the resumed run writes those records again, with the same
    values), so after any interruption the file holds exactly the records of
    one uninterrupted run; a fresh run starts an empty file.
    """

    def __init__(self, path: Path | None):
        self.path = path  # None: records kept in memory only (the ranks other than 0)
        self.records = []
        self.pending = None  # the evaluation at the current iteration, until its step's record is written

    def open(self, keep_before: int = 0) -> None:
        self.records = []
        if self.path is None:
            return
        if keep_before and self.path.is_file():
            bad = []
            for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
                try:  # a line cut short by a crash, or edited by hand, is not a record
                    record = schema.check(json.loads(line), schema.LOG_RECORD, f"line {number}")
                except (ValueError, schema.SchemaError) as err:
                    bad.append((number, line, str(err).splitlines()[0]))
                    continue
                if record["iter"] < keep_before:
                    self.records.append(record)
            self._keep_aside(bad)
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def _keep_aside(self, bad: list) -> None:
        """Append the lines that are not valid records to log.jsonl.bad, and say so once."""
        if not bad:
            return
        aside = self.path.with_name(self.path.name + BAD_SUFFIX)
        with open(aside, "a") as f:
            f.write("".join(line + "\n" for _, line, _ in bad))
        number, _, why = bad[0]
        print(f"note: {self.path}: {len(bad)} line(s) are not valid records (first: line {number}, {why}); "
              f"kept aside in {aside}")

    # -- the rule: an evaluation waits for its step's record --------------------------

    def evaluated(self, it: int, val_loss: float, train_loss_eval: float, **scores) -> None:
        """The evaluation made at iteration `it`; `scores`: the zero-shot tasks' fields (--eval_tasks)."""
        self.pending = {"iter": it, "val_loss": val_loss, "train_loss_eval": train_loss_eval, **scores}

    def resume(self, last_eval, it: int) -> None:
        """Take back a checkpoint's `last_eval`: saved at iteration `it` before its record was written."""
        if isinstance(last_eval, dict) and last_eval.get("iter") == it:
            self.pending = last_eval

    def due(self, it: int, log_interval: int) -> bool:
        """Whether iteration `it` gets a record: every log_interval, and whenever an evaluation waits."""
        return it % log_interval == 0 or self.pending is not None

    def step(self, record: dict, timing: dict) -> bool:
        """Write one iteration's record: its step, the evaluation waiting for it if any, then timing.

        Returns whether the record carried an evaluation (the moment to redraw loss.png).
        """
        evaluated = self.pending is not None
        if evaluated:
            record = {**record, **{k: v for k, v in self.pending.items() if k != "iter"}}
        self.write({**record, **timing})
        self.pending = None
        return evaluated

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class RunClock:
    """A record's timing fields: `elapsed_s`, wall time since the run began (earlier runs included), and
    `tokens_per_sec`, the training throughput since the previous record, evaluations excluded."""

    def __init__(self, elapsed_before: float = 0.0):
        self.elapsed_before = elapsed_before  # wall time of the earlier runs this one resumes
        self.start = self.window_start = time.perf_counter()
        self.window_tokens = 0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def count(self, tokens: int) -> None:
        self.window_tokens += tokens

    @contextmanager
    def paused(self):
        """Time spent inside the block does not count against the throughput."""
        paused = time.perf_counter()
        try:
            yield
        finally:
            self.window_start += time.perf_counter() - paused

    def throughput(self) -> tuple[float, float]:
        """(tokens_per_sec since the last call, elapsed_s now); starts the next window."""
        now = time.perf_counter()
        tokens_per_sec = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_start, self.window_tokens = now, 0
        return tokens_per_sec, self.elapsed_before + now - self.start


def import_pyplot():
    """matplotlib.pyplot on its file-only backend, or None when matplotlib is not installed (the `plot` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_losses(plt, records: list, path: Path) -> None:
    """The training batches' loss and the evaluations' val loss against iteration, as a PNG."""
    train = [(r["iter"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["iter"], r["val_loss"]) for r in records if "val_loss" in r]
    layers = any("layer_grad_norm" in r for r in records)  # --log_layers: two more panels (minigpt.health)
    fig, axes = plt.subplots(3 if layers else 1, 1, figsize=(7, 10 if layers else 4), squeeze=False)
    ax = axes[0, 0]
    if layers:
        plot_layers(axes[1, 0], axes[2, 0], records)
    for points, label in ((train, "train (batch)"), (val, "val")):
        if points:
            ax.plot(*zip(*points), label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    ax.grid(alpha=0.3)
    try:
        write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
