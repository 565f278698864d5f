"""Write the LoRA reference fixture in tests/fixtures/ with PyTorch + transformers + PEFT (developers only).

    pip install torch transformers peft   # never needed by the tests themselves
    python scripts/bench/make_lora_reference.py

Writes tests/fixtures/lora_tiny/:
  base/                     a random GPT-2 (GPT2LMHeadModel.save_pretrained: config.json + model.safetensors)
  adapter/                  PEFT's LoraConfig(r=4, lora_alpha=8, target_modules c_attn, attn.c_proj,
                            fan_in_fan_out=True) on that base, its lora_B made nonzero, saved by
                            PeftModel.save_pretrained (adapter_config.json + adapter_model.safetensors)
  reference.safetensors     input_ids, targets, logits, loss and `grad.<name>` of every lora_A / lora_B
                            (PEFT's names without `base_model.model.`), from torch autograd in float64
Each LoRA layer of this model is PEFT's LoraLayer (peft.tuners.lora.layer.Linear wrapping Conv1D).
"""

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import save_file
from transformers import GPT2Config, GPT2LMHeadModel

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "lora_tiny"
SEED = 4321


def main():
    torch.manual_seed(SEED)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=37, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    base = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.mul_(10.0)
    base.save_pretrained(FIXTURE / "base")
    (FIXTURE / "base" / "generation_config.json").unlink(missing_ok=True)

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "attn.c_proj"],
                      fan_in_fan_out=True, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn_like(p))  # a trained adapter: B away from zero
    model.save_pretrained(FIXTURE / "adapter")
    adapter_config = FIXTURE / "adapter" / "adapter_config.json"
    saved = json.loads(adapter_config.read_text())
    saved["base_model_name_or_path"] = "../base"  # relative to the adapter: the test points it at the fixture
    adapter_config.write_text(json.dumps(saved, indent=2) + "\n")
    (FIXTURE / "adapter" / "README.md").unlink(missing_ok=True)

    model = model.double()
    input_ids = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(SEED))
    targets = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(SEED + 1))
    logits = model(input_ids=input_ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 37), targets.reshape(-1))
    loss.backward()
    tensors = {"input_ids": input_ids.numpy(), "targets": targets.numpy(), "logits": logits.detach().numpy(),
               "loss": loss.detach().numpy().reshape(1)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            clean = name.removeprefix("base_model.model.").replace(".default", "")
            tensors[f"grad.{clean}"] = p.grad.numpy().copy()
    save_file(tensors, str(FIXTURE / "reference.safetensors"))
    print(f"wrote {FIXTURE}: {sorted(k for k in tensors if k.startswith('grad.'))[:2]} ...")


if __name__ == "__main__":
    main()
