"""Set loss of the event head (DETR / PDVC): Hungarian matching, then class cross-entropy
(down-weighted "no event"), span L1 + (1 - tIoU), azimuth (1 - cos of the angle error) on
matched queries, and cross-entropy of the event counter. With a two-stage head's dense frame
predictions also: per-frame cross-entropy (the class of the event a frame lies in, else
"no event") and, on frames inside an event, L1 + (1 - tIoU) of the span the frame's distances
to the start and end give (ActionFormer); with a quality head's ``quality`` logits, binary
cross-entropy towards each query's best tIoU with a true event (spans detached). Events of
unknown class (label -1) train "an event" of any class (:func:`event_class_nll`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.models.proposals.events.matcher import HungarianEventMatcher, span_cl_to_t0t1, temporal_iou

__all__ = ["EventSetLoss", "event_class_nll"]


def event_class_nll(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Class cross-entropy of events: logits (N, K+1) (the last class "no event"), targets (N,)
    in 0..K, or -1 for an event of unknown class (data without labels, such as ActivityNet
    Captions), whose term is -log p(any event) = -log(1 - p(no event)). With class ``weight``
    (K+1,) it is the weighted mean, as ``F.cross_entropy``'s (unknown classes weigh 1).

    Hand-written because ``F.cross_entropy`` has no "any of these classes" target; on labelled
    targets it equals ``F.cross_entropy(logits, target, weight)`` (tested)."""
    logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)  # (N, K+1); float64 stays
    known = target >= 0
    t = target.clamp(min=0)
    nll = torch.where(known, -logp.gather(1, t[:, None])[:, 0], -logp[:, :-1].logsumexp(-1))  # (N,)
    w = torch.ones_like(nll) if weight is None else torch.where(known, weight.to(nll.dtype)[t], torch.ones_like(nll))
    return (w * nll).sum() / w.sum().clamp(min=1e-12)


class EventSetLoss(nn.Module):
    """Args:
        matcher: ``HungarianEventMatcher``.
        no_event_weight: class weight of the "no event" class.
        class_weight, span_weight, tiou_weight, azimuth_weight, count_weight: term weights.
        frame_class_weight, frame_span_weight, frame_tiou_weight: weights of the dense terms
            (used when the predictions carry ``frame_logits``).
        quality_weight: weight of the quality term (used when the predictions carry ``quality``).

    ``forward(predictions, gt_labels, gt_spans, gt_azimuth)`` with per-sample lists: labels
    (E_b,), spans (E_b, 2) **normalised** ``centre, length`` and azimuths (E_b,) radians or None
    -> dict of the terms and ``"total"``.
    """

    def __init__(self, matcher: HungarianEventMatcher, no_event_weight: float = 0.1, class_weight: float = 1.0, span_weight: float = 5.0, tiou_weight: float = 2.0, azimuth_weight: float = 1.0, count_weight: float = 0.5,
                 frame_class_weight: float = 1.0, frame_span_weight: float = 5.0, frame_tiou_weight: float = 2.0,
                 quality_weight: float = 1.0):
        super().__init__()
        self.matcher = matcher
        self.no_event_weight = no_event_weight
        self.weights = {"class": class_weight, "span": span_weight, "tiou": tiou_weight, "azimuth": azimuth_weight, "count": count_weight,
                        "frame_class": frame_class_weight, "frame_span": frame_span_weight, "frame_tiou": frame_tiou_weight,
                        "quality": quality_weight}

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
        weight = torch.ones(K1, device=pred.logits.device)
        weight[-1] = self.no_event_weight
        losses = {"class": event_class_nll(pred.logits.flatten(0, 1), target_cls.flatten(), weight)}
        zero = pred.spans.sum() * 0
        losses["span"] = span_l1 / max(n_matched, 1) + zero
        losses["tiou"] = tiou / max(n_matched, 1) + zero
        losses["azimuth"] = az / max(n_az, 1) + pred.azimuth.sum() * 0
        counts = torch.tensor([min(len(l), pred.count_logits.shape[1] - 1) for l in gt_labels], device=pred.count_logits.device)
        losses["count"] = F.cross_entropy(pred.count_logits, counts)
        if pred.frame_logits is not None:
            losses.update(self.frame_losses(pred, gt_labels, gt_spans))
        if pred.quality is not None:
            losses["quality"] = F.binary_cross_entropy_with_logits(pred.quality, self.quality_targets(pred.spans, gt_spans))
        losses["total"] = sum(self.weights[k] * v for k, v in losses.items())
        return losses

    @staticmethod
    @torch.no_grad()
    def quality_targets(spans: torch.Tensor, gt_spans) -> torch.Tensor:
        """(B, Q) best tIoU of each predicted span (B, Q, 2) with the sample's true spans (all
        normalised ``centre, length``); 0 for a sample without events."""
        rows = []
        for b, g in enumerate(gt_spans):
            if len(g) == 0:
                rows.append(spans.new_zeros(spans.shape[1]))
                continue
            rows.append(temporal_iou(span_cl_to_t0t1(spans[b].float()), span_cl_to_t0t1(g.float())).amax(dim=1).to(spans.dtype))
        return torch.stack(rows)

    @staticmethod
    def frame_targets(pos: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, spans: torch.Tensor, background: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sample's dense targets: frame positions (T,), mask (T,), event labels (E,) and
        normalised ``centre, length`` spans (E, 2) -> class (T,) long (``background`` outside
        events; the shortest event where they overlap), distances (T, 2) to the start and the
        end, and (T,) bool frames inside an event."""
        t01 = span_cl_to_t0t1(spans.to(pos.dtype))  # (E, 2)
        inside = (pos[:, None] >= t01[None, :, 0]) & (pos[:, None] <= t01[None, :, 1]) & mask[:, None]  # (T, E)
        length = torch.where(inside, (t01[:, 1] - t01[:, 0])[None].expand_as(inside), torch.full_like(inside, float("inf"), dtype=pos.dtype))
        e = length.argmin(dim=1) if len(spans) else torch.zeros_like(pos, dtype=torch.long)  # (T,)
        hit = inside.any(dim=1)
        cls = torch.full_like(pos, background, dtype=torch.long)
        offsets = torch.zeros(len(pos), 2, dtype=pos.dtype, device=pos.device)
        if len(spans):
            cls = torch.where(hit, labels.long()[e], cls)
            offsets = torch.stack([pos - t01[e, 0], t01[e, 1] - pos], dim=-1) * hit[:, None]
        return cls, offsets, hit

    def frame_losses(self, pred, gt_labels, gt_spans) -> dict[str, torch.Tensor]:
        K1 = pred.frame_logits.shape[-1]
        cls, off, hit = zip(*(self.frame_targets(pred.frame_pos[b], pred.frame_mask[b], gt_labels[b], gt_spans[b], K1 - 1) for b in range(len(gt_labels))))
        cls, off, hit = torch.stack(cls), torch.stack(off), torch.stack(hit)  # (B, T), (B, T, 2), (B, T)
        m = pred.frame_mask
        out = {"frame_class": event_class_nll(pred.frame_logits[m], cls[m])}
        p, t = pred.frame_offsets[hit], off[hit]  # (H, 2) distances to start, end
        zero = pred.frame_offsets.sum() * 0
        if len(p) == 0:
            return {**out, "frame_span": zero, "frame_tiou": zero}
        inter = torch.minimum(p[:, 0], t[:, 0]) + torch.minimum(p[:, 1], t[:, 1])  # both spans contain the frame
        union = p.sum(-1) + t.sum(-1) - inter
        out["frame_span"] = (p - t).abs().sum(-1).mean()
        out["frame_tiou"] = (1 - inter / union.clamp(min=1e-6)).mean()
        return out
