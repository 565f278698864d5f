"""One run per out_dir: an OS lock on `out_dir/.lock`, held for the whole run.

Two trainings writing into one out_dir would interleave their log.jsonl and
replace each other's checkpoints. The first run takes an exclusive
`fcntl.flock` on `out_dir/.lock` and writes who it is (pid, host, start time)
into it; a second run (or a resume started while the first goes) finds the lock
taken, reads the holder from the file and stops in one line.

The lock belongs to the open file, not to the file on disk: when the holder
exits in any way, kill -9 included, the OS releases it, so a stale `.lock` file
never blocks the next run (its text is then only history). A run that ends
normally empties the file but leaves it in place: deleting it would let a third
run lock a fresh file while a second still holds the old one.

Rank 0 holds the lock for all the ranks of a multi-process run. flock works
between processes of one machine (and on most network filesystems, as
advisory locks); it is not a cluster-wide lock manager.
"""

import datetime
import fcntl
import os
import socket
from pathlib import Path

from minigpt.errors import MinigptError

LOCK_FILE = ".lock"


class OutDirLock:
    """`with OutDirLock(out_dir):` holds the lock on out_dir (which must exist) until the block ends."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK_FILE
        self._fd = None

    def acquire(self) -> None:
        """Take the lock, or raise a MinigptError naming the run that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise MinigptError(f"cannot create the lock file {self.path} ({err.strerror or err}); "
                               f"choose a writable --out_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise MinigptError(
                f"--out_dir {self.path.parent} is in use by another run ({holder or 'holder unknown'}); "
                f"wait for it to end (or stop it), or choose another --out_dir"
            ) from None
        # ours now: say who holds it, for the run that comes next
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no holder now (a killed run leaves its line: history, no lock)
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd: int) -> str:
    """The holder's line from the lock file (empty if it has not written it yet)."""
    try:
        return os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
