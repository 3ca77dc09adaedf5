"""Set loss of the event head (DETR / PDVC): Hungarian matching, then class cross-entropy
(down-weighted "no event"), span L1 + (1 - tIoU), azimuth (1 - cos of the angle error) on
matched queries, and cross-entropy of the event counter."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.models.proposals.events.matcher import HungarianEventMatcher, span_cl_to_t0t1, temporal_iou

__all__ = ["EventSetLoss"]


class EventSetLoss(nn.Module):
    """Args:
        matcher: ``HungarianEventMatcher``.
        no_event_weight: class weight of the "no event" class.
        class_weight, span_weight, tiou_weight, azimuth_weight, count_weight: term weights.

    ``forward(predictions, gt_labels, gt_spans, gt_azimuth)`` with per-sample lists: labels
    (E_b,), spans (E_b, 2) **normalised** ``centre, length`` and azimuths (E_b,) radians or None
    -> dict of the terms and ``"total"``.
    """

    def __init__(self, matcher: HungarianEventMatcher, no_event_weight: float = 0.1, class_weight: float = 1.0, span_weight: float = 5.0, tiou_weight: float = 2.0, azimuth_weight: float = 1.0, count_weight: float = 0.5):
        super().__init__()
        self.matcher = matcher
        self.no_event_weight = no_event_weight
        self.weights = {"class": class_weight, "span": span_weight, "tiou": tiou_weight, "azimuth": azimuth_weight, "count": count_weight}

    def forward(self, pred, gt_labels, gt_spans, gt_azimuth) -> dict[str, torch.Tensor]:
        B, Q, K1 = pred.logits.shape
        target_cls = torch.full((B, Q), K1 - 1, dtype=torch.long, device=pred.logits.device)
        span_l1, tiou, az, n_matched, n_az = 0.0, 0.0, 0.0, 0, 0
        for b in range(B):
            az_b = gt_azimuth[b] if gt_azimuth is not None else None
            qi, gi = self.matcher(pred.logits[b], pred.spans[b], gt_labels[b], gt_spans[b], pred.azimuth[b], az_b)
            if qi.numel() == 0:
                continue
            target_cls[b, qi] = gt_labels[b][gi].long()
            ps, gs = pred.spans[b, qi], gt_spans[b][gi].to(pred.spans.dtype)
            span_l1 = span_l1 + (ps - gs).abs().sum()
            tiou = tiou + (1 - temporal_iou(span_cl_to_t0t1(ps), span_cl_to_t0t1(gs)).diagonal()).sum()
            n_matched += qi.numel()
            if az_b is not None:
                a = az_b[gi].to(pred.azimuth.dtype)
                target = torch.stack([a.sin(), a.cos()], dim=-1)
                az = az + (1 - (pred.azimuth[b, qi] * target).sum(-1)).sum()  # 1 - cos(error)
                n_az += qi.numel()
        weight = torch.ones(K1, device=pred.logits.device, dtype=pred.logits.dtype)
        weight[-1] = self.no_event_weight
        losses = {"class": F.cross_entropy(pred.logits.flatten(0, 1), target_cls.flatten(), weight=weight)}
        zero = pred.spans.sum() * 0
        losses["span"] = span_l1 / max(n_matched, 1) + zero
        losses["tiou"] = tiou / max(n_matched, 1) + zero
        losses["azimuth"] = az / max(n_az, 1) + pred.azimuth.sum() * 0
        counts = torch.tensor([min(len(l), pred.count_logits.shape[1] - 1) for l in gt_labels], device=pred.count_logits.device)
        losses["count"] = F.cross_entropy(pred.count_logits, counts)
        losses["total"] = sum(self.weights[k] * v for k, v in losses.items())
        return losses
