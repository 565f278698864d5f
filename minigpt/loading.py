"""The one way from what a user names to a model and its tokenizer.

`load_checkpoint(source)` accepts, as `--checkpoint`, `--init_from` and
`GPT.from_pretrained` do:

    a checkpoint directory   config.json + model.safetensors (ours, or Hugging Face's GPT-2)
    a training out_dir       its best/, else (missing or damaged) its latest/
    a GPT-2 name             gpt2, gpt2-medium, gpt2-large, gpt2-xl: checkpoints/<name>/, downloaded once

The tokenizer is the one saved beside the weights. A directory without
tokenizer files holds GPT-2's vocabulary (50,257 tokens or more, as Hugging
Face's GPT-2 directories) and gets GPT-2's tokenizer; any other is an error
that names the missing files.
"""

import sys
from pathlib import Path

from minigpt.checksums import ChecksumMismatch, verify
from minigpt.errors import MinigptError
from minigpt.download import download_all
from minigpt.hub import GPT2_NAMES, GPT2_VOCAB_SIZE, MODEL_FILES, hub_files
from minigpt.model import GPT
from minigpt.paths import checkpoints_dir
from minigpt.tokenizer import BPETokenizer, has_tokenizer, load_tokenizer
from minigpt.tokenizer.bpe import gpt2_tokenizer_downloads
from minigpt.tokenizer.char import CHAR_FILE_NAME
from minigpt.weights import load_pretrained

RUN_SUBDIRS = ("best", "latest")  # a training out_dir's checkpoints, in the order they are preferred
WEIGHT_FILES = ("model.safetensors",)


def resolve_checkpoint(source, with_tokenizer=False) -> Path:
    """The checkpoint directory that `source` names (see the module's docstring), its weights verified.

    A GPT-2 name is downloaded into checkpoints/<name>/ if missing, with
    GPT-2's tokenizer files too when `with_tokenizer`. The weights of a
    checkpoint that recorded their checksum (minigpt.checksums) must match it;
    in a training out_dir, a damaged best/ falls back to latest/, with a note.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").exists():  # (not is_file: a config.json that is no file is reported by the loader)
            verify(path, WEIGHT_FILES)
            return path
        found = [path / sub for sub in RUN_SUBDIRS if (path / sub / "config.json").exists()]
        if not found:
            raise MinigptError(f"{path} holds no checkpoint: expected config.json + model.safetensors in it, "
                               f"or a training out_dir with {' or '.join(f'{sub}/' for sub in RUN_SUBDIRS)}")
        for candidate, fallback in zip(found, found[1:] + [None]):
            try:
                verify(candidate, WEIGHT_FILES)
                return candidate
            except ChecksumMismatch as err:
                if fallback is None:
                    raise
                print(f"note: {err}; using {fallback} instead", file=sys.stderr, flush=True)
    name = str(source)
    if name in GPT2_NAMES:
        directory = checkpoints_dir() / name
        download_all(hub_files(name, MODEL_FILES, directory) + (gpt2_tokenizer_downloads(name) if with_tokenizer else []))
        return directory
    if path.exists():
        raise MinigptError(f"{path} is a file: give the checkpoint directory that holds it")
    raise MinigptError(f"no checkpoint at {path}: it does not exist; give a checkpoint directory, a training out_dir, "
                       f"or one of {', '.join(GPT2_NAMES)}")


def load_model(source, dtype="float32", device="cpu", cls=GPT) -> GPT:
    """The model (in training mode) of the checkpoint that `source` names."""
    return load_pretrained(cls, resolve_checkpoint(source), dtype=dtype, device=device)


def checkpoint_tokenizer(directory: Path, vocab_size: int):
    """The tokenizer of the model in `directory`, whose vocabulary has `vocab_size` entries."""
    if has_tokenizer(directory):
        tokenizer = load_tokenizer(directory)
    elif vocab_size >= GPT2_VOCAB_SIZE:
        tokenizer = BPETokenizer.from_pretrained("gpt2")
    else:
        raise MinigptError(f"{directory} holds no tokenizer for its {vocab_size}-token model: expected "
                           f"{CHAR_FILE_NAME} (characters) or vocab.json + merges.txt (BPE) beside the weights")
    if tokenizer.vocab_size > vocab_size:
        raise MinigptError(f"the tokenizer in {directory} has {tokenizer.vocab_size} tokens but the model only "
                           f"{vocab_size}: the tokenizer files do not belong to these weights")
    return tokenizer


def load_checkpoint(source, device="cpu", dtype="float32"):
    """(model in eval mode, tokenizer, checkpoint directory) for `source` (see the module's docstring)."""
    directory = resolve_checkpoint(source, with_tokenizer=True)
    model = load_pretrained(GPT, directory, dtype=dtype, device=device).eval()
    return model, checkpoint_tokenizer(directory, model.config.vocab_size), directory
