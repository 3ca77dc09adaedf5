"""DenseCaptioner: sensors -> proposals (boxes, events) -> one caption per region.

Wires already-built parts (nothing is built from strings here):

* ``box_detector`` (``BoxDetector``): LiDAR / camera BEV -> CenterPoint boxes + region features;
  or ``MMDet3DBoxDetector``, an mmdet3d LiDAR detector behind the same interface (optional);
* ``event_detector`` (``EventDetector``): audio / video -> audible events + region features;
* ``captioner`` (``RegionCaptioner``): BiCA -> Relation Q-Former -> LLaMA-Adapter -> frozen LLM;
* ``image_regions`` (``ImageRegionEncoder``, optional): each box's appearance pooled from the
  cameras, added to its region features (trains with the captioner);
* ``point_regions`` (``PointRegionEncoder``, optional): the colours and shape of the points inside
  each box, added to its region features (trains with the captioner; coloured clouds, indoors).

Training step (``forward``): detection losses of the detectors present, plus the caption loss on
regions that have a ground-truth caption. Which regions are captioned in training is set by
``caption_regions``:

* ``"gt"``: the ground-truth boxes, their features sampled from the BEV map exactly as a
  proposal's would be (the standard first captioning stage: captions learn while detection is
  still poor), and, for events, the proposals matched to ground truth (``event_caption_regions``
  picks the ground-truth spans instead);
* ``"proposals"``: the decoded proposals, each taking the caption of the ground-truth region it
  is matched to (Hungarian on IoU / tIoU, gated by ``match_iou``).

Inference (``predict``): decoded proposals -> captions, as ``DenseCaption`` records; or, with
``regions="gt"``, the ground-truth boxes and events ("captioning with ground-truth proposals",
which isolates the captioner from detection): a ground-truth event span's region is read from the
fused sequence as a proposal's is (``EventHead.span_regions``).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import torch
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.captioner.region_captioner import RegionCaptioner, region_record
from dense3d.models.context.bica import SceneContext, context_from_bev, context_from_time
from dense3d.models.context.room_layout import wall_gaps
from dense3d.models.matching import assign_captions
from dense3d.models.proposals.boxes.detector import BoxDetector, head_labels
from dense3d.models.proposals.boxes.image_features import ImageRegionEncoder
from dense3d.models.proposals.boxes.point_features import PointRegionEncoder
from dense3d.models.proposals.events.detector import EventDetector
from dense3d.structures import Boxes3D, DenseCaption, RegionFeatures

__all__ = ["DenseCaptioner"]


class DenseCaptioner(nn.Module):
    """Args:
        captioner: the region captioner, or None (detection only).
        box_detector, event_detector: at least one.
        caption_regions: ``"gt"`` or ``"proposals"`` (see the module docstring).
        event_caption_regions: which event regions are captioned in training: ``"proposals"``
            (default; the proposals matched to ground truth, whatever ``caption_regions`` says)
            or ``"gt"`` (the ground-truth spans, each with its caption, read as
            ``predict(regions="gt")`` reads them).
        match_iou: IoU (boxes) / tIoU (events) a proposal needs to take a caption in training.
        captions_per_scene: at most this many captioned regions per scene and kind per step.
        context_cell: BEV pixels pooled into one context query (boxes).
        context_window: seconds of one time-window context query (events).
        detection_weight, caption_weight: weights of the loss groups.
        target_weight: weight of the Q-Former's target-head loss (which neighbour the caption
            names; only with ``qformer.target_order``).
        relation_weight: weight of the captioner's relation-head loss (which relation the caption
            states; only with ``captioner.relation_phrases``).
        motion_weight: weight of the captioner's motion-hint loss (which motion word the caption
            states; only with ``captioner.motion_phrases``).
        scst_weight: weight of the self-critical loss (CIDEr-D reward, baseline decoded as ``generate``,
            or the other samples' mean with ``captioner.scst_samples > 1``; 0: off), the optional last
            stage (``stage=scst``).
        scst_document_frequency: where the reward's CIDEr-D takes its document frequencies from:
            ``"batch"`` (the references of the batch's regions, pycocoevalcap's own count) or
            ``"train"`` (every annotated region's references in the training set, as Rennie et
            al.'s code does; the training module hands them over through
            :meth:`set_reward_corpus` before the first step).
        image_regions: adds each box's camera appearance to its region features, or None.
        point_regions: adds the colours and shape of each box's points to its region features, or None.
        class_embedding: add a learned embedding of each box's class (the detector's label; the
            annotated class for ground-truth regions) to its region features, so captions name
            the class the detector found.
    """

    def __init__(
        self,
        captioner: RegionCaptioner | None = None,
        box_detector: BoxDetector | None = None,
        event_detector: EventDetector | None = None,
        caption_regions: str = "gt",
        match_iou: float = 0.25,
        captions_per_scene: int = 8,
        context_cell: int = 8,
        context_window: float = 1.0,
        detection_weight: float = 1.0,
        caption_weight: float = 1.0,
        scst_weight: float = 0.0,
        scst_document_frequency: str = "batch",
        target_weight: float = 0.5,
        relation_weight: float = 0.5,
        motion_weight: float = 0.5,
        image_regions: ImageRegionEncoder | None = None,
        class_embedding: bool = False,
        point_regions: PointRegionEncoder | None = None,
        event_caption_regions: str = "proposals",
    ):
        super().__init__()
        if box_detector is None and event_detector is None:
            raise ConfigError("DenseCaptioner", "box_detector/event_detector", "at least one detector")
        if caption_regions not in ("gt", "proposals"):
            raise ConfigError("DenseCaptioner", "caption_regions", "'gt' or 'proposals'", got=caption_regions)
        if scst_document_frequency not in ("batch", "train"):
            raise ConfigError("DenseCaptioner", "scst_document_frequency", "'batch' or 'train'", got=scst_document_frequency)
        if event_caption_regions not in ("gt", "proposals"):
            raise ConfigError("DenseCaptioner", "event_caption_regions", "'gt' or 'proposals'", got=event_caption_regions)
        self._check_channels(captioner, box_detector, event_detector, image_regions, point_regions)
        self.captioner = captioner
        self.box_detector = box_detector
        self.event_detector = event_detector
        self.caption_regions = caption_regions
        self.event_caption_regions = event_caption_regions
        self.match_iou = match_iou
        self.captions_per_scene = captions_per_scene
        self.context_cell = context_cell
        self.context_window = context_window
        self.detection_weight = detection_weight
        self.caption_weight = caption_weight
        self.scst_weight = scst_weight
        self.scst_document_frequency = scst_document_frequency
        self.target_weight = target_weight
        self.relation_weight = relation_weight
        self.motion_weight = motion_weight
        self.image_regions = image_regions
        self.point_regions = point_regions
        self.class_embedding = None
        if class_embedding:
            if box_detector is None:
                raise ConfigError("DenseCaptioner", "class_embedding", "a box_detector (its classes are embedded)")
            dim = box_detector.region_sampler.out_channels
            self.class_embedding = nn.Embedding(len(box_detector.class_names), dim)
        # Each source of a box's feature is layer-normalised before the sum. Summed as they came,
        # the BEV region features (whose box-geometry MLP reads raw metres: mean norm 135 on the
        # synthetic outdoor set) drowned the camera appearance (18) and the class vector (16): at
        # step 420 of captioning_outdoor the captions named the colour of 25 % of ground-truth
        # boxes and the class of 64 %, although each box's true class was embedded.
        self.region_norm = self.appearance_norm = self.point_norm = None
        if box_detector is not None and (image_regions is not None or point_regions is not None or class_embedding):
            self.region_norm = nn.LayerNorm(box_detector.region_sampler.out_channels)
            if image_regions is not None:
                self.appearance_norm = nn.LayerNorm(image_regions.out_channels)
            if point_regions is not None:
                self.point_norm = nn.LayerNorm(point_regions.out_channels)
        if captioner is not None and box_detector is not None:
            captioner.add_class_names("box", box_detector.class_names)  # labels -> names in outputs (and the motion hint's)
        if captioner is not None and event_detector is not None and event_detector.event_head.class_names is not None:
            captioner.add_class_names("event", event_detector.event_head.class_names)

    @staticmethod
    def _check_channels(captioner, box_detector, event_detector, image_regions, point_regions) -> None:
        """The widths each detector gives (region features, their tokens, the context sampled for
        them) are the widths the captioner's first layers take: one-line ConfigErrors naming both
        sides, instead of a shape error in the first step."""
        # per kind: {what: (width, "the ... channels (where it is set)")}
        given: dict[str, dict[str, tuple[int | None, str]]] = {}
        if box_detector is not None:
            D = box_detector.region_sampler.out_channels
            features = (D, f"the box region features' {D} channels (box_detector.region_sampler.out_channels)")
            for field, encoder in (("image_regions", image_regions), ("point_regions", point_regions)):
                if encoder is not None and encoder.out_channels != D:
                    raise ConfigError("DenseCaptioner", f"{field}.out_channels", features[1], got=encoder.out_channels)
            C = box_detector.bev_channels
            given["box"] = {"features": features, "tokens": features,
                            "context": (C, f"the BEV map's {C} channels ({box_detector.bev_channels_source('box_detector.')})")}
        if event_detector is not None:
            E, S = event_detector.event_head.d_model, event_detector.sequence_channels
            sequence = (S, f"the fused sequence's {S} channels (event_detector.temporal_fuser.d_model)")
            given["event"] = {"features": (E, f"the event region features' {E} channels (event_detector.event_head.d_model)"),
                              "tokens": sequence, "context": sequence}
        if captioner is None:
            return
        bica, qformer = captioner.bica, captioner.qformer
        takes = {"features": ((bica.region_in.in_features, "captioner.bica.region_dim") if bica is not None
                              else (qformer.region_in.in_features, "captioner.qformer.region_dim"))}
        if qformer.token_in is not None:
            takes["tokens"] = (qformer.token_in.in_features, "captioner.qformer.token_dim")
        if bica is not None:
            takes["context"] = (bica.context_in.in_features, "captioner.bica.context_dim")
        for widths in given.values():
            for what, (taken, field) in takes.items():
                width, expected = widths[what]
                if width is not None and width != taken:
                    raise ConfigError("DenseCaptioner", field, expected, got=taken)

    # ------------------------------------------------------------------ helpers
    def _bev_ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        r = self.box_detector.point_range
        return (float(r[0]), float(r[3])), (float(r[1]), float(r[4]))

    def _with_appearance(self, batch, r: RegionFeatures) -> RegionFeatures:
        """Box regions with their camera appearance, point colours and class embedding added to the
        features (each when configured; every source layer-normalised first), and their gaps to the
        room's walls in ``extra["wall_gaps"]`` when the Q-Former reads the room layout. Padded
        regions stay zero."""
        if self.captioner is not None and self.captioner.qformer.layout_in is not None:
            if batch.points is None:
                raise ConfigError("DenseCaptioner", "captioner.qformer.room_layout",
                                  "batches with points (the room is their extent)", got="a batch without points")
            r = dataclasses.replace(r, extra={**r.extra, "wall_gaps": wall_gaps(batch.points, r.geometry, r.mask)})
        if self.region_norm is None:
            return r
        real = r.mask[..., None].to(r.features.dtype)  # (B, R, 1)
        features = self.region_norm(r.features)
        # each encoder returns (B, R, D) with zeros where it has nothing (no camera sees the box, the
        # box holds no points); those rows stay out (a LayerNorm of zeros is its bias, not zero)
        for encoder, norm in ((self.image_regions, self.appearance_norm), (self.point_regions, self.point_norm)):
            if encoder is not None:
                x = encoder(batch, r.geometry, r.mask)
                features = features + norm(x) * (x.abs().sum(-1, keepdim=True) > 0).to(x.dtype)
        if self.class_embedding is not None:
            known = (r.labels >= 0) & r.mask  # (B, R)
            features = features + self.class_embedding(r.labels.clamp(min=0)) * known[..., None].to(features.dtype)
        return dataclasses.replace(r, features=features * real)

    def _box_context(self, bev: torch.Tensor, boxes: list[Boxes3D | None]) -> SceneContext:
        x_range, y_range = self._bev_ranges()
        return context_from_bev(bev, x_range, y_range, self.context_cell, boxes=boxes)

    def _event_context(self, out) -> SceneContext:
        return context_from_time(out.fused, out.times, out.mask, self.context_window, self.context_window / 2)

    def _gt_box_regions(self, bev: torch.Tensor, batch) -> tuple[RegionFeatures, list[list[str | None]], list[list[list[str]]]]:
        """Ground-truth boxes as regions (features sampled like a proposal's), one caption each
        (a random reference; None for boxes without a caption or over the per-scene cap), and
        all references of the chosen boxes (for SCST; [] elsewhere)."""
        detector = self.box_detector
        B = len(batch)
        K = max(1, max(len(s.boxes) for s in batch.samples))
        dev = bev.device
        boxes = torch.zeros(B, K, detector.box_dim, device=dev)
        boxes[..., 3:6] = 1.0  # padding: unit boxes, masked out
        scores = torch.zeros(B, K, device=dev)
        labels = torch.full((B, K), -1, dtype=torch.long, device=dev)
        mask = torch.zeros(B, K, dtype=torch.bool, device=dev)
        captions: list[list[str | None]] = []
        references: list[list[list[str]]] = []
        for b, s in enumerate(batch.samples):
            n = len(s.boxes)
            t = s.boxes.boxes.tensor.to(dev, torch.float32)
            boxes[b, :n] = t[:, : detector.box_dim] if t.shape[1] >= detector.box_dim else torch.cat(
                [t, torch.zeros(n, detector.box_dim - t.shape[1], device=dev)], 1
            )
            labels[b, :n] = head_labels(s.boxes, detector.class_names).to(dev)
            scores[b, :n] = 1.0
            mask[b, :n] = True
            caps, refs = self._draw_captions(s.boxes.captions, n, K)
            captions.append(caps)
            references.append(refs)
        return self.box_detector.region_sampler(bev, boxes, scores, labels, mask), captions, references

    def _draw_captions(self, annotated: list[list[str]], n: int, slots: int) -> tuple[list[str | None], list[list[str]]]:
        """One random reference for each of at most ``captions_per_scene`` of the first ``n`` regions
        that have any (None elsewhere), and all references of the chosen ones ([] elsewhere), over
        ``slots`` padded places."""
        caps: list[str | None] = [None] * slots
        refs: list[list[str]] = [[] for _ in range(slots)]
        have = [i for i in range(n) if i < len(annotated) and annotated[i]]
        if len(have) > self.captions_per_scene:
            have = random.sample(have, self.captions_per_scene)
        for i in have:
            caps[i] = random.choice(list(annotated[i]))
            refs[i] = list(annotated[i])
        return caps, refs

    def _gt_event_regions(self, ev, batch, source: str) -> tuple[RegionFeatures, list[list[str | None]], list[list[list[str]]]]:
        """Ground-truth events as regions (``EventDetector.gt_regions``: read like a proposal's),
        one caption each (a random reference; None for events without one or over the per-clip
        cap), and all references of the chosen events (for SCST; [] elsewhere)."""
        r = self.event_detector.gt_regions(ev, batch, source=source)
        E = r.mask.shape[1]
        captions: list[list[str | None]] = []
        references: list[list[list[str]]] = []
        for s in batch.samples:
            caps, refs = self._draw_captions(s.events.captions, len(s.events), E)
            captions.append(caps)
            references.append(refs)
        return r, captions, references

    # ------------------------------------------------------------------ training
    @property
    def wants_reward_corpus(self) -> bool:
        """True when SCST trains and its reward counts document frequencies over the training set."""
        return self.scst_weight > 0 and self.scst_document_frequency == "train" and self.captioner is not None

    def set_reward_corpus(self, references: list[list[str]]) -> int:
        """SCST's CIDEr-D reward takes its document frequencies from ``references`` (one list of
        reference captions per annotated region, e.g. ``SampleDataset.reference_captions()`` of the
        training set); returns the number of regions counted."""
        from dense3d.models.losses.caption import CiderDocumentFrequency

        df = CiderDocumentFrequency.from_references(references)
        if df.num_documents == 0:
            raise ConfigError("DenseCaptioner", "scst_document_frequency",
                              "'batch', or a training set whose regions have reference captions", got="train (no references)")
        self.captioner.reward_document_frequency = df
        return df.num_documents

    def loss_weight(self, name: str) -> float:
        """The weight :meth:`forward`'s loss term ``name`` carries (the training module also logs
        the term divided by it, so runs with other weights compare)."""
        if name.startswith(("det_", "event_")):
            return self.detection_weight
        return {"caption": self.caption_weight, "target": self.target_weight, "relation": self.relation_weight,
                "motion": self.motion_weight,
                "scst": self.scst_weight}.get(name, 1.0)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch (their sum is what training minimises)."""
        losses: dict[str, torch.Tensor] = {}
        regions: list[RegionFeatures] = []
        contexts: list[SceneContext] = []
        captions: list[list[list[str | None]]] = []
        references: list[list[list[list[str]]]] = []
        want_captions = self.captioner is not None and any(p.requires_grad for p in self.captioner.parameters())
        self.step_metrics: dict[str, torch.Tensor] = {}  # quantities of this batch to log, not to minimise

        if self.box_detector is not None:
            decode = want_captions and self.caption_regions == "proposals"
            out = self.box_detector(batch, decode=decode)
            # the region sampler feeds only the captioner: it may train while the rest is frozen
            detector_trains = any(p.requires_grad for n, p in self.box_detector.named_parameters()
                                  if not n.startswith("region_sampler."))
            if detector_trains:
                det = self.box_detector.loss(out, batch)
                for k, v in det.items():  # ours: heatmap, regression; the mmdet3d bridge: its head's terms
                    if k != "total":
                        losses[f"det_{k}"] = self.detection_weight * v
            if want_captions:
                if self.caption_regions == "gt":
                    r, caps, refs = self._gt_box_regions(out.bev, batch)
                else:
                    r = out.regions
                    caps = assign_captions(r, [s.boxes.boxes.tensor[:, :7].to(out.bev.device) for s in batch.samples],
                                           [s.boxes.captions for s in batch.samples], self.match_iou, self.captions_per_scene)
                    refs = [[[c] if c else [] for c in row] for row in caps]
                regions.append(self._with_appearance(batch, r))
                captions.append(caps)
                references.append(refs)
                contexts.append(self._box_context(out.bev, [s.boxes.boxes for s in batch.samples]))

        if self.event_detector is not None:
            ev = self.event_detector(batch)
            if any(p.requires_grad for p in self.event_detector.parameters()):
                det = self.event_detector.loss(ev, batch)
                for k, v in det.items():
                    if k != "total" and (v.requires_grad or not torch.is_grad_enabled()):  # validation runs without grad
                        losses[f"event_{k}"] = self.detection_weight * v
            if want_captions:
                if self.event_caption_regions == "gt":
                    r, caps, refs = self._gt_event_regions(ev, batch, "DenseCaptioner.forward")
                else:
                    r = ev.regions
                    caps = assign_captions(r, [s.events.events.tensor.to(ev.fused.device) for s in batch.samples],
                                           [s.events.captions for s in batch.samples], self.match_iou, self.captions_per_scene)
                    refs = [[[c] if c else [] for c in row] for row in caps]
                regions.append(r)
                captions.append(caps)
                references.append(refs)
                contexts.append(self._event_context(ev))

        if want_captions and self.caption_weight > 0:
            cap = self.captioner(regions, contexts, captions)
            losses["caption"] = self.caption_weight * cap["loss_caption"]
            if "loss_target" in cap:
                losses["target"] = self.target_weight * cap["loss_target"]
            if "loss_relation" in cap:
                losses["relation"] = self.relation_weight * cap["loss_relation"]
                self.step_metrics["relation_accuracy"] = cap["relation_accuracy"]
            if "loss_motion" in cap:
                losses["motion"] = self.motion_weight * cap["loss_motion"]
                self.step_metrics["motion_accuracy"] = cap["motion_accuracy"]
        if want_captions and self.scst_weight > 0:
            scst = self.captioner.scst_loss(regions, contexts, references)
            losses["scst"] = self.scst_weight * scst["loss_scst"]
            # the rewards are what SCST raises: logged beside the losses (not summed into them)
            self.step_metrics.update({f"scst_{k}": v for k, v in scst.items() if k.startswith("reward_")})
        if not losses:
            raise ConfigError("DenseCaptioner", "trainable parameters", "some part that trains (all are frozen)")
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, batch, regions: str = "proposals") -> list[list[DenseCaption]]:
        """One list of ``DenseCaption`` per sample.

        Args:
            regions: ``"proposals"``: detect, then caption every proposal; ``"gt"``: caption the
                ground-truth boxes and events of the batch (the "GT regions" / "ground-truth
                proposals" setting that isolates the captioner from detection): one record per
                annotated box and per annotated event, with its box / span and class (score 1).
                A sample without the annotations of a kind the model detects is a one-line
                ``ConfigError``.
        """
        kinds, contexts = self.region_inputs(batch, regions)
        if self.captioner is None:
            return [self._uncaptioned(kinds, b) for b in range(len(batch))]
        return self.captioner.generate(kinds, contexts)

    @torch.no_grad()
    def region_inputs(self, batch, regions: str = "proposals") -> tuple[list[RegionFeatures], list[SceneContext]]:
        """What the captioner reads for ``batch``: one ``RegionFeatures`` per kind (boxes first,
        then events; box features with their appearance added) and its ``SceneContext``.
        ``regions`` as in :meth:`predict`. (``tools/probe_tokens.py`` probes these.)"""
        if regions not in ("proposals", "gt"):
            raise ConfigError("DenseCaptioner.predict", "regions", "'proposals' or 'gt'", got=regions)
        kinds: list[RegionFeatures] = []
        contexts: list[SceneContext] = []
        if self.box_detector is not None:
            if regions == "gt":
                out = self.box_detector(batch, decode=False)
                r, _, _ = self._gt_box_regions(out.bev, batch)
                boxes = [s.boxes.boxes for s in batch.samples]
            else:
                out = self.box_detector(batch)
                r = out.regions
                boxes = [Boxes3D._wrap(d.boxes[:, :7]) for d in out.detections]
            kinds.append(self._with_appearance(batch, r) if self.captioner is not None else r)
            contexts.append(self._box_context(out.bev, boxes))
        if self.event_detector is not None:
            ev = self.event_detector(batch)
            kinds.append(ev.regions if regions == "proposals" else self.event_detector.gt_regions(ev, batch, "DenseCaptioner.predict"))
            contexts.append(self._event_context(ev))
        return kinds, contexts

    def _uncaptioned(self, regions: Sequence[RegionFeatures], b: int) -> list[DenseCaption]:
        """Detection-only models: the proposals as records with empty captions (box class names
        and per-region extras such as an event's azimuth kept)."""
        out = []
        for r in regions:
            if r.kind == "box":
                names = self.box_detector.class_names
            else:
                names = self.event_detector.event_head.class_names or []
            out += [region_record(r, b, i, names, "") for i in r.mask[b].nonzero().flatten().tolist()]
        return out
