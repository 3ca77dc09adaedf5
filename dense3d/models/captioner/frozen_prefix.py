"""Teacher forcing through only the adapted top layers: the frozen lower layers run once per caption.

The LLaMA-Adapter changes the top ``L`` layers only; below them the frozen LLM sees nothing
but text (the prompt and the caption), so the hidden state a caption reaches at the first
adapted layer is the same every time that caption is trained on. :class:`FrozenPrefixCache`
keeps it, keyed by the token ids, and a training step runs

    cached lower layers -> top L layers (with the adapter's hooks) -> final norm ->
    lm_head on the positions that predict a caption token only -> cross-entropy.

On SmolLM2-135M (30 layers, 49,152-token vocabulary, L = 4..8) that skips 22-26 of 30 layer
forwards and the lm_head at prompt and padding positions, the two largest costs of a caption
step on a CPU (``benchmarks/bm_caption_step.py`` measures it). The loss equals
``caption_cross_entropy(lm(...).logits, labels)`` up to float rounding (tested).

Why by hand rather than ``lm(..., output_hidden_states=True)``: that still runs every layer.
The layers are called as ``LlamaModel.forward`` calls them (mask from transformers'
``create_causal_mask``, or ``create_sliding_window_causal_mask`` for the layers the model runs
with a window: Gemma 2 / 3, Mistral, Qwen2 with ``use_sliding_window``; RoPE from the model's
``rotary_emb``, per layer kind for Gemma 3; Gemma 2's ``final_logit_softcapping`` on the
logits), so the attention backend the model was loaded with is the one used.

Correctness of the cache: rows are right-padded and attention is causal, so a real token's
hidden state depends only on the tokens before it, never on the batch it was computed in.
"""
from __future__ import annotations

import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

from dense3d.models.losses.caption import caption_cross_entropy, weighted_mean_cross_entropy

__all__ = ["FrozenPrefixCache", "run_layers", "caption_loss_top_layers"]


def _layer_types(lm) -> list[str]:
    """The attention kind of each decoder layer, as the model's own forward reads it: the config's
    ``layer_types`` (Gemma 2 / 3, Qwen2 with ``use_sliding_window``: "sliding_attention" or
    "full_attention" per layer), else one kind for all (Mistral: a sliding window wherever
    ``sliding_window`` is set; Llama, OLMo2: full causal)."""
    types = getattr(lm.config, "layer_types", None)
    if types is None:
        kind = "sliding_attention" if getattr(lm.config, "sliding_window", None) is not None else "full_attention"
        types = [kind] * len(lm.model.layers)
    return list(types)


def _mask_arguments(maker, config, hidden: torch.Tensor, attention_mask: torch.Tensor, pos: torch.Tensor) -> dict:
    """Keyword arguments of transformers' ``create_causal_mask`` / ``create_sliding_window_causal_mask``
    for a pass without a KV cache. The two versions requirements allow name them apart: 4.57
    ``(config, input_embeds, attention_mask, cache_position, past_key_values, position_ids)``, 5.x
    ``(config, inputs_embeds, attention_mask, cache, position_ids)`` (later 5.x also take
    ``past_key_values``, with a FutureWarning on every call); positional arguments put the
    positions into 4.57's cache (an AttributeError on every step)."""
    import inspect

    params = inspect.signature(maker).parameters
    kwargs = {"config": config, "attention_mask": attention_mask, "position_ids": pos}
    kwargs["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = hidden
    if "cache_position" in params:  # transformers 4.x: the positions of this pass, (T,)
        kwargs["cache_position"] = pos[0]
    kwargs["cache" if "cache" in params else "past_key_values"] = None  # 5.x keeps past_key_values as a deprecated alias
    return kwargs


def run_layers(lm, hidden: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
    """``hidden`` (N, T, H) through ``layers`` (decoder layers of ``lm``) with a causal + padding mask,
    a sliding-window one for the layers the model runs with a window, and RoPE per layer kind
    where the model has one per kind (Gemma 3's local and global bases)."""
    import inspect

    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    from dense3d.errors import ConfigError

    N, T, _ = hidden.shape
    pos = torch.arange(T, device=hidden.device).unsqueeze(0)  # (1, T): no KV cache, positions from 0
    index = {id(layer): i for i, layer in enumerate(lm.model.layers)}
    types = _layer_types(lm)
    makers = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
    per_kind_rope = "layer_type" in inspect.signature(lm.model.rotary_emb.forward).parameters
    masks, ropes = {}, {}
    for layer in layers:
        kind = types[index[id(layer)]]
        if kind not in masks:
            if kind not in makers:
                raise ConfigError("RegionCaptioner", "cache_frozen_layers_mb", "0 for a model with layers of "
                                  f"attention kind {kind!r} (the cached prefix runs full and sliding-window layers)",
                                  got=f"on {lm.config.model_type}")
            masks[kind] = makers[kind](**_mask_arguments(makers[kind], lm.config, hidden, attention_mask, pos))
            # (cos, sin), (1, T, head_dim) each
            ropes[kind] = lm.model.rotary_emb(hidden, pos, kind) if per_kind_rope else lm.model.rotary_emb(hidden, position_ids=pos)
        out = layer(hidden, attention_mask=masks[kind], position_embeddings=ropes[kind], position_ids=pos)
        hidden = out[0] if isinstance(out, tuple) else out  # some layers (Granite under transformers 4.x) return a tuple
    return hidden


class FrozenPrefixCache:
    """Hidden states entering layer ``first`` of a frozen LLM, per token sequence.

    Args:
        max_bytes: the cache's size limit; the least recently used sequences are dropped
            beyond it (a float32 SmolLM2 caption of 40 tokens takes 92 KB).

    Entries are kept for one model and one ``first``: using the cache with another clears it.
    """

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = int(max_bytes)
        self._store: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._owner: tuple[int, int] | None = None
        self.hits = self.misses = 0
        self._reproduces: dict[tuple[int, int], bool] = {}  # (id(lm), first) -> the check's verdict

    def reproduces(self, lm, first: int, batch: dict[str, torch.Tensor]) -> bool:
        """Whether the layer-by-layer pass (:func:`run_layers`) gives ``lm``'s own forward's loss,
        checked once per model on its first ``batch``. It reproduces Llama, Qwen2 / 3, OLMo2,
        Mistral, Gemma 1-3 under the installed transformers; a model whose forward does more
        between the layers and the loss (Granite's embedding and logit multipliers, Cohere's
        logit scale, Gemma's embedding scale under transformers 4.x, ...) would train on another
        loss, so there teacher forcing runs the whole model (no cache; one line on stderr)."""
        key = (id(lm), first)
        if key not in self._reproduces:
            same, detail = _layer_by_layer_matches(lm, batch)
            self._reproduces[key] = same
            if not same:
                import transformers

                print(f"dense3d: RegionCaptioner cache_frozen_layers_mb: the cached layer-by-layer pass does not "
                      f"reproduce {lm.config.model_type}'s forward under transformers {transformers.__version__} "
                      f"({detail}); teacher forcing runs the whole model (cache_frozen_layers_mb: 0 says so)",
                      file=sys.stderr)
        return self._reproduces[key]

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()
        self._bytes = 0

    @torch.no_grad()
    def hidden(self, lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, first: int) -> torch.Tensor:
        """(N, T, H) hidden states of the right-padded rows of ``input_ids`` (N, T) after the
        frozen layers ``[0, first)``; zeros at padding."""
        if self._owner != (id(lm), first):
            self.clear()
            self._owner = (id(lm), first)
        lengths = attention_mask.sum(1).tolist()
        keys = [tuple(input_ids[i, :n].tolist()) for i, n in enumerate(lengths)]
        rows: dict[int, torch.Tensor] = {}  # row -> (length, H); read before any insertion can evict it
        for i, k in enumerate(keys):
            if k in self._store:
                self._store.move_to_end(k)
                rows[i] = self._store[k]
        todo = [i for i in range(len(keys)) if i not in rows]
        self.hits += len(rows)
        self.misses += len(todo)
        if todo:
            Tm = max(lengths[i] for i in todo)
            ids, att = input_ids[todo, :Tm], attention_mask[todo, :Tm]  # (n, Tm)
            h = run_layers(lm, lm.model.embed_tokens(ids), att, lm.model.layers[:first])  # (n, Tm, H)
            for j, i in enumerate(todo):
                rows[i] = h[j, : lengths[i]].clone()
                self._put(keys[i], rows[i])
        N, T = input_ids.shape
        out = torch.zeros(N, T, lm.config.hidden_size, dtype=lm.model.embed_tokens.weight.dtype, device=input_ids.device)
        for i, row in rows.items():
            out[i, : lengths[i]] = row
        return out

    def _put(self, key: tuple[int, ...], value: torch.Tensor) -> None:
        if key in self._store:  # the same caption twice in one batch
            old = self._store.pop(key)
            self._bytes -= old.numel() * old.element_size()
        self._store[key] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.max_bytes and len(self._store) > 1:
            _, old = self._store.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()


def caption_loss_top_layers(lm, cache: FrozenPrefixCache, first: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the caption tokens of a teacher-forcing ``batch``
    (``input_ids``, ``attention_mask``, ``labels`` as built by ``teacher_forcing_batch``; the
    weighted mean where the batch also holds ``weights``),
    running only layers ``[first, n)`` (and the adapter hooked on them) with gradients.

    The first call for a model checks that the layer-by-layer pass gives the model's own forward's
    loss (:meth:`FrozenPrefixCache.reproduces`); where it does not, every call runs the whole model."""
    if not cache.reproduces(lm, first, batch):
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
        return caption_cross_entropy(logits.float(), batch["labels"], batch.get("weights"))
    hidden = cache.hidden(lm, batch["input_ids"], batch["attention_mask"], first)  # (N, T, H), no graph
    hidden = run_layers(lm, hidden, batch["attention_mask"], lm.model.layers[first:])  # (N, T, H)
    return _loss_of_hidden(lm, hidden, batch)


def _loss_of_hidden(lm, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The caption loss of the last layer's (N, T, H) ``hidden``: final norm, lm_head (soft-capped
    as Gemma 2's forward does) at the positions that predict a caption token, cross-entropy."""
    target = batch["labels"][:, 1:]  # (N, T-1): position t predicts token t + 1
    keep = target != -100
    h = lm.model.norm(hidden[:, :-1][keep])  # (N, T-1, H) -> (M, H): only positions with a target
    logits = lm.lm_head(h)  # (M, V)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap is not None:  # Gemma 2: the model's forward squashes its logits into (-cap, cap)
        logits = torch.tanh(logits / cap) * cap
    logits = logits.float()
    if "weights" in batch:  # per-token weights (teacher_forcing_batch's spans)
        return weighted_mean_cross_entropy(logits, target[keep], batch["weights"][:, 1:][keep])  # (N, T-1) -> (M,)
    return F.cross_entropy(logits, target[keep])


@torch.no_grad()
def _layer_by_layer_matches(lm, batch: dict[str, torch.Tensor]) -> tuple[bool, str]:
    """Whether :func:`run_layers` over all layers gives ``lm``'s own forward's caption loss on
    ``batch`` (float32 weights: within 1e-3 relative; lower precision: 3e-2), and the two losses
    (or the error the layer-by-layer pass raised) for a message."""
    device = batch["input_ids"].device
    with torch.autocast(device_type=device.type, enabled=False):
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
        full = caption_cross_entropy(logits.float(), batch["labels"], batch.get("weights"))
        try:
            embedded = lm.model.embed_tokens(batch["input_ids"])  # (N, T, H)
            mine = _loss_of_hidden(lm, run_layers(lm, embedded, batch["attention_mask"], lm.model.layers), batch)
        except Exception as e:  # a layer or mask this transformers builds otherwise (Gemma 3 under 4.x)
            return False, f"{type(e).__name__}: {e}"
    rtol = 1e-3 if lm.model.embed_tokens.weight.dtype == torch.float32 else 3e-2
    same = bool(torch.isclose(mine, full, rtol=rtol, atol=1e-4))
    return same, f"loss {float(mine):.4f} vs the forward's {float(full):.4f}"
