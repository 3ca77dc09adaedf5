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

from collections import OrderedDict

import torch
import torch.nn.functional as F

from dense3d.models.losses.caption import weighted_mean_cross_entropy

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
            # positional: the 4th argument (cache) was renamed in transformers 5
            masks[kind] = makers[kind](lm.config, hidden, attention_mask, None, pos)
            # (cos, sin), (1, T, head_dim) each
            ropes[kind] = lm.model.rotary_emb(hidden, pos, kind) if per_kind_rope else lm.model.rotary_emb(hidden, position_ids=pos)
        hidden = layer(hidden, attention_mask=masks[kind], position_embeddings=ropes[kind], position_ids=pos)
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
    running only layers ``[first, n)`` (and the adapter hooked on them) with gradients."""
    hidden = cache.hidden(lm, batch["input_ids"], batch["attention_mask"], first)  # (N, T, H), no graph
    hidden = run_layers(lm, hidden, batch["attention_mask"], lm.model.layers[first:])  # (N, T, H)
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
