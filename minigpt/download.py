"""Downloading files once, with a progress bar, atomically, and with a clear offline message.

Used for Hugging Face hub files (GPT-2 weights and tokenizer) and for Tiny
Shakespeare. `HF_ENDPOINT` is honoured as Hugging Face's own tools do, which
also lets the tests serve the files from a local HTTP server.
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


def hf_url(repo: str, filename: str) -> str:
    """The hub's download URL for `filename` in model repository `repo`."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/main/{filename}"


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
            raise DownloadError(url, f"sha256 {got}, expected {sha256}", f"{url} has sha256 {got}, expected {sha256}; {manual}")
    os.replace(tmp, dest)
    return dest
