"""OpenAI's GPT-2 on the Hugging Face hub: the four model names, their shapes, where their files are.

Every GPT-2 size shares one tokenizer and one context length (Radford et al.
2019, table 2). A model's files are downloaded once into checkpoints/<name>/,
its tokenizer's into checkpoints/gpt2/ (minigpt.download.download_all
fetches them).
"""

import os
from pathlib import Path

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
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # PEFT's LoRA adapter (minigpt.lora)
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_REPO = "gpt2"  # the repository whose tokenizer files every size uses


def hf_url(repo: str, filename: str) -> str:
    """The hub's download URL for `filename` in model repository `repo` (HF_ENDPOINT is honoured)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/main/{filename}"


def hub_files(repo: str, filenames, directory) -> list[tuple[str, Path]]:
    """(url, destination) for each of `filenames` in hub repository `repo` that `directory` lacks."""
    directory = Path(directory)
    return [(hf_url(repo, name), directory / name) for name in filenames if not (directory / name).is_file()]
