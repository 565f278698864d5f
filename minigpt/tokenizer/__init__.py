"""Tokenizers: GPT-2's byte-level BPE (exact, and trainable) and a character tokenizer.

All of them implement `Tokenizer` (encode, decode, vocab_size, eot_token,
save), and `load_tokenizer(directory)` reads back whichever one a checkpoint
directory holds, so training, checkpoints and generation never need to know.
"""

from pathlib import Path

from minigpt.errors import MinigptError
from minigpt.tokenizer.base import Tokenizer
from minigpt.tokenizer.bpe import GPT2_SPLIT_PATTERN, BPETokenizer, bytes_to_unicode, find_vocab_files
from minigpt.tokenizer.char import CHAR_FILE_NAME, CharTokenizer

__all__ = ["Tokenizer", "BPETokenizer", "CharTokenizer", "load_tokenizer",
           "GPT2_SPLIT_PATTERN", "bytes_to_unicode"]


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
