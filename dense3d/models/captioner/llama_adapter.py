"""Multimodal LLaMA-Adapter on a frozen ``LlamaForCausalLM`` (Zhang et al., 2023).

In each of the top ``L`` decoder layers a learnable *adaption prompt* of ``K`` vectors
(hidden size ``H``) is projected by the layer's own frozen ``k_proj`` / ``v_proj`` into
extra keys and values. Every token's (RoPE-rotated) query attends to them with a softmax of
its own, the result is scaled per head by a zero-initialised *gate*, projected by the frozen
``o_proj`` (weight only) and added to the attention output. With the gates at zero the
model's logits equal the frozen model's exactly.

Multimodal: per-sample visual tokens ``(B, K, H)`` (the projected Q-Former queries of one
region each) are **added** to every adapted layer's prompt. They are given for the span of
a ``with adapter.conditioned_on(tokens):`` block, which covers a training forward or a whole
``model.generate(...)`` call.

Why not peft's ``AdaptionPromptConfig``: its adaption prompt is one ``(1, K, H)`` parameter
per layer shared by the whole batch, and it offers no way to add a per-sample tensor; here
each batch row is a different region with different visual tokens. So the same computation
is done by a forward hook on each adapted ``self_attn`` (no module is replaced, the LLM's
state dict keeps its keys). The visual tokens are held by the adapter while
``conditioned_on`` is active rather than passed as a ``forward`` keyword: transformers 5's
``generate`` rejects keyword arguments its model does not declare. Holding them lets
transformers' own ``generate`` (greedy, beam search, KV cache) run unchanged; beam search
repeats each batch row ``num_beams`` times (``repeat_interleave``), and the hook repeats the
visual tokens the same way.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.checks import check_int

__all__ = ["LlamaAdapter", "llama_layers"]

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def llama_layers(model, source: str, error=ConfigError) -> nn.ModuleList:
    """The decoder layers of a LLaMA-family causal LM (``LlamaForCausalLM`` and models built like it:
    ``model.model.layers[i].self_attn`` with ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``
    linear maps, a ``head_dim`` and a ``scaling``), or a one-line ``error`` naming ``source`` and
    the model type found: the adapter's hooks compute with exactly those parts."""
    config = getattr(model, "config", None)
    found = f"{getattr(config, 'model_type', None)} ({type(model).__name__})"
    expected = "a LLaMA-family causal LM (model.layers[i].self_attn with q_proj, k_proj, v_proj, o_proj)"
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise error(source, "model_type", expected, got=found)
    for layer in layers:
        attn = getattr(layer, "self_attn", None)
        if (attn is None or not all(isinstance(getattr(attn, n, None), nn.Linear) for n in _PROJECTIONS)
                or not isinstance(getattr(attn, "head_dim", None), int) or getattr(attn, "scaling", None) is None):
            raise error(source, "model_type", expected, got=found)
    return layers


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _project(proj: nn.Linear, norm, x: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    """``proj(x)`` as (B, T, heads, hd), normalised as the frozen attention normalises its queries /
    keys where it has a ``q_norm`` / ``k_norm``: per head (Qwen3: a norm of width ``hd``) or over
    all heads before the split (OLMo2: width ``heads * hd``). Llama has none."""
    y = proj(x)  # (B, T, heads*hd)
    if norm is not None and norm.weight.numel() != hd:  # over all heads (OLMo2)
        y = norm(y)
    y = y.view(*x.shape[:-1], heads, hd)  # (B, T, heads*hd) -> (B, T, heads, hd)
    if norm is not None and norm.weight.numel() == hd:  # per head (Qwen3)
        y = norm(y)
    return y


class LlamaAdapter(nn.Module):
    """Gated adaption prompts for the top ``num_layers`` layers of a Llama model.

    Args:
        hidden_size: the LLM's hidden size H (checked against the model on :meth:`attach`).
        num_heads: the LLM's attention heads (one gate per head and layer).
        num_layers: how many of the top layers get a prompt (L).
        prompt_len: prompt vectors per layer (K; equals the Q-Former's query count).
        init_std: std of the prompts' normal initialisation.
        gate_scale: the gate applied is ``gate_scale * gates``. Adam moves a parameter by about
            the learning rate per step whatever its gradient's size, so at lr 1e-3 a gate that
            starts at zero is still below 0.2 after 1,200 steps (measured: mean |gate| 0.09) and
            the LLM barely hears the visual tokens; a scale of 10 lets the gates open ten times
            faster and keeps the zero start (and the exact no-op at initialisation).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_layers: int, prompt_len: int, init_std: float = 0.02,
                 gate_scale: float = 1.0):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("num_layers", num_layers)):
            check_int("LlamaAdapter", name, value)  # heads need not divide hidden_size (LlamaConfig's head_dim)
        check_int("LlamaAdapter", "prompt_len", prompt_len)
        for name, value, least in (("gate_scale", gate_scale, "> 0 (0: the gates never learn)"), ("init_std", init_std, ">= 0")):
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
                    or (name == "gate_scale" and value == 0)):
                raise ConfigError("LlamaAdapter", name, f"a finite number {least}", got=value)
        self.gate_scale = float(gate_scale)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_layers, self.prompt_len = num_layers, prompt_len
        self.prompts = nn.Parameter(torch.randn(num_layers, prompt_len, hidden_size) * init_std)  # (L, K, H)
        self.gates = nn.Parameter(torch.zeros(num_layers, num_heads))  # (L, heads), zero: no change at init
        self._handles: list = []
        self._attached_to: int | None = None
        self._visual: torch.Tensor | None = None

    @contextlib.contextmanager
    def conditioned_on(self, visual: torch.Tensor | None):
        """Within the block, add ``visual`` (B, K, H) to the prompts of every LLM call."""
        if visual is not None and tuple(visual.shape[1:]) != (self.prompt_len, self.hidden_size):
            raise ConfigError("LlamaAdapter", "visual", f"shape (B, {self.prompt_len}, {self.hidden_size})",
                              got=tuple(visual.shape))
        prev, self._visual = self._visual, visual
        try:
            yield self
        finally:
            self._visual = prev

    # ------------------------------------------------------------------ attach
    def attach(self, model) -> None:
        """Hook the top ``num_layers`` attention modules of ``model`` (a ``LlamaForCausalLM``).
        Idempotent for the same model."""
        if self._attached_to == id(model):
            return
        self.detach()
        layers = llama_layers(model, f"LlamaAdapter.attach({getattr(model, 'name_or_path', '') or type(model).__name__})")
        cfg = model.config
        if cfg.hidden_size != self.hidden_size or cfg.num_attention_heads != self.num_heads:
            raise ConfigError(
                "LlamaAdapter", "hidden_size/num_heads",
                f"the LLM's ({cfg.hidden_size}, {cfg.num_attention_heads})", got=(self.hidden_size, self.num_heads),
            )
        if self.num_layers > len(layers):
            raise ConfigError("LlamaAdapter", "num_layers", f"at most the LLM's {len(layers)} layers", got=self.num_layers)
        first = len(layers) - self.num_layers
        for i in range(self.num_layers):
            attn = layers[first + i].self_attn
            self._handles.append(attn.register_forward_hook(self._make_hook(i), with_kwargs=True))
        self._attached_to = id(model)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._attached_to = [], None

    # ------------------------------------------------------------------ hook
    def _make_hook(self, index: int):
        def hook(attn, args, kwargs, output):
            visual = self._visual
            hidden = args[0] if args else kwargs["hidden_states"]
            attn_out, attn_w = output
            return self._adapt(index, attn, hidden, kwargs["position_embeddings"], visual) + attn_out, attn_w

        return hook

    def _adapt(self, index: int, attn, hidden: torch.Tensor, position_embeddings, visual: torch.Tensor | None):
        """The gated prompt attention of layer ``index``: (B, T, H)."""
        B, T, _ = hidden.shape
        hd = attn.head_dim
        nh = self.num_heads
        q = _project(attn.q_proj, getattr(attn, "q_norm", None), hidden, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        cos, sin = position_embeddings  # (B, T, hd) each
        q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)  # RoPE, as the frozen attention does
        prompt = self.prompts[index].unsqueeze(0).to(hidden.dtype)  # (1, K, H)
        if visual is not None:
            if visual.shape[0] != B:  # beam search: each row repeated num_beams times
                if B % visual.shape[0]:
                    raise ConfigError("LlamaAdapter", "visual", f"a batch dividing the LLM's {B}", got=visual.shape[0])
                visual = visual.repeat_interleave(B // visual.shape[0], dim=0)  # (B/beams, K, H) -> (B, K, H)
            prompt = prompt + visual.to(hidden.dtype)  # (B, K, H): the visual tokens added to the prompt
        K = prompt.shape[1]
        n_kv = attn.k_proj.out_features // hd
        k = _project(attn.k_proj, getattr(attn, "k_norm", None), prompt, n_kv, hd).transpose(1, 2)  # (b, n_kv, K, hd)
        v = attn.v_proj(prompt).view(prompt.shape[0], K, n_kv, hd).transpose(1, 2)  # (b, n_kv, K, hd)
        k = k.repeat_interleave(nh // n_kv, dim=1)  # (b, nh, K, hd): grouped-query heads share k/v
        v = v.repeat_interleave(nh // n_kv, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling  # (B, nh, T, K)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        gate = self.gates[index] * self.gate_scale  # (nh,)
        probs = probs * gate.view(1, nh, 1, 1).to(q.dtype)  # zero gates -> exactly zero
        out = torch.matmul(probs, v)  # (B, nh, T, hd)
        out = out.transpose(1, 2).reshape(B, T, nh * hd)  # (B, nh, T, hd) -> (B, T, nh*hd)
        return F.linear(out, attn.o_proj.weight)  # o_proj without its bias: zero stays zero
