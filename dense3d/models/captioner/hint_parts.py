"""What the caption hints share (:class:`~dense3d.models.captioner.relation_hint.RelationHint`,
:class:`~dense3d.models.captioner.motion_hint.MotionHint`): a classifier trained on a fact the
captions state, and the embedding of its answer that is added to a region's visual tokens.

* :func:`classifier_mlp`: the classifier, three linear layers;
* :func:`scale_learning_rate`: its weights held divided by a scale, so Adam moves them that many
  times the learning rate (a captioner's rate is set for the LLM side);
* :func:`zero_embedding`: the map from the classifier's softmax to the K x H numbers added to the
  visual tokens; it starts at zero, so a hint changes nothing until the LLM has learned to read it;
* :func:`embed_answer`: that map applied to the classifier's softmax, detached.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from dense3d.errors import ConfigError

__all__ = ["classifier_mlp", "scale_learning_rate", "zero_embedding", "embed_answer", "check_lr_scale"]


def check_lr_scale(owner: str, lr_scale, field: str = "lr_scale") -> float:
    """``lr_scale`` as a float, or a one-line ConfigError naming ``field`` (a finite number > 0)."""
    if isinstance(lr_scale, bool) or not (isinstance(lr_scale, (int, float)) and 0 < lr_scale < float("inf")):
        raise ConfigError(owner, field, "a finite number > 0", got=lr_scale)
    return float(lr_scale)


def classifier_mlp(in_dim: int, hidden: int, num_classes: int) -> nn.Sequential:
    """in_dim -> hidden -> hidden -> num_classes, ReLU between."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def scale_learning_rate(modules, lr_scale: float) -> None:
    """Hold the weights and biases of every ``nn.Linear`` in ``modules`` divided by ``lr_scale``
    (a ``torch.nn.utils.parametrize`` parametrisation): the same values, but Adam's steps, about
    the rate whatever the gradient's size, move them ``lr_scale`` times as far (the adapter's
    ``gate_scale`` does the same). 1.0: nothing changes, so state dicts keep their plain names."""
    if lr_scale == 1.0:
        return
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                for name in ("weight", "bias"):
                    parametrize.register_parametrization(layer, name, _Scaled(lr_scale))


def zero_embedding(num_classes: int, num_queries: int, out_dim: int) -> nn.Linear:
    """num_classes -> num_queries * out_dim, all zero at initialisation."""
    embed = nn.Linear(num_classes, num_queries * out_dim)
    nn.init.zeros_(embed.weight)
    nn.init.zeros_(embed.bias)
    return embed


def embed_answer(embed: nn.Module, logits: torch.Tensor, num_queries: int, out_dim: int) -> torch.Tensor:
    """(B, R, num_queries, out_dim): ``embed`` (a :func:`zero_embedding`) of the softmax of (B, R, C)
    ``logits``, detached, so the caption loss that reads it trains the map and not the classifier."""
    B, R, _ = logits.shape
    probs = logits.softmax(-1).detach().to(embed.weight.dtype)
    return embed(probs).view(B, R, num_queries, out_dim)  # (B, R, K*H) -> (B, R, K, H)


class _Scaled(nn.Module):
    """A parametrisation: the weight is ``scale`` times the tensor held (``right_inverse``: held = weight / scale)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, held: torch.Tensor) -> torch.Tensor:
        return held * self.scale

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.scale
