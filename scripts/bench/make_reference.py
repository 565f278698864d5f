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
    print(f"wrote fixtures to {FIXTURES}")


if __name__ == "__main__":
    main()
