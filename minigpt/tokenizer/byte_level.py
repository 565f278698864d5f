"""Byte-level pre-tokenization, shared by GPT-2's encoder (bpe.py) and BPE training (bpe_train.py).

GPT-2's regular expression cuts a text into pieces that no token may span, and
`bytes_to_unicode` writes each byte of a piece as a visible character, the
alphabet the vocabulary files are written in.
"""

# Contractions (case-sensitive, as in GPT-2), then letters, digits and other
# symbols each with at most one leading space, then whitespace. `\s+(?!\S)`
# leaves the last space of a run to start the next word: "a   b" -> "a", "  ", " b".
GPT2_SPLIT_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                      r"""|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte 0..255 to a printable character.

    The 188 printable bytes `!`..`~`, `¡`..`¬`, `®`..`ÿ` stand for themselves;
    the other 68 (control characters, space, and a few others) take
    chr(256), chr(257), ... in increasing order. The dictionary lists bytes in
    that order (printable first), which is also the order of ids 0..255.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def replace_lone_surrogates(text: str) -> str:
    """Replace unpaired UTF-16 surrogates (which UTF-8 cannot encode) by U+FFFD.

    Joins a valid high+low pair into its character, exactly as tiktoken does.
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
