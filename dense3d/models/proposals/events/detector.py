"""Audible-event proposals: audio / video encoders -> temporal fuser -> event head -> events
with features (``RegionFeatures(kind="event")``). Wires already-built parts."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dense3d.errors import AnnotationError, ConfigError
from dense3d.models.encoders.temporal import TemporalFeatures
from dense3d.models.proposals.events.event_head import EventHead, EventPredictions, clip_durations
from dense3d.structures import RegionFeatures

__all__ = ["EventDetector", "EventDetectorOutput"]


@dataclass
class EventDetectorOutput:
    """``fused`` (B, T, D) sequence; ``times`` (B, T) s; ``mask`` (B, T); ``durations`` (B,) s;
    ``audio`` / ``video`` the encoders' ``TemporalFeatures`` (None when absent);
    ``predictions`` raw head outputs; ``regions`` decoded events."""

    fused: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor
    durations: torch.Tensor
    audio: TemporalFeatures | None
    video: TemporalFeatures | None
    predictions: EventPredictions
    regions: RegionFeatures


class EventDetector(nn.Module):
    """Args:
        temporal_fuser: ``TemporalFuser``.
        event_head: ``EventHead``.
        audio_encoder, video_encoder: at least one.
        loss: ``EventSetLoss`` (needed for ``loss``).
        video_timestamps: what ``batch.video_timestamps`` mark: ``"starts"`` (default; the frames'
            presentation times, as ``dense3d.data.readers.read_video_frames`` reads them from pts)
            or ``"centres"`` (each frame's mid-time); passed to the video encoder, which places
            its features at the frames' centres either way.

    The time axis is the audio frames when the batch has audio (video is resampled onto it; the
    clip lasts as long as its audio), else the video frames' centres (the video encoder's
    ``TemporalFeatures.times``): a clip of N kept frames, f a second, lasts N / f: the last
    frame's start plus the gap between kept frames (given centres: the last centre plus half that
    gap; :func:`~dense3d.models.proposals.events.event_head.clip_durations`). ``forward(batch) -> EventDetectorOutput``; ``loss(output, batch)``
    with targets from ``batch.samples[b].events`` (labels, spans in seconds, azimuth; labels
    through :meth:`head_labels`); spans running past the clip's duration end with it, events
    starting after it are left out.
    """

    def __init__(self, temporal_fuser: nn.Module, event_head: EventHead, audio_encoder: nn.Module | None = None, video_encoder: nn.Module | None = None, loss: nn.Module | None = None,
                 video_timestamps: str = "starts"):
        super().__init__()
        if audio_encoder is None and video_encoder is None:
            raise ConfigError("EventDetector", "audio_encoder/video_encoder", "at least one encoder")
        if video_timestamps not in ("starts", "centres"):
            raise ConfigError("EventDetector", "video_timestamps", '"starts" or "centres"', got=video_timestamps)
        self.video_timestamps = video_timestamps
        self.audio_encoder = audio_encoder
        self.video_encoder = video_encoder
        self.temporal_fuser = temporal_fuser
        self.event_head = event_head
        self.loss_fn = loss
        self._check_channels()

    @property
    def sequence_channels(self) -> int | None:
        """Width of the fused sequence (the head's memory, the events' tokens, the time contexts)."""
        return getattr(self.temporal_fuser, "d_model", None)

    def _check_channels(self) -> None:
        """Channels passed between the parts agree (what is known before a forward pass)."""
        for name, encoder in (("audio", self.audio_encoder), ("video", self.video_encoder)):
            have, want = getattr(encoder, "out_channels", None), getattr(self.temporal_fuser, f"{name}_channels", None)
            if have is not None and want is not None and have != want:
                raise ConfigError("EventDetector", f"temporal_fuser.{name}_channels",
                                  f"the {name} encoder's {have} channels ({name}_encoder.out_channels)", got=want)
        D, head = self.sequence_channels, getattr(self.event_head, "d_model", None)
        if D is not None and head is not None and head != D:
            raise ConfigError("EventDetector", "event_head.d_model", f"the fused sequence's {D} channels (temporal_fuser.d_model)",
                              got=head)

    def forward(self, batch) -> EventDetectorOutput:
        audio = video = None
        if self.audio_encoder is not None and batch.audio is not None:
            audio = self.audio_encoder(batch)
        if self.video_encoder is not None and batch.video is not None:
            times, times_mask = (audio.times, audio.mask) if audio is not None else (None, None)
            video = self.video_encoder(batch, times, times_mask, timestamps=self.video_timestamps)
        ref = audio if audio is not None else video
        if ref is None:
            raise ConfigError("Batch", "audio/video", "the sensors of this detector", got="neither")
        if audio is not None:
            lengths = batch.audio_lengths if batch.audio_lengths is not None else torch.full((len(batch),), batch.audio.shape[-1])
            durations = lengths.to(ref.features.device).float() / float(batch.sample_rate or self.audio_encoder.sample_rate)
        elif self.video_timestamps == "starts":
            # the last kept frame's start plus the gap between kept frames: a 10 s clip at 8 fps read at
            # 2 fps keeps starts 0, 0.5, ..., 9.5 and lasts 10.0 s. Not from the encoder's times: they
            # are the frames' native centres (9.5 + 1/16 s), half a *native* frame past the starts
            mask = batch.video_mask if batch.video_mask is not None else torch.ones_like(batch.video_timestamps, dtype=torch.bool)
            durations = clip_durations(batch.video_timestamps.to(ref.times), mask.to(ref.mask.device), frame_starts=True)
        else:  # given centres: 8 frames at 4 fps (centres 0.125, ..., 1.875) last 2.0 s
            durations = clip_durations(ref.times, ref.mask, frame_starts=False)
        fused = self.temporal_fuser(audio.features if audio is not None else None, video.features if video is not None else None, ref.times, ref.mask)
        directions = audio.directions if audio is not None else None
        pred = self.event_head(fused, ref.times, ref.mask, directions=directions, durations=durations)
        regions = self.event_head.regions(pred, fused, ref.times, durations, ref.mask)
        return EventDetectorOutput(fused, ref.times, ref.mask, durations, audio, video, pred, regions)

    def head_labels(self, events, sample_id: str, i: int) -> torch.Tensor:
        """A sample's event labels (E,) as the head's class indices: by name when both the head
        and the data name their classes (a class the head lacks becomes -1, an event of unknown
        class; data that share no class with a head of several classes is an error), else the
        data's indices, which must be below the head's ``num_classes``; -1 (unlabelled) stays -1."""
        labels, head = events.labels.long(), self.event_head
        by_name = head.class_names is not None and bool(events.class_names)
        top = len(events.class_names) if by_name else head.num_classes
        bad = (labels < -1) | (labels >= top)
        if bad.any():
            where = "the data's class names" if by_name else "event_head.num_classes"
            raise AnnotationError(sample_id, f"samples[{i}].events.labels", f"class indices in -1..{top - 1} ({where})",
                                  got=int(labels[bad][0]))
        if not by_name:
            return labels
        lut = [head.class_names.index(n) if n in head.class_names else -1 for n in events.class_names]
        if head.num_classes > 1 and all(k < 0 for k in lut):
            raise ConfigError("EventDetector", "event_head.class_names",
                              f"classes shared with the data's {list(events.class_names)}", got=head.class_names)
        lut = torch.tensor(lut + [-1], device=labels.device)
        return lut[labels]  # index -1 (unlabelled) reads the appended -1

    def gt_regions(self, output: EventDetectorOutput, batch, source: str = "EventDetector.gt_regions") -> RegionFeatures:
        """The ground-truth events of ``batch.samples[b].events`` as regions read from ``output``'s
        fused sequence like a proposal's (:meth:`EventHead.span_regions`): (B, E_max) with the
        annotated spans in seconds and their labels as the head's classes (:meth:`head_labels`).
        A sample without event annotations is a one-line ``ConfigError`` naming it (``source``:
        who asked)."""
        dev = output.fused.device
        for s in batch.samples:
            if s.events is None:
                raise ConfigError(source, f"sample {s.sample_id!r}.events",
                                  "ground-truth events to caption (regions='gt'; regions='proposals' detects them)", got="None")
        B = len(batch)
        E = max(1, max(len(s.events) for s in batch.samples))
        spans = torch.zeros(B, E, 2, device=dev)
        labels = torch.full((B, E), -1, dtype=torch.long, device=dev)
        mask = torch.zeros(B, E, dtype=torch.bool, device=dev)
        for b, s in enumerate(batch.samples):
            n = len(s.events)
            spans[b, :n] = s.events.events.tensor.to(dev, torch.float32)
            labels[b, :n] = self.head_labels(s.events, s.sample_id, b).to(dev)
            mask[b, :n] = True
        directions = output.audio.directions if output.audio is not None else None
        return self.event_head.span_regions(output.fused, output.times, output.mask, output.durations, spans, labels, mask,
                                            directions=directions)

    def loss(self, output: EventDetectorOutput, batch) -> dict[str, torch.Tensor]:
        if self.loss_fn is None:
            raise ConfigError("EventDetector", "loss", "a loss module to compute losses")
        labels, spans, azimuths = [], [], []
        dev = output.fused.device
        for i, s in enumerate(batch.samples):
            if s.events is None:
                raise AnnotationError(s.sample_id, f"samples[{i}].events", "event annotations to train the event head")
            # the clip is as long as its audio (else video): an annotated span running past its end
            # (real durations differ from the media by a second or more) ends there, an event
            # starting after it is not in the clip; targets stay within [0, 1]
            duration = output.durations[i].float()
            t01 = torch.minimum(s.events.events.tensor.to(dev).float(), duration)  # (E, 2) seconds
            inside = t01[:, 0] < duration  # (E,)
            t01 = t01[inside]
            cl = torch.stack([(t01[:, 0] + t01[:, 1]) / 2, t01[:, 1] - t01[:, 0]], dim=-1) / duration  # (E, 2) normalised centre, length
            labels.append(self.head_labels(s.events, s.sample_id, i).to(dev)[inside])
            spans.append(cl)
            azimuths.append(s.events.azimuth.to(dev)[inside] if s.events.azimuth is not None else None)
        if any(a is None for a in azimuths):
            azimuths = None
        return self.loss_fn(output.predictions, labels, spans, azimuths)
