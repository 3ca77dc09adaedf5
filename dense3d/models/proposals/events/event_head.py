"""PDVC-style event head (Wang et al., ICCV 2021): learned event queries attend to the fused
audio-visual sequence (``nn.TransformerDecoder``) and each predicts a span (centre, length,
normalised by the clip duration), an event class (+ "no event") and the source direction
(azimuth as sin, cos); an event counter on the pooled queries predicts how many events the
clip holds, and decoding keeps that many best-scored queries.

PDVC refines spans with deformable attention layer by layer; this head uses plain
cross-attention with time encodings (clips are short), keeping the set prediction, the
Hungarian matching and the counter.

Options beyond plain PDVC:

* ``two_stage``: a dense head on the fused sequence classifies every frame (event class or
  background) and regresses its distances to the event's start and end (ActionFormer, Zhang
  et al. 2022); its best spans after temporal NMS become the queries' reference spans
  (two-stage Deformable DETR, Zhu et al. 2021): each query starts from the frame's feature and
  its span's time encoding and predicts a correction of the reference in logit space. With
  learned queries alone the head localises poorly on a few hundred clips (all ten queries of
  a 1,200-step run covered 63 % of the validation events at tIoU 0.5).
* ``directions`` (an audio encoder's SRP-PHAT map, ``TemporalFeatures.directions``): the
  azimuth is read from the map averaged inside each query's span (soft edges, span detached),
  a softmax over the azimuth bins with a learned sharpness and its circular mean, instead of
  an MLP on the query (which had to learn the arg-max of inter-channel lags from ~1,000
  events: 49 deg median error).
* ``decode_nms``: temporal NMS on the queries before the counter keeps the best ones.
* ``quality``: a head predicting each query's localisation quality (its span's best tIoU with
  a ground-truth event; IoU-Net, Jiang et al. 2018); decoding ranks the queries by class
  probability x quality. Trained 1,600 steps without it, the counter's number of best-classed
  queries covered 55 % of the validation events at tIoU 0.5 while all ten covered 78 %: the
  class score alone did not say which queries were well placed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.encoders.audio.encoder import azimuth_bins
from dense3d.models.encoders.temporal import frame_periods
from dense3d.models.fusion.temporal_fuser import time_encoding
from dense3d.models.proposals.events.matcher import span_cl_to_t0t1
from dense3d.structures import RegionFeatures

__all__ = ["EventHead", "EventPredictions", "clip_durations"]


def clip_durations(times: torch.Tensor, mask: torch.Tensor, frame_starts: bool) -> torch.Tensor:
    """(B,) seconds each clip lasts: the end of its last real frame, from the frame times (B, T)
    of its real frames (``mask`` (B, T)).

    A clip of N frames at f fps lasts N / f. With frame starts (video pts: 0, 1/f, ..., (N-1)/f)
    that is the last time plus one frame period; with frame centres ((k + 0.5) / f) the last time
    plus half of one. The period is the mean gap between the clip's own real frames
    (:func:`~dense3d.models.encoders.temporal.frame_periods`), not the first gap of the batch: a reader's fps grid keeps frames at uneven gaps (25 fps read at 8 fps
    keeps 0, 0.16, 0.28, 0.40, ...), and a padded clip's gaps run into the padding. A clip of one
    frame has no period: 1 s.
    """
    n = mask.sum(dim=1)  # (B,) real frames per clip
    last = torch.where(mask, times, torch.full_like(times, -torch.inf)).amax(dim=1)  # (B,)
    last = torch.where(n > 0, last, torch.zeros_like(last))  # a clip without frames starts and ends at 0
    period = frame_periods(times, mask)  # (B,) mean gap between the clip's kept frames
    return last + (period if frame_starts else period / 2)


@dataclass
class EventPredictions:
    """``logits`` (B, Q, K + 1) (last = no event); ``spans`` (B, Q, 2) centre, length in [0, 1]
    of the clip; ``azimuth`` (B, Q, 2) unit (sin, cos); ``count_logits`` (B, max_events + 1);
    ``queries`` (B, Q, D) decoder outputs. With ``two_stage``: ``frame_logits`` (B, T, K + 1) the
    dense head's classes, ``frame_offsets`` (B, T, 2) its distances from each frame back to the
    start and on to the end, ``frame_pos`` (B, T) frame times, all normalised by the clip
    duration, ``frame_mask`` (B, T) and ``reference`` (B, Q, 2) the queries' initial spans. With
    ``quality``: ``quality`` (B, Q) logits of each span's best tIoU with a true event."""

    logits: torch.Tensor
    spans: torch.Tensor
    azimuth: torch.Tensor
    count_logits: torch.Tensor
    queries: torch.Tensor
    frame_logits: torch.Tensor | None = None
    frame_offsets: torch.Tensor | None = None
    frame_pos: torch.Tensor | None = None
    frame_mask: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    quality: torch.Tensor | None = None


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(inplace=True), nn.Linear(d_hidden, d_out))


def temporal_nms(spans: torch.Tensor, scores: torch.Tensor, max_tiou: float, keep: int) -> torch.Tensor:
    """Greedy temporal NMS of one sample: spans (N, 2) ``t0, t1``, scores (N,) -> (keep,) long
    indices, best first: each next span overlaps every kept one by tIoU <= ``max_tiou``; when
    fewer than ``keep`` survive, the best suppressed ones fill up the list (the caller always
    gets ``keep``). A span is torchvision's NMS box ``(t0, 0, t1, 1)``: the IoU of such boxes
    is the spans' tIoU."""
    from torchvision.ops import nms

    zeros = torch.zeros_like(spans[:, 0])
    boxes = torch.stack([spans[:, 0], zeros, spans[:, 1], zeros + 1], dim=-1).float()  # (N, 2) -> (N, 4)
    kept = nms(boxes, scores.float(), max_tiou).tolist()[:keep]
    if len(kept) < keep:
        chosen = set(kept)
        kept += [q for q in scores.argsort(descending=True).tolist() if q not in chosen][: keep - len(kept)]
    kept = [kept[k % len(kept)] for k in range(keep)]  # fewer spans than asked: repeat
    return torch.as_tensor(kept, dtype=torch.long, device=scores.device)


def _inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return (x / (1 - x)).log()


def _full_precision(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``head(x)`` with autocast off, in the head's own precision (float32 weights: float32; float64
    stays): spans, scores and frame offsets out of a 16-bit Linear keep 3 significant digits,
    0.7 s on a 3-minute ActivityNet video. A model converted to 16 bits whole runs in 16 bits."""
    dtype = next(head.parameters()).dtype
    with torch.autocast(x.device.type, enabled=False):
        return head(x.to(dtype))


class EventHead(nn.Module):
    """Args:
        d_model: feature size of the fused sequence and the queries.
        num_classes: K event classes (None: ``len(class_names)``).
        class_names: the K classes' names (None: unnamed); ``EventDetector`` maps a data set's
            labels onto them by name, and captions name each event's class with them.
        num_queries: Q.
        num_layers, num_heads, dropout: the decoder.
        max_events: the counter predicts 0..max_events.
        span_tokens: P, samples of the fused sequence inside each span (``RegionFeatures.tokens``).
        two_stage: dense frame head + queries from its best spans (module docstring).
        proposal_nms: tIoU above which a dense-head span is suppressed when picking references.
        decode_nms: tIoU above which a query is suppressed before the counter picks (None: off).
        direction_readout: read the azimuth from a direction map when ``forward`` gets one (else
            the MLP on the query, also used when a batch has no map).
        direction_sharpness: initial gain of the SRP-map softmax of the azimuth read-out.
        quality: predict each query's localisation quality and rank by class x quality.
    """

    def __init__(self, d_model: int, num_classes: int | None = None, num_queries: int = 10, num_layers: int = 2, num_heads: int = 4, dropout: float = 0.1, max_events: int = 10, span_tokens: int = 8,
                 two_stage: bool = False, proposal_nms: float = 0.4, decode_nms: float | None = None, direction_readout: bool = False,
                 direction_sharpness: float = 20.0, quality: bool = False, class_names: Sequence[str] | None = None):
        super().__init__()
        if num_classes is None and class_names is None:
            raise ConfigError("EventHead", "num_classes", "a number of classes, or class_names")
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        if num_classes is None:
            num_classes = len(self.class_names)
        if num_classes < 1 or (self.class_names is not None and len(self.class_names) != num_classes):
            raise ConfigError("EventHead", "num_classes", f"one class or more, as many as class_names ({class_names})",
                              got=num_classes)
        self.two_stage = two_stage
        self.proposal_nms = proposal_nms
        self.decode_nms = decode_nms
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
        self.direction_readout = direction_readout
        self.quality_head = _mlp(d_model, d_model, 1) if quality else None
        if direction_readout:
            self.log_direction_gain = nn.Parameter(torch.tensor(float(direction_sharpness)).log())
        if two_stage:
            self.frame_class = nn.Linear(d_model, num_classes + 1)
            self.frame_offsets = _mlp(d_model, d_model, 2)
            self.query_content = nn.Linear(d_model, d_model)
            self.query_length = nn.Linear(2, d_model)
            nn.init.zeros_(self.span_head[-1].weight)  # the queries start at their reference spans
            nn.init.zeros_(self.span_head[-1].bias)

    @staticmethod
    def frame_positions(times: torch.Tensor, mask: torch.Tensor, durations: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) frame times normalised by the clip duration, and the durations (B,) s (when not
        given, the end of the last real frame, ``times`` being frame centres as in
        ``TemporalFeatures``: :func:`clip_durations`)."""
        if durations is None:
            durations = clip_durations(times, mask, frame_starts=False)
        durations = durations.to(times.dtype)
        return times / durations[:, None], durations

    def _references(self, pos, mask, frame_logits, frame_offsets):
        """Reference spans of the queries from the dense head: (B, Q) frame indices and (B, Q, 2)
        normalised ``centre, length``, both without gradient."""
        with torch.no_grad():
            score = 1 - frame_logits.softmax(-1)[..., -1]  # (B, T) P(some event)
            score = torch.where(mask, score, torch.full_like(score, -1.0))
            t01 = torch.stack([pos - frame_offsets[..., 0], pos + frame_offsets[..., 1]], dim=-1).clamp(0, 1)  # (B, T, 2)
            idx = torch.stack([temporal_nms(t01[b], score[b], self.proposal_nms, self.num_queries) for b in range(len(score))])
            ref = t01.gather(1, idx[..., None].expand(-1, -1, 2))  # (B, Q, 2) t0, t1
            cl = torch.stack([(ref[..., 0] + ref[..., 1]) / 2, (ref[..., 1] - ref[..., 0]).clamp(min=1e-3)], dim=-1)
        return idx, cl

    def read_azimuth(self, directions: torch.Tensor, spans: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, Q, 2) unit (sin, cos): the SRP map (B, T, N) averaged inside each span (B, Q, 2)
        ``centre, length`` (normalised, no gradient into the spans; edges soft over half a
        frame), a softmax over the N bins with the learned gain, its circular mean."""
        t01 = span_cl_to_t0t1(spans.detach())  # (B, Q, 2)
        edge = ((pos[:, 1] - pos[:, 0]) / 2 if pos.shape[1] > 1 else torch.ones_like(pos[:, 0])).clamp(min=1e-4)[:, None, None]  # (B, 1, 1)
        p = pos[:, None, :]  # (B, 1, T)
        w = torch.sigmoid((p - t01[..., :1]) / edge) * torch.sigmoid((t01[..., 1:] - p) / edge) * mask[:, None, :].to(pos.dtype)  # (B, Q, T)
        pooled = torch.bmm(w, directions.to(w.dtype)) / w.sum(-1, keepdim=True).clamp(min=1e-6)  # (B, Q, N)
        prob = (pooled * self.log_direction_gain.exp()).softmax(-1)
        az = azimuth_bins(directions.shape[-1], device=directions.device, dtype=prob.dtype)
        vec = prob @ torch.stack([az.sin(), az.cos()], dim=-1)  # (B, Q, N) @ (N, 2) -> (B, Q, 2)
        return F.normalize(vec, dim=-1, eps=1e-6)

    def reference_queries(self, memory: torch.Tensor, idx: torch.Tensor, ref: torch.Tensor, durations: torch.Tensor,
                          base: torch.Tensor | None = None) -> torch.Tensor:
        """(B, R, D) two-stage queries from reference spans ``ref`` (B, R, 2) normalised centre,
        length, each read at frame ``idx`` (B, R) of ``memory`` (B, T, D); ``durations`` (B,) s;
        added to ``base`` (the slots' embeddings) where given. A dense-head span's (:meth:`forward`)
        and a given span's (:meth:`span_regions`) are built here alike."""
        content = memory.gather(1, idx[..., None].expand(-1, -1, memory.shape[-1]))  # (B, R, D)
        q = self.query_content(content) if base is None else base + self.query_content(content)
        return (q + time_encoding(ref[..., 0] * durations[:, None], self.d_model).to(memory.dtype)
                + self.query_length(ref.to(self.query_length.weight.dtype)))  # ref: float32 also in a bfloat16 model

    def forward(self, memory: torch.Tensor, times: torch.Tensor, mask: torch.Tensor, directions: torch.Tensor | None = None,
                durations: torch.Tensor | None = None) -> EventPredictions:
        """memory (B, T, D) fused features, times (B, T) seconds, mask (B, T), directions (B, T, N)
        SRP-PHAT map or None, durations (B,) seconds or None (from the times)."""
        B = memory.shape[0]
        pos, durations = self.frame_positions(times, mask, durations)
        mem = memory + time_encoding(times, self.d_model).to(memory.dtype)
        q = self.query_embed.weight[None].expand(B, -1, -1)
        extra = {}
        if self.two_stage:
            frame_logits = _full_precision(self.frame_class, memory)  # (B, T, K + 1)
            frame_offsets = _full_precision(self.frame_offsets, memory).sigmoid()  # (B, T, 2) back to start, on to end
            idx, ref = self._references(pos, mask, frame_logits, frame_offsets)
            q = self.reference_queries(memory, idx, ref, durations, base=q)  # (B, Q, D)
            extra = dict(frame_logits=frame_logits, frame_offsets=frame_offsets, frame_pos=pos, frame_mask=mask, reference=ref)
        h = self.norm(self.decoder(q, mem, memory_key_padding_mask=~mask))  # (B, Q, D)
        offsets = _full_precision(self.span_head, h)  # (B, Q, 2)
        spans = (_inverse_sigmoid(extra["reference"]) + offsets).sigmoid() if self.two_stage else offsets.sigmoid()
        if directions is not None and self.direction_readout:
            az = self.read_azimuth(directions, spans, pos, mask)
        else:
            az = F.normalize(self.azimuth_head(h), dim=-1, eps=1e-6)
        if self.quality_head is not None:
            extra["quality"] = _full_precision(self.quality_head, h).squeeze(-1)  # (B, Q, 1) -> (B, Q)
        return EventPredictions(_full_precision(self.class_head, h), spans, az, self.counter(h.amax(dim=1)), h, **extra)

    def span_regions(self, memory: torch.Tensor, times: torch.Tensor, mask: torch.Tensor, durations: torch.Tensor,
                     spans: torch.Tensor, labels: torch.Tensor, region_mask: torch.Tensor,
                     directions: torch.Tensor | None = None) -> RegionFeatures:
        """Given spans (ground-truth events: captioning with ground-truth proposals, as PDVC and
        densevid_eval report it) as ``RegionFeatures(kind="event")``, read like a proposal's.

        ``memory`` (B, T, D) the fused sequence, ``times`` (B, T) s and ``mask`` (B, T) its
        frames, ``durations`` (B,) s, ``spans`` (B, R, 2) ``t0, t1`` seconds, ``labels`` (B, R)
        the head's class indices (-1: unknown), ``region_mask`` (B, R) the real spans,
        ``directions`` (B, T, N) an SRP-PHAT map or None.

        * ``tokens``: the sequence sampled inside the span (:meth:`sample_spans`, as a proposal's);
        * ``features``: with ``two_stage``, the decoder's output for a query whose reference span
          is the given one (PDVC's ``gt_proposals`` input: the query built exactly as from a dense
          head's span in :meth:`forward`: the spans ranked by the dense head's score at their
          frame, the k-th in slot k, Q spans per decoder pass, as forward's references); a head of
          learned queries alone cannot place a query on a span, and takes the mean of the tokens
          (the sequence pooled inside the span);
        * ``geometry`` the spans as given, ``scores`` 1, ``extra["azimuth"]`` read inside the span
          as a proposal's (the direction map with ``direction_readout``, else the azimuth MLP).
        """
        B, R = spans.shape[:2]
        pos, durations = self.frame_positions(times, mask, durations)
        dtype = torch.promote_types(memory.dtype, torch.float32)  # seconds: not in 16 bits under autocast
        t01 = (spans.to(dtype) / durations.to(dtype).view(B, 1, 1)).clamp(0, 1)  # (B, R, 2) normalised t0, t1
        cl = torch.stack([(t01[..., 0] + t01[..., 1]) / 2, (t01[..., 1] - t01[..., 0]).clamp(min=1e-3)], dim=-1)  # (B, R, 2)
        tokens = self.sample_spans(memory, times, durations, t01, mask)  # (B, R, P, D)
        if self.two_stage:
            # the reference's frame: the real frame nearest the span's centre (a dense-head span's
            # query reads the frame that predicted it, which lies inside its span)
            gap = (times[:, None, :] - (cl[..., :1] * durations.to(dtype).view(B, 1, 1)).to(times.dtype)).abs()  # (B, R, T)
            idx = torch.where(mask[:, None, :], gap, torch.full_like(gap, torch.inf)).argmin(-1)  # (B, R)
            # query slots as forward's: slot k holds the k-th best-scored reference (the dense head's
            # P(event) at its frame), not the k-th span of the annotation (whose order is arbitrary);
            # more spans than queries are decoded Q at a time, so no slot serves two spans of one pass
            with torch.no_grad():
                frame_score = 1 - _full_precision(self.frame_class, memory).softmax(-1)[..., -1]  # (B, T) P(some event)
                score = frame_score.gather(1, idx).masked_fill(~region_mask, -torch.inf)  # (B, R); padding last
                # ties (spans read at one frame) by centre, then length: not by the annotation's order
                by_place = torch.argsort(cl[..., 1], dim=1, stable=True)  # (B, R)
                by_place = by_place.gather(1, torch.argsort(cl[..., 0].gather(1, by_place), dim=1, stable=True))
                ranked = torch.argsort(score.gather(1, by_place), dim=1, descending=True, stable=True)
                order = by_place.gather(1, ranked)  # (B, R) span of each rank
            q = self.reference_queries(memory, idx, cl, durations.to(dtype))  # (B, R, D), the slot's embedding added below
            mem = memory + time_encoding(times, self.d_model).to(memory.dtype)
            feats = torch.zeros_like(q)
            for start in range(0, R, self.num_queries):
                take = order[:, start : start + self.num_queries]  # (B, n) spans of ranks start..start+n-1
                n = take.shape[1]
                q_c = q.gather(1, take[..., None].expand(-1, -1, q.shape[-1])) + self.query_embed.weight[:n][None]  # (B, n, D)
                # padded spans are not attended to; a clip with no span in this pass keeps them (its
                # rows are dropped below; a softmax over nothing would be NaN)
                pad = ~region_mask.gather(1, take)  # (B, n)
                pad = pad & ~pad.all(dim=1, keepdim=True)
                h = self.norm(self.decoder(q_c, mem, memory_key_padding_mask=~mask, tgt_key_padding_mask=pad))  # (B, n, D)
                feats = feats.scatter(1, take[..., None].expand(-1, -1, h.shape[-1]), h.to(feats.dtype))  # back to span order
        else:
            feats = tokens.mean(dim=2).to(memory.dtype)  # (B, R, P, D) -> (B, R, D)
        if directions is not None and self.direction_readout:
            az = self.read_azimuth(directions, cl, pos, mask)
        else:  # in the head's own precision: an azimuth out of a 16-bit MLP keeps 3 digits
            az = F.normalize(_full_precision(self.azimuth_head, feats), dim=-1, eps=1e-6)
        m = region_mask.to(dtype)
        return RegionFeatures(
            kind="event",
            features=feats * m[..., None].to(feats.dtype),
            geometry=spans.to(dtype) * m[..., None],
            scores=m.clone(),
            labels=torch.where(region_mask, labels, torch.full_like(labels, -1)),
            mask=region_mask,
            tokens=tokens * m[..., None, None],
            extra={"azimuth": torch.atan2(az[..., 0], az[..., 1]).to(dtype) * m},
        )

    @torch.no_grad()
    def decode_selection(self, pred: EventPredictions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample, the counter's number of best queries (class probability, x quality when
        predicted; after temporal NMS when ``decode_nms``): (B, R) indices, scores, labels, mask."""
        prob = pred.logits.softmax(-1)[..., :-1]  # (B, Q, K)
        scores, labels = prob.max(-1)
        if pred.quality is not None:
            scores = scores * pred.quality.sigmoid()
        count = pred.count_logits.argmax(-1).clamp(max=self.num_queries)  # (B,)
        R = max(1, int(count.max()))
        if self.decode_nms is not None:
            t01 = span_cl_to_t0t1(pred.spans)
            top_idx = torch.stack([temporal_nms(t01[b], scores[b], self.decode_nms, R) for b in range(len(scores))])
            top_scores = scores.gather(1, top_idx)
        else:
            top_scores, top_idx = scores.topk(R, dim=1)
        mask = torch.arange(R, device=scores.device)[None] < count[:, None]
        return top_idx, top_scores, labels.gather(1, top_idx), mask

    def sample_spans(self, memory: torch.Tensor, times: torch.Tensor, durations: torch.Tensor, t01: torch.Tensor,
                     frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, R, P, D) the sequence ``memory`` (B, T, D) linearly sampled at P times inside each span
        ``t01`` (B, R, 2) ``t0, t1`` normalised by ``durations`` (B,) s; ``times`` (B, T) the frame
        centres, ``frame_mask`` (B, T) the real ones (see :meth:`regions`). The tokens of a
        proposal's and of a ground-truth span (:meth:`span_regions`) are both read here."""
        B, R = t01.shape[:2]
        # sample the sequence inside each span: seconds -> [-1, 1] over the T frames (frame k
        # sits at its centre times[k] = times[0] + k dt, grid_sample with align_corners=False)
        T = memory.shape[1]
        if frame_mask is not None:
            dt = frame_periods(times, frame_mask.bool())  # (B,) each clip's own period
            # one frame: every token reads it (an infinite period puts every time on frame 0)
            dt = torch.where(frame_mask.sum(1) > 1, dt, torch.full_like(dt, float("inf")))
            last = torch.where(frame_mask.bool(), times, torch.full_like(times, -torch.inf)).amax(dim=1)  # (B,) last real frame
            last = torch.where(frame_mask.any(dim=1), last, times[:, 0])
        else:
            dt = (times[:, 1] - times[:, 0]) if T > 1 else durations.to(times.dtype)  # (B,)
            last = times[:, -1]
        dtype = torch.promote_types(memory.dtype, torch.float32)  # seconds: not in 16 bits under autocast
        u = (torch.arange(self.span_tokens, device=memory.device, dtype=dtype) + 0.5) / self.span_tokens
        pos = (t01[..., :1].to(dtype) + (t01[..., 1:] - t01[..., :1]).to(dtype) * u) * durations.to(dtype).view(B, 1, 1)  # (B, R, P) seconds
        # before the first frame's centre or after the last real one a token reads that frame (as
        # interpolate_in_time clamps), not a blend with grid_sample's zeros or the batch's padding
        first = times[:, :1, None].to(dtype)  # (B, 1, 1)
        pos = torch.minimum(torch.maximum(pos, first), last.to(dtype).view(B, 1, 1))
        x = ((pos - times[:, :1, None].to(dtype)) / dt.to(dtype).view(B, 1, 1) + 0.5) / T * 2 - 1
        grid = torch.stack([x, torch.zeros_like(x)], dim=-1).view(B, R * self.span_tokens, 1, 2)
        seq = memory.to(dtype).transpose(1, 2)[:, :, None]  # (B, T, D) -> (B, D, 1, T)
        tokens = F.grid_sample(seq, grid, mode="bilinear", align_corners=False)  # (B, D, R * P, 1)
        tokens = tokens.squeeze(-1).transpose(1, 2).reshape(B, R, self.span_tokens, -1)  # -> (B, R, P, D)
        return tokens

    def regions(self, pred: EventPredictions, memory: torch.Tensor, times: torch.Tensor, durations: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> RegionFeatures:
        """Decoded events as ``RegionFeatures(kind="event")``: ``geometry`` (B, R, 2) ``t0, t1``
        seconds, ``features`` (B, R, D) query outputs, ``tokens`` (B, R, P, D) the fused sequence
        linearly sampled at P times inside the span, ``extra["azimuth"]`` (B, R) radians and
        ``extra["query_index"]`` (B, R). ``frame_mask`` (B, T): the real frames of ``times``; with it
        each clip's frame period is its own (:func:`frame_periods`), not the batch's first gap,
        which runs into the padding of a clip shorter than the batch's longest."""
        idx, scores, labels, mask = self.decode_selection(pred)
        B, R = idx.shape
        gather = lambda t: t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        spans = gather(pred.spans)  # (B, R, 2) normalised centre, length
        t01 = span_cl_to_t0t1(spans).clamp(0, 1)
        feats = gather(pred.queries)
        az = gather(pred.azimuth)
        tokens = self.sample_spans(memory, times, durations, t01, frame_mask)  # (B, R, P, D)
        dtype = tokens.dtype
        m = mask.to(dtype)
        return RegionFeatures(
            kind="event",
            features=feats * m[..., None],
            geometry=t01.to(dtype) * durations.to(dtype).view(B, 1, 1) * m[..., None],
            scores=scores * m,
            labels=torch.where(mask, labels, torch.full_like(labels, -1)),
            mask=mask,
            tokens=tokens * m[..., None, None],
            extra={"azimuth": torch.atan2(az[..., 0], az[..., 1]) * m, "query_index": idx},
        )
