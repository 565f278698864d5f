"""GPT-2: parameters (named and shaped like Hugging Face's), forward, backward; its config is minigpt.model_config.

The whole model is a composition of the layers in minigpt.nn:

    x = dropout(wte[idx] + wpe[pos])                       # (B, T, C)
    x = block_i(x)  for i in 0 .. n_layer-1                # pre-LN transformer blocks
    logits = ln_f(x) @ wte^T                               # (B, T, V), head tied to wte
    loss = cross_entropy(logits, targets)

GPTConfig's switches swap layers for the variants modern models use, GPT-2's
value the default of each: `norm` (layernorm | rmsnorm), `activation`
(gelu_tanh | gelu | relu2 | swiglu, `mlp_hidden` its width), `position` (learned
wpe | rotary, `rope_base`), `tie_embeddings` (false: a separate lm_head.weight),
`n_kv_head` (< n_head: grouped-query attention). Each layer is a module of
minigpt.nn; with every switch at GPT-2's value the model runs GPT-2's code path.

`forward` keeps every layer's cache (in training mode); `backward` walks the
same list in reverse and returns one gradient per parameter (minigpt/nn/README.md
tells the story layer by layer). Reading and writing Hugging Face files is in
minigpt.weights, finding them in minigpt.loading; KV-cache decoding is
`new_kv_cache` + `forward_cached`.
"""

import copy
import functools
import math

import numpy as np

from minigpt import recompute as recompute_mod
from minigpt.backend import check_dtype, get_xp, make_rng
from minigpt.fast import LAYERS as FAST_LAYERS
from minigpt.fast import block as cached_block
from minigpt.fast.attention import padding_mask
from minigpt.generation import generate
from minigpt.model_config import (  # noqa: F401 (SWITCHES, check_*, mlp_hidden: re-exported)
    SWITCHES, GPTConfig, check_shape, check_switches, check_token_range, mlp_hidden, param_shapes)
from minigpt.nn import block, dropout, embedding, lm_head, lora, rotary
from minigpt.nn.layers import LAYERS as PLAIN_LAYERS


def _emit_trainable(emit, trainable, grads):
    """Hand on only the gradients of trainable parameters (LoRA: the adapters; the frozen layers' are dropped)."""
    kept = {name: grad for name, grad in grads.items() if name in trainable}
    if kept:
        emit(kept)


class KVCache:
    """Per-layer keys and values of B sequences, preallocated to block_size positions."""

    def __init__(self, model):
        self.model = model
        self.keys = self.values = None  # lists of (B, n_kv_head, block_size, D), made on first use
        self.length = 0  # positions filled so far
        self.pad = None  # (B,) host ints: row b's first pad[b] slots are left padding (None: no padding)

    def ensure(self, batch_size):
        if self.keys is None:
            c = self.model.config
            shape = (batch_size, c.n_kv_head, c.block_size, c.n_embd // c.n_head)
            xp, dtype = self.model.xp, self.model.dtype
            self.keys = [xp.empty(shape, dtype=dtype) for _ in range(c.n_layer)]
            self.values = [xp.empty(shape, dtype=dtype) for _ in range(c.n_layer)]
        elif self.keys[0].shape[0] != batch_size:
            raise ValueError(f"this KV cache holds {self.keys[0].shape[0]} sequences, got {batch_size}")

    def reset(self, pad=None):
        """Forget every position; the buffers stay, to be refilled from position 0 without a new allocation.

        pad: (B,) left-padding of the rows about to be fed (None or all 0: none).
        """
        self.length = 0
        self.pad = None if pad is None or not np.any(pad) else np.asarray(pad, dtype=np.int64)

    def truncate(self, length):
        """Forget the positions from `length` on (speculative decoding's rejected drafts): they get overwritten."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} positions to {length}")
        self.length = length


class GPT:
    """GPT-2 (Radford et al., 2019) on NumPy or CuPy, every layer's forward and backward written by hand.

        model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65))
        logits, loss = model.forward(idx, targets)     # idx, targets: (B, T) token ids
        grads = model.backward()                        # keyed and shaped like model.params
        out = model.generate(idx, max_new_tokens=50, temperature=0.8, top_k=200)
        model = GPT.from_pretrained("gpt2")             # OpenAI's weights, or a checkpoint directory
        model.save_pretrained("out/my_model")           # config.json + model.safetensors, as Hugging Face's

    `params` maps Hugging Face's GPT-2 names (`transformer.h.0.attn.c_attn.weight`, ...)
    to arrays; `train()` / `eval()` switch dropout on and off.
    """

    def __init__(self, config: GPTConfig, dtype="float32", device="cpu", seed=None, fast=True, recompute=False,
                 init=True):
        """A model of `config`'s shape with GPT-2's initialisation (weights ~ N(0, 0.02), residual projections
        scaled by 1/sqrt(2 n_layer)), its parameters of `dtype` ("float32" or "float64") on `device` ("cpu" or
        "gpu"); `seed` seeds the initial weights and the dropout masks (None: a fresh seed).

        fast=False runs the plain layers of minigpt.nn (the formulas) instead of minigpt.fast's: slower,
        the same results to rounding; the gradient checks run both. KV-cache decoding has only the fast step.
        recompute=True keeps only each block's input in the forward and runs the block again in the
        backward (minigpt.recompute): the same losses and gradients, bit for bit, in far less memory.
        init=False leaves `params` empty for a loader to fill (minigpt.weights): no random weights drawn only
        to be replaced, and no second copy of the model in memory while the file's is read."""
        self.config = config
        self.recompute = recompute
        self.layers = FAST_LAYERS if fast else PLAIN_LAYERS  # the module behind each layer name, see minigpt.fast
        self.dtype = check_dtype(dtype)
        self.device = device
        self.xp = get_xp(device)
        self.rng = make_rng(device, seed)  # also draws the dropout masks
        self.training = True
        self.params = self._init_params() if init else {}
        self.lora = None  # a minigpt.nn.lora.LoraConfig once adapters are added (minigpt.lora.add_adapters)
        self.lora_base = None  # the base the adapters adapt: its name and fingerprint (minigpt.lora)
        self.adapters = {}  # their A and B, by PEFT's names (transformer.h.0.attn.c_attn.lora_A.weight, ...)
        self._block_names = [  # (name inside block i, full name), looked up once
            [(k[len(f"transformer.h.{i}."):], k) for k in param_shapes(config) if k.startswith(f"transformer.h.{i}.")]
            for i in range(config.n_layer)
        ]
        self._caches = None

    def _init_params(self):
        """GPT-2's init: weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2 n_layer)),
        biases 0, LayerNorm weight 1 (as in the GPT-2 paper, nanoGPT and llm.c)."""
        xp, std = self.xp, 0.02
        proj_std = std / math.sqrt(2 * self.config.n_layer)
        params = {}
        for name, shape in param_shapes(self.config).items():
            if name.endswith(".bias"):
                params[name] = xp.zeros(shape, dtype=self.dtype)
            elif ".ln_" in name:
                params[name] = xp.ones(shape, dtype=self.dtype)
            else:
                s = proj_std if name.endswith("c_proj.weight") else std
                params[name] = (self.rng.standard_normal(shape, dtype=self.dtype) * s).astype(self.dtype)
        return params

    # -- modes and sizes ---------------------------------------------------

    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def num_params(self, non_embedding=False):
        """Parameter count (the tied head counted once); non_embedding drops wpe, as in nanoGPT."""
        n = sum(int(param.size) for param in self.params.values())
        wpe = self.params.get("transformer.wpe.weight")
        return n - int(wpe.size) if non_embedding and wpe is not None else n

    def flops_per_token(self, seq_len):
        """Training FLOPs (forward + backward) per token of a length-seq_len sequence, for MFU.

        6 N for the products with the N weights (2 in the forward, 4 in the
        backward; N without wpe, which is a lookup), plus 6 n_layer n_embd T for
        attention's q k^T and p v. PaLM and nanoGPT count those as 12 n_layer
        n_embd T; causal attention needs only the lower triangle, and this
        count takes half.
        """
        c = self.config
        # untied, wte is only looked up: no multiply-adds
        lookup = 0 if c.tie_embeddings else int(self.params["transformer.wte.weight"].size)
        return 6 * (self.num_params(non_embedding=True) - lookup) + 6 * c.n_layer * c.n_embd * seq_len

    def replica(self):
        """A GPT sharing this one's config and parameter arrays, with its own activations and dropout RNG.

        minigpt.parallel gives one to each worker thread; an update to the
        parameters (in place, as AdamW does) is seen by every replica.
        """
        other = copy.copy(self)  # shallow: the same config object and params dict
        other.rng = make_rng(self.device)
        other._caches = None
        return other

    @property
    def trainable(self):
        """The parameters that train: the LoRA adapters once added (the base frozen), else every parameter."""
        return self.adapters if self.lora is not None else self.params

    def block_params(self, i, rng=None):
        """Block i's parameters under their names inside the block (`ln_1.weight`, ...).

        With LoRA, each linear layer's weight comes wrapped (minigpt.nn.lora): frozen, with its adapter if
        it is a target; `rng` draws the adapter's dropout masks.
        """
        params = {local: self.params[full] for local, full in self._block_names[i]}
        if self.lora is not None:
            params = lora.wrap_block(params, self.adapters, f"transformer.h.{i}.", self.lora, rng, self.training)
        return params

    def _block_options(self, start, length):
        """block.forward's switch keywords, with the rotary tables of positions start .. start + length - 1."""
        c = self.config
        rope = None
        if c.position == "rotary":
            rope = rotary.tables(self.xp, self.dtype, start, length, c.n_embd // c.n_head, c.rope_base)
        return {"norm": c.norm, "activation": c.activation, "n_kv_head": c.n_kv_head, "rope": rope}

    def _final_norm_and_head(self, x):
        """ln_f, then the head (wte^T when tied, else lm_head.weight^T): (logits, (ln_f cache, head cache))."""
        params = self.params
        ln_f = self.layers[self.config.norm]
        x, ln_f_cache = ln_f.forward(x, params["transformer.ln_f.weight"], params.get("transformer.ln_f.bias"))
        logits, head_cache = lm_head.forward(x, params.get("lm_head.weight", params["transformer.wte.weight"]))
        return logits, (ln_f_cache, head_cache)

    def _check_idx(self, idx, offset=0):
        xp = self.xp
        if isinstance(idx, np.ndarray):
            check_token_range(idx, self.config.vocab_size)
        idx = xp.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"idx must be a (B, T) integer array, got shape {idx.shape}")
        if idx.dtype.kind not in "iu":
            raise ValueError(f"idx must hold integers, got {idx.dtype}")
        if offset + idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {offset + idx.shape[1]} tokens exceeds block_size {self.config.block_size}")
        return idx

    # -- training forward and backward --------------------------------------

    def forward(self, idx, targets=None, keep_for_backward=None, return_logits=True):
        """idx, targets: (B, T) integer arrays -> (logits (B, T, V), loss or None).

        keep_for_backward: keep every layer's activations (its cache) for
        `backward`. None, the default, keeps them in training mode when there are
        targets; evaluation (eval mode) keeps nothing. Either way the previous
        forward's activations are let go first, so two forwards never hold two sets.
        return_logits=False (with targets) returns (None, loss) and lets the loss
        work in the logits' memory: one (B, T, V) array less (206 MB for GPT-2 at
        T = 1024). minigpt.parallel, which needs only the loss, passes it.
        """
        c, params = self.config, self.params
        self._caches = None
        keep = (self.training if keep_for_backward is None else keep_for_backward) and targets is not None
        idx = self._check_idx(idx)
        x, emb_cache = embedding.forward(idx, params["transformer.wte.weight"], params.get("transformer.wpe.weight"))
        x, emb_drop_cache = dropout.forward(x, c.dropout, self.rng, self.training)
        options = self._block_options(0, idx.shape[1])
        recompute = keep and self.recompute
        block_caches = []
        for i in range(c.n_layer):
            if recompute:  # the block's input and its dropout streams' place: enough to run it again
                block_caches.append(recompute_mod.Checkpoint(x, recompute_mod.fork_rng(self.rng, self._draws())))
            x, cache = block.forward(x, self.block_params(i, self.rng), c.n_head, c.dropout, self.rng, self.training,
                                     layers=self.layers, **options)
            if keep and not recompute:  # otherwise this block's activations are freed here, before the next block runs
                block_caches.append(cache)
        logits, (ln_f_cache, head_cache) = self._final_norm_and_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        loss_layer = self.layers["cross_entropy" if return_logits else "cross_entropy_in_place"]
        loss, ce_cache = loss_layer.forward(logits, self.xp.asarray(targets))
        if keep:
            self._caches = (emb_cache, emb_drop_cache, block_caches, ln_f_cache, head_cache, ce_cache, options)
        return (logits if return_logits else None), loss

    def backward(self, dloss=1.0, sink=None):
        """Gradients of the last forward's loss (times dloss), keyed and shaped like `params`.

        The forward in reverse: each layer's backward takes the gradient of its
        output and its cache, and returns the gradient of its input and of its parameters.

        sink: a function that takes each layer's gradients (a dict keyed like
        `params`) as soon as that layer's backward is done. Backward then keeps
        none of them and returns None: a caller that adds them into running sums
        (minigpt.parallel's Accumulator) never holds a second whole set of
        gradients (500 MB for GPT-2 124M in float32). Without a sink they are
        collected into one dict, returned in the params' order.
        """
        if self._caches is None:
            raise RuntimeError(
                "backward() needs the activations of a forward(idx, targets) in training mode "
                "(or with keep_for_backward=True); the last forward kept none"
            )
        emb_cache, emb_drop_cache, block_caches, ln_f_cache, head_cache, ce_cache, options = self._caches
        self._caches = None  # the locals are now the only references: each one is freed once used
        collected = {}
        emit = collected.update if sink is None else sink
        frozen = self.lora is not None  # LoRA: only the adapters train
        if frozen:
            emit = functools.partial(_emit_trainable, emit, self.adapters)
        dlogits, _ = self.layers["cross_entropy_in_place"].backward(dloss, ce_cache)  # may overwrite the cache
        del ce_cache
        if frozen:  # no (V, C) product for the frozen head's gradient
            dx, head_grads = lm_head.backward_input(dlogits, head_cache), {}
        else:
            dx, head_grads = lm_head.backward(dlogits, head_cache)
        del dlogits  # (N, V)
        dwte_head = head_grads.get("weight")
        if not self.config.tie_embeddings and not frozen:
            emit({"lm_head.weight": dwte_head})
        dx, grads = self.layers[self.config.norm].backward(dx, ln_f_cache)
        emit({f"transformer.ln_f.{name}": grad for name, grad in grads.items()})
        for i in reversed(range(self.config.n_layer)):
            cache = block_caches[i]
            if isinstance(cache, recompute_mod.Checkpoint):  # --recompute: this block's forward again, same masks
                cache = self._block_again(i, cache, options)
            dx, grads = block.backward(dx, cache)
            del cache
            emit({f"transformer.h.{i}.{name}": grad for name, grad in grads.items()})
            block_caches[i] = None
        if frozen:  # nothing below the first block trains
            return None if sink is not None else {name: collected[name] for name in self.adapters}
        dx, _ = dropout.backward(dx, emb_drop_cache)
        _, grads = embedding.backward(dx, emb_cache)
        if self.config.tie_embeddings:
            grads["wte"] += dwte_head  # the tied head and the embedding read the same matrix: their gradients add
        emit({f"transformer.{name}.weight": grad for name, grad in grads.items()})  # wte, and wpe if learned
        if sink is None:
            return {name: collected[name] for name in self.params}  # the params' order
        return None

    def _draws(self) -> bool:
        """Whether a training forward draws dropout masks (then recompute must replay the same ones)."""
        return self.training and (self.config.dropout > 0 or (self.lora is not None and self.lora.dropout > 0))

    def _block_again(self, i, checkpoint, options):
        """Block i's cache, from its input and a copy of the dropout streams as they stood when it first ran."""
        c = self.config
        _, cache = block.forward(checkpoint.x, self.block_params(i, checkpoint.rng), c.n_head, c.dropout, checkpoint.rng,
                                 self.training, layers=self.layers, **options)
        return cache

    # -- inference with a KV cache --------------------------------------------

    def new_kv_cache(self):
        return KVCache(self)

    def forward_cached(self, idx, cache, last_only=False):
        """Logits of new tokens idx (B, T_new) at positions cache.length .., using and extending the cache.

        Inference only: no dropout, nothing kept for backward. With last_only the
        head runs on the last position alone and the logits are (B, 1, V).
        """
        c, params = self.config, self.params
        idx = self._check_idx(idx, offset=cache.length)
        cache.ensure(idx.shape[0])
        if cache.pad is None:
            x, _ = embedding.forward(idx, params["transformer.wte.weight"], params.get("transformer.wpe.weight"),
                                     offset=cache.length)
            options = self._block_options(cache.length, idx.shape[1])
        else:
            x, options = self._embed_padded(idx, cache)
        for i in range(c.n_layer):
            x = cached_block.forward_cached(x, self.block_params(i), c.n_head, cache.keys[i], cache.values[i],
                                            cache.length, **options)
        cache.length += idx.shape[1]
        if last_only:
            x = x[:, -1:]
        logits, _ = self._final_norm_and_head(x)
        return logits

    def _embed_padded(self, idx, cache):
        """Embedding and block options for left-padded rows: row b's token at cache slot j is at position j - pad[b].

        Padding slots sit at position 0 and are hidden from every real query by
        padding_mask (minigpt.fast.attention), so each row computes what it would alone.
        """
        c, params, xp = self.config, self.params, self.xp
        T = idx.shape[1]
        positions = xp.asarray(np.maximum(np.arange(cache.length, cache.length + T) - cache.pad[:, None], 0))  # (B, T)
        x, _ = embedding.forward(idx, params["transformer.wte.weight"], None)
        options = self._block_options(0, 0)  # the switches; the rotary tables are per row, below
        if c.position == "rotary":
            options["rope"] = rotary.tables_at(xp, self.dtype, positions[:, None], c.n_embd // c.n_head, c.rope_base)
        else:
            x += params["transformer.wpe.weight"][positions]
        options["mask"] = padding_mask(xp, cache.pad, cache.length, T, self.dtype)
        return x, options

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None, stop_token=None,
                 window_shift=None, *, min_p=None, repetition_penalty=None, frequency_penalty=0.0,
                 presence_penalty=0.0, no_repeat_ngram_size=None, stop=None, tokenizer=None, prompt_lookup=None,
                 draft_model=None):
        """Sample max_new_tokens after idx (B, T, or a list of prompts of different lengths), steered by Hugging
        Face's controls, optionally with speculative decoding; see minigpt.generation.generate_stream."""
        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, stop_token=stop_token, window_shift=window_shift, min_p=min_p,
                        repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                        presence_penalty=presence_penalty, no_repeat_ngram_size=no_repeat_ngram_size, stop=stop,
                        tokenizer=tokenizer, prompt_lookup=prompt_lookup, draft_model=draft_model)

    # -- files -------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, dtype="float32", device="cpu"):
        """A GPT from a checkpoint directory (ours or Hugging Face's), a training out_dir (its best/, else
        latest/), or a name gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded once); see minigpt.locate."""
        from minigpt.locate import resolve_checkpoint  # here: `import minigpt.model` loads no download code (light)
        from minigpt.weights import load_pretrained  # here: `import minigpt.model` loads no file code (light)

        return load_pretrained(cls, resolve_checkpoint(path), dtype=dtype, device=device)

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors in Hugging Face's GPT-2 format."""
        from minigpt.weights import save_pretrained  # here: `import minigpt.model` loads no file code (light)

        save_pretrained(self, directory)
