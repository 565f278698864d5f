"""Downloading files once, with a progress bar, atomically, and with a clear offline message.

Used for Hugging Face hub files (GPT-2 weights and tokenizer) and for Tiny
Shakespeare (minigpt.hub builds the hub's URLs, honouring `HF_ENDPOINT` as Hugging Face's own tools do,
which also lets the tests serve the files from a local HTTP server).
"""

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from minigpt.errors import MinigptError


class DownloadError(MinigptError):
    """A download failed: `url`, and the `reason` the network or server gave."""

    def __init__(self, url: str, reason, message: str):
        super().__init__(message)
        self.url, self.reason = url, reason


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Fetch `url` into `dest` (written to a temporary file, then renamed).

    On failure nothing is left at `dest` and a MinigptError says which file to
    put where by hand.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    manual = f"download {url} yourself and save it as {dest}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise DownloadError(url, reason, f"could not download {url} ({reason}); {manual}") from None
    if sha256 is not None:
        got = sha256_of(tmp)
        if got != sha256:
            tmp.unlink(missing_ok=True)
            reason = f"sha256 {got}, expected {sha256}"
            raise DownloadError(url, reason, f"{url} has {reason}; {manual}")
    os.replace(tmp, dest)
    return dest


def download_all(files: list[tuple[str, Path]]) -> None:
    """Download each (url, destination) in turn.

    On a failure the error lists every file still missing with where it goes, so
    they can all be put in place by hand at once, and the folders this call made
    are removed again when they are empty.
    """
    made = sorted({p for _, dest in files for p in (dest.parent, *dest.parent.parents) if not p.exists()})
    try:
        for url, dest in files:
            if not dest.is_file():
                download(url, dest)
    except DownloadError as err:
        for folder in reversed(made):  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        missing = [(url, dest) for url, dest in files if not dest.is_file()]
        listing = "; ".join(f"{url} as {dest}" for url, dest in missing)
        raise MinigptError(f"could not download {err.url} ({err.reason}); download the {len(missing)} missing "
                           f"file(s) yourself and save each as shown, then run again: {listing}") from None
