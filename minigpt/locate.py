"""Where the checkpoint a user names lives: a checkpoint directory, a training out_dir or a GPT-2 name.

    a checkpoint directory   config.json + model.safetensors (ours, or Hugging Face's GPT-2), or a LoRA
                             adapter: adapter_config.json + adapter_model.safetensors (minigpt.lora)
    a training out_dir       its best/, else its latest/
    a GPT-2 name             gpt2, gpt2-medium, gpt2-large, gpt2-xl: checkpoints/<name>/, downloaded once

`GPT.from_pretrained` reads the weights there (minigpt.weights), and
minigpt.loading.load_checkpoint the weights and the tokenizer. Nothing here
knows the model: this module sits below it.
"""

from pathlib import Path

from minigpt.download import download_all
from minigpt.errors import MinigptError
from minigpt.hub import ADAPTER_FILES, GPT2_NAMES, MODEL_FILES, hub_files
from minigpt.paths import checkpoints_dir
from minigpt.tokenizer.bpe import gpt2_tokenizer_downloads

RUN_SUBDIRS = ("best", "latest")  # a training out_dir's checkpoints, in the order they are preferred


def resolve_checkpoint(source, with_tokenizer=False) -> Path:
    """The checkpoint directory that `source` names (see the module's docstring).

    A GPT-2 name is downloaded into checkpoints/<name>/ if missing, with
    GPT-2's tokenizer files too when `with_tokenizer`.
    """
    path = Path(source)
    if path.is_dir():
        for candidate in (path, *(path / sub for sub in RUN_SUBDIRS)):
            if (candidate / "config.json").is_file() or (candidate / ADAPTER_FILES[0]).is_file():
                return candidate
        raise MinigptError(f"{path} holds no checkpoint: expected config.json + model.safetensors in it, "
                           f"or a training out_dir with {' or '.join(f'{sub}/' for sub in RUN_SUBDIRS)}")
    name = str(source)
    if name in GPT2_NAMES:
        directory = checkpoints_dir() / name
        download_all(hub_files(name, MODEL_FILES, directory) + (gpt2_tokenizer_downloads(name) if with_tokenizer else []))
        return directory
    if path.exists():
        raise MinigptError(f"{path} is a file: give the checkpoint directory that holds it")
    raise MinigptError(f"no checkpoint at {path}: it does not exist; give a checkpoint directory, a training out_dir, "
                       f"or one of {', '.join(GPT2_NAMES)}")
