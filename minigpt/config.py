"""The options of a training run: defaults, a TOML file, the command line, checked before any work.

Names follow nanoGPT (`--max_iters`, `--learning_rate`, ...). Each option is
accepted as `--key value` or `--key=value`, with underscores or hyphens
(`--max-iters`). Values are merged in this order, later ones winning:

    defaults  <  the resumed run's options (--init_from resume)  <  --config file.toml  <  command line

Every impossible value is a one-line MinigptError raised here, before any data
is prepared or any model built.
"""

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from minigpt import schema
from minigpt.backend import DEVICES, DTYPES
from minigpt.batch_sampling import SAMPLINGS
from minigpt.cli import ArgumentParser, add_option
from minigpt.data import DATASETS, parse_tokenizer_spec
from minigpt.errors import MinigptError
from minigpt.hub import GPT2_NAMES as PRETRAINED  # the GPT-2 names --init_from takes
from minigpt.model_config import GPTConfig, check_shape
from minigpt.nn.lora import parse_targets as parse_lora_targets
from minigpt.tasks import parse_eval_tasks

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI (a dependency there)
    import tomli as tomllib


# The model's options are GPTConfig's fields (minigpt.model_config), but vocab_size, which the tokenizer
# decides; they are ignored when starting from a checkpoint, whose config wins. The defaults: GPT-2's
# switches, and a model small enough to train on a CPU in minutes.
MODEL_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.name != "vocab_size")
CPU_SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
ModelOptions = dataclasses.make_dataclass("ModelOptions", [
    (f.name, f.type, dataclasses.field(default=CPU_SHAPE.get(f.name, f.default), metadata=f.metadata))
    for f in fields(GPTConfig) if f.name in MODEL_FIELDS
], namespace={"MODEL_FIELDS": MODEL_FIELDS})


@dataclass
class TrainConfig(ModelOptions):
    """Every option of scripts/train.py: the model's (ModelOptions, from GPTConfig), then the run's.
    The defaults train nanoGPT's CPU recipe on the pydoc text."""

    # data
    dataset: str = "pydoc"
    data: str | None = None
    tokenizer: str = "char"
    sampling: str = "random"  # random windows (nanoGPT), or shuffle: every window once per epoch (minigpt.batch_sampling)
    # optimisation
    batch_size: int = 12
    gradient_accumulation_steps: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: decay until max_iters
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 turns clipping off
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    sample_tokens: int = 200  # length of the sample printed after each evaluation; 0 turns it off
    out_dir: str = "out"
    always_save_checkpoint: bool = True  # false: write checkpoints only when the val loss improves (nanoGPT's option)
    init_from: str = "scratch"
    overwrite: bool = False  # a new run may replace the checkpoints and log already in out_dir
    eval_tasks: str | None = None  # hellaswag=PATH,lambada=PATH: zero-shot scores at every evaluation
    log_layers: bool = False  # every layer's gradient norm and update/weight ratio in each log record
    skip_spikes: float = 0.0  # skip an update whose loss or grad norm is this many sd above its window (0: off)
    # system
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 1337
    workers: int = 0  # CPU threads per process that share each step (minigpt.parallel); 0: one per core
    zero: bool = True  # with several ranks (mpiexec -n N), each keeps AdamW's moments for its 1/N shard (ZeRO-1)
    recompute: bool = False  # keep only each block's input; run the block again in the backward (minigpt.recompute)
    # LoRA fine-tuning (minigpt.lora): 0 trains every weight
    lora_rank: int = 0
    lora_alpha: float = 8.0  # PEFT's default; the update is scaled by alpha / rank
    lora_dropout: float = 0.0
    lora_targets: str = "c_attn,attn.c_proj"
    merge_lora: bool = True  # a LoRA run writes out_dir/merged/ (a plain GPT-2 checkpoint) when it ends

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    @property
    def tokens_per_iter(self) -> int:
        return self.gradient_accumulation_steps * self.batch_size * self.block_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig these options describe, for a tokenizer of vocab_size tokens."""
        return GPTConfig(vocab_size=vocab_size, **{name: getattr(self, name) for name in MODEL_FIELDS})


_FIELDS = {f.name: f for f in fields(TrainConfig)}
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")  # the adapters' shape: a resume keeps them


# ---------------------------------------------------------------------------
# Converting and checking values


def _base_type(annotation) -> type:
    """int for `int`, and also for `int | None`."""
    return next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)


_FIELD_KINDS = {f.name: _base_type(f.type) for f in fields(TrainConfig)}
_OPTIONAL = {f.name for f in fields(TrainConfig) if type(None) in typing.get_args(f.type)}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def _from_text(name: str, text: str):
    """Convert a command-line string to the field's type."""
    kind = _FIELD_KINDS[name]
    if name in _OPTIONAL and text.strip().lower() == "none":
        return None
    try:
        if kind is bool:
            return _parse_bool(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise MinigptError(f"--{name} expects {_describe(name)}, got {text!r}") from None


def _from_toml(name: str, value, source: str):
    """Check a TOML value's type (an int is a fine float; a bool is not an int)."""
    kind = _FIELD_KINDS[name]
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    )
    if not ok:
        raise MinigptError(f"{source}: {name} expects {_describe(name)}, got {value!r}")
    return float(value) if kind is float else value


def _describe(name: str) -> str:
    kind = _FIELD_KINDS[name]
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise a one-line MinigptError for the first impossible value."""
    check_shape({name: getattr(cfg, name) for name in MODEL_FIELDS}, option=lambda name: f"--{name}")
    positive = ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise MinigptError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("max_iters", "warmup_iters", "lr_decay_iters", "sample_tokens", "workers", "seed"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise MinigptError(f"--{name} must be 0 or more, got {value}")
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise MinigptError(f"--{name} must be a finite number >= 0, got {value}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise MinigptError(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.lora_rank < 0:
        raise MinigptError(f"--lora_rank must be 0 (off) or more, got {cfg.lora_rank}")
    if not 0 <= cfg.lora_dropout < 1:
        raise MinigptError(f"--lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    if not (math.isfinite(cfg.lora_alpha) and cfg.lora_alpha > 0):
        raise MinigptError(f"--lora_alpha must be a finite number > 0, got {cfg.lora_alpha}")
    if cfg.lora_rank and cfg.init_from == "scratch":
        raise MinigptError("--lora_rank adapts a trained model: give --init_from a checkpoint directory or a GPT-2 name")
    parse_lora_targets(cfg.lora_targets)
    if cfg.device not in DEVICES:
        raise MinigptError(f"--device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    if cfg.dtype not in DTYPES:
        raise MinigptError(f"--dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.data is None and cfg.dataset not in DATASETS:
        raise MinigptError(f"unknown --dataset {cfg.dataset!r}: use one of {', '.join(DATASETS)}, or --data PATH")
    parse_tokenizer_spec(cfg.tokenizer)
    if cfg.sampling not in SAMPLINGS:
        raise MinigptError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got {cfg.sampling!r}")
    parse_eval_tasks(cfg.eval_tasks)
    if not (math.isfinite(cfg.skip_spikes) and cfg.skip_spikes >= 0):
        raise MinigptError(f"--skip_spikes must be 0 (off) or a positive number of standard deviations, got {cfg.skip_spikes}")
    if cfg.init_from not in ("scratch", "resume", *PRETRAINED):
        path = Path(cfg.init_from).expanduser()
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise MinigptError(
                f"--init_from {cfg.init_from}: {path} {what}; give scratch, resume, one of {', '.join(PRETRAINED)} "
                f"or a checkpoint directory"
            )
    return cfg


# ---------------------------------------------------------------------------
# The command line


# One line per option for --help, which adds each default; the model's come with GPTConfig's fields.
HELP = {
    **{name: _FIELDS[name].metadata["help"] for name in MODEL_FIELDS},
    "dataset": f"a built-in corpus: {', '.join(DATASETS)} (shakespeare is downloaded once)",
    "data": "a UTF-8 text file or a folder of them, used instead of --dataset; or a shard folder / glob (prepare_data.py)",
    "tokenizer": "char, gpt2, or bpe:N (a BPE of N tokens trained on the text)",
    "sampling": "random: B random windows per micro-batch (nanoGPT); shuffle: each epoch every non-overlapping window once",
    "eval_tasks": "TASK=PATH[,TASK=PATH] (hellaswag, lambada): score them zero-shot at every evaluation",
    "log_layers": "log every layer's gradient norm and update/weight ratio (and plot them in loss.png)",
    "skip_spikes": "Z: skip an update whose loss or grad norm is Z sd above its last 128 values (llm.c's -sl/-sg; 0: off)",
    "batch_size": "sequences per micro-batch",
    "gradient_accumulation_steps": "micro-batches per optimizer step",
    "max_iters": "optimizer steps in the whole run",
    "learning_rate": "peak learning rate, reached after the warmup",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_iters": "steps of linear warmup from 0",
    "lr_decay_iters": "steps until the learning rate reaches min_lr (None: max_iters)",
    "decay_lr": "warmup then cosine decay; false keeps learning_rate throughout",
    "weight_decay": "AdamW's decoupled weight decay, on the matrices only",
    "beta1": "AdamW's first-moment decay",
    "beta2": "AdamW's second-moment decay",
    "grad_clip": "clip the gradient's global norm to this; 0 turns clipping off",
    "eval_interval": "steps between evaluations, samples and checkpoints",
    "eval_iters": "batches per split in each loss estimate",
    "log_interval": "steps between records in log.jsonl",
    "sample_tokens": "length of the sample printed after each evaluation; 0 turns it off",
    "out_dir": "where the checkpoints (latest/, best/), log.jsonl and loss.png go",
    "always_save_checkpoint": "write latest/ at every evaluation; false: only when the val loss improves (nanoGPT's option)",
    "overwrite": "let a new run replace the checkpoints and log already in out_dir (bare --overwrite: true)",
    "init_from": f"scratch, resume (from out_dir/latest), {', '.join(PRETRAINED)}, or a checkpoint directory",
    "device": f"{' or '.join(DEVICES)}",
    "dtype": f"{' or '.join(DTYPES)}",
    "seed": "seeds the weights, the batches and the dropout",
    "zero": "ZeRO-1 under mpiexec -n N: each rank keeps AdamW's moments for its 1/N shard (no effect on one rank)",
    "workers": "CPU threads that share each batch; 0: one per core",
    "lora_rank": "LoRA: train rank-r adapters on the frozen weights of --init_from (0: train every weight)",
    "lora_alpha": "LoRA: the adapters' update is scaled by lora_alpha / lora_rank (PEFT's default 8)",
    "lora_dropout": "LoRA: dropout on the adapters' input, in [0, 1)",
    "lora_targets": "LoRA: the layers adapted, comma-separated: c_attn, attn.c_proj, c_fc, mlp.c_proj",
    "merge_lora": "LoRA: at the end of the run write out_dir/merged/, the adapters merged into a plain GPT-2 "
                  "checkpoint (a resume already at --max_iters only merges)",
    "recompute": "keep only each block's input and run the block again in the backward: "
                 "the same gradients, bit for bit, in far less memory, for about a third more compute",
}


def build_parser() -> argparse.ArgumentParser:
    """train.py's parser: every TrainConfig field as `--name VALUE`; only the options given reach the namespace."""
    parser = ArgumentParser(
        prog="train.py",
        description="Train a GPT on a text corpus (nanoGPT's options). Each option also takes its "
                    "hyphenated spelling (--max-iters) and --key=value.",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,  # only options actually given appear in the namespace
    )
    add_option(parser, "--config", metavar="FILE.toml", help="read options from a TOML file (the command line wins)")
    defaults = TrainConfig().to_dict()
    for name in _FIELDS:  # a field without a line in HELP still parses; tests/test_train.py asks for the line
        text = f"{HELP.get(name, '')} (default: {defaults[name]})".strip().replace("%", "%%")
        bare = {"nargs": "?", "const": "true"} if _FIELD_KINDS[name] is bool else {}  # `--overwrite` = `--overwrite true`
        add_option(parser, f"--{name}", dest=name, metavar=_FIELD_KINDS[name].__name__.upper(), help=text, **bare)
    return parser


def read_toml(path) -> dict:
    """The options in a TOML file, checked against the known names and types."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise MinigptError(f"--config {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise MinigptError(f"--config {path} is not valid TOML ({err})") from None
    options = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise MinigptError(f"{path}: unknown option {key!r} (see train.py --help)")
        options[name] = _from_toml(name, value, str(path))
    return options


def parse_args(argv=None) -> tuple[TrainConfig, dict]:
    """(config, explicit): the merged, checked options and those the user gave (file or command line).

    Resuming merges the saved run's options under the explicit ones: see `merge_resumed`.
    """
    namespace = vars(build_parser().parse_args(argv))
    config_file = namespace.pop("config", None)
    explicit = read_toml(config_file) if config_file else {}
    explicit.update({name: _from_text(name, text) for name, text in namespace.items()})
    cfg = validate(dataclasses.replace(TrainConfig(), **explicit))
    return cfg, explicit


# the options a checkpoint saves (trainer_state.json's "options"), each of its field's JSON type
_JSON_SPECS = {bool: schema.Bool(), int: schema.Int(), float: schema.Num(), str: schema.Str()}
OPTIONS_SCHEMA = schema.Obj({
    name: schema.Optional(_JSON_SPECS[kind]) if name in _OPTIONAL else _JSON_SPECS[kind]
    for name, kind in _FIELD_KINDS.items()
})


def merge_resumed(saved_options: dict, explicit: dict, source="the checkpoint's options") -> TrainConfig:
    """The resumed run's options, with the explicitly given ones on top (init_from stays resume).

    Changing the model's shape on resume makes no sense: an explicit value that
    differs from the checkpoint's is an error. The learning-rate schedule is the
    saved run's: lr_decay_iters left to default (None, "until max_iters") becomes
    the saved max_iters, so raising --max_iters continues the same decay and then
    holds min_lr, instead of restarting a longer cosine (give --lr_decay_iters to
    change it).
    """
    schema.check(saved_options, OPTIONS_SCHEMA, f"{source} (options)",
                 "the checkpoint is damaged; use another, or start a new run")
    base = {k: v for k, v in saved_options.items() if k in _FIELDS}
    if base.get("lr_decay_iters") is None and "max_iters" in base:
        base["lr_decay_iters"] = base["max_iters"]
    for name in (*MODEL_FIELDS, *LORA_FIELDS):
        if name in explicit and name in base and explicit[name] != base[name] and name != "dropout":
            raise MinigptError(
                f"--{name} {explicit[name]} differs from the checkpoint's {base[name]}; a resumed run keeps its model shape"
            )
    merged = {**base, **explicit, "init_from": "resume"}
    return validate(dataclasses.replace(TrainConfig(), **merged))
