"""Relation hint: a classifier of the relation a region's caption states, handed to the LLM as an input.

The relation head of :class:`~dense3d.models.captioner.region_captioner.RegionCaptioner` reads a
region's K visual tokens, so its loss shapes the tokens the LLM reads. Outdoors that put the
relation right more often and every other fact less often (docs/results.md, "the relation head
from the first step", "over a second cycle"): the 8 x 576 numbers per region hold the relation at
the cost of colour, target and place.

The hint keeps the two apart. Its classifier reads what decides the relation, without passing a
gradient back into it:

* per neighbour (nearest first, as :meth:`RelationQFormer.neighbours` orders them), the
  Q-Former's relation token (detached) plus the pair's raw features: its geometry
  (:func:`relation_geometry`), ranks (:func:`relation_ranks`) and "between" frame
  (:func:`relation_between`), through a linear map of its own;
* the region's own feature (detached).

With ``tokens=False`` it reads the pair features alone (``tools/relation_pair_probe.py`` trains the
same kind of classifier on them outside the captioner).

Its softmax (detached) goes through a linear map to K x H numbers that are added to the region's
visual tokens. That map starts at zero, so the hint changes nothing until the LLM has learned to
read it, and a trained model (``init_from`` a run without it) starts where it was. The caption
loss trains the map; the relation loss trains the classifier; neither reaches the other's part or
the Q-Former.
"""
from __future__ import annotations

import torch
from torch import nn

from dense3d.models.captioner.hint_parts import (check_lr_scale, classifier_mlp, embed_answer, scale_learning_rate,
                                                 zero_embedding)
from dense3d.models.captioner.qformer import (BETWEEN_DIMS, RANK_DIMS, RELATION_DIMS, RelationQFormer,
                                              relation_between, relation_geometry, relation_ranks)
from dense3d.structures.sample import RegionFeatures

__all__ = ["RelationHint", "neighbour_pair_features", "PAIR_DIMS"]

PAIR_DIMS = {kind: dims + RANK_DIMS + BETWEEN_DIMS for kind, dims in RELATION_DIMS.items()}


def neighbour_pair_features(regions: RegionFeatures, idx: torch.Tensor, valid: torch.Tensor, space_scale: float = 10.0,
                            time_scale: float = 2.0, min_score: float = 0.0, margin_scale: float = 1.0) -> torch.Tensor:
    """(B, R, k, PAIR_DIMS[kind]) what the hint reads of each (region, neighbour) pair: its geometry
    (:func:`relation_geometry`), ranks (:func:`relation_ranks`) and "between" frame
    (:func:`relation_between`); ``tools/relation_pair_probe.py`` reads the same."""
    return torch.cat([relation_geometry(regions, idx, space_scale, time_scale),
                      relation_ranks(regions, idx, valid, min_score, margin_scale),
                      relation_between(regions, idx, valid, space_scale, time_scale)], -1)


class RelationHint(nn.Module):
    """Relation classifier over a region's neighbours, and the embedding of its answer.

    Args:
        d_model: the Q-Former's width (its relation tokens) and the width of each pair token here.
        region_dim: width of the region features the Q-Former reads.
        num_neighbours: k, the Q-Former's neighbours per region.
        num_classes: relations the captions state, plus one for none.
        num_queries: K visual tokens per region.
        out_dim: their width (the LLM's hidden size).
        hidden: the classifier's hidden width.
        lr_scale: the classifier's weights are this times the tensors the optimiser holds, so they
            move about this many times the learning rate a step (Adam's steps are about the rate
            whatever the gradient's size; the adapter's ``gate_scale`` does the same). A
            captioner's rate is set for the LLM side; a classifier of the pairs alone
            (``tools/relation_pair_probe.py``: the 5,220 outdoor training scenes, 800 steps of 16
            objects, cosine) names 70.3 % of the validation relations at 5e-4 and 77.5 % at
            2.5e-3. 1.0 (default): plain weights.
        tokens: also read the Q-Former's relation tokens and the region's own feature (True,
            default); False: the pair features alone, what ``tools/relation_pair_probe.py`` reads.
        embed_lr_scale: the map of the answer onto the visual tokens moves this many times the
            learning rate a step (as ``lr_scale``); 1.0: plain weights.
    """

    def __init__(self, d_model: int, region_dim: int, num_neighbours: int, num_classes: int, num_queries: int,
                 out_dim: int, hidden: int = 256, lr_scale: float = 1.0, tokens: bool = True,
                 embed_lr_scale: float = 1.0):
        super().__init__()
        lr_scale = check_lr_scale("RelationHint", lr_scale)
        self.lr_scale = lr_scale  # the classifier's and pair maps' stored weights are their weights / lr_scale
        self.num_queries, self.out_dim = num_queries, out_dim
        self.pair_in = nn.ModuleDict({kind: nn.Linear(dims, d_model) for kind, dims in PAIR_DIMS.items()})
        self.tokens = bool(tokens)
        self.own_in = nn.Linear(region_dim, d_model) if self.tokens else None
        self.classifier = classifier_mlp((num_neighbours + self.tokens) * d_model, hidden, num_classes)
        scale_learning_rate([self.pair_in, *([self.own_in] if self.tokens else []), self.classifier], lr_scale)
        self.embed = zero_embedding(num_classes, num_queries, out_dim)  # the visual tokens start as without the hint
        scale_learning_rate([self.embed], check_lr_scale("RelationHint", embed_lr_scale, "embed_lr_scale"))

    def forward(self, regions: RegionFeatures, features: torch.Tensor,
                qformer: RelationQFormer) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            regions: the proposals (geometry, labels, scores, mask).
            features: (B, R, region_dim) the features the Q-Former read for them.
            qformer: the Q-Former, for its neighbours, relation tokens and scales.
        Returns:
            logits: (B, R, num_classes) float32, the classifier's;
            add: (B, R, K, out_dim), the embedding of its softmax, to add to the visual tokens.
        """
        idx, valid, pair = self.pair_features(regions, qformer)  # (B, R, k), (B, R, k), (B, R, k, P)
        with torch.no_grad():  # an input: nothing here trains the Q-Former
            rel = qformer.relation_tokens(regions, features)[0] if self.tokens else None  # (B, R, k, D)
        own = features.detach() if self.tokens else None  # (B, R, region_dim)
        logits = self.classify(regions.kind, pair.to(features.dtype), valid, rel, own)  # (B, R, C)
        return logits, embed_answer(self.embed, logits, self.num_queries, self.out_dim)

    @staticmethod
    def pair_features(regions: RegionFeatures, qformer: RelationQFormer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pairs the hint reads, without gradients: (B, R, k) each region's neighbours as the
        Q-Former orders them, (B, R, k) their validity and (B, R, k, PAIR_DIMS[kind]) the pair
        features at the Q-Former's scales (``tools/fit_hint.py`` reads the same)."""
        with torch.no_grad():
            idx, valid = qformer.neighbours(regions)  # (B, R, k)
            pair = neighbour_pair_features(regions, idx, valid, qformer.space_scale, qformer.time_scale,
                                           qformer.neighbour_min_score, qformer.rank_margin_scale)  # (B, R, k, P)
        return idx, valid, pair

    def classify(self, kind: str, pair: torch.Tensor, valid: torch.Tensor, rel: torch.Tensor | None = None,
                 own: torch.Tensor | None = None) -> torch.Tensor:
        """(..., C) float32 logits of (..., k, P) pair features and (..., k) their validity, plus
        (..., k, D) the Q-Former's relation tokens and (..., region_dim) the region's own feature
        where the hint reads tokens (both None where it does not)."""
        if (rel is None) == self.tokens or (own is None) == self.tokens:
            raise ValueError(f"RelationHint(tokens={self.tokens}) reads the relation tokens and own feature "
                             f"{'both' if self.tokens else 'neither'}")
        tok = self.pair_in[kind](pair)  # (..., k, D)
        if rel is not None:
            tok = tok + rel
        tok = tok * valid.unsqueeze(-1).to(tok.dtype)  # (..., k, D) invalid neighbours read as zeros
        x = tok.flatten(-2)  # (..., k, D) -> (..., k*D)
        if own is not None:
            x = torch.cat([self.own_in(own), x], -1)  # (..., D) + (..., k*D) -> (..., (k+1)*D)
        return self.classifier(x).float()  # (..., C)
