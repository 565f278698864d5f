"""The training loop behind scripts/train.py: nanoGPT's loop on the hand-written model and optimizer.

One iteration (gradient_accumulation_steps = A micro-batches of B x T tokens):

    for each micro-batch:  loss_a = model.forward(x_a, y_a);  g += model.backward() / A
    g = clip(g, grad_clip);  p = AdamW(p, g, lr(it))

Dividing by A makes g the gradient of the mean loss over all A*B*T tokens, the
same as one big batch. Every eval_interval iterations the train and val losses
are estimated on eval_iters batches each, a short sample is printed, and the
checkpoints `out_dir/latest` (and `out_dir/best`, when val loss improved) are
written. Each logged iteration appends one record to `out_dir/log.jsonl`
(minigpt.runlog): its step's batch loss, and at an evaluation also the two
estimates (`val_loss`, `train_loss_eval`), so an iteration never has two records.

Exact resume: everything that decides the next iterations is in the
checkpoint (weights, AdamW moments and step count, the batch sampler's RNG
state); dropout masks are seeded by (seed, iteration, micro-batch, row).
Evaluation and sampling draw from their own generators, seeded by (seed,
iteration), so they never shift the training randomness.

The loop stays device-agnostic: the trainer draws each step's tokens on the
host and hands them down (`DataParallel.forward_backward(X, Y, ...)`), and the
loss and the gradient norm are read back to the host only at log intervals.
Each step's global batch is split over the ranks (mpiexec -n N,
minigpt.distributed) and, on the CPU, over worker threads (--workers, see
minigpt.parallel); the gradients are the same up to float rounding. Rank 0
prints, logs and saves.
"""

import dataclasses
import errno
import math
import os
import signal
import sys
import tempfile
import warnings
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minigpt.backend import get_xp, scalar, to_host
from minigpt.batch_sampling import make_sampler
from minigpt.checkpoint import (STATE_FILE, is_checkpoint, load_optimizer_state, load_trainer_state, recover_checkpoint,
                                save_checkpoint)
from minigpt.config import TrainConfig, merge_resumed, parse_args
from minigpt.data import check_block_size, get_batch, load_corpus, prepare
from minigpt.distributed import communicator, launched_rank
from minigpt.errors import MinigptError
from minigpt.atomic import write_dir
from minigpt.health import SpikeDetector, layer_norms, update_ratios
from minigpt.host_memory import release_free_memory, tune_host_allocator
from minigpt.hub import GPT2_NAMES
from minigpt.loading import load_checkpoint
from minigpt.lock import OutDirLock
from minigpt.lora import add_adapters, merged
from minigpt.model import GPT
from minigpt.nn.lora import LoraConfig, parse_targets
from minigpt.optim import FlatAdamW, cosine_lr
from minigpt.memory_plan import Step, check_fits, config_of
from minigpt.parallel import DataParallel, default_workers
from minigpt.preparation import prepared_shards
from minigpt.runlog import LOG_FILE, PLOT_FILE, RunClock, RunLog, import_pyplot, plot_losses
from minigpt.shards import is_shard_source, open_shards
from minigpt.tasks import load_items, parse_eval_tasks, score_task, summary_fields


class TrainingDiverged(MinigptError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------
# Setting a run up


def resolve_config(argv=None) -> TrainConfig:
    """The run's options; with --init_from resume, the checkpoint's options under the given ones."""
    return resumed_config(*parse_args(argv))


def resumed_config(cfg: TrainConfig, explicit: dict) -> TrainConfig:
    """`cfg` itself, or with --init_from resume the checkpoint's options under the `explicit` ones."""
    if cfg.init_from != "resume":
        return cfg
    latest = Path(cfg.out_dir) / "latest"
    recover_checkpoint(latest)
    if not is_checkpoint(latest):
        raise MinigptError(
            f"--init_from resume found no checkpoint in {latest}; train without --init_from resume first, "
            "or point --out_dir at the run to continue"
        )
    return merge_resumed(load_trainer_state(latest).get("options", {}), explicit, source=latest / STATE_FILE)


class Trainer:
    """Holds a run's model, tokenizer, data, optimizer and RNGs; `run()` trains."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        self.comm = communicator(cfg.device)  # first: each rank selects its own GPU before anything touches one
        get_xp(cfg.device)  # fail now if --device gpu cannot work (the probe runs on this rank's GPU)
        tune_host_allocator()
        self.is_main = self.comm.rank == 0  # the rank that prints, logs, samples and writes checkpoints
        if self.is_main:
            check_out_dir(self.out_dir)  # before any data is prepared: a bad out_dir fails in a second, not after it
            if cfg.init_from != "resume" and not cfg.overwrite:
                refuse_to_overwrite(self.out_dir)
        self.start_iter = 0
        self.best_val_loss = None
        self.last_eval_iter = None
        self.log = RunLog(self.out_dir / LOG_FILE if self.is_main else None)  # opened by run()
        self.pyplot = None  # matplotlib, which run() imports on rank 0 to draw loss.png
        self.elapsed_before = 0.0  # wall time of the earlier runs this one resumes
        if cfg.init_from != "scratch":  # the memory plan, from config.json alone, before any weight is read
            self.check_memory(config_of(self.out_dir / "latest" if cfg.init_from == "resume" else cfg.init_from))
        with self.comm.local_first():  # one rank per machine prepares data/ and downloads; the others reuse it
            if cfg.init_from == "scratch":
                self._init_scratch()
            else:
                self._init_from_checkpoint()
        self.model.config.dropout = cfg.dropout  # a fine-tuning run picks its own dropout
        self.model.recompute = cfg.recompute  # changes memory and time, never a number: a resume may switch it
        if cfg.lora_rank:
            self._add_lora()
        check_block_size(self.data, cfg.block_size)
        # the training windows (--sampling), spike skipping, zero-shot tasks: see minigpt.batch_sampling, .health, .tasks
        self.sampler = make_sampler(cfg.sampling, self.data.train, cfg.batch_size, cfg.block_size, cfg.seed)
        self.spikes = SpikeDetector(cfg.skip_spikes) if cfg.skip_spikes else None
        self.tasks = [(task, load_items(task, path)) for task, path in parse_eval_tasks(cfg.eval_tasks)]
        self.skipped, self.layer_stats = None, None  # the last step's spike ("loss"/"grad_norm") and layer stats
        # each step's global batch is split over the ranks and, on the CPU, over worker threads in each
        self.parallel = DataParallel(self.model, cfg.workers or None, self.comm)
        self.optimizer = FlatAdamW(  # the parameters become views into its flat buffer (minigpt.optim)
            self.model.trainable, cfg.learning_rate, (cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
            comm=self.comm, zero=cfg.zero, threads=self.parallel.workers,
        )
        release_free_memory()  # the weights as loaded, now packed into the optimizer's buffer: not kept resident
        if cfg.log_layers and self.optimizer.sharded:
            raise MinigptError("--log_layers needs every rank's whole summed gradient: add --zero false")
        if cfg.init_from == "resume":
            self._restore_training_state(self.out_dir / "latest")

    def _init_scratch(self):
        cfg = self.cfg
        if is_shard_source(cfg.data):  # a folder of shards from scripts/prepare_data.py, or a glob of llm.c shards
            self.data = open_shards(cfg.data)
        else:  # the shards prepare_data.py made of this text ahead of time, else today's train.bin
            self.data = prepared_shards(cfg.dataset, cfg.data, cfg.tokenizer) or prepare(
                load_corpus(cfg.dataset, cfg.data), cfg.tokenizer)
        self.tokenizer = self.data.tokenizer
        model_config = cfg.model_config(self.data.meta["vocab_size"])
        self.check_memory(model_config)
        self.model = GPT(model_config, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed)

    def _init_from_checkpoint(self):
        """Weights and tokenizer from out_dir/latest (resume), or what --init_from names (see minigpt.loading)."""
        cfg = self.cfg
        source = self.out_dir / "latest" if cfg.init_from == "resume" else cfg.init_from
        self.model, self.tokenizer, self.source_dir = load_checkpoint(source, device=cfg.device, dtype=cfg.dtype)
        check_context(cfg, self.model.config)  # before the corpus is tokenized, which can take minutes
        if is_shard_source(cfg.data):
            self.data = open_shards(cfg.data)
            if self.data.meta["vocab_size"] > self.model.config.vocab_size:
                raise MinigptError(f"--data {cfg.data} has a {self.data.meta['vocab_size']}-token vocabulary, more than "
                                   f"the model's {self.model.config.vocab_size}: prepare it with the model's tokenizer")
            return
        corpus = load_corpus(cfg.dataset, cfg.data)
        # GPT-2's own tokenizer is what --tokenizer gpt2 builds: both share data/<corpus>_gpt2
        if cfg.init_from in GPT2_NAMES:
            self.data = prepared_shards(cfg.dataset, cfg.data, "gpt2") or prepare(corpus, "gpt2")
        else:
            self.data = prepare(corpus, tokenizer=self.tokenizer)

    def check_memory(self, config):
        """Stop in one line, before allocating, when the step's memory plan (minigpt.memory_plan) cannot fit."""
        cfg = self.cfg
        check_fits(config, Step(
            batch_size=cfg.batch_size, block_size=cfg.block_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            dtype=cfg.dtype, recompute=cfg.recompute, lora_rank=cfg.lora_rank, lora_targets=parse_targets(cfg.lora_targets),
            workers=1 if cfg.device != "cpu" else (cfg.workers or default_workers()), ranks=self.comm.world_size,
            zero=cfg.zero, dropout=cfg.dropout, lora_dropout=cfg.lora_dropout, device=cfg.device,
            scratch=cfg.init_from == "scratch"))

    def _add_lora(self):
        """LoRA: fresh adapters on the loaded model, whose weights freeze (a resumed run loaded its adapters)."""
        cfg, model = self.cfg, self.model
        config = LoraConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, parse_targets(cfg.lora_targets))
        if model.lora is None:
            # the base as the adapter checkpoint names it: a GPT-2 name, or the directory it was read from
            base = cfg.init_from if cfg.init_from in GPT2_NAMES else str(Path(self.source_dir).resolve())
            add_adapters(model, config, base=base, seed=cfg.seed)
        else:  # resumed (or started from an adapter checkpoint): its adapters' shape, this run's dropout
            model.lora = dataclasses.replace(model.lora, dropout=cfg.lora_dropout)

    def write_merged(self) -> None:
        """LoRA: out_dir/merged/, the adapters merged into a plain GPT-2 checkpoint (--merge_lora)."""
        if self.model.lora is None or not self.cfg.merge_lora or not self.is_main:
            return
        path = self.out_dir / "merged"
        with self.writing(path):
            write_dir(path, lambda tmp: (merged(self.model).save_pretrained(tmp), self.tokenizer.save(tmp)))
        print(f"merged the adapters into {path} (a plain GPT-2 checkpoint)")

    def _restore_training_state(self, path: Path):
        state = load_trainer_state(path)
        self.optimizer.load_state_dict(*load_optimizer_state(path))
        self.start_iter = int(state["iter"])
        self.best_val_loss = state.get("best_val_loss")
        self.last_eval_iter = state.get("last_eval_iter")
        self.log.resume(state.get("last_eval"), self.start_iter)  # an evaluation saved before its record was written
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        a_step = self.start_iter * self.cfg.gradient_accumulation_steps * self.cfg.batch_size  # (older checkpoints)
        self.sampler.load_state_dict(state.get("sampler") or {"rng": state.get("batch_rng"), "windows_drawn": a_step})
        if self.spikes is not None:
            self.spikes.load_state_dict(state.get("spikes") or {})

    # -- one iteration -----------------------------------------------------------

    def lr_at(self, it: int) -> float:
        cfg = self.cfg
        if not cfg.decay_lr:
            return cfg.learning_rate
        return cosine_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters)

    def draw_step(self, n: int):
        """The step's n micro-batches from the training sampler: inputs X and targets Y, (n, B, T) host arrays.

        Every rank draws the whole step alike (the sampler's state moves the
        same way everywhere); DataParallel then computes only this rank's slices.
        """
        X, Y = zip(*(self.sampler.batch() for _ in range(n)))
        return np.stack(X), np.stack(Y)

    def draw_batches(self, tokens, n: int, rng):
        """n batches of B windows of the split `tokens`: inputs X and targets Y, (n, B, T) host arrays."""
        cfg = self.cfg
        X, Y = zip(*(get_batch(tokens, cfg.batch_size, cfg.block_size, rng) for _ in range(n)))
        return np.stack(X), np.stack(Y)

    def train_step(self, it: int):
        """One optimizer step; returns (mean loss, gradient norm before clipping or None), on the device.

        The step's A micro-batches of B rows are drawn from batch_rng alike on
        every rank; each rank computes only its slices of them (minigpt.parallel),
        and the optimizer sums the gradients over the ranks. Dropout masks are
        seeded by (seed, it, micro-batch, row).
        """
        cfg = self.cfg
        self.model.train()
        X, Y = self.draw_step(cfg.gradient_accumulation_steps)  # (A, B, T), from the sampler (--sampling)
        # the gradients are summed layer by layer straight into the optimizer's flat buffer: no second copy
        with quiet_float_warnings():  # a NaN is reported once, as divergence, at the next loss read
            loss, grads = self.parallel.forward_backward(X, Y, dropout_key=(cfg.seed, it),
                                                         into=self.optimizer.grad_views)
        self.skipped, self.layer_stats = None, None
        health = cfg.log_layers and self.log.due(it, cfg.log_interval)
        before = {name: p.copy() for name, p in self.model.params.items()} if health else None

        def before_update(norm):  # the gradients are summed over the ranks, the weights not yet updated
            if health:
                self.layer_stats = {"layer_grad_norm": layer_norms(self.optimizer.grad_views)}
            if self.spikes is not None:
                self.skipped = self.spikes.check(scalar(loss), None if norm is None else scalar(norm))
            return self.skipped is not None

        # one collective sums the ranks' gradients (all-reduce, or reduce-scatter under ZeRO-1), then clip + AdamW
        with quiet_float_warnings():
            norm = self.optimizer.step(grads, lr=self.lr_at(it), grad_clip=cfg.grad_clip,
                                       before_update=before_update if health or self.spikes else None)
        if health:
            self.layer_stats["layer_update_ratio"] = update_ratios(before, self.model.params)
        return loss, norm

    def logs(self, it: int) -> bool:
        """Whether iteration `it` writes a record: the run log's rule, and at a skipped update."""
        return self.log.due(it, self.cfg.log_interval) or self.skipped is not None

    # -- evaluation ----------------------------------------------------------------

    def estimate_loss(self, it: int) -> dict:
        """Mean loss over eval_iters batches of each split, with the model in eval mode (no dropout).

        The batches are split over the ranks (and threads) like a training
        step's micro-batches; the loss is summed over the ranks.
        """
        cfg, model = self.cfg, self.model
        rng = np.random.default_rng([cfg.seed, it, 1])  # its own stream: training randomness is untouched
        model.eval()
        losses = {}
        for split, tokens in (("train", self.data.train), ("val", self.data.val)):
            with quiet_float_warnings():
                losses[split] = scalar(self.parallel.loss(*self.draw_batches(tokens, cfg.eval_iters, rng)))
        model.train()
        return losses

    def sample(self, it: int) -> str:
        """A short text sampled from the model (temperature 0.8, top-k 200, as nanoGPT's sample.py)."""
        tokenizer = self.tokenizer
        eot = tokenizer.eot_token
        prompt = [eot] if eot is not None else [int(self.data.val[0])]
        idx = np.array([prompt], dtype=np.int64)
        out = self.model.generate(idx, self.cfg.sample_tokens, temperature=0.8, top_k=200, seed=[self.cfg.seed, it, 2])
        ids = to_host(out)[0].tolist()
        return tokenizer.decode(ids[1:] if eot is not None else ids)

    # -- the loop ------------------------------------------------------------------

    def trainer_state(self, it: int, elapsed: float) -> dict:
        return {
            "iter": it,
            "best_val_loss": self.best_val_loss,
            "last_eval_iter": self.last_eval_iter,
            "last_eval": self.log.pending,  # None once logged; else the record's evaluation fields
            "elapsed_s": elapsed,
            "sampler": self.sampler.state_dict(),  # random: the batch generator's state; shuffle: epoch and cursor
            "spikes": self.spikes.state_dict() if self.spikes is not None else None,
            "data": str(self.data.dir),
            "options": self.cfg.to_dict(),
        }

    def save(self, name: str, it: int, elapsed: float) -> Path:
        """Rank 0 writes the checkpoint; the others take part in gathering the optimizer state (ZeRO-1)."""
        if not self.is_main:
            self.optimizer.state_dict()
            return self.out_dir / name
        with np.errstate(all="ignore"):  # a sum that overflows is not finite either: refused the same
            total = scalar(self.optimizer.flat_params.sum(dtype="float64"))
        if not math.isfinite(total):  # a checkpoint is only ever written with finite weights
            raise TrainingDiverged(self._diverged_message("the weights hold NaN or infinity", it))
        with self.writing(self.out_dir / name):
            return save_checkpoint(
                self.out_dir / name, self.model, self.tokenizer, self.optimizer, self.trainer_state(it, elapsed)
            )

    @contextmanager
    def writing(self, what: Path):
        """Turn an OSError while writing `what` (a full disk, a vanished directory) into one line."""
        try:
            yield
        except OSError as err:
            kept = [str(p) for p in (self.out_dir / "latest", self.out_dir / "best") if is_checkpoint(p)]
            keep = f"{' and '.join(kept)} keep their last complete version" if kept else "no checkpoint was written"
            # with no checkpoint the out_dir holds no run (refuse_to_overwrite lets the same command start again)
            after = f"continue with --init_from resume --out_dir {self.cfg.out_dir}" if kept else "run the same command again"
            raise MinigptError(
                f"could not write {what} ({err.strerror or err}); {keep}; {write_advice(err, self.out_dir)}, then {after}"
            ) from None

    def schedule_summary(self) -> str:
        """The learning-rate schedule from start_iter on, in words (printed when resuming)."""
        cfg = self.cfg
        if not cfg.decay_lr:
            return f"learning rate {cfg.learning_rate:g} throughout (--decay_lr false)"
        end = cfg.decay_iters
        now = f"learning rate {self.lr_at(self.start_iter):.3g} now"
        if self.start_iter < cfg.warmup_iters:  # cosine_lr warms up first, even past the decay's end
            now += f", warming up to --learning_rate {cfg.learning_rate:g} until iteration {cfg.warmup_iters} (--warmup_iters)"
            if cfg.warmup_iters >= end:
                return now + f", then --min_lr {cfg.min_lr:g} (--lr_decay_iters {end} ends before the warmup does)"
        text = (f"{now}, on a cosine from --learning_rate "
                f"{cfg.learning_rate:g} to --min_lr {cfg.min_lr:g} at iteration {end} (--lr_decay_iters)")
        if end < cfg.max_iters:
            text += (f", then --min_lr until {cfg.max_iters}; --lr_decay_iters {cfg.max_iters} would stretch "
                     "the decay over the whole run instead (the rate then rises again)")
        return text

    def run(self) -> int:
        """Train from start_iter to max_iters; returns the exit status (0, or 130 after Ctrl-C)."""
        cfg = self.cfg
        if not self.start():
            self.write_merged()
            return 0
        stop, clock = StopFlag(self.comm), RunClock(self.elapsed_before)
        bar = tqdm(total=cfg.max_iters, initial=self.start_iter, desc="training", unit="it", dynamic_ncols=True,
                   disable=not self.is_main)
        loss, it = None, self.start_iter
        with stop, closing(bar):  # an error closes the bar first, so its one line starts a line of its own
            while True:
                elapsed = clock.elapsed()
                if (it % cfg.eval_interval == 0 or it == cfg.max_iters) and it != self.last_eval_iter:
                    with clock.paused():  # evaluation time is not training throughput
                        self.evaluate_and_checkpoint(it, elapsed, bar)
                if it >= cfg.max_iters:
                    if self.log.pending is not None:  # the last evaluation has no training step after it
                        self.write_record({"iter": it, "lr": self.lr_at(it)}, {"elapsed_s": elapsed})
                    break
                if stop.requested:
                    return self.stop_at(it, loss, elapsed, bar)

                loss, grad_norm = self.train_step(it)
                clock.count(cfg.tokens_per_iter)
                bar.update(1)
                if self.logs(it):
                    self.log_step(it, loss, grad_norm, clock, bar)
                it += 1
        print(f"done: {cfg.max_iters} iterations; best val loss {self.best_val_loss:.4f} in {self.out_dir / 'best'}, "
              f"last checkpoint {self.out_dir / 'latest'}")
        self.write_merged()
        return 0

    def start(self) -> bool:
        """Open the run log and say what will run; False when a resumed run has nothing left to train."""
        cfg = self.cfg
        resuming = cfg.init_from == "resume"
        if resuming and self.start_iter >= cfg.max_iters:
            print(f"{self.out_dir / 'latest'} is already at iteration {self.start_iter} (--max_iters {cfg.max_iters}): "
                  f"nothing to train; to continue, raise it: --init_from resume --out_dir {cfg.out_dir} "
                  f"--max_iters N with N > {self.start_iter}")
            return False
        with self.writing(self.out_dir / LOG_FILE):
            self.log.open(keep_before=self.start_iter if resuming else 0)
        print(
            f"model: {self.model.num_params():,} parameters ({self.model.config.n_layer} layers), "
            f"data: {self.data.dir} ({self.data.train.size:,} train / {self.data.val.size:,} val tokens, "
            f"vocab {self.tokenizer.vocab_size}), {cfg.tokens_per_iter:,} tokens per iteration, device {cfg.device}"
            + (f" ({self.parallel.describe()})" if self.parallel.workers > 1 or self.comm.world_size > 1 else "")
        )
        if resuming:
            print(f"resuming {self.out_dir / 'latest'} at iteration {self.start_iter} of {cfg.max_iters}; "
                  + self.schedule_summary())
        self.pyplot = import_pyplot() if self.is_main else None  # rank 0 alone draws loss.png
        if self.pyplot is None and self.is_main:
            print(f"note: no {PLOT_FILE} (matplotlib is not installed; pip install -e '.[plot]' to draw it)")
        return True

    def log_step(self, it: int, loss, grad_norm, clock: "RunClock", bar) -> None:
        """The record of iteration `it`'s training step; reading the loss waits for the device."""
        train_loss = self._check_finite(loss, it)
        tokens_per_sec, elapsed = clock.throughput()  # after the loss read, so the device has finished
        lr = self.lr_at(it)
        record = {"iter": it, "lr": lr, "train_loss": train_loss}
        if grad_norm is not None:
            record["grad_norm"] = scalar(grad_norm)
        record["epoch"] = self.sampler.epochs
        if self.skipped is not None:
            record["skipped"] = self.skipped
            bar.write(f"iter {it}: update skipped (a {self.skipped} spike, --skip_spikes {self.cfg.skip_spikes:g})")
        record.update(self.layer_stats or {})
        self.write_record(record, {"tokens_per_sec": tokens_per_sec, "elapsed_s": elapsed})
        bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}")

    def stop_at(self, it: int, loss, elapsed: float, bar) -> int:
        """Ctrl-C: save latest at iteration `it` (before its step) and say how to continue; the exit status."""
        self._check_finite(loss, it)
        self.save("latest", it, elapsed)
        bar.close()
        print(f"interrupted: saved {self.out_dir / 'latest'} at iteration {it}; "
              f"continue with --init_from resume --out_dir {self.cfg.out_dir}")
        return 130

    def write_record(self, record: dict, timing: dict) -> None:
        """Append one iteration's record to the run log (see minigpt.runlog); redraw loss.png after an evaluation."""
        with self.writing(self.out_dir / LOG_FILE):
            evaluated = self.log.step(record, timing)
        if evaluated and self.pyplot is not None:
            with self.writing(self.out_dir / PLOT_FILE):
                plot_losses(self.pyplot, self.log.records, self.out_dir / PLOT_FILE)

    def evaluate_and_checkpoint(self, it: int, elapsed: float, bar) -> None:
        """Estimate both losses, print them and a sample, write the checkpoints.

        The estimates are logged with the record of iteration `it`, after its
        training step; until then they wait in the run log (`RunLog.pending`),
        which the checkpoint also holds, so a run killed in between still logs them on resume.
        """
        losses = self.estimate_loss(it)
        if not all(math.isfinite(v) for v in losses.values()):
            raise TrainingDiverged(self._diverged_message(f"the evaluation loss is {losses['val']}", it))
        self.last_eval_iter = it
        bar.write(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        scores = {}
        if self.tasks and self.is_main:  # zero-shot scores (rank 0 alone)
            for task, items in self.tasks:
                task_scores = summary_fields(task, score_task(task, self.model, self.tokenizer, items,
                                                              self.cfg.batch_size, progress=False))
                scores.update(task_scores)
                bar.write(f"iter {it}: {task} " + ", ".join(f"{k.split('_', 1)[1]} {v:.4f}" for k, v in task_scores.items()))
            self.model.train()
        self.log.evaluated(it, val_loss=losses["val"], train_loss_eval=losses["train"], **scores)
        if self.cfg.sample_tokens and self.is_main:
            bar.write("sample: " + self.sample(it).replace("\n", "\n        ")[:2000])
        improved = self.best_val_loss is None or losses["val"] < self.best_val_loss
        if improved:
            self.best_val_loss = losses["val"]
        if improved or self.cfg.always_save_checkpoint:  # nanoGPT's always_save_checkpoint=False: only improvements
            self.save("latest", it, elapsed)
        if improved:
            self.save("best", it, elapsed)

    def _check_finite(self, loss, it: int) -> float | None:
        """The loss as a float; a NaN or infinite one stops training, keeping the last good checkpoint."""
        if loss is None:
            return None
        value = scalar(loss)
        if not math.isfinite(value):
            raise TrainingDiverged(self._diverged_message(f"the training loss is {value}", it))
        return value

    def _diverged_message(self, what: str, it: int) -> str:
        kept = self.out_dir / "latest"
        # every checkpoint was written after a finite evaluation of the same weights (evaluate_and_checkpoint)
        # or checked finite before writing (save): it is a good one
        keep = f"the last good checkpoint is {kept}" if is_checkpoint(kept) else "no checkpoint was written"
        clip = self.cfg.grad_clip
        tries = "a lower --learning_rate" + (
            f" or --grad_clip 1.0 (now {'off' if clip == 0 else clip})" if clip == 0 or clip > 1.0 else "")
        return f"training diverged at iteration {it}: {what}; {keep}; try {tries}"



# ---------------------------------------------------------------------------
# Helpers: out_dir, Ctrl-C


@contextmanager
def quiet_float_warnings():
    """No NumPy RuntimeWarning (overflow, invalid value) printed over the progress bar while a step runs.

    A diverging step overflows in several layers; the trainer says once what
    diverged (TrainingDiverged). np.errstate covers this thread; the warnings
    filter, which is process-wide, covers the worker threads (minigpt.parallel),
    whose errstate is their own.
    """
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def check_context(cfg: TrainConfig, model_config) -> None:
    """A starting model's context (its block_size) bounds --block_size."""
    if cfg.block_size > model_config.block_size:
        raise MinigptError(f"--block_size {cfg.block_size} exceeds the model's context of {model_config.block_size} "
                           f"tokens; use --block_size {model_config.block_size} or less")


def check_out_dir(out_dir: Path) -> None:
    """Make out_dir and write a probe file in it: a path that cannot hold checkpoints fails before any work."""
    try:
        existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
        if not existing.is_dir():
            where = "is a file" if existing == out_dir else f"lies under {existing}, which is a file"
            raise MinigptError(f"--out_dir {out_dir} {where}; choose another --out_dir")
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise MinigptError(
            f"cannot write to --out_dir {out_dir} ({err.strerror or err}); choose a writable --out_dir"
        ) from None


def write_advice(err: OSError, out_dir: Path) -> str:
    """What to do about a failed write, by its cause: only a full disk is helped by freeing space."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {out_dir} writable"
    if err.errno == errno.ENOENT:
        return (f"something removed files in {out_dir} while the run went (another program or run writing "
                f"there?); keep {out_dir} to this run")
    return f"fix {out_dir}"


def refuse_to_overwrite(out_dir: Path) -> None:
    """A new run never replaces an earlier one's checkpoints unasked (as Hugging Face's Trainer).

    A log.jsonl without any checkpoint is what a run that failed before its first
    checkpoint leaves: nothing to resume, so a new run takes the out_dir (and starts a new log).
    """
    checkpoints = [name for name in ("latest", "best") if (out_dir / name).exists()]
    found = checkpoints + ([LOG_FILE] if checkpoints and (out_dir / LOG_FILE).exists() else [])
    if found:
        raise MinigptError(
            f"--out_dir {out_dir} already holds a run ({', '.join(found)}); continue it with --init_from resume, "
            "choose another --out_dir, or pass --overwrite to replace it"
        )


class StopFlag:
    """While active, the first Ctrl-C (or SIGTERM) asks the loop to stop after the current iteration.

    The loop then saves `latest` and exits cleanly; a second Ctrl-C interrupts at once.
    With several ranks, `requested` is a collective (every rank reads it once per
    iteration): all stop at the same iteration when any of them was signalled.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, comm=None):
        self.comm = comm
        self._signalled = False
        self._previous = {}

    @property
    def requested(self) -> bool:
        if self.comm is None or self.comm.world_size == 1:
            return self._signalled
        return bool(self.comm.sum_host([float(self._signalled)])[0])

    def _handle(self, signum, frame):
        self._signalled = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        tqdm.write("stopping after this iteration (Ctrl-C again to stop at once, without a checkpoint)")

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextmanager
def out_dir_lock(cfg: TrainConfig):
    """Rank 0 holds out_dir's lock (minigpt.lock) for the whole run, for all ranks: one run per out_dir.

    Taken before anything in out_dir is read, recovered or written. A resume
    whose out_dir does not exist takes none (it then stops: no checkpoint).
    """
    out_dir = Path(cfg.out_dir)
    if launched_rank() != 0 or (cfg.init_from == "resume" and not out_dir.is_dir()):
        yield
        return
    check_out_dir(out_dir)
    with OutDirLock(out_dir):
        yield


def main(argv=None) -> int:
    """scripts/train.py: parse the options, take out_dir's lock, set the run up, train. Returns the exit status."""
    try:
        cfg, explicit = parse_args(argv)
        with out_dir_lock(cfg):
            return Trainer(resumed_config(cfg, explicit)).run()
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C inside it: no new checkpoint
        print("\ninterrupted; no checkpoint was written by this interruption", file=sys.stderr)
        return 130
