"""Motion hint: a classifier of the motion word a box's caption states, handed to the LLM as an input.

Outdoor captions say whether an object moves ("a gray car is parked", "a pedestrian walking");
TOD3Cap's ``motion_caption``. One LiDAR sweep does not show it, but where an object stands does
much of the time: on our synthetic set a car at the kerb is parked, one in a lane moves three
times in five, and a cone is placed; the commonest word per class and 1 m lateral bin
(``tools/relation_oracle.py --guess-motion``) is right for 72 % of the validation objects, where
the captioner that reads the same boxes through its visual tokens states a right word for 38 %
(and a wrong one for 24 %; docs/results.md, "a motion hint").

So, as :class:`~dense3d.models.captioner.relation_hint.RelationHint` does for the relation, a
small classifier reads what decides it, the box's class (one-hot) and geometry (centre, |centre|,
log size, heading), and is trained on the word the caption states (captions that state none teach
nothing). Its softmax (detached) goes through a map that starts at zero to K x H numbers added to
the box's visual tokens, when training and when generating. The motion loss trains only the
classifier, the caption loss only the map: neither reaches the other's part or the Q-Former.

It reads neither the region's features nor a velocity: the detectors here see one sweep and
predict none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.captioner.hint_parts import (check_lr_scale, classifier_mlp, embed_answer, scale_learning_rate,
                                                 zero_embedding)
from dense3d.structures.sample import RegionFeatures

__all__ = ["MotionHint", "box_motion_features", "BOX_DIMS"]

BOX_DIMS = 10  # x, y, z, |x|, |y| (over space_scale), log dx, dy, dz, sin and cos of the heading


def box_motion_features(geometry: torch.Tensor, space_scale: float = 10.0) -> torch.Tensor:
    """(B, R, BOX_DIMS) of (B, R, 7) boxes ``x, y, z, dx, dy, dz, yaw``: the centre and its absolute
    values over ``space_scale`` metres (which side of the road does not matter, how far out does),
    the log of the sizes, and the heading as sine and cosine."""
    centre = geometry[..., :3] / space_scale  # (B, R, 3)
    size = geometry[..., 3:6].clamp_min(1e-3).log()  # (B, R, 3)
    yaw = geometry[..., 6:7]  # (B, R, 1)
    return torch.cat([centre, centre[..., :2].abs(), size, yaw.sin(), yaw.cos()], -1)


class MotionHint(nn.Module):
    """Motion classifier of a box's class and geometry, and the embedding of its answer.

    Args:
        num_labels: the detector's classes (``RegionFeatures.labels`` index them).
        num_classes: the motion words (groups of phrases) the captions state.
        num_queries: K visual tokens per region.
        out_dim: their width (the LLM's hidden size).
        hidden: the classifier's hidden width.
        lr_scale: the classifier moves about this many times the learning rate a step
            (:func:`~dense3d.models.captioner.hint_parts.scale_learning_rate`); 1.0: plain weights.
        space_scale: metres per unit of the centre features.
        embed_lr_scale: the map of the answer onto the visual tokens moves this many times the
            learning rate a step (as ``lr_scale``); 1.0: plain weights.
    """

    def __init__(self, num_labels: int, num_classes: int, num_queries: int, out_dim: int, hidden: int = 128,
                 lr_scale: float = 1.0, space_scale: float = 10.0, embed_lr_scale: float = 1.0):
        super().__init__()
        lr_scale = check_lr_scale("MotionHint", lr_scale)
        self.lr_scale = lr_scale  # the classifier's stored weights are its weights / lr_scale
        if not num_labels > 0:
            raise ConfigError("MotionHint", "num_labels", "the detector's class names (at least one)", got=num_labels)
        self.num_labels, self.num_queries, self.out_dim, self.space_scale = num_labels, num_queries, out_dim, space_scale
        self.classifier = classifier_mlp(num_labels + BOX_DIMS, hidden, num_classes)
        scale_learning_rate([self.classifier], lr_scale)
        self.embed = zero_embedding(num_classes, num_queries, out_dim)  # the visual tokens start as without the hint
        scale_learning_rate([self.embed], check_lr_scale("MotionHint", embed_lr_scale, "embed_lr_scale"))

    def forward(self, regions: RegionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            regions: boxes (geometry (B, R, 7), labels, mask).
        Returns:
            logits: (B, R, num_classes) float32, the classifier's;
            add: (B, R, K, out_dim), the embedding of its softmax, to add to the visual tokens.
        """
        logits = self.classifier(self.inputs(regions.labels, regions.geometry)).float()  # (B, R, C)
        return logits, embed_answer(self.embed, logits, self.num_queries, self.out_dim)

    def inputs(self, labels: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """(..., L + BOX_DIMS) classifier inputs of (...) class indices and (..., 7) boxes: the
        class one-hot and :func:`box_motion_features` (also what tools/fit_hint.py fits on)."""
        dtype = self.embed.weight.dtype
        one_hot = F.one_hot(labels.clamp(0, self.num_labels - 1), self.num_labels).to(dtype)  # (..., L)
        return torch.cat([one_hot, box_motion_features(geometry.to(dtype), self.space_scale)], -1)  # (..., L + BOX_DIMS)
