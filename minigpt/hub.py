"""OpenAI's GPT-2 on the Hugging Face hub: the four model names, their shapes, and fetching their files.

Every GPT-2 size shares one tokenizer and one context length (Radford et al.
2019, table 2). A model's files are downloaded once into checkpoints/<name>/,
its tokenizer's into checkpoints/gpt2/; `fetch` gets whatever is missing and,
offline, says every file to put where by hand.
"""

from pathlib import Path

from minigpt.download import DownloadError, download, hf_url
from minigpt.errors import MinigptError

GPT2_SIZES = {  # name -> shape; the names are the hub's repositories
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
GPT2_NAMES = tuple(GPT2_SIZES)
GPT2_BLOCK_SIZE = 1024
GPT2_VOCAB_SIZE = 50257  # 50,000 merges + 256 bytes + <|endoftext|>
MODEL_FILES = ("config.json", "model.safetensors")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_REPO = "gpt2"  # the repository whose tokenizer files every size uses


def hub_files(repo: str, filenames, directory) -> list[tuple[str, Path]]:
    """(url, destination) for each of `filenames` in hub repository `repo` that `directory` lacks."""
    directory = Path(directory)
    return [(hf_url(repo, name), directory / name) for name in filenames if not (directory / name).is_file()]


def fetch(files: list[tuple[str, Path]]) -> None:
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
