"""A checkpoint's own checksums: `checksums.sha256` beside its weight and optimizer files.

A byte flipped on disk inside model.safetensors usually still decodes as a
finite float: the safetensors layout and the finite-weights check cannot see it.
Each checkpoint therefore records the sha256 of its weight and optimizer files,
in the format of `sha256sum` (so `sha256sum -c checksums.sha256` checks it by
hand too), and every load checks the files it reads against it.

    <64 hex digits>  model.safetensors
    <64 hex digits>  optimizer.safetensors

The JSON files beside them are checked by their schemas instead (minigpt.schema).
Hugging Face ignores the extra file. A directory without it (a Hugging Face
download, a checkpoint of an older minigpt) loads unverified, as before.

Cost: sha256 (hashlib, SHA-NI) takes 0.67 s per GB on an AMD EPYC at load 3.5 and 0.94 s at load 8
(scripts/bench/bench_checks.py, 2026-12-05, file in the page cache), so GPT-2 small's 1.5 GB checkpoint
(weights + AdamW moments) takes about 1-1.4 s more to write and to resume; generate and evaluate hash
only the 0.5 GB of weights.
"""

import hashlib
import re
from pathlib import Path

from minigpt.atomic import write_text
from minigpt.errors import MinigptError

CHECKSUM_FILE = "checksums.sha256"
READ_CHUNK = 1 << 18  # 256 KiB: as fast as larger reads, small beside any checkpoint
LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class ChecksumMismatch(MinigptError):
    """A checkpoint file whose bytes are not the ones its checkpoint recorded."""


def file_sha256(path) -> str:
    """The sha256 of a file, read through one small reused buffer (no copy of the file in memory)."""
    digest, buffer = hashlib.sha256(), bytearray(READ_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def write_checksums(directory, names) -> None:
    """Record the sha256 of each of `names` (files in `directory`) in its checksums.sha256."""
    directory = Path(directory)
    write_text(directory / CHECKSUM_FILE, "".join(f"{file_sha256(directory / n)}  {n}\n" for n in names))


def read_checksums(directory) -> dict | None:
    """{file name: sha256} from directory's checksums.sha256, or None when it has none."""
    path = Path(directory) / CHECKSUM_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise MinigptError(f"cannot read {path} ({getattr(err, 'strerror', None) or err}); "
                           f"the checkpoint is damaged") from None
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = LINE.match(line)
        if not match:
            raise MinigptError(f"{path}: line {number} is not `<sha256>  <file>`: {line[:80]!r}; the checkpoint is damaged")
        sums[match.group(2)] = match.group(1)
    return sums


def verify(directory, names) -> None:
    """Check each of `names` in `directory` against its recorded sha256 (nothing to do without checksums.sha256).

    A mismatch is a ChecksumMismatch naming the file.
    """
    directory = Path(directory)
    sums = read_checksums(directory)
    if sums is None:
        return
    for name in names:
        if name not in sums:
            continue  # a file the checkpoint did not record (none of minigpt's own)
        path = directory / name
        try:
            actual = file_sha256(path)
        except OSError as err:
            raise MinigptError(f"cannot read {path} ({err.strerror or err})") from None
        if actual != sums[name]:
            raise ChecksumMismatch(f"{path} does not match the sha256 recorded in {directory / CHECKSUM_FILE}: "
                                   f"the file was changed or damaged after it was written; use another checkpoint")
