"""minigpt: GPT-2 from scratch on NumPy and CuPy, every layer's backward written by hand.

The public API, as `from minigpt import GPT, GPTConfig, BPETokenizer, AdamW`:

    GPT, GPTConfig              the model (minigpt.model) and its config (minigpt.model_config)
    load_checkpoint             checkpoint, training out_dir or GPT-2 name -> (model, tokenizer, directory)
    BPETokenizer, CharTokenizer, load_tokenizer    the tokenizers (minigpt.tokenizer)
    AdamW                       the optimizer (minigpt.optim)
    MinigptError                every error a user can cause

Each name is imported on first use, so `import minigpt` costs nothing beyond
what the name asked for needs.
"""

import importlib

_WHERE = {  # public name -> the module that defines it
    "GPT": "minigpt.model",
    "GPTConfig": "minigpt.model_config",
    "load_checkpoint": "minigpt.loading",
    "BPETokenizer": "minigpt.tokenizer",
    "CharTokenizer": "minigpt.tokenizer",
    "load_tokenizer": "minigpt.tokenizer",
    "AdamW": "minigpt.optim",
    "MinigptError": "minigpt.errors",
}
__all__ = list(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # the next lookup finds it directly
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
