"""The character-level tokenizer: one token per distinct character of the training text.

This is what nanoGPT's Shakespeare-char recipe uses: 65 characters, ids in
sorted order, so "a" < "b" as ids too. There is no end-of-text token.
"""

import json
from pathlib import Path

from minigpt.atomic import write_text
from minigpt.errors import MinigptError
from minigpt.tokenizer.base import Tokenizer, read_json, unknown_ids_error

CHAR_FILE_NAME = "char_tokenizer.json"


class CharTokenizer(Tokenizer):
    """Maps each character of a fixed alphabet to its index in that alphabet."""

    def __init__(self, chars):
        chars = list(chars)
        if not chars:
            raise MinigptError("a character tokenizer needs at least one character")
        if not all(isinstance(char, str) and len(char) == 1 for char in chars):
            raise MinigptError("a character tokenizer's vocabulary must be single characters")
        if len(set(chars)) != len(chars):
            raise MinigptError("a character tokenizer's vocabulary lists a character twice")
        self._chars = chars
        self._char_to_id = {char: i for i, char in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """The vocabulary is the sorted set of characters of `text`."""
        if not text:
            raise MinigptError("cannot build a character vocabulary from an empty text")
        return cls(sorted(set(text)))

    @classmethod
    def load(cls, directory) -> "CharTokenizer":
        path = Path(directory) / CHAR_FILE_NAME
        saved = read_json(path)
        if not isinstance(saved, dict) or saved.get("type") != "char" or not isinstance(saved.get("chars"), list):
            raise MinigptError(f"{path} is not a character tokenizer file "
                               f'({{"type": "char", "chars": [...]}})')
        return cls(saved["chars"])

    def save(self, directory) -> None:
        """Write `char_tokenizer.json`: {"type": "char", "chars": [...]}."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        saved = {"type": "char", "chars": self._chars}
        write_text(directory / CHAR_FILE_NAME, json.dumps(saved, ensure_ascii=False))

    @property
    def chars(self) -> list[str]:
        return list(self._chars)

    @property
    def vocab_size(self) -> int:
        return len(self._chars)

    @property
    def eot_token(self) -> None:
        return None

    def encode(self, text: str) -> list[int]:
        try:
            return [self._char_to_id[char] for char in text]
        except KeyError:
            unknown = sorted(set(text) - self._char_to_id.keys())
            shown = "".join(unknown[:20]) + ("..." if len(unknown) > 20 else "")
            raise MinigptError(f"the text has {len(unknown)} character(s) missing from the "
                               f"tokenizer's vocabulary: {shown!r}; remove them or build the "
                               f"vocabulary from a text that has them") from None

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        chars = self._chars
        if any(not 0 <= i < len(chars) for i in ids):
            raise unknown_ids_error(ids, range(len(chars)), len(chars))
        return "".join([chars[i] for i in ids])
