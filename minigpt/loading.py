"""The one way from what a user names to a model and its tokenizer.

`load_checkpoint(source)` accepts, as `--checkpoint`, `--init_from` and
`GPT.from_pretrained` do, what minigpt.locate finds:

    a checkpoint directory   config.json + model.safetensors (ours, or Hugging Face's GPT-2)
    a training out_dir       its best/, else (missing or damaged) its latest/
    a GPT-2 name             gpt2, gpt2-medium, gpt2-large, gpt2-xl: checkpoints/<name>/, downloaded once

A LoRA adapter checkpoint (adapter_config.json + adapter_model.safetensors,
minigpt.lora) loads its base, checked against the fingerprint it saved, with the
adapters on top; its tokenizer is the one beside it, else its base's.

The tokenizer is the one saved beside the weights. A directory without
tokenizer files holds GPT-2's vocabulary (50,257 tokens or more, as Hugging
Face's GPT-2 directories) and gets GPT-2's tokenizer; any other is an error
that names the missing files.
"""

from pathlib import Path

from minigpt.errors import MinigptError
from minigpt.hub import GPT2_VOCAB_SIZE
from minigpt.locate import resolve_checkpoint
from minigpt.lora import ADAPTER_CONFIG, load_adapters
from minigpt.model import GPT
from minigpt.tokenizer import BPETokenizer, has_tokenizer, load_tokenizer
from minigpt.tokenizer.char import CHAR_FILE_NAME
from minigpt.weights import load_pretrained

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
    if (directory / ADAPTER_CONFIG).is_file():  # a LoRA adapter: its base, with the adapters on top
        model, base_dir = load_adapters(directory, dtype=dtype, device=device)
        tokenizer_dir = directory if has_tokenizer(directory) else base_dir
        return model.eval(), checkpoint_tokenizer(tokenizer_dir, model.config.vocab_size), directory
    model = load_pretrained(GPT, directory, dtype=dtype, device=device).eval()
    return model, checkpoint_tokenizer(directory, model.config.vocab_size), directory
