"""Benchmark the GPU path in one call: a GPT-2 training step, generation and memory, against PyTorch eager.

    python scripts/bench/bench_gpu.py                     # GPT-2 124M, B=8, T=1024, float32 with TF32
    python scripts/bench/bench_gpu.py --no-torch          # minigpt only
    python scripts/bench/bench_gpu.py --no-tf32 --steps 5
    python scripts/bench/bench_gpu.py --tiny --no-torch --seq-len 16   # checks that the script runs (seconds)

Needs CuPy and an NVIDIA GPU; the PyTorch rows need torch with CUDA and
transformers (skipped with a note otherwise). Both sides train the same
randomly initialised weights on the same random batch: minigpt's hand-written
forward/backward + `minigpt.optim.FlatAdamW` (clipping and AdamW in one kernel over one flat
buffer, the trainer's optimizer), against transformers'
`GPT2LMHeadModel` + `torch.optim.AdamW` in eager mode (no torch.compile), each
step = forward, cross-entropy, backward, gradient clipping to 1.0, AdamW.

Reported: training tokens/s (steps run back to back, one device sync at the
end, as in a training loop), model FLOPs utilisation with FLOPs per token
6 N + 6 n_layer n_embd T (GPT.flops_per_token: N without position embeddings,
attention counted for its causal half) against the card's nominal dense TF32
peak and against a large TF32 matmul measured here, the device memory each side held at its peak
(CuPy's pool never returns blocks, so the pool size after the run is its
high-water mark; for PyTorch, max_memory_reserved), the first step's loss on
both sides (the same weights and batch: a parity check), and generation
tokens/s (batch 1, KV cache, sampling at temperature 1, every token copied to
the host as `generate` does).
"""

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py, also when loaded by runpy (the tests)
import machine  # noqa: E402
from minigpt.backend import get_xp, scalar, set_tf32, tf32_enabled, to_host  # noqa: E402
from minigpt.errors import MinigptError, run_cli  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402
from minigpt.optim import FlatAdamW  # noqa: E402
from minigpt.weights import config_to_hf  # noqa: E402

# Nominal dense TF32 tensor-core peaks from NVIDIA's datasheets (half the
# "with sparsity" figure), in TFLOP/s, matched against the device name in order.
NOMINAL_TF32_TFLOPS = (
    ("H100 PCIe", 378.0),
    ("H100 NVL", 417.5),
    ("H200 NVL", 417.5),
    ("H100", 494.5),  # SXM
    ("H200", 494.5),  # SXM
    ("A100", 156.0),
)

LEARNING_RATE = 6e-4


def nominal_peak_tflops(device_name: str, tf32: bool):
    if not tf32:
        return None  # plain float32 peaks differ too much between SKUs to guess
    for key, tflops in NOMINAL_TF32_TFLOPS:
        if key in device_name:
            return tflops
    return None


def random_batch(config: GPTConfig, batch_size: int, seq_len: int, seed: int = 0):
    """Host (idx, targets) of uniform random tokens; both sides train on these."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (batch_size, seq_len + 1), dtype=np.int64)
    return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


# ---------------------------------------------------------------------------
# minigpt on CuPy
# ---------------------------------------------------------------------------


def measure_matmul_tflops(cupy, n: int, repeats: int = 10) -> float:
    """TFLOP/s of an n x n x n float32 matmul (TF32 when enabled): what the linear layers can reach."""
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    a @ b
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    cupy.cuda.Device().synchronize()
    seconds = (time.perf_counter() - start) / repeats
    del a, b
    cupy.get_default_memory_pool().free_all_blocks()
    return 2 * n**3 / seconds / 1e12


def bench_minigpt_training(cupy, config, idx_host, targets_host, warmup, steps):
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    model = GPT(config, dtype="float32", device="gpu", seed=0).train()
    optimizer = FlatAdamW(model.params, lr=LEARNING_RATE)  # betas (0.9, 0.95), weight decay 0.1, as torch's below
    idx, targets = cupy.asarray(idx_host), cupy.asarray(targets_host)

    def step():
        _, loss = model.forward(idx, targets)
        grads = model.backward()
        optimizer.step(grads, grad_clip=1.0)
        return loss

    # The first step's loss is read before any update: the weights are still the ones torch gets.
    initial_params = {name: np.array(to_host(p)) for name, p in model.params.items()}  # copies
    first_loss = scalar(step())
    for _ in range(warmup - 1):
        step()
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    cupy.cuda.Device().synchronize()
    seconds = (time.perf_counter() - start) / steps
    result = dict(
        step_s=seconds,
        first_loss=first_loss,
        last_loss=scalar(loss),
        peak_bytes=pool.total_bytes(),
        flops_per_token=model.flops_per_token(idx_host.shape[1]),
    )
    del model, optimizer, idx, targets, loss
    pool.free_all_blocks()
    return result, initial_params


def bench_minigpt_generation(cupy, config, params, prompt, new_tokens):
    model = GPT(config, dtype="float32", device="gpu", seed=0).eval()
    for name, value in params.items():
        model.params[name][...] = cupy.asarray(value)
    # the prompt stays on the host: generate reads it there (a device prompt would be copied back, a sync)
    model.generate(prompt, 4, seed=0)  # compiles the kernels, warms the pool
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    out = model.generate(prompt, new_tokens, seed=0)
    cupy.cuda.Device().synchronize()
    seconds = time.perf_counter() - start
    assert out.shape == (prompt.shape[0], prompt.shape[1] + new_tokens), out.shape
    del model
    cupy.get_default_memory_pool().free_all_blocks()
    return prompt.shape[0] * new_tokens / seconds


# ---------------------------------------------------------------------------
# PyTorch eager on the same GPU
# ---------------------------------------------------------------------------


def import_torch_cuda():
    """(torch, transformers) when both are installed and torch sees the GPU; else a reason string."""
    try:
        import torch
        import transformers
    except ImportError as err:
        return None, f"PyTorch rows skipped: {err.name} is not installed"
    if not torch.cuda.is_available():
        return None, "PyTorch rows skipped: this torch build has no CUDA (install a CUDA wheel of torch)"
    return (torch, transformers), None


def torch_model(torch, transformers, config: GPTConfig, params, attn_implementation):
    """GPT2LMHeadModel on the GPU holding minigpt's weights (the same HF key names and Conv1D layout)."""
    hf_config = transformers.GPT2Config.from_dict(config_to_hf(config))
    hf_config._attn_implementation = attn_implementation
    model = transformers.GPT2LMHeadModel(hf_config)
    state = {name: torch.from_numpy(value) for name, value in params.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight" and not k.endswith(".attn.bias")]:
        raise MinigptError(f"minigpt's parameter names do not fit GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.cuda()


def bench_torch_training(torch, transformers, config, params, idx_host, targets_host, warmup, steps, attn_implementation):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = torch_model(torch, transformers, config, params, attn_implementation).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.1)
    idx = torch.from_numpy(idx_host).cuda()
    targets = torch.from_numpy(targets_host).cuda()

    def step():
        logits = model(idx).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    first_loss = step().item()
    for _ in range(warmup - 1):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    result = dict(step_s=seconds, first_loss=first_loss, last_loss=loss.item(),
                  peak_bytes=torch.cuda.max_memory_reserved())
    del model, optimizer, idx, targets, loss
    torch.cuda.empty_cache()
    return result


def bench_torch_generation(torch, transformers, config, params, prompt, new_tokens, attn_implementation):
    model = torch_model(torch, transformers, config, params, attn_implementation).eval()
    prompt_t = torch.from_numpy(prompt).cuda()

    def generate(n):
        return model.generate(prompt_t, attention_mask=torch.ones_like(prompt_t), max_new_tokens=n, min_new_tokens=n,
                              do_sample=True, top_k=0, pad_token_id=config.vocab_size - 1)

    with torch.no_grad():
        generate(4)
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(new_tokens)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert tuple(out.shape) == (prompt.shape[0], prompt.shape[1] + new_tokens), tuple(out.shape)
    del model
    torch.cuda.empty_cache()
    return prompt.shape[0] * new_tokens / seconds


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def report(args, device_name, versions, matmul_tflops, nominal, mine, theirs, gen_mine, gen_theirs, note):
    tokens = args.batch_size * args.seq_len
    fpt = mine["flops_per_token"]

    def throughput(r):
        return None if r is None else tokens / r["step_s"]

    def mfu(r, peak):
        return None if r is None or peak is None else 100 * throughput(r) * fpt / (peak * 1e12)

    def ratio(a, b):
        return None if a is None or b is None else 100 * a / b

    gib = 2**30
    rows = [
        ("training tokens/s", throughput(mine), throughput(theirs), ",.0f"),
        ("training step (ms)", 1e3 * mine["step_s"], theirs and 1e3 * theirs["step_s"], ".1f"),
        (f"MFU vs nominal {fmt(nominal, '.1f')} TFLOP/s (%)", mfu(mine, nominal), mfu(theirs, nominal), ".1f"),
        (f"MFU vs measured matmul {matmul_tflops:.1f} TFLOP/s (%)", mfu(mine, matmul_tflops),
         mfu(theirs, matmul_tflops), ".1f"),
        ("peak device memory (GiB)", mine["peak_bytes"] / gib, theirs and theirs["peak_bytes"] / gib, ".2f"),
        ("loss, first step (same weights, same batch)", mine["first_loss"], theirs and theirs["first_loss"], ".5f"),
        (f"loss after {args.warmup + args.steps} steps", mine["last_loss"], theirs and theirs["last_loss"], ".5f"),
        (f"generation tokens/s (B=1, {args.gen_tokens} new tokens)", gen_mine, gen_theirs, ",.1f"),
    ]
    print(f"# {date.today()}  {device_name}  {versions}")
    print(f"# {args.model}: B={args.batch_size} T={args.seq_len} float32, TF32 {'on' if tf32_enabled() else 'off'}, "
          f"{fpt / 1e6:.1f} MFLOP/token, {args.steps} timed steps after {args.warmup} warm-up")
    if note:
        print(f"# {note}")
    print()
    print(f"| {'':<48} | minigpt (CuPy) | PyTorch eager ({args.torch_attention}) | minigpt / PyTorch |")
    print("|---|---:|---:|---:|")
    for label, a, b, spec in rows:
        speed = "tokens/s" in label
        print(f"| {label:<48} | {fmt(a, spec)} | {fmt(b, spec)} | {fmt(ratio(a, b) if speed else None, '.0f')}"
              f"{'%' if speed and a is not None and b is not None else ''} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", choices=list(GPTConfig.PRESETS), help="architecture (random init)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernel compilation, pool warm-up)")
    parser.add_argument("--gen-prompt", type=int, default=16, help="prompt length for the generation benchmark")
    parser.add_argument("--gen-tokens", type=int, default=256, help="tokens to generate")
    parser.add_argument("--no-tf32", action="store_true", help="plain float32 matmuls on both sides")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--torch-attention", default="sdpa", choices=["sdpa", "eager"],
                        help="transformers' attention implementation (sdpa is its default)")
    parser.add_argument("--peak-tflops", type=float, help="the card's peak, if not in the built-in table")
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-layer, 32-wide model (the preset's vocabulary and context) and a 256 x 256 matmul: "
                             "the whole script in seconds, to check that it runs (its figures mean nothing; "
                             "tests/test_strict_device.py runs it on the CPU stand-in of CuPy)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        raise MinigptError("--warmup and --steps must be at least 1")
    config = GPTConfig.preset(args.model, **(dict(n_layer=2, n_head=2, n_embd=32) if args.tiny else {}))
    if not 1 <= args.seq_len <= config.block_size or args.gen_prompt + args.gen_tokens > config.block_size:
        raise MinigptError(f"--seq-len and --gen-prompt + --gen-tokens must fit the block size {config.block_size}")

    set_tf32(not args.no_tf32)  # before CuPy's first matmul
    cupy = get_xp("gpu")  # a clear MinigptError without CuPy or a device
    print(machine.header(None if args.no_torch else sys.executable))  # the host; PyTorch runs in this process
    device_name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    device_name = device_name.decode() if isinstance(device_name, bytes) else device_name
    versions = f"CuPy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"
    matmul_tflops = measure_matmul_tflops(cupy, 256 if args.tiny else 8192)
    nominal = args.peak_tflops or nominal_peak_tflops(device_name, tf32_enabled())

    idx, targets = random_batch(config, args.batch_size, args.seq_len)
    prompt = random_batch(config, 1, args.gen_prompt, seed=1)[0]
    print(f"minigpt training ({args.warmup + args.steps} steps) ...", file=sys.stderr)
    mine, params = bench_minigpt_training(cupy, config, idx, targets, args.warmup, args.steps)
    print("minigpt generation ...", file=sys.stderr)
    gen_mine = bench_minigpt_generation(cupy, config, params, prompt, args.gen_tokens)

    theirs = gen_theirs = None
    modules, note = (None, "PyTorch rows skipped (--no-torch)") if args.no_torch else import_torch_cuda()
    if modules:
        torch, transformers = modules
        torch.backends.cuda.matmul.allow_tf32 = tf32_enabled()
        torch.backends.cudnn.allow_tf32 = tf32_enabled()
        versions += f", torch {torch.__version__}, transformers {transformers.__version__}"
        print("PyTorch training ...", file=sys.stderr)
        theirs = bench_torch_training(torch, transformers, config, params, idx, targets, args.warmup, args.steps,
                                      args.torch_attention)
        print("PyTorch generation ...", file=sys.stderr)
        gen_theirs = bench_torch_generation(torch, transformers, config, params, prompt, args.gen_tokens,
                                            args.torch_attention)
    report(args, device_name, versions, matmul_tflops, nominal, mine, theirs, gen_mine, gen_theirs, note)


if __name__ == "__main__":
    run_cli(main)
