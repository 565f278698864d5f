"""Tokenizers: GPT-2's byte-level BPE (exact, and trainable) and a character tokenizer.

All of them implement `Tokenizer` (encode, decode, vocab_size, eot_token,
save), and `load_tokenizer(directory)` reads back whichever one a checkpoint
directory holds, so training, checkpoints and generation never need to know.
"""

from pathlib import Path

from minigpt.errors import MinigptError
from minigpt.tokenizer.base import Tokenizer
from minigpt.tokenizer.bpe import BPETokenizer, find_vocab_files
from minigpt.tokenizer.byte_level import GPT2_SPLIT_PATTERN, bytes_to_unicode
from minigpt.tokenizer.char import CHAR_FILE_NAME, CharTokenizer

__all__ = ["Tokenizer", "BPETokenizer", "CharTokenizer", "load_tokenizer", "has_tokenizer",
           "GPT2_SPLIT_PATTERN", "bytes_to_unicode"]


def has_tokenizer(directory) -> bool:
    """Whether `directory` holds a tokenizer's files (BPE or character-level)."""
    directory = Path(directory)
    return find_vocab_files(directory) is not None or (directory / CHAR_FILE_NAME).is_file()


def load_tokenizer(directory) -> Tokenizer:
    """The tokenizer saved in `directory`: BPE (vocab.json + merges.txt) or character-level."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MinigptError(f"tokenizer directory {directory} does not exist")
    if find_vocab_files(directory) is not None:
        return BPETokenizer.load(directory)
    if (directory / CHAR_FILE_NAME).is_file():
        return CharTokenizer.load(directory)
    raise MinigptError(f"{directory} holds no tokenizer: expected vocab.json + merges.txt (BPE) "
                       f"or {CHAR_FILE_NAME} (characters)")
