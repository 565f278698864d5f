"""Training checkpoints: one directory per checkpoint, written atomically, never pickled.

    out_dir/latest/   (and out_dir/best/, the lowest validation loss so far)
        config.json            Hugging Face GPT-2 config  } `GPT2LMHeadModel.from_pretrained`
        model.safetensors      Hugging Face GPT-2 weights } loads these unchanged
          (a LoRA run: adapter_config.json + adapter_model.safetensors instead, PEFT's files holding
          only the adapters and naming their base; minigpt.lora)
        <tokenizer files>      whatever `tokenizer.save` writes; `load_tokenizer` reads it back
        optimizer.safetensors  AdamW moments m.<param>, v.<param>; the step count in the metadata
        checksums.sha256       sha256 of model.safetensors and optimizer.safetensors, checked at every load
                               (minigpt.checksums)
        trainer_state.json     iter, best_val_loss, the batch sampler's RNG state, last_eval (an evaluation
                               not yet logged, so a resumed run still logs it), the run's options

Everything is safetensors or JSON, so loading a checkpoint can never run code.
Every load checks the binary files against their checksums and the JSON ones
against their schemas (minigpt.schema) before using anything in them.

A checkpoint is first written into a temporary directory beside its final place
(`out_dir/.latest.tmp-XXXX`), then swapped in with renames: a crash or a kill
during the write leaves the previous checkpoint intact (in the instant between
the two renames, as `out_dir/.latest.old-XXXX`, which the next save or resume
renames back).
"""

import json
from pathlib import Path

from safetensors.numpy import load_file

from minigpt.atomic import recover_dir, write_dir
from minigpt.checksums import verify, write_checksums
from minigpt.errors import MinigptError
from minigpt.hub import ADAPTER_FILES
from minigpt.lora import save_adapters
from minigpt.schema import OPTIMIZER_METADATA, TRAINER_STATE, check
from minigpt.weights import write_safetensors

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
MODEL_FILES = ("config.json", "model.safetensors")
CHECKSUMMED = ("model.safetensors", OPTIMIZER_FILE)  # the binary files; the JSON ones have schemas
DAMAGED = "the checkpoint is damaged; use another (out_dir/best or out_dir/latest) or start again"


def save_checkpoint(path, model, tokenizer, optimizer, trainer_state: dict) -> Path:
    """Write a complete checkpoint to directory `path`, replacing any previous one atomically."""

    def write(tmp: Path):
        if model.lora is not None:  # LoRA: the base is frozen and lives elsewhere; only the adapters are new
            save_adapters(model, tmp)
        else:
            model.save_pretrained(tmp)
        tokenizer.save(tmp)
        tensors, metadata = optimizer.state_dict()
        write_safetensors(tmp / OPTIMIZER_FILE, tensors, metadata)  # streamed: no copy of the moments
        write_checksums(tmp, [name for name in (*CHECKSUMMED, ADAPTER_FILES[1]) if (tmp / name).is_file()])
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")

    return write_dir(path, write)


def is_checkpoint(path) -> bool:
    """True when `path` holds all the files of a training checkpoint."""
    path = Path(path)
    weights = any(all((path / name).is_file() for name in files) for files in (MODEL_FILES, ADAPTER_FILES))
    return weights and all((path / name).is_file() for name in (OPTIMIZER_FILE, STATE_FILE))


def recover_checkpoint(path) -> None:
    """Undo a write of checkpoint `path` that a kill interrupted (see minigpt.atomic.recover_dir).

    Renames and deletes directories beside `path`: only the run that writes
    `path` calls it, before it reads or writes there (a reader elsewhere could
    delete a save in progress).
    """
    recover_dir(Path(path))


def load_trainer_state(path) -> dict:
    """A checkpoint's trainer_state.json, checked against its schema (minigpt.schema.TRAINER_STATE)."""
    path = Path(path) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MinigptError(f"cannot read {path} ({getattr(err, 'strerror', None) or err}); {DAMAGED}") from None
    return check(state, TRAINER_STATE, path, DAMAGED)


def load_optimizer_state(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint's optimizer.safetensors, for `AdamW.load_state_dict`; checked
    against the checkpoint's checksum and the metadata's schema."""
    from safetensors import safe_open

    verify(path, (OPTIMIZER_FILE,))
    path = Path(path) / OPTIMIZER_FILE
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise MinigptError(f"cannot read {path} ({err}); {DAMAGED}") from None
    return tensors, check(metadata, OPTIMIZER_METADATA, f"{path} (metadata)", DAMAGED)
