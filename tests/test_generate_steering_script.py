"""generate.py's steering options end to end: --prompts, repeated --prompt, --stop, penalties, speculative decoding."""

import numpy as np
import pytest

from minigpt.generation import encode_prompt, generate
from minigpt.model import GPT
from minigpt.tokenizer import CharTokenizer, load_tokenizer
from tests.test_generate_script import CHAR_TEXT, assert_one_line_error, run_script, save_model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer")
    char = CharTokenizer.train(CHAR_TEXT)
    save_model(root / "char", char, block_size=32)
    save_model(root / "draft", char, block_size=16, seed=4)
    save_model(root / "other", CharTokenizer.train(CHAR_TEXT + "XYZ"), block_size=16)
    return root


def greedy_text(checkpoint, prompt, n, **controls):
    model, tokenizer = GPT.from_pretrained(checkpoint), load_tokenizer(checkpoint)
    ids = encode_prompt(tokenizer, prompt, model.config.block_size, note=lambda _: None)
    out = generate(model, np.array([ids]), n, temperature=0, stop_token=tokenizer.eot_token, **controls)
    return tokenizer.decode(out[0, len(ids):].tolist())


def test_prompts_file_runs_each_prompt_as_alone_clearly_separated(ckpts, tmp_path):
    prompts = ["First", "Before we\\nproceed", "h"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n\n", encoding="utf-8")
    args = ["--checkpoint", ckpts / "char", "--temperature", 0, "--max-new-tokens", 20, "--num-samples", 2,
            "--repetition-penalty", 1.3]
    proc = run_script("generate.py", *args, "--prompts", tmp_path / "p.txt")
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.split("=== prompt ")[1:]
    assert len(blocks) == 6
    for i, prompt in enumerate(prompts):
        text = prompt.replace("\\n", "\n")
        for j in range(2):
            header, body = blocks[2 * i + j].split(" ===\n", 1)
            assert header == f"{i + 1}/3, sample {j + 1}/2"
            assert body == text + greedy_text(ckpts / "char", text, 20, repetition_penalty=1.3) + "\n"
    stdin = run_script("generate.py", *args, "--prompts", "-", stdin=(tmp_path / "p.txt").read_text())
    assert stdin.stdout == proc.stdout
    repeated = run_script("generate.py", *args, *[a for p in prompts for a in ("--prompt", p.replace("\\n", "\n"))])
    assert repeated.stdout == proc.stdout


def test_stop_string_ends_the_sample_and_is_not_printed(ckpts):
    full = greedy_text(ckpts / "char", "First", 30)
    stop = full[6:8]
    args = ["--checkpoint", ckpts / "char", "--temperature", 0, "--max-new-tokens", 30, "--prompt", "First"]
    proc = run_script("generate.py", *args, "--stop", stop.replace("\n", "\\n"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "First" + full[: full.index(stop)] + "\n"


def test_speculative_options_print_plain_decodings_text(ckpts):
    args = ["--checkpoint", ckpts / "char", "--temperature", 0, "--max-new-tokens", 40, "--prompt", "First Citizen"]
    plain = run_script("generate.py", *args)
    for extra in (["--prompt-lookup", 4], ["--draft", ckpts / "draft"]):
        proc = run_script("generate.py", *args, *extra)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == plain.stdout


def test_a_draft_with_another_tokenizer_is_refused_in_one_line(ckpts):
    proc = run_script("generate.py", "--checkpoint", ckpts / "char", "--draft", ckpts / "other", "--prompt", "F")
    assert_one_line_error(proc, "tokenizer")


def test_an_empty_prompts_file_is_one_line(ckpts, tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    proc = run_script("generate.py", "--checkpoint", ckpts / "char", "--prompts", tmp_path / "empty.txt")
    assert_one_line_error(proc, "no prompt")
