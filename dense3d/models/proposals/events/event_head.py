"""PDVC-style event head (Wang et al., ICCV 2021): learned event queries attend to the fused
audio-visual sequence (``nn.TransformerDecoder``) and each predicts a span (centre, length,
normalised by the clip duration), an event class (+ "no event") and the source direction
(azimuth as sin, cos); an event counter on the pooled queries predicts how many events the
clip holds, and decoding keeps that many best-scored queries.

PDVC refines spans with deformable attention layer by layer; this head uses plain
cross-attention with time encodings (clips are short), keeping the set prediction, the
Hungarian matching and the counter.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.models.fusion.temporal_fuser import time_encoding
from dense3d.models.proposals.events.matcher import span_cl_to_t0t1
from dense3d.structures import RegionFeatures

__all__ = ["EventHead", "EventPredictions"]


@dataclass
class EventPredictions:
    """``logits`` (B, Q, K + 1) (last = no event); ``spans`` (B, Q, 2) centre, length in [0, 1]
    of the clip; ``azimuth`` (B, Q, 2) unit (sin, cos); ``count_logits`` (B, max_events + 1);
    ``queries`` (B, Q, D) decoder outputs."""

    logits: torch.Tensor
    spans: torch.Tensor
    azimuth: torch.Tensor
    count_logits: torch.Tensor
    queries: torch.Tensor


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(inplace=True), nn.Linear(d_hidden, d_out))


class EventHead(nn.Module):
    """Args:
        d_model: feature size of the fused sequence and the queries.
        num_classes: K event classes.
        num_queries: Q.
        num_layers, num_heads, dropout: the decoder.
        max_events: the counter predicts 0..max_events.
        span_tokens: P, samples of the fused sequence inside each span (``RegionFeatures.tokens``).
    """

    def __init__(self, d_model: int, num_classes: int, num_queries: int = 10, num_layers: int = 2, num_heads: int = 4, dropout: float = 0.1, max_events: int = 10, span_tokens: int = 8):
        super().__init__()
        self.d_model = d_model
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.max_events = max_events
        self.span_tokens = span_tokens
        self.query_embed = nn.Embedding(num_queries, d_model)
        layer = nn.TransformerDecoderLayer(d_model, num_heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.norm = nn.LayerNorm(d_model)
        self.class_head = nn.Linear(d_model, num_classes + 1)
        self.span_head = _mlp(d_model, d_model, 2)
        self.azimuth_head = _mlp(d_model, d_model, 2)
        self.counter = _mlp(d_model, d_model, max_events + 1)

    def forward(self, memory: torch.Tensor, times: torch.Tensor, mask: torch.Tensor) -> EventPredictions:
        """memory (B, T, D) fused features, times (B, T) seconds, mask (B, T)."""
        B = memory.shape[0]
        mem = memory + time_encoding(times, self.d_model).to(memory.dtype)
        q = self.query_embed.weight[None].expand(B, -1, -1)
        h = self.norm(self.decoder(q, mem, memory_key_padding_mask=~mask))  # (B, Q, D)
        az = F.normalize(self.azimuth_head(h), dim=-1, eps=1e-6)
        return EventPredictions(self.class_head(h), self.span_head(h).sigmoid(), az, self.counter(h.amax(dim=1)), h)

    @torch.no_grad()
    def decode_selection(self, pred: EventPredictions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample, the counter's number of best queries: (B, R) indices, scores, labels, mask."""
        prob = pred.logits.softmax(-1)[..., :-1]  # (B, Q, K)
        scores, labels = prob.max(-1)
        count = pred.count_logits.argmax(-1).clamp(max=self.num_queries)  # (B,)
        R = max(1, int(count.max()))
        top_scores, top_idx = scores.topk(R, dim=1)
        mask = torch.arange(R, device=scores.device)[None] < count[:, None]
        return top_idx, top_scores, labels.gather(1, top_idx), mask

    def regions(self, pred: EventPredictions, memory: torch.Tensor, times: torch.Tensor, durations: torch.Tensor) -> RegionFeatures:
        """Decoded events as ``RegionFeatures(kind="event")``: ``geometry`` (B, R, 2) ``t0, t1``
        seconds, ``features`` (B, R, D) query outputs, ``tokens`` (B, R, P, D) the fused sequence
        linearly sampled at P times inside the span, ``extra["azimuth"]`` (B, R) radians and
        ``extra["query_index"]`` (B, R)."""
        idx, scores, labels, mask = self.decode_selection(pred)
        B, R = idx.shape
        gather = lambda t: t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        spans = gather(pred.spans)  # (B, R, 2) normalised centre, length
        t01 = span_cl_to_t0t1(spans).clamp(0, 1)
        feats = gather(pred.queries)
        az = gather(pred.azimuth)
        # sample the sequence inside each span: seconds -> [-1, 1] over the T frames (frame k
        # covers [k dt, (k + 1) dt), grid_sample with align_corners=False)
        T = memory.shape[1]
        dt = (times[:, 1] - times[:, 0]) if T > 1 else durations.to(times.dtype)  # (B,)
        u = (torch.arange(self.span_tokens, device=memory.device, dtype=memory.dtype) + 0.5) / self.span_tokens
        pos = (t01[..., :1] + (t01[..., 1:] - t01[..., :1]) * u) * durations.to(memory.dtype).view(B, 1, 1)  # (B, R, P) seconds
        x = pos / (T * dt.to(memory.dtype)).view(B, 1, 1) * 2 - 1
        grid = torch.stack([x, torch.zeros_like(x)], dim=-1).view(B, R * self.span_tokens, 1, 2)
        seq = memory.transpose(1, 2)[:, :, None]  # (B, T, D) -> (B, D, 1, T)
        tokens = F.grid_sample(seq, grid, mode="bilinear", align_corners=False)  # (B, D, R * P, 1)
        tokens = tokens.squeeze(-1).transpose(1, 2).reshape(B, R, self.span_tokens, -1)  # -> (B, R, P, D)
        m = mask.to(memory.dtype)
        return RegionFeatures(
            kind="event",
            features=feats * m[..., None],
            geometry=t01 * durations.to(memory.dtype).view(B, 1, 1) * m[..., None],
            scores=scores * m,
            labels=torch.where(mask, labels, torch.full_like(labels, -1)),
            mask=mask,
            tokens=tokens * m[..., None, None],
            extra={"azimuth": torch.atan2(az[..., 0], az[..., 1]) * m, "query_index": idx},
        )
