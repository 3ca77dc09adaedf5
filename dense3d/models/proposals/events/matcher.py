"""Hungarian matching of event queries to ground-truth events (DETR / PDVC), with scipy."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = ["HungarianEventMatcher", "span_cl_to_t0t1", "temporal_iou"]


def span_cl_to_t0t1(cl: torch.Tensor) -> torch.Tensor:
    """(..., 2) ``centre, length`` -> (..., 2) ``t0, t1``."""
    return torch.stack([cl[..., 0] - cl[..., 1] / 2, cl[..., 0] + cl[..., 1] / 2], dim=-1)


def temporal_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise tIoU of spans a (N, 2) and b (M, 2) given as ``t0, t1`` -> (N, M)."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None] - inter
    return inter / union.clamp(min=1e-6)


class HungarianEventMatcher(nn.Module):
    """Cost = ``cost_class * (-p(class)) + cost_span * L1(centre, length) + cost_tiou * (-tIoU)``
    (+ ``cost_azimuth * (1 - cos Δazimuth)`` when both sides have azimuths); spans normalised
    by the clip duration.

    ``forward(logits (Q, K+1), spans (Q, 2), gt_labels (E,), gt_spans (E, 2), azimuth (Q, 2) | None,
    gt_azimuth (E,) | None)`` -> ``(query_idx (min(Q, E),), gt_idx)`` long.
    """

    def __init__(self, cost_class: float = 1.0, cost_span: float = 5.0, cost_tiou: float = 2.0, cost_azimuth: float = 0.0):
        super().__init__()
        self.cost_class = cost_class
        self.cost_span = cost_span
        self.cost_tiou = cost_tiou
        self.cost_azimuth = cost_azimuth

    @torch.no_grad()
    def forward(self, logits, spans, gt_labels, gt_spans, azimuth=None, gt_azimuth=None):
        if gt_labels.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=logits.device)
            return empty, empty
        p = logits.float().softmax(-1)  # (Q, K+1), the last column "no event"
        labels = gt_labels.long()
        # label -1 (an event of unknown class, e.g. ActivityNet Captions): p(any event) = 1 - p(no event)
        prob = torch.where(labels[None] >= 0, p[:, labels.clamp(min=0)], 1 - p[:, -1:])  # (Q, E)
        cost = -self.cost_class * prob
        cost = cost + self.cost_span * torch.cdist(spans.float(), gt_spans.float(), p=1)
        cost = cost - self.cost_tiou * temporal_iou(span_cl_to_t0t1(spans.float()), span_cl_to_t0t1(gt_spans.float()))
        if self.cost_azimuth and azimuth is not None and gt_azimuth is not None:
            pred_az = torch.atan2(azimuth[:, 0], azimuth[:, 1]).float()
            cost = cost + self.cost_azimuth * (1 - torch.cos(pred_az[:, None] - gt_azimuth[None].float()))
        q, g = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(q, dtype=torch.long, device=logits.device), torch.as_tensor(g, dtype=torch.long, device=logits.device)
