"""Benchmark: speculative decoding at batch 1, minigpt beside Hugging Face, on two models trained here.

Greedy decoding, batch 1, new tokens over the whole call (prefill included),
best of --repeats rounds with every method taking its turn in each round (load
from other processes then slows all of them alike). Two tasks:

    grounded   continue a passage that the prompt has just quoted: the prompt is a passage of the corpus,
               a blank line, and the passage's first line; the answer should repeat the passage
    free       continue the opening of a passage (nothing to copy)

Methods: plain decoding; --prompt-lookup K (n-gram drafting); --draft (a small
model drafting for the target). Acceptance rate = accepted drafts / drafted
tokens; tokens per forward = new tokens / target forwards. With --compare-hf
(needs torch and transformers, as `pip install torch transformers` gives), Hugging Face's
greedy generate, `prompt_lookup_num_tokens` and `assistant_model` run on the same
checkpoints (they are Hugging Face GPT-2 files already), on the same threads.

    python scripts/bench/bench_speculative.py --target OUT_BIG --draft OUT_SMALL [--compare-hf]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
import machine  # noqa: E402  (scripts/bench/machine.py, beside this script)

from minigpt.errors import run_cli  # noqa: E402
from minigpt.generation import generate_stream  # noqa: E402
from minigpt.loading import load_checkpoint  # noqa: E402
from minigpt.logits_processors import LogitsProcessors  # noqa: E402
from minigpt.speculative import speculative_steps  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="the model's checkpoint")
    parser.add_argument("--draft", required=True, help="a smaller checkpoint with the same tokenizer")
    parser.add_argument("--data", required=True, help="a text file the passages come from (e.g. tinyshakespeare.txt)")
    parser.add_argument("--passages", type=int, default=4)
    parser.add_argument("--passage-chars", type=int, default=110)
    parser.add_argument("--new-tokens", type=int, default=120)
    parser.add_argument("--prompt-lookup", type=int, default=8, help="K, tokens drafted per round by prompt lookup")
    parser.add_argument("--draft-tokens", type=int, default=4, help="tokens drafted per round by the draft model")
    parser.add_argument("--ngram", type=int, default=3,
                        help="also prompt lookup matching up to this many tokens (Hugging Face's default is 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-hf", action="store_true")
    return parser.parse_args(argv)


def prompts_of(text, tokenizer, n, chars, task):
    """n prompts from passages spread over the corpus, each starting at a line."""
    prompts = []
    for i in range(n):
        start = text.index("\n\n", len(text) * (i + 1) // (n + 2)) + 2
        passage = text[start:start + chars]
        first_line = passage.split("\n")[0] + "\n"
        prompt = passage + "\n\n" + first_line if task == "grounded" else passage
        prompts.append(np.array(tokenizer.encode(prompt), dtype=np.int64))
    return prompts


def minigpt_method(model, kind, args, draft=None, ngram=2):
    """A function of a prompt giving (new ids, stats) for one minigpt method."""
    def run(prompt):
        stats = {}
        if kind == "plain":
            ids = [int(s[0]) for s in generate_stream(model, prompt[None], args.new_tokens, temperature=0)]
            return ids, {"rounds": len(ids)}
        processors = LogitsProcessors([prompt], model.config.vocab_size, model.xp)
        steps = speculative_steps(model, prompt, processors, dict(temperature=0, top_k=None, top_p=None, min_p=None),
                                  np.random.default_rng(0), None,
                                  prompt_lookup=args.prompt_lookup if kind == "lookup" else None,
                                  draft_model=draft if kind == "draft" else None, draft_tokens=args.draft_tokens,
                                  max_matching_ngram_size=ngram, stats=stats)
        ids = [int(next(steps)[0]) for _ in range(args.new_tokens)]
        steps.close()
        return ids, stats
    return run


def hf_method(model, kind, args, assistant=None):
    import torch

    def run(prompt):
        options = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                       pad_token_id=0)
        if kind == "lookup":
            options["prompt_lookup_num_tokens"] = args.prompt_lookup
        if kind == "draft":
            options["assistant_model"] = assistant
        ids = torch.tensor(prompt[None])
        with torch.no_grad():  # an explicit mask: id 0 is a newline here, not padding
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **options)
        return out[0, len(prompt):].tolist(), {}
    return run


def main(argv=None):
    args = parse_args(argv)
    print(machine.header(sys.executable if args.compare_hf else None))  # --compare-hf runs torch in this process
    model, tokenizer, _ = load_checkpoint(args.target)
    draft, _, _ = load_checkpoint(args.draft)
    text = Path(args.data).read_text(encoding="utf-8")
    methods = {f"minigpt {kind}": minigpt_method(model, kind, args, draft) for kind in ("plain", "lookup", "draft")}
    methods[f"minigpt lookup n={args.ngram}"] = minigpt_method(model, "lookup", args, ngram=args.ngram)
    if args.compare_hf:
        import torch
        from transformers import GPT2LMHeadModel

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        hf_model = GPT2LMHeadModel.from_pretrained(args.target).eval()
        hf_draft = GPT2LMHeadModel.from_pretrained(args.draft).eval()
        for kind in ("plain", "lookup", "draft"):
            methods[f"HF {kind}"] = hf_method(hf_model, kind, args, hf_draft)
    print(f"# target {args.target}: {model.num_params():,} parameters; draft {args.draft}: "
          f"{draft.num_params():,}; block_size {model.config.block_size}; {args.new_tokens} new tokens, greedy, B = 1; "
          f"prompt lookup K = {args.prompt_lookup}, draft model k = {args.draft_tokens}")
    print("| task | method | tokens/s | vs plain (same library) | acceptance | tokens per target forward | "
          "same tokens as minigpt plain |")
    print("|---|---|---|---|---|---|---|")
    for task in ("grounded", "free"):
        prompts = prompts_of(text, tokenizer, args.passages, args.passage_chars, task)
        assert all(len(p) + args.new_tokens <= model.config.block_size for p in prompts), "Hugging Face stops there"
        best = {name: float("inf") for name in methods}
        results = {}
        for _ in range(args.repeats):
            for name, run in methods.items():
                start = time.perf_counter()
                results[name] = [run(p) for p in prompts]
                best[name] = min(best[name], time.perf_counter() - start)
        reference = [ids for ids, _ in results["minigpt plain"]]
        for name in methods:
            tokens = sum(len(ids) for ids, _ in results[name])
            stats = [s for _, s in results[name]]
            drafted = sum(s.get("drafted", 0) for s in stats)
            accepted = sum(s.get("accepted", 0) for s in stats)
            rounds = sum(s.get("rounds", 0) for s in stats)
            plain = best[name.split()[0] + " plain"]
            same = sum(ids == ref for (ids, _), ref in zip(results[name], reference))
            acceptance = f"{accepted / drafted:.0%}" if drafted else "-"
            per_forward = f"{tokens / rounds:.2f}" if rounds else "-"
            print(f"| {task} | {name} | {tokens / best[name]:.0f} | {plain / best[name]:.2f}x | {acceptance} | "
                  f"{per_forward} | {same}/{len(prompts)} |")


if __name__ == "__main__":
    run_cli(main)
