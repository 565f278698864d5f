"""The interface every tokenizer offers, and small file helpers they share.

Training, checkpoints and generation only ever use what `Tokenizer` declares,
so a character-level model and GPT-2 itself go through the same code.
"""

import json
from abc import ABC, abstractmethod
from pathlib import Path

from minigpt.errors import MinigptError


class Tokenizer(ABC):
    """Text <-> list of token ids, saved as files that travel with a checkpoint."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The token ids of `text`."""

    @abstractmethod
    def decode(self, ids) -> str:
        """The text of a sequence of token ids (a list or a 1-D integer array)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """One more than the largest id: the number of rows the embedding needs."""

    @property
    @abstractmethod
    def eot_token(self) -> int | None:
        """The id of `<|endoftext|>`, which separates documents, or None without one."""

    @abstractmethod
    def save(self, directory) -> None:
        """Write this tokenizer's files into `directory` (created if needed)."""


def read_json(path: Path):
    """Parse a JSON file, turning a missing or corrupt file into a MinigptError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MinigptError(f"tokenizer file {path} does not exist") from None
    except OSError as err:  # a permission problem, or a directory in its place: not "does not exist"
        raise MinigptError(f"cannot read tokenizer file {path} ({err.strerror or err}); make it a readable file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MinigptError(f"tokenizer file {path} is not valid JSON ({err}); "
                           f"replace it with an intact copy") from None


def unknown_ids_error(ids, known, vocab_size: int) -> MinigptError:
    """The error for decoding `ids`, naming those that are not keys of `known`."""
    unknown = sorted({i for i in ids if i not in known})
    shown = ", ".join(str(i) for i in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
    return MinigptError(f"cannot decode token ids outside the vocabulary "
                        f"(0..{vocab_size - 1}): {shown}")
