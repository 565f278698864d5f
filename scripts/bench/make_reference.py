"""Write the reference fixtures in tests/fixtures/ with PyTorch + transformers (developers only).

    pip install torch transformers   # never needed by the tests themselves
    python scripts/bench/make_reference.py

Writes:
  gpt2_tiny_hub/            config.json + model.safetensors in the hub's naming (`h.0...`, mask buffers, no lm_head)
  gpt2_tiny_saved/          the same weights as GPT2LMHeadModel.save_pretrained writes them (`transformer.` prefix)
  gpt2_tiny_reference_{float32,float64}.safetensors
                            input_ids, targets (-1 = ignored), logits, loss and `grad.<name>` for every parameter,
                            from torch autograd on the same model
  adamw_float64.safetensors 10 steps of torch.optim.AdamW on a (4, 3) weight (decayed) and a (3,) bias (not decayed)
  variants_float64.safetensors
                            issue 16's layers from torch: torch.nn.RMSNorm, F.gelu (exact), F.silu, a SwiGLU
                            MLP, Llama's apply_rotary_pos_emb, and attention through
                            F.scaled_dot_product_attention(enable_gqa=True): inputs, outputs, autograd gradients
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from transformers import GPT2Config, GPT2LMHeadModel

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
SEED = 1234


def tiny_model():
    """A random GPT-2 with non-trivial LayerNorm and bias values and a vocabulary that is not a multiple of 8."""
    torch.manual_seed(SEED)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=37,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.mul_(10.0)  # larger weights: attention far from uniform, gradients far from zero
    return model.eval()


def write_hub_naming(model, directory):
    """The hub's `gpt2` layout: no `transformer.` prefix, causal-mask buffers, no lm_head."""
    directory.mkdir(parents=True, exist_ok=True)
    n_pos = model.config.n_positions
    tensors = {k: v.detach().numpy().copy() for k, v in model.transformer.state_dict().items()
               if not k.endswith("attn.bias") or k.endswith("c_attn.bias")}
    mask = np.tril(np.ones((n_pos, n_pos), dtype=np.float32))[None, None]
    for i in range(model.config.n_layer):
        tensors[f"h.{i}.attn.bias"] = mask
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_reference(dtype, path):
    model = tiny_model().to(dtype)  # the same seeded weights, in this dtype
    rng = np.random.default_rng(SEED)
    input_ids = rng.integers(0, 37, size=(3, 11))
    targets = rng.integers(0, 37, size=(3, 11))
    targets[0, 2] = targets[2, 7] = -1
    logits = model(torch.from_numpy(input_ids)).logits
    loss = F.cross_entropy(logits.reshape(-1, 37), torch.from_numpy(targets).reshape(-1), ignore_index=-1)
    loss.backward()
    out = {"input_ids": input_ids, "targets": targets, "logits": logits.detach().numpy(), "loss": loss.detach().numpy()}
    for name, p in model.named_parameters():
        if name != "lm_head.weight":  # tied: its gradient is already inside transformer.wte.weight's
            out[f"grad.{name}"] = p.grad.numpy()
    save_file({k: np.require(v, requirements="C") for k, v in out.items()}, str(path))  # keeps 0-d loss 0-d


def write_adamw(path):
    """10 AdamW steps with per-step learning rates, decay on the 2-D tensor only (nanoGPT's groups)."""
    rng = np.random.default_rng(SEED)
    hyper = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    lrs = [float(x) for x in np.linspace(1e-2, 1e-3, 10)]
    w = torch.tensor(rng.standard_normal((4, 3)), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(rng.standard_normal(3), dtype=torch.float64, requires_grad=True)
    out = {"init.w": w.detach().numpy().copy(), "init.b": b.detach().numpy().copy()}
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": hyper["weight_decay"]},
                             {"params": [b], "weight_decay": 0.0}], lr=lrs[0], betas=hyper["betas"], eps=hyper["eps"])
    for k, lr in enumerate(lrs, start=1):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = torch.tensor(rng.standard_normal((4, 3)), dtype=torch.float64)
        b.grad = torch.tensor(rng.standard_normal(3), dtype=torch.float64)
        out[f"grad.w.{k}"], out[f"grad.b.{k}"] = w.grad.numpy().copy(), b.grad.numpy().copy()
        opt.step()
        out[f"param.w.{k}"], out[f"param.b.{k}"] = w.detach().numpy().copy(), b.detach().numpy().copy()
    metadata = {"lr": json.dumps(lrs), "betas": json.dumps(list(hyper["betas"])), "eps": json.dumps(hyper["eps"]),
                "weight_decay": json.dumps(hyper["weight_decay"])}
    save_file(out, str(path), metadata=metadata)


def write_variants(path):
    """Issue 16's variant layers, float64: `<layer>.<input>`, `<layer>.out`, `<layer>.dout`, `<layer>.grad.<input>`."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rng = np.random.default_rng(SEED)
    out = {}

    def tensor(name, *shape, scale=1.0):
        value = rng.standard_normal(shape) * scale
        out[name] = value
        return torch.tensor(value, dtype=torch.float64, requires_grad=True)

    def record(layer, result, inputs):
        dout = torch.tensor(rng.standard_normal(tuple(result.shape)), dtype=torch.float64)
        result.backward(dout)
        out[f"{layer}.out"], out[f"{layer}.dout"] = result.detach().numpy(), dout.numpy()
        for name, t in inputs.items():
            out[f"{layer}.grad.{name}"] = t.grad.numpy()

    x, w = tensor("rmsnorm.x", 2, 3, 7, scale=3.0), tensor("rmsnorm.weight", 7)
    norm = torch.nn.RMSNorm(7, eps=1e-5, dtype=torch.float64)
    norm.weight = torch.nn.Parameter(w)
    record("rmsnorm", norm(x), {"x": x, "weight": norm.weight})
    x = tensor("gelu.x", 4, 9, scale=3.0)
    record("gelu", F.gelu(x), {"x": x})
    x = tensor("silu.x", 4, 9, scale=3.0)
    record("silu", F.silu(x), {"x": x})
    x, w_fc, w_gate, w_proj = (tensor("swiglu.x", 2, 3, 4), tensor("swiglu.c_fc.weight", 4, 6),
                               tensor("swiglu.c_gate.weight", 4, 6), tensor("swiglu.c_proj.weight", 6, 4))
    record("swiglu", (F.silu(x @ w_gate) * (x @ w_fc)) @ w_proj,
           {"x": x, "c_fc.weight": w_fc, "c_gate.weight": w_gate, "c_proj.weight": w_proj})
    # RoPE as Llama applies it (rotate_half: channel i pairs with i + D/2), base 10000, positions 0..T-1
    B, H, T, D = 2, 3, 5, 8
    q, k = tensor("rotary.q", B, H, T, D), tensor("rotary.k", B, H, T, D)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat([angles, angles], dim=-1)[None]  # (1, T, D)
    q_rot, k_rot = apply_rotary_pos_emb(q, k, emb.cos(), emb.sin())
    record("rotary", torch.cat([q_rot, k_rot], dim=1), {"q": q, "k": k})  # (B, 2H, T, D): q's heads then k's
    # causal grouped-query attention with c_attn / c_proj, columns q (H D) | k (KV D) | v (KV D)
    B, T, C, H, KV = 2, 6, 12, 6, 2
    D = C // H
    x, w_attn, b_attn = tensor("gqa.x", B, T, C), tensor("gqa.c_attn.weight", C, C + 2 * KV * D, scale=0.5), \
        tensor("gqa.c_attn.bias", C + 2 * KV * D)
    w_proj, b_proj = tensor("gqa.c_proj.weight", C, C, scale=0.5), tensor("gqa.c_proj.bias", C)
    qkv = x @ w_attn + b_attn
    q = qkv[..., :C].reshape(B, T, H, D).transpose(1, 2)
    k = qkv[..., C:C + KV * D].reshape(B, T, KV, D).transpose(1, 2)
    v = qkv[..., C + KV * D:].reshape(B, T, KV, D).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # head h reads key/value h // (H / KV)
    record("gqa", y.transpose(1, 2).reshape(B, T, C) @ w_proj + b_proj,
           {"x": x, "c_attn.weight": w_attn, "c_attn.bias": b_attn, "c_proj.weight": w_proj, "c_proj.bias": b_proj})
    save_file({k: np.require(v, requirements="C") for k, v in out.items()}, str(path),
              metadata={"gqa.n_head": str(H), "gqa.n_kv_head": str(KV)})


def main():
    FIXTURES.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    write_hub_naming(model, FIXTURES / "gpt2_tiny_hub")
    saved = FIXTURES / "gpt2_tiny_saved"
    shutil.rmtree(saved, ignore_errors=True)
    model.save_pretrained(saved)
    for extra in saved.iterdir():  # keep only the two files minigpt reads
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()
    write_reference(torch.float64, FIXTURES / "gpt2_tiny_reference_float64.safetensors")
    write_reference(torch.float32, FIXTURES / "gpt2_tiny_reference_float32.safetensors")
    write_adamw(FIXTURES / "adamw_float64.safetensors")
    write_variants(FIXTURES / "variants_float64.safetensors")
    print(f"wrote fixtures to {FIXTURES}")


if __name__ == "__main__":
    main()
