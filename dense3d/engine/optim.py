"""Optimizers of the engine (``configs/optim/*.yaml``): weight decay only where it belongs.

:class:`AdamW` is torch's AdamW with its parameters in two groups: the weights it decays, and
those it does not (``weight_decay`` 0): every parameter with one dimension or none (biases, norm
weights, a gate of shape ``(1,)`` or ``(heads,)``) when ``no_decay_1d``, and every parameter whose
name matches one of the ``no_decay`` patterns (``fnmatch``, on the name in the model, e.g.
``captioner.adapter.gates``).

This is the split of timm's ``param_groups_weight_decay`` and of LLaMA-Adapter's fine-tuning
(``alpaca_finetuning_v1/finetuning.py``: timm's ``add_weight_decay``, 1-D parameters and
``.bias`` at 0). LLaMA-Adapter's own gates are ``(1, heads, 1, 1)`` and its adaption prompts an
``nn.Embedding``, so both are decayed there; dense3d's gates are ``(layers, heads)``
(``dense3d/models/captioner/llama_adapter.py``), 2-D as well, and ``configs/optim/adamw.yaml``
names them (``*.gates``): they start at zero and decay pulls them back shut. The prompts (3-D)
stay decayed, as in LLaMA-Adapter.

``DenseCaptionModule.configure_optimizers`` hands an optimizer of this module the model's
trainable ``(name, parameter)`` pairs (:func:`optimizer_params`); any other optimizer gets the
parameters alone, in one group, as before.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Sequence

import torch

from dense3d.errors import ConfigError

__all__ = ["AdamW", "decay_groups", "optimizer_params"]

SOURCE = "configs/optim"
GROUP_NAMES = ("decay", "no_decay")  # the groups' 'name' (torch keeps it; Lightning's LearningRateMonitor logs by it)


def decay_groups(params: Iterable[Any], no_decay_1d: bool = True, no_decay: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Split ``params`` into ``[{"params": decayed}, {"params": not decayed, "weight_decay": 0.0}]``
    (an empty group left out; the order of ``params`` kept within each). Two groups are named
    (``"name"``: :data:`GROUP_NAMES`), so that the learning-rate log says which is which
    (``lr-AdamW/decay``, ``lr-AdamW/no_decay``, not ``pg1``, ``pg2``).

    ``params``: ``(name, tensor)`` pairs (names are needed for ``no_decay``), bare tensors (only
    the ``no_decay_1d`` rule applies), or already made groups (dicts: returned as they are)."""
    if not isinstance(no_decay_1d, bool):
        raise ConfigError(SOURCE, "no_decay_1d", "true or false", got=no_decay_1d)
    if isinstance(no_decay, str) or not all(isinstance(p, str) for p in no_decay):
        raise ConfigError(SOURCE, "no_decay", "a list of parameter-name patterns, e.g. ['*.gates']", got=no_decay)
    params = list(params)
    if not params or isinstance(params[0], dict):
        return params
    decayed, kept = [], []
    for item in params:
        name, p = item if isinstance(item, tuple) else (None, item)
        skip = (no_decay_1d and p.ndim <= 1) or (name is not None and any(fnmatch.fnmatchcase(name, pat) for pat in no_decay))
        (kept if skip else decayed).append(p)
    groups = []
    if decayed:
        groups.append({"params": decayed})
    if kept:
        groups.append({"params": kept, "weight_decay": 0.0})
    if len(groups) == 2:  # LearningRateMonitor logs lr-AdamW/decay and lr-AdamW/no_decay (one group: lr-AdamW, as before)
        for group, name in zip(groups, GROUP_NAMES):
            group["name"] = name
    return groups


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` over :func:`decay_groups` of ``params``; the other arguments are
    torch's. ``no_decay_1d: false`` and ``no_decay: []`` give torch's AdamW (one group, every
    parameter decayed)."""

    takes_names = True  # configure_optimizers hands it (name, parameter) pairs

    def __init__(self, params, *args, no_decay_1d: bool = True, no_decay: Sequence[str] = (), **kwargs):
        super().__init__(decay_groups(params, no_decay_1d, no_decay), *args, **kwargs)


def optimizer_params(factory, named: Sequence[tuple[str, torch.nn.Parameter]]) -> list:
    """What the optimizer ``factory`` (a partial) is built over: the ``(name, parameter)`` pairs
    ``named`` for an optimizer that groups by name (:class:`AdamW`), else the parameters alone
    (torch's own optimizers would keep the names in their state, and older checkpoints lack them)."""
    target = getattr(factory, "func", factory)
    if getattr(target, "takes_names", False):
        return list(named)
    return [p for _, p in named]
