"""Where the checkpoint a user names lives: a checkpoint directory, a training out_dir or a GPT-2 name.

    a checkpoint directory   config.json + model.safetensors (ours, or Hugging Face's GPT-2), or a LoRA
                             adapter: adapter_config.json + adapter_model.safetensors (minigpt.lora)
    a training out_dir       its best/, else (missing or damaged) its latest/
    a GPT-2 name             gpt2, gpt2-medium, gpt2-large, gpt2-xl: checkpoints/<name>/, downloaded once

`GPT.from_pretrained` reads the weights there (minigpt.weights), and
minigpt.loading.load_checkpoint the weights and the tokenizer. Nothing here
knows the model: this module sits below it.
"""

import sys
from pathlib import Path

from minigpt.checksums import ChecksumMismatch, verify
from minigpt.download import download_all
from minigpt.errors import MinigptError
from minigpt.hub import ADAPTER_FILES, GPT2_NAMES, MODEL_FILES, hub_files
from minigpt.paths import checkpoints_dir
from minigpt.tokenizer.bpe import gpt2_tokenizer_downloads

RUN_SUBDIRS = ("best", "latest")  # a training out_dir's checkpoints, in the order they are preferred
WEIGHT_FILES = ("model.safetensors", ADAPTER_FILES[1])


def has_config(directory: Path) -> bool:
    """A model's config.json (not is_file: one that is no file is reported by the loader), or a LoRA adapter's."""
    return (directory / "config.json").exists() or (directory / ADAPTER_FILES[0]).exists()


def resolve_checkpoint(source, with_tokenizer=False) -> Path:
    """The checkpoint directory that `source` names (see the module's docstring), its weights verified.

    A GPT-2 name is downloaded into checkpoints/<name>/ if missing, with
    GPT-2's tokenizer files too when `with_tokenizer`. The weights of a
    checkpoint that recorded their checksum (minigpt.checksums) must match it;
    in a training out_dir, a damaged best/ falls back to latest/, with a note.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if has_config(path):
            verify(path, WEIGHT_FILES)
            return path
        found = [path / sub for sub in RUN_SUBDIRS if has_config(path / sub)]
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
