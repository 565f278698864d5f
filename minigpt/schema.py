"""Schemas for the JSON state minigpt reads back: every field's type and range, checked before use.

A state file (trainer_state.json, config.json, the optimizer's metadata, a
log.jsonl record, a data folder's meta.json) is read by code that trusts its
types: `"iter": "abc"` would be a traceback deep in the trainer, `"iter": -5`
a negative learning rate, `"bias": "no"` a true value. `check(data, SCHEMA,
source)` refuses such a file in one line naming the file, the field, what it
must be and what it holds:

    out/latest/trainer_state.json: "iter" must be an integer >= 0, got -5

A schema is an `Obj` of fields, each a `Spec`: `Int`, `Num`, `Bool`, `Str`,
`IntText` (an integer written as a string, as safetensors metadata holds them),
`Obj`, and `Optional(spec)` for a field that may be null. Fields a
schema does not name are left alone (Hugging Face's config.json has dozens).
"""

import math

from minigpt.errors import MinigptError


class SchemaError(MinigptError):
    """A state file that does not match its schema."""


class Spec:
    """A value's type and range: `describe` says it in words, `test` says whether a value fits."""

    describe = "a value"

    def test(self, value) -> bool:
        return True

    def check(self, value, where: str):
        """`value` itself, or a SchemaError naming `where` (a field's path)."""
        if not self.test(value):
            raise SchemaError(f"{_field(where)} must be {self.describe}, got {_shown(value)}")
        return value


def _range_words(lo, hi, hi_open) -> str:
    words = []
    if lo is not None:
        words.append(f">= {lo}")
    if hi is not None:
        words.append(f"{'<' if hi_open else '<='} {hi}")
    return " and ".join(words)


class Int(Spec):
    """An integer (not a bool: JSON's true is not 1), optionally within [lo, hi]."""

    def __init__(self, lo=None, hi=None):
        self.lo, self.hi = lo, hi
        self.describe = " ".join(filter(None, ("an integer", _range_words(lo, hi, False))))

    def test(self, value) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)
                and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi))


class IntText(Int):
    """An integer written as decimal digits in a string ("12"), within [lo, hi]; `check` returns the int."""

    def __init__(self, lo=None, hi=None):
        super().__init__(lo, hi)
        self.describe = self.describe.replace("an integer", "an integer written as a string")

    def test(self, value) -> bool:
        return isinstance(value, str) and _is_int_text(value) and super().test(int(value))

    def check(self, value, where: str):
        return int(super().check(value, where))


def _is_int_text(text: str) -> bool:
    body = text[1:] if text[:1] == "-" else text
    return body.isascii() and body.isdigit()


class Num(Spec):
    """A finite number (an int is a fine number; a bool is not), optionally in [lo, hi] or [lo, hi)."""

    def __init__(self, lo=None, hi=None, hi_open=False):
        self.lo, self.hi, self.hi_open = lo, hi, hi_open
        self.describe = " ".join(filter(None, ("a finite number", _range_words(lo, hi, hi_open))))

    def test(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.lo is not None and value < self.lo:
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)


class Bool(Spec):
    describe = "true or false"

    def test(self, value) -> bool:
        return isinstance(value, bool)


class Str(Spec):
    describe = "a string"

    def test(self, value) -> bool:
        return isinstance(value, str)


class Optional(Spec):
    """`spec`, or null (None)."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.describe = f"{spec.describe}, or null"

    def check(self, value, where: str):
        return None if value is None else self.spec.check(value, where)

    def test(self, value) -> bool:
        return value is None or self.spec.test(value)


class Obj(Spec):
    """A JSON object whose named fields match their specs; `required` fields must be present."""

    def __init__(self, fields: dict | None = None, required=()):
        self.fields, self.required = fields or {}, tuple(required)
        self.describe = "an object ({...})"

    def test(self, value) -> bool:
        try:
            self.check(value, "")
        except SchemaError:
            return False
        return True

    def check(self, value, where: str):
        if not isinstance(value, dict):
            raise SchemaError(f"{_field(where)} must be {self.describe}, got {_shown(value)}")
        for name in self.required:
            if name not in value:
                raise SchemaError(f"{_field(where)} has no \"{name}\"")
        for name, spec in self.fields.items():
            if name in value:
                spec.check(value[name], f"{where}.{name}" if where else name)
        return value


def check(data, schema: Obj, source, advice: str = "") -> dict:
    """`data` if it matches `schema`; else a one-line SchemaError naming `source`, then `advice`."""
    try:
        return schema.check(data, "")
    except SchemaError as err:
        raise SchemaError(f"{source}: {err}" + (f"; {advice}" if advice else "")) from None


def _field(where: str) -> str:
    """How a message names a field: "iter", "last_eval.iter", or the whole file."""
    return f'"{where}"' if where else "the file"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------
# The schemas of minigpt's own state files (config.json's is in minigpt.weights, the options' in minigpt.config)

LOSS = Num()
LOG_RECORD = Obj({  # one line of log.jsonl (minigpt.runlog)
    "iter": Int(0), "lr": Num(0), "train_loss": LOSS, "grad_norm": Num(0), "val_loss": LOSS,
    "train_loss_eval": LOSS, "tokens_per_sec": Num(0), "elapsed_s": Num(0),
}, required=("iter",))

TRAINER_STATE = Obj({  # trainer_state.json (minigpt.checkpoint); "options" is checked by minigpt.config
    "iter": Int(0),
    "best_val_loss": Optional(LOSS),
    "last_eval_iter": Optional(Int(0)),
    "last_eval": Optional(Obj({"iter": Int(0), "val_loss": LOSS, "train_loss_eval": LOSS},
                              required=("iter", "val_loss", "train_loss_eval"))),
    "elapsed_s": Num(0),
    "batch_rng": Optional(Obj({"bit_generator": Str(), "state": Obj()}, required=("bit_generator", "state"))),
    "data": Str(),
    "options": Obj(),
}, required=("iter",))

OPTIMIZER_METADATA = Obj({"step": IntText(0)}, required=("step",))  # optimizer.safetensors' __metadata__
