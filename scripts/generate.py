"""Generate text from a minigpt checkpoint or from OpenAI's GPT-2 weights, streamed as it comes.

    python scripts/generate.py --checkpoint out --prompt "ROMEO:" --max-new-tokens 200
    python scripts/generate.py --checkpoint gpt2 --prompt "The meaning of life is" --top-p 0.9 --seed 1
    python scripts/generate.py --checkpoint gpt2 --interactive
    python scripts/generate.py --checkpoint out --prompts prompts.txt --repetition-penalty 1.3 --stop "\n\n"
    python scripts/generate.py --checkpoint out --prompt "..." --prompt-lookup 8 --temperature 0

Several prompts (--prompts FILE, one per line, or --prompt given several times)
run as one left-padded batch (each row generating what it would alone) and are
printed one after another, each under a `=== prompt i/P, sample j/S ===` line;
one prompt streams as it comes. A --stop string ends a sample and is not
printed. Speculative decoding (--prompt-lookup K, --draft CHECKPOINT) changes
only the speed (see docs/generation.md) and runs the samples one at a time.

--checkpoint is a checkpoint directory (ours or a Hugging Face GPT-2 one), a
training out_dir (its best/, else latest/), or gpt2 / gpt2-medium / gpt2-large /
gpt2-xl (downloaded once into checkpoints/). Without it the training default
out_dir is used. Options take hyphens or underscores (--max-new-tokens,
--max_new_tokens). Text goes to stdout, notes to stderr.
"""

import os
import re
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
    check_stop,
    check_window_shift,
    encode_prompt,
    find_stop,
    generate_stream,
)
from minigpt.loading import load_checkpoint  # noqa: E402
from minigpt.logits_processors import check_processor_args  # noqa: E402
from minigpt.speculative import check_speculative_args  # noqa: E402

SAMPLE_SEPARATOR = "\n" + "-" * 40


def build_parser():
    parser = ArgumentParser(description="Generate text with a GPT model, streaming tokens as they are produced.")
    parser.add_option("--checkpoint", default=None,
                      help="checkpoint dir, training out_dir, Hugging Face GPT-2 dir, or gpt2/gpt2-medium/gpt2-large/"
                           f"gpt2-xl (default: the training out_dir, {TrainConfig().out_dir})")
    prompt = parser.add_mutually_exclusive_group()
    add_option(prompt, "--prompt", action="append", default=None,
               help="text to continue; give it several times for several prompts (default: empty, which starts "
                    "from <|endoftext|>, or a newline for characters)")
    add_option(prompt, "--prompt-file", default=None, help="read the prompt from this UTF-8 file (default: none)")
    add_option(prompt, "--prompts", default=None,
               help="read several prompts from this UTF-8 file, one per line (\\n in a line is a newline); "
                    "- reads stdin (default: none)")
    parser.add_option("--max-new-tokens", type=int, default=256, help="tokens to generate per sample")
    parser.add_option("--temperature", type=float, default=0.8, help="0 is greedy; higher is more random")
    parser.add_option("--top-k", type=int, default=200, help="sample among the k most likely tokens; 0 turns it off")
    parser.add_option("--top-p", type=float, default=None,
                      help="nucleus sampling: the smallest set of tokens whose probability reaches this (default: off)")
    parser.add_option("--min-p", type=float, default=None,
                      help="keep the tokens at least this fraction as likely as the most likely one (default: off)")
    parser.add_option("--repetition-penalty", type=float, default=None,
                      help="divide a positive logit (multiply a negative one) of every token already in the text by "
                           "this; 1.3 is a common choice (default: off)")
    parser.add_option("--frequency-penalty", type=float, default=0.0,
                      help="subtract this times the number of times a token was generated "
                           "(OpenAI's, -2 .. 2; default: 0, off)")
    parser.add_option("--presence-penalty", type=float, default=0.0,
                      help="subtract this from every token generated at least once "
                           "(OpenAI's, -2 .. 2; default: 0, off)")
    parser.add_option("--no-repeat-ngram-size", type=int, default=None,
                      help="never repeat an n-gram of this many tokens (default: off)")
    parser.add_option("--stop", action="append", default=None,
                      help="end a sample when its text contains this string (not printed; \\n is a newline); "
                           "give it several times for several strings (default: none)")
    parser.add_option("--prompt-lookup", type=int, default=None,
                      help="speculative decoding: draft up to this many tokens by finding the last 2 tokens earlier "
                           "in the text; the same text (greedy) or distribution (sampling), faster when the output "
                           "repeats the input (default: off)")
    parser.add_option("--draft", default=None,
                      help="speculative decoding with this smaller checkpoint drafting (same tokenizer); the same "
                           "text (greedy) or distribution (sampling), faster when the two agree often (default: off)")
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
    check_sampling_args(args.temperature, args.top_k, args.top_p, option=hyphenated, min_p=args.min_p)
    check_window_shift(args.window_shift, option=hyphenated)  # its upper bound, block_size, once the model is loaded
    check_processor_args(args.repetition_penalty, args.frequency_penalty, args.presence_penalty,
                         args.no_repeat_ngram_size, option=hyphenated)
    check_speculative_args(args.prompt_lookup, args.draft, option=hyphenated)
    if args.stop is not None:
        args.stop = check_stop([unescape(s) for s in args.stop], option=hyphenated)
    if args.max_new_tokens < 0:
        raise MinigptError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise MinigptError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.seed is not None and args.seed < 0:
        raise MinigptError(f"--seed must be 0 or more, got {args.seed}")
    if args.prompt_file is not None:
        args.prompts = [read_text_file(args.prompt_file, what="prompt file")]
    elif args.prompts is not None:
        args.prompts = read_prompts(args.prompts)
    else:
        args.prompts = args.prompt or [""]
    args.prompt = args.prompts[0]
    return args


def unescape(text):
    """\\n, \\t, \\r and \\\\ written in an option or a prompts line, as the characters they name."""
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


def read_prompts(path):
    """The prompts of a --prompts file (or stdin for -): one per non-empty line, escapes decoded."""
    text = sys.stdin.read() if path == "-" else read_text_file(path, what="prompts file")
    prompts = [unescape(line) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise MinigptError(f"the prompts file {'(stdin)' if path == '-' else path} holds no prompt: "
                           "write one prompt per line")
    return prompts


def controls(args, tokenizer, draft_model):
    """generate_stream's steering keywords from the options."""
    return dict(min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
                no_repeat_ngram_size=args.no_repeat_ngram_size, stop=args.stop, tokenizer=tokenizer,
                prompt_lookup=args.prompt_lookup, draft_model=draft_model)


class StopText:
    """Text to print as it comes, up to (not including) the first stop string.

    The last (longest stop string - 1) characters are held back: they may be the
    start of a stop string that the next token completes.
    """

    def __init__(self, stop):
        self.stops = stop
        self.hold = 0 if stop is None else max(map(len, stop)) - 1
        self.text, self.emitted, self.done = "", 0, False

    def push(self, new) -> str:
        """The part of the text so far that is safe to print now."""
        if self.done:
            return ""
        self.text += new
        if self.stops is not None:
            hit = find_stop(self.text, self.stops, max(0, self.emitted - self.hold))
            if hit is not None:
                self.done = True
                return self._emit(hit)
        return self._emit(len(self.text) - self.hold)

    def flush(self) -> str:
        return "" if self.done else self._emit(len(self.text))

    def _emit(self, end):
        if end <= self.emitted:
            return ""
        new, self.emitted = self.text[self.emitted:end], end
        return new


def sample_text(tokenizer, ids, stop):
    """The text of generated ids: cut at `<|endoftext|>` and before the first stop string."""
    eot = tokenizer.eot_token
    ids = [int(i) for i in ids]
    if eot in ids:
        ids = ids[: ids.index(eot)]
    text = StopText(stop)
    return text.push(tokenizer.decode(ids)) + text.flush()


def stream_sample(model, tokenizer, prompt_ids, args, rng, out, draft_model=None):
    """Write one sample to `out` token by token; `<|endoftext|>` or a stop string ends it, unprinted."""
    decoder, text = StreamDecoder(tokenizer), StopText(args.stop)
    eot = tokenizer.eot_token
    for (token,) in generate_stream(model, np.array([prompt_ids]), args.max_new_tokens, args.temperature,
                                    args.top_k, args.top_p, seed=rng, stop_token=eot, window_shift=args.window_shift,
                                    **controls(args, tokenizer, draft_model)):
        if token == eot:
            break
        out.write(text.push(decoder.push([token])))
        out.flush()
    out.write(text.push(decoder.flush()) + text.flush())


def respond(model, tokenizer, prompt, prompt_ids, args, rng, out, draft_model=None):
    """The prompt, then num_samples continuations of it, separated by a line of dashes."""
    for i in range(args.num_samples):
        if i > 0:
            out.write(SAMPLE_SEPARATOR + "\n")
        out.write(prompt)
        stream_sample(model, tokenizer, prompt_ids, args, rng, out, draft_model)
        out.write("\n")
        out.flush()


def respond_all(model, tokenizer, prompts, args, rng, out, draft_model=None):
    """Several prompts, num_samples each: one left-padded batch (or one at a time when speculative), each sample
    printed under its own `=== prompt i/P, sample j/S ===` line."""
    ids = [encode_prompt(tokenizer, p, model.config.block_size, note=note) for p in prompts]
    rows = [(i, j) for i in range(len(prompts)) for j in range(args.num_samples)]
    batch = [np.array(ids[i]) for i, _ in rows]
    options = dict(seed=rng, stop_token=tokenizer.eot_token, window_shift=args.window_shift,
                   **controls(args, tokenizer, draft_model))
    sampling = (args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.prompt_lookup is None and draft_model is None:
        steps = list(generate_stream(model, batch, *sampling, **options))
        generated = np.stack(steps, axis=1) if steps else np.zeros((len(rows), 0), dtype=np.int64)
    else:  # speculative decoding runs one sequence at a time
        generated = [np.array([s[0] for s in generate_stream(model, [row], *sampling, **options)]) for row in batch]
    for (i, j), new in zip(rows, generated):
        out.write(f"=== prompt {i + 1}/{len(prompts)}, sample {j + 1}/{args.num_samples} ===\n")
        out.write(prompts[i] + sample_text(tokenizer, new, args.stop) + "\n")
        out.flush()


def load_draft(path, model, tokenizer, device):
    """The --draft model, refused in one line unless its tokenizer is the model's."""
    draft, draft_tokenizer, _ = load_checkpoint(path, device=device)
    if not same_tokenizer(tokenizer, draft_tokenizer) or draft.config.vocab_size != model.config.vocab_size:
        raise MinigptError(f"the draft model {path} does not share the model's tokenizer (vocabulary "
                           f"{draft.config.vocab_size} vs {model.config.vocab_size}): draft with a model trained "
                           f"with the same tokenizer")
    if draft.num_params() >= model.num_params():
        note(f"the draft model ({draft.num_params():,} parameters) is not smaller than the model "
             f"({model.num_params():,}): expect no speed-up")
    return draft


def same_tokenizer(a, b):
    """True when two tokenizers map every id to the same bytes (same kind, size and end-of-text token)."""
    if type(a) is not type(b) or a.vocab_size != b.vocab_size or a.eot_token != b.eot_token:
        return False
    decode = (lambda t, i: t.decode_bytes([i])) if hasattr(a, "decode_bytes") else (lambda t, i: t.decode([i]))
    return all(decode(a, i) == decode(b, i) for i in range(a.vocab_size) if i != a.eot_token)


def interactive_loop(model, tokenizer, args, rng, out, read_line=input, draft_model=None):
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
            respond(model, tokenizer, prompt, prompt_ids, args, rng, out, draft_model)
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
    draft_model = None if args.draft is None else load_draft(args.draft, model, tokenizer, args.device)
    if not args.interactive and len(args.prompts) == 1:
        prompt_ids = encode_prompt(tokenizer, args.prompt, model.config.block_size, note=note)
    if args.seed is None and args.temperature > 0:
        args.seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        note(f"sampling with seed {args.seed} (pass --seed {args.seed} to repeat)")
    rng = np.random.default_rng(args.seed)
    out = sys.stdout
    out.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?", not a crash
    if args.interactive:
        interactive_loop(model, tokenizer, args, rng, out, draft_model=draft_model)
    elif len(args.prompts) == 1:
        respond(model, tokenizer, args.prompt, prompt_ids, args, rng, out, draft_model)
    else:
        respond_all(model, tokenizer, args.prompts, args, rng, out, draft_model)


if __name__ == "__main__":
    try:
        run_cli(main, sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C while generating: stop quietly
        print(file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # so that the interpreter's final flush does not fail again
        sys.exit(0)
