"""Generate text from a minigpt checkpoint or from OpenAI's GPT-2 weights, streamed as it comes.

    python scripts/generate.py --checkpoint out --prompt "ROMEO:" --max-new-tokens 200
    python scripts/generate.py --checkpoint gpt2 --prompt "The meaning of life is" --top-p 0.9 --seed 1
    python scripts/generate.py --checkpoint gpt2 --interactive

--checkpoint is a checkpoint directory (ours or a Hugging Face GPT-2 one), a
training out_dir (its best/, else latest/), or gpt2 / gpt2-medium / gpt2-large /
gpt2-xl (downloaded once into checkpoints/). Without it the training default
out_dir is used. Options take hyphens or underscores (--max-new-tokens,
--max_new_tokens). Text goes to stdout, notes to stderr.
"""

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minigpt.cli import ArgumentParser, add_option, hyphenated  # noqa: E402
from minigpt.config import TrainConfig  # noqa: E402
from minigpt.data import read_text_file  # noqa: E402
from minigpt.errors import MinigptError, run_cli  # noqa: E402
from minigpt.generation import (  # noqa: E402
    StreamDecoder,
    check_sampling_args,
    check_window_shift,
    encode_prompt,
    generate_stream,
)
from minigpt.loading import load_checkpoint  # noqa: E402

SAMPLE_SEPARATOR = "\n" + "-" * 40


def build_parser():
    parser = ArgumentParser(description="Generate text with a GPT model, streaming tokens as they are produced.")
    parser.add_option("--checkpoint", default=None,
                      help="checkpoint dir, training out_dir, Hugging Face GPT-2 dir, or gpt2/gpt2-medium/gpt2-large/"
                           f"gpt2-xl (default: the training out_dir, {TrainConfig().out_dir})")
    prompt = parser.add_mutually_exclusive_group()
    add_option(prompt, "--prompt", default="",
               help="text to continue (default: empty, which starts from <|endoftext|>, or a newline for characters)")
    add_option(prompt, "--prompt-file", default=None, help="read the prompt from this UTF-8 file (default: none)")
    parser.add_option("--max-new-tokens", type=int, default=256, help="tokens to generate per sample")
    parser.add_option("--temperature", type=float, default=0.8, help="0 is greedy; higher is more random")
    parser.add_option("--top-k", type=int, default=200, help="sample among the k most likely tokens; 0 turns it off")
    parser.add_option("--top-p", type=float, default=None,
                      help="nucleus sampling: the smallest set of tokens whose probability reaches this (default: off)")
    parser.add_option("--window-shift", type=int, default=None,
                      help="past the model's context (block_size tokens), the window moves this many tokens at a time "
                           "and its kept tokens are re-run once: 1 re-runs the whole window at every token (exact, "
                           "slowest); a larger shift is faster, and every token still sees at least block_size - "
                           "shift + 1 tokens (default: block_size // 2)")
    parser.add_option("--num-samples", type=int, default=1, help="independent samples per prompt")
    parser.add_option("--seed", type=int, default=None, help="makes sampling reproducible (default: a fresh seed, printed)")
    parser.add_option("--device", default="cpu", choices=("cpu", "gpu"), help="cpu (NumPy) or gpu (CuPy)")
    parser.add_option("--interactive", action="store_true",
                      help="keep the model loaded and read prompts from stdin; a --prompt is answered first (default: off)")
    return parser


def note(message):
    print(f"note: {message}", file=sys.stderr, flush=True)


def parse_options(argv):
    args = build_parser().parse_args(argv)
    if args.top_k < 0:
        raise MinigptError(f"--top-k must be a whole number >= 1, or 0 to turn it off, got {args.top_k}")
    if args.top_k == 0:
        args.top_k = None
    check_sampling_args(args.temperature, args.top_k, args.top_p, option=hyphenated)
    check_window_shift(args.window_shift, option=hyphenated)  # its upper bound, block_size, once the model is loaded
    if args.max_new_tokens < 0:
        raise MinigptError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise MinigptError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.seed is not None and args.seed < 0:
        raise MinigptError(f"--seed must be 0 or more, got {args.seed}")
    if args.prompt_file is not None:
        args.prompt = read_text_file(args.prompt_file, what="prompt file")
    return args


def stream_sample(model, tokenizer, prompt_ids, args, rng, out):
    """Write one sample to `out` token by token; `<|endoftext|>` ends it and is not printed."""
    decoder = StreamDecoder(tokenizer)
    eot = tokenizer.eot_token
    for (token,) in generate_stream(model, np.array([prompt_ids]), args.max_new_tokens, args.temperature,
                                    args.top_k, args.top_p, seed=rng, stop_token=eot, window_shift=args.window_shift):
        if token == eot:
            break
        out.write(decoder.push([token]))
        out.flush()
    out.write(decoder.flush())


def respond(model, tokenizer, prompt, prompt_ids, args, rng, out):
    """The prompt, then num_samples continuations of it, separated by a line of dashes."""
    for i in range(args.num_samples):
        if i > 0:
            out.write(SAMPLE_SEPARATOR + "\n")
        out.write(prompt)
        stream_sample(model, tokenizer, prompt_ids, args, rng, out)
        out.write("\n")
        out.flush()


def interactive_loop(model, tokenizer, args, rng, out, read_line=input):
    """Read a prompt per line and answer it, until an empty line, Ctrl-D or a Ctrl-C at the prompt.

    A --prompt (or --prompt-file) given too is the first prompt, answered before
    the first line is read. A bad prompt is reported and the loop goes on; Ctrl-C
    during a sample stops that sample and returns to the prompt.
    """
    note("interactive: type a prompt and press Enter; Ctrl-C stops a sample; "
         "an empty line, Ctrl-D or Ctrl-C at the prompt quits")
    first = args.prompt or None
    while True:
        try:
            prompt, first = (first, None) if first is not None else (read_line("> "), None)
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not prompt:
            return
        try:
            prompt_ids = encode_prompt(tokenizer, prompt, model.config.block_size, note=note)
        except MinigptError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            continue
        try:
            respond(model, tokenizer, prompt, prompt_ids, args, rng, out)
        except KeyboardInterrupt:
            out.write("\n")
            out.flush()
            note("sample stopped (Ctrl-C at the prompt quits)")


def main(argv=None):
    args = parse_options(argv)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = TrainConfig().out_dir
        if not Path(checkpoint).exists():
            raise MinigptError(f"no --checkpoint given and the training out_dir {checkpoint!r} does not exist: "
                               f"train a model first (python scripts/train.py) or pass --checkpoint gpt2")
        note(f"no --checkpoint given: using the training out_dir {checkpoint!r}")
    model, tokenizer, _ = load_checkpoint(checkpoint, device=args.device)
    check_window_shift(args.window_shift, model.config.block_size, option=hyphenated)
    if not args.interactive:
        prompt_ids = encode_prompt(tokenizer, args.prompt, model.config.block_size, note=note)
    if args.seed is None and args.temperature > 0:
        args.seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        note(f"sampling with seed {args.seed} (pass --seed {args.seed} to repeat)")
    rng = np.random.default_rng(args.seed)
    out = sys.stdout
    out.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?", not a crash
    if args.interactive:
        interactive_loop(model, tokenizer, args, rng, out)
    else:
        respond(model, tokenizer, args.prompt, prompt_ids, args, rng, out)


if __name__ == "__main__":
    try:
        run_cli(main, sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C while generating: stop quietly
        print(file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # so that the interpreter's final flush does not fail again
        sys.exit(0)
