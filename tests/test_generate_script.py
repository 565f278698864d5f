"""scripts/generate.py and scripts/evaluate.py end to end, on tiny random models saved to a tmp dir."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt.errors import MinigptError
from minigpt.generation import encode_prompt, generate_stream
from minigpt.loading import resolve_checkpoint
from minigpt.model import GPT, GPTConfig
from minigpt.paths import checkpoints_dir
from minigpt.tokenizer import BPETokenizer, CharTokenizer

REPO = Path(__file__).resolve().parent.parent
CHAR_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
BPE_TEXT = CHAR_TEXT * 20 + " naïve café 日本語 🙂 " * 20


def save_model(directory, tokenizer, block_size=16, vocab_size=None, seed=0):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=block_size,
                          vocab_size=vocab_size or tokenizer.vocab_size), seed=seed)
    for p in model.params.values():  # larger weights than GPT-2's init, so outputs vary
        p *= 20
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    char = CharTokenizer.train(CHAR_TEXT)
    bpe = BPETokenizer.train(BPE_TEXT, 300)
    save_model(root / "char", char)
    save_model(root / "bpe", bpe)
    save_model(root / "run" / "latest", char, seed=1)
    save_model(root / "run" / "best", char, seed=2)
    save_model(root / "only_latest" / "latest", char, seed=1)
    return root


def run_script(name, *argv, stdin=None, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, argv)], input=stdin,
                          capture_output=True, text=True, encoding="utf-8", env=env, timeout=120)


def generate(*argv, **kwargs):
    return run_script("generate.py", *argv, **kwargs)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def expected_text(checkpoint, prompt, seed, n_samples=1, max_new_tokens=30, **sampling):
    """What the script should print: the prompt and each sample, generated in this process."""
    from minigpt.tokenizer import load_tokenizer

    model, tokenizer = GPT.from_pretrained(checkpoint), load_tokenizer(checkpoint)
    ids = np.array([encode_prompt(tokenizer, prompt, model.config.block_size, note=lambda _: None)])
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_samples):
        steps = generate_stream(model, ids, max_new_tokens, seed=rng, stop_token=tokenizer.eot_token, **sampling)
        new = [int(step[0]) for step in steps]
        if tokenizer.eot_token in new:
            new = new[: new.index(tokenizer.eot_token)]
        samples.append(prompt + tokenizer.decode(new) + "\n")
    return samples


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_streamed_output_is_the_prompt_and_the_decoded_sample(ckpts, kind):
    prompt = "First" if kind == "char" else "naïve 日"
    proc = generate("--checkpoint", ckpts / kind, "--prompt", prompt, "--max-new-tokens", 30, "--seed", 3,
                    "--temperature", 1.0, "--top-k", 0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected_text(ckpts / kind, prompt, seed=3)[0]


def test_underscored_options_and_several_samples(ckpts):
    args = ["--checkpoint", ckpts / "char", "--prompt", "Be", "--seed", 5, "--top-p", 0.9, "--temperature", 1.0, "--top-k", 0]
    hyphens = generate(*args, "--max-new-tokens", 30, "--num-samples", 2)
    underscores = generate(*[{"--top-p": "--top_p", "--top-k": "--top_k"}.get(a, a) for a in args],
                           "--max_new_tokens", 30, "--num_samples", 2)
    assert hyphens.returncode == underscores.returncode == 0, hyphens.stderr + underscores.stderr
    assert hyphens.stdout == underscores.stdout
    samples = expected_text(ckpts / "char", "Be", seed=5, n_samples=2, top_p=0.9)
    assert hyphens.stdout == samples[0] + "\n" + "-" * 40 + "\n" + samples[1]
    assert samples[0] != samples[1]


def test_a_sample_longer_than_the_context_slides_by_the_window_shift(ckpts):
    outputs = {}
    for shift in (None, 1, 5):
        args = ["--window-shift", shift] if shift else []
        proc = generate("--checkpoint", ckpts / "char", "--prompt", "Be", "--max-new-tokens", 50, "--seed", 4,
                        "--temperature", 1.0, *args)  # block_size 16: the window moves at least twice
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == expected_text(ckpts / "char", "Be", seed=4, max_new_tokens=50, top_k=200,
                                            window_shift=shift)[0]
        outputs[shift] = proc.stdout
    assert outputs[None] != outputs[1], "the option should reach the model (pick a seed where the two differ)"


def test_greedy_output_does_not_depend_on_the_seed(ckpts):
    a = generate("--checkpoint", ckpts / "char", "--prompt", "F", "--temperature", 0, "--seed", 1, "--max-new-tokens", 20)
    b = generate("--checkpoint", ckpts / "char", "--prompt", "F", "--temperature", 0, "--seed", 2, "--max-new-tokens", 20)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and len(a.stdout) == 1 + 20 + 1


def test_sampling_stops_at_endoftext(ckpts, tmp_path):
    # a model that always predicts <|endoftext|>: its head vector dominates every logit
    bpe = BPETokenizer.train(BPE_TEXT, 300)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=300), seed=0)
    direction = np.ones(8, dtype=np.float32)
    model.params["transformer.wte.weight"][bpe.eot_token] = 100 * direction
    model.params["transformer.ln_f.weight"][:] = 0
    model.params["transformer.ln_f.bias"][:] = direction
    model.save_pretrained(tmp_path)
    bpe.save(tmp_path)
    proc = generate("--checkpoint", tmp_path, "--prompt", "First", "--max-new-tokens", 50, "--seed", 0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "First\n"


def test_prompt_file_and_interactive_mode(ckpts, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("First", encoding="utf-8")
    common = ["--checkpoint", ckpts / "char", "--temperature", 0, "--max-new-tokens", 10]
    from_file = generate(*common, "--prompt-file", prompt_file)
    from_arg = generate(*common, "--prompt", "First")
    assert from_file.returncode == 0 and from_file.stdout == from_arg.stdout
    second = generate(*common, "--prompt", "hear")
    session = generate(*common, "--interactive", stdin="First\nZebra\nhear\n")  # Z and b are not in the vocabulary
    assert session.returncode == 0, session.stderr
    assert from_arg.stdout in session.stdout and second.stdout in session.stdout
    assert session.stdout.index(from_arg.stdout) < session.stdout.index(second.stdout)
    assert "error: " in session.stderr and "'Zb'" in session.stderr


# ---------------------------------------------------------------------------
# Where the weights come from
# ---------------------------------------------------------------------------


def test_resolve_checkpoint(ckpts):
    assert resolve_checkpoint(ckpts / "char") == ckpts / "char"
    assert resolve_checkpoint(ckpts / "run") == ckpts / "run" / "best"
    assert resolve_checkpoint(ckpts / "only_latest") == ckpts / "only_latest" / "latest"
    downloaded = save_model(checkpoints_dir() / "gpt2-medium", CharTokenizer.train(CHAR_TEXT))
    assert resolve_checkpoint("gpt2-medium") == downloaded  # already there: nothing is fetched
    with pytest.raises(MinigptError, match="does not exist"):
        resolve_checkpoint(ckpts / "missing")
    with pytest.raises(MinigptError, match="holds no checkpoint"):
        resolve_checkpoint(ckpts)


def test_a_training_out_dir_means_its_best_checkpoint(ckpts):
    common = ["--temperature", 0, "--prompt", "F", "--max-new-tokens", 20]
    from_run = generate("--checkpoint", ckpts / "run", *common)
    from_best = generate("--checkpoint", ckpts / "run" / "best", *common)
    from_latest = generate("--checkpoint", ckpts / "run" / "latest", *common)
    assert from_run.returncode == 0, from_run.stderr
    assert from_run.stdout == from_best.stdout != from_latest.stdout


def test_without_checkpoint_the_training_out_dir_is_used(ckpts, tmp_path):
    shutil.copytree(ckpts / "run", tmp_path / "out")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "generate.py"), "--temperature", "0", "--max-new-tokens", "5",
                           "--prompt", "F"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "out" in proc.stderr and "--checkpoint" in proc.stderr
    empty = subprocess.run([sys.executable, str(REPO / "scripts" / "generate.py")], cwd=tmp_path / "out" / "best",
                           capture_output=True, text=True)
    assert_one_line_error(empty, "--checkpoint")


GPT2_TOKENIZER_DIR = os.environ.get("MINIGPT_GPT2_TOKENIZER_DIR")


@pytest.mark.skipif(not GPT2_TOKENIZER_DIR or not Path(GPT2_TOKENIZER_DIR, "encoder.json").is_file(),
                    reason="MINIGPT_GPT2_TOKENIZER_DIR (encoder.json, vocab.bpe) not set")
def test_a_hugging_face_dir_without_tokenizer_gets_gpt2s(tmp_path):
    hf_dir = save_model(tmp_path / "hf", None, vocab_size=50257)
    gpt2_dir = tmp_path / "checkpoints" / "gpt2"  # where BPETokenizer.from_pretrained("gpt2") looks
    gpt2_dir.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe"):
        (gpt2_dir / name).symlink_to(Path(GPT2_TOKENIZER_DIR, name).resolve())
    env = {"MINIGPT_CHECKPOINTS_DIR": str(tmp_path / "checkpoints")}
    proc = generate("--checkpoint", hf_dir, "--prompt", "Hello world", "--temperature", 0, "--max-new-tokens", 5, env_extra=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello world") and len(proc.stdout) > len("Hello world\n")
    empty = generate("--checkpoint", hf_dir, "--prompt", "", "--max-new-tokens", 3, env_extra=env)
    assert empty.returncode == 0 and "<|endoftext|>" in empty.stderr


# ---------------------------------------------------------------------------
# Bad input: a one-line message, never a traceback
# ---------------------------------------------------------------------------


def test_empty_prompt_starts_from_a_newline_for_characters(ckpts):
    proc = generate("--checkpoint", ckpts / "char", "--prompt", "", "--max-new-tokens", 5, "--seed", 0)
    assert proc.returncode == 0
    assert "empty prompt" in proc.stderr and "newline" in proc.stderr
    assert len(proc.stdout) == 5 + 1


def test_empty_prompt_starts_from_endoftext_for_bpe(ckpts):
    proc = generate("--checkpoint", ckpts / "bpe", "--max-new-tokens", 5, "--seed", 0)
    assert proc.returncode == 0
    assert "empty prompt" in proc.stderr and "<|endoftext|>" in proc.stderr


def test_a_prompt_longer_than_the_context_keeps_its_end(ckpts):
    long_prompt = CHAR_TEXT[:40]
    proc = generate("--checkpoint", ckpts / "char", "--prompt", long_prompt, "--max-new-tokens", 5, "--temperature", 0)
    assert proc.returncode == 0
    assert "40 tokens" in proc.stderr and "last 16" in proc.stderr
    end = long_prompt[-16:]
    continuation = expected_text(ckpts / "char", end, seed=0, max_new_tokens=5, temperature=0)[0][len(end) :]
    assert proc.stdout == long_prompt + continuation


def corrupt_copy(ckpts, tmp_path, change):
    target = tmp_path / "ckpt"
    shutil.copytree(ckpts / "char", target)
    change(target)
    return target


def truncate(directory):
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def garble(directory):
    (directory / "model.safetensors").write_bytes(b"\x07" * 64)


def mismatch(directory):
    config = json.loads((directory / "config.json").read_text())
    config["n_embd"] = 16
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("change, fragment", [(truncate, "model.safetensors"), (garble, "model.safetensors"),
                                              (mismatch, "config")])
def test_damaged_checkpoints_are_one_line_errors(ckpts, tmp_path, change, fragment):
    assert_one_line_error(generate("--checkpoint", corrupt_copy(ckpts, tmp_path, change)), fragment)


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--checkpoint", "{root}/missing"], ["does not exist"]),
        (["--checkpoint", "{root}/char", "--prompt", "Hi Zoë"], ["vocabulary", "Z", "ë"]),
        (["--checkpoint", "{root}/char", "--temperature", "-0.5"], ["--temperature"]),
        (["--checkpoint", "{root}/char", "--top-p", "0"], ["--top-p"]),
        (["--checkpoint", "{root}/char", "--top_p", "1.5"], ["--top-p"]),
        (["--checkpoint", "{root}/char", "--top-k", "-3"], ["--top-k", "0 to turn it off"]),
        (["--checkpoint", "{root}/char", "--top-k", "-1"], ["--top-k", "0 to turn it off"]),
        (["--checkpoint", "{root}/char", "--max-new-tokens", "-1"], ["--max-new-tokens"]),
        (["--checkpoint", "{root}/char", "--window-shift", "0"], ["--window-shift", ">= 1"]),
        (["--checkpoint", "{root}/char", "--window_shift", "17"], ["--window-shift", "block_size 16", "17"]),
        (["--checkpoint", "{root}/char", "--window-shift", "half"], ["--window-shift"]),
        (["--checkpoint", "{root}/char", "--prompt-file", "{root}/nope.txt"], ["nope.txt"]),
        (["--checkpoint", "{root}/char", "--temperature", "warm"], ["--temperature"]),
        (["--checkpoint", "{root}/char", "--no-such-option"], ["--no-such-option"]),
    ],
)
def test_bad_input_is_a_one_line_error(ckpts, argv, fragments):
    proc = generate(*[a.format(root=ckpts) for a in argv])
    assert_one_line_error(proc, *fragments)
    assert proc.stdout == ""


# ---------------------------------------------------------------------------
# scripts/evaluate.py
# ---------------------------------------------------------------------------


def test_evaluate_prints_loss_and_perplexity(ckpts, tmp_path):
    from minigpt.perplexity import perplexity
    from minigpt.tokenizer import load_tokenizer

    data = tmp_path / "valid.txt"
    data.write_text(CHAR_TEXT * 3, encoding="utf-8")
    proc = run_script("evaluate.py", "--checkpoint", ckpts / "char", "--data", data, "--stride", 8)
    assert proc.returncode == 0, proc.stderr
    model, tokenizer = GPT.from_pretrained(ckpts / "char"), load_tokenizer(ckpts / "char")
    loss, ppl, n = perplexity(model, tokenizer.encode(CHAR_TEXT * 3), stride=8, batch_size=64, progress=False)  # the script's default here
    assert f"loss {loss:.4f}" in proc.stdout and f"perplexity {ppl:.4f}" in proc.stdout
    assert f"{n} tokens" in proc.stdout
    assert "perplexity" in proc.stderr  # the progress bar


@pytest.mark.parametrize("argv, fragment", [(["--data", "{root}/nope.txt"], "nope.txt"),
                                            (["--data", "{text}", "--stride", "0"], "--stride"),
                                            (["--data", "{text}", "--stride", "17"], "--stride"),
                                            (["--data", "{text}", "--batch_size", "0"], "--batch-size"),
                                            (["--data", "{bad_utf8}"], "data file {bad_utf8} is not UTF-8 text: byte 0xff at offset 6 (line 2)"),
                                            (["--data", "{root}"], "directory"),
                                            (["--data", "{odd}"], "vocabulary")])
def test_evaluate_bad_input_is_a_one_line_error(ckpts, tmp_path, argv, fragment):
    (tmp_path / "ok.txt").write_text(CHAR_TEXT, encoding="utf-8")
    (tmp_path / "odd.txt").write_text("Zebra", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"Fine\nx\xff")
    paths = dict(root=ckpts, text=tmp_path / "ok.txt", odd=tmp_path / "odd.txt", bad_utf8=tmp_path / "bad.txt")
    proc = run_script("evaluate.py", "--checkpoint", ckpts / "char", *[a.format(**paths) for a in argv])
    assert_one_line_error(proc, fragment.format(**paths))


def test_a_closed_pipe_ends_generation_quietly(ckpts):
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "generate.py"), "--checkpoint", str(ckpts / "char"),
                             "--max-new-tokens", "100000", "--seed", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(5)) == 5
    proc.stdout.close()  # like `| head -c 5`
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"Traceback" not in stderr


def test_a_character_checkpoint_without_its_tokenizer_names_the_missing_file(ckpts, tmp_path):
    target = corrupt_copy(ckpts, tmp_path, lambda d: (d / "char_tokenizer.json").unlink())
    proc = generate("--checkpoint", target, "--prompt", "F", env_extra={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert_one_line_error(proc, "char_tokenizer.json", str(target))
    assert "download" not in proc.stderr


# ---------------------------------------------------------------------------
# The command line: --help, misspelled options, --interactive
# ---------------------------------------------------------------------------


def load_script(name):
    """scripts/<name>.py as a module, to call its functions in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_help_describes_every_option_with_its_default():
    parser = load_script("generate").build_parser()
    proc = generate("--help")
    assert proc.returncode == 0
    help_text = " ".join(proc.stdout.split())  # argparse wraps lines
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
            line = " ".join(parser.formatter_class("x")._get_help_string(action).split())
            assert "default" in line, action.dest
    for fragment in ("tokens to generate per sample (default: 256)",
                     "0 turns it off (default: 200)", "(default: 0.8)", "--top-p", "(default: off)",
                     "--window-shift", "(default: block_size // 2)"):
        assert fragment in help_text, fragment


@pytest.mark.parametrize("script, argv, suggestion", [
    ("generate.py", ["--max-new-tokes", "5"], "--max-new-tokens"),
    ("generate.py", ["--top_kk=5"], "--top_k"),
    ("evaluate.py", ["--checkpoint", "x", "--data", "y", "--stirde", "4"], "--stride"),
    ("prepare_data.py", ["--tokeniser", "char"], "--tokenizer"),
    ("train.py", ["--max_iter", "5"], "--max_iters"),
    ("train.py", ["--learning-rat", "1e-3"], "--learning-rate"),
])
def test_a_misspelled_option_suggests_the_closest_one(script, argv, suggestion):
    proc = run_script(script, *argv)
    assert_one_line_error(proc, "unrecognized arguments", f"did you mean {suggestion}?")


class InterruptingStream:
    """A stdout stand-in that raises KeyboardInterrupt (as Ctrl-C would) at its `interrupt_at`-th write."""

    def __init__(self, interrupt_at):
        self.interrupt_at, self.writes, self.text = interrupt_at, 0, ""

    def write(self, text):
        self.writes += 1
        if self.writes == self.interrupt_at:
            raise KeyboardInterrupt
        self.text += text

    def flush(self):
        pass


def interactive_session(ckpts, lines, out, prompt=""):
    import types

    from minigpt.loading import load_checkpoint

    script = load_script("generate")
    model, tokenizer, _ = load_checkpoint(ckpts / "char")
    args = types.SimpleNamespace(max_new_tokens=10, temperature=0, top_k=None, top_p=None, num_samples=1,
                                 window_shift=None, min_p=None, repetition_penalty=None, frequency_penalty=0.0,
                                 presence_penalty=0.0, no_repeat_ngram_size=None, stop=None, prompt_lookup=None,
                                 prompt=prompt)
    prompts = iter(lines)

    def read_line(_):
        value = next(prompts)
        if isinstance(value, BaseException):
            raise value
        return value

    script.interactive_loop(model, tokenizer, args, np.random.default_rng(0), out, read_line=read_line)
    return prompts


def test_ctrl_c_in_interactive_mode_stops_the_sample_and_returns_to_the_prompt(ckpts, capsys):
    out = InterruptingStream(interrupt_at=4)  # the prompt, two tokens, then Ctrl-C
    left = interactive_session(ckpts, ["First", "hear", "", "never read"], out)
    assert list(left) == ["never read"]  # the empty line quit
    full = expected_text(ckpts / "char", "hear", seed=0, max_new_tokens=10, temperature=0)[0]
    first = out.text[: out.text.index("\n")]
    assert first.startswith("First") and len(first) == len("First") + 2  # cut after two tokens
    assert out.text.endswith(full)  # the next prompt was answered in full
    assert "sample stopped" in capsys.readouterr().err


def test_ctrl_c_or_end_of_input_at_the_prompt_quits(ckpts):
    for end in (KeyboardInterrupt(), EOFError()):
        out = InterruptingStream(interrupt_at=None)
        left = interactive_session(ckpts, ["hear", end, "never read"], out)
        assert list(left) == ["never read"]
        assert out.text == expected_text(ckpts / "char", "hear", seed=0, max_new_tokens=10, temperature=0)[0] + "\n"


# ---------------------------------------------------------------------------
# The Python API takes what --checkpoint takes
# ---------------------------------------------------------------------------


def test_from_pretrained_accepts_a_training_out_dir(ckpts):
    from_run = GPT.from_pretrained(ckpts / "run")
    best = GPT.from_pretrained(ckpts / "run" / "best")
    latest = GPT.from_pretrained(ckpts / "only_latest")
    for name in best.params:
        np.testing.assert_array_equal(from_run.params[name], best.params[name])
    np.testing.assert_array_equal(latest.params["transformer.wte.weight"],
                                  GPT.from_pretrained(ckpts / "only_latest" / "latest").params["transformer.wte.weight"])
    assert not np.array_equal(from_run.params["transformer.wte.weight"], latest.params["transformer.wte.weight"])
