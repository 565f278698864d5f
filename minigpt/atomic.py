"""Writing files and directories so that a crash or a kill never leaves a half-written one.

Every file minigpt writes (weights, token files, tokenizers, logs, checkpoints)
is first written under a temporary name beside its destination and then renamed
over it: a rename within one directory is atomic, so readers see either the
complete old version or the complete new one.
"""

import os
import shutil
import tempfile
from pathlib import Path

from minigpt.errors import MinigptError


def write_file(dest, write) -> None:
    """Call write(tmp_path) on a temporary file beside `dest`, then rename it over `dest`."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(dest, text: str) -> None:
    """Write `text` as UTF-8 with \\n line ends, atomically."""
    write_file(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline="\n"))


def write_dir(dest, write) -> Path:
    """Call write(tmp) on an empty temporary directory beside `dest`, then swap it in for `dest`.

    A kill at any moment leaves `dest` either complete and old or complete and
    new (after `recover_dir`); an exception leaves it as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(dest)
    tmp = make_temp_dir(dest)
    try:
        write(tmp)
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def make_temp_dir(dest: Path) -> Path:
    """An empty directory beside `dest` to build its next version in (readable like a normal directory)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private (0700); the result is an ordinary data folder
    return tmp


def replace_dir(new: Path, dest: Path) -> None:
    """Move directory `new` to `dest`, replacing what is there with two renames.

    The old directory is renamed aside (`.<name>.old-XXXX`) before the new one is
    renamed in, so `dest` is always either the complete old or the complete new
    version; a kill in the instant between the renames leaves it absent with the
    old one aside, which `recover_dir` puts back.
    """
    aside = None
    if dest.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        aside.rmdir()
        os.replace(dest, aside)
    os.replace(new, dest)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def recover_dir(dest: Path) -> None:
    """Undo a replacement that a kill interrupted: rename the old version back, drop the leftovers.

    Leftovers are `.<name>.tmp-*` (unfinished new versions) and `.<name>.old-*`
    (old versions whose deletion was cut short).
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    asides = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not dest.exists() and asides:
        previous = asides.pop()
        try:
            os.replace(previous, dest)
        except OSError as err:  # a read-only folder, say: the old version is still there, aside
            raise MinigptError(f"cannot finish the interrupted replacement of {dest} ({err.strerror or err}): "
                               f"its complete previous version is {previous}; make {dest.parent} writable "
                               f"and run again, or rename {previous.name} to {dest.name} yourself") from None
    for leftover in asides + list(dest.parent.glob(f".{dest.name}.tmp-*")):
        shutil.rmtree(leftover, ignore_errors=True)
