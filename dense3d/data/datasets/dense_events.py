"""Dense event captions in the ActivityNet Captions layout, with dense3d's audio extension.

Layout and optional fields: ``docs/data_formats.md`` section 4.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dense3d.data.datasets.base import SampleDataset, select_sensors
from dense3d.data.datasets.media import check_frame_options, load_clip
from dense3d.data.readers import load_json
from dense3d.errors import AnnotationError, EventError
from dense3d.structures import EventAnnotations, Events, Sample

__all__ = ["DenseEventsDataset", "parse_event_entry"]


def parse_event_entry(vid: str, e, source, class_names: Sequence[str] | None) -> tuple[EventAnnotations, dict]:
    """One ``{duration, timestamps, sentences, ...}`` entry -> (EventAnnotations, meta)."""
    for key in ("duration", "timestamps", "sentences"):
        if not isinstance(e, dict) or key not in e:
            raise AnnotationError(source, f"{vid}.{key}", "a present field", got="missing")
    try:
        duration = float(e["duration"])
    except (TypeError, ValueError):
        raise AnnotationError(source, f"{vid}.duration", "seconds", got=e["duration"]) from None
    if not np.isfinite(duration) or duration <= 0:
        raise AnnotationError(source, f"{vid}.duration", "a positive number of seconds", got=duration)
    sents = e["sentences"]
    if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
        raise AnnotationError(source, f"{vid}.sentences", "a list of strings", got=type(sents).__name__)
    try:
        spans = np.asarray(e["timestamps"], dtype=np.float64).reshape(-1, 2) if len(e["timestamps"]) else np.zeros((0, 2))
    except (TypeError, ValueError):
        raise EventError(source, f"{vid}.timestamps", "a list of [t0, t1] pairs in seconds", got=str(e["timestamps"])[:60]) from None
    if len(spans) != len(e["timestamps"]):
        raise EventError(source, f"{vid}.timestamps", "a list of [t0, t1] pairs in seconds", got=str(e["timestamps"])[:60])
    n = len(spans)
    if len(sents) != n:
        raise AnnotationError(source, f"{vid}.sentences", f"{n} sentences (one per timestamp)", got=len(sents))
    late = spans[:, 0] > duration
    if late.any():
        i = int(np.nonzero(late)[0][0])
        raise EventError(source, f"{vid}.timestamps[{i}]", f"t0 <= duration {duration}", got=spans[i].tolist())
    clipped = int((spans[:, 1] > duration).sum())
    spans[:, 1] = np.minimum(spans[:, 1], duration)  # ActivityNet has spans ending past the video
    events = Events(torch.tensor(spans, dtype=torch.float32), source=f"{source} {vid}.timestamps", duration=duration)

    labels = torch.full((n,), -1, dtype=torch.long)
    names = tuple(class_names) if class_names is not None else ()
    if "labels" in e:
        raw = e["labels"]
        if not isinstance(raw, list) or len(raw) != n or not all(isinstance(x, str) for x in raw):
            raise AnnotationError(source, f"{vid}.labels", f"{n} class names", got=raw)
        for i, name in enumerate(raw):
            if name not in names:
                raise AnnotationError(source, f"{vid}.labels[{i}]", f"a class among {list(names)}", got=name)
            labels[i] = names.index(name)

    def optional(key: str, dtype, check) -> torch.Tensor | None:
        if key not in e:
            return None
        try:
            raw = torch.tensor(np.asarray(e[key], dtype=np.float64).reshape(-1))
        except (TypeError, ValueError):
            raw = None
        # a fractional box index is refused, not truncated by the cast to long
        whole = raw is not None and (dtype != torch.long or torch.equal(raw, raw.round()))
        t = raw.to(dtype) if whole else None
        if t is None or len(t) != n or not check(t):
            raise AnnotationError(source, f"{vid}.{key}", f"{n} values ({'radians' if key == 'azimuth' else 'box indices >= -1'})", got=e[key])
        return t

    azimuth = optional("azimuth", torch.float32, lambda t: bool(torch.isfinite(t).all()))
    source_box = optional("source_box", torch.long, lambda t: bool((t >= -1).all()))
    ann = EventAnnotations(
        events=events, labels=labels, class_names=names, captions=[[s.strip()] for s in sents],
        azimuth=azimuth, source_box=source_box,
    )
    return ann, {"duration": duration, "clipped_spans": clipped}


class DenseEventsDataset(SampleDataset):
    """Recordings with events ``(t0, t1)`` and one sentence each (ActivityNet Captions layout).

    Args:
        annotation_file: ``{video_id: {duration, timestamps, sentences, ...}}`` (``{split}`` replaced).
        media_dir: folder of ``{video_id}.mp4`` / ``{video_id}.{wav,flac,mp3}``; None with
            ``sensors=()`` reads annotations only.
        split: ``"train"``, ``"val"``, ...
        class_names: event classes that ``labels`` index (default: the sorted labels found in
            the file; pass the list in configs so every split agrees).
        audio_dir: folder of the audio files (default ``media_dir``).
        sensors: any of ``audio``, ``video``.
        sample_rate: the audio rate expected (another raises ``AudioError``); None accepts any.
        fps, max_frames: video frame subsampling, as for ``FAVDBenchDataset`` (``fps`` > 0 or
            None / 0 for every frame, ``max_frames`` >= 1 or None; else ``ConfigError``).
        transforms: a callable ``Sample -> Sample``.
        spread_frames: spread the ``max_frames`` over the whole video, as for ``FAVDBenchDataset``.

    Items: ``Sample`` with ``audio``, ``video`` and ``events`` (``EventAnnotations``);
    ``meta["duration"]``, ``meta["clipped_spans"]``. Audio or video shorter than half of ``duration``
    (a truncated file; real durations often differ from the audio by seconds) raises ``AudioError``
    / ``VideoError`` (video cut short by ``max_frames`` on purpose is not checked).
    """

    SENSORS = ("audio", "video")  # the sensors this data set has (a run's sensors.names may ask for more)

    def __init__(
        self,
        annotation_file: str,
        media_dir: str | None = None,
        split: str = "train",
        class_names: Sequence[str] | None = None,
        audio_dir: str | None = None,
        sensors: Sequence[str] = ("audio", "video"),
        sample_rate: int | None = 16000,
        fps: float | None = 8.0,
        max_frames: int | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        spread_frames: bool = False,
    ):
        super().__init__(transforms)
        self.split = split
        self.annotation_file = Path(str(annotation_file).format(split=split))
        self.media_dir = Path(str(media_dir).format(split=split)) if media_dir else None
        self.audio_dir = Path(str(audio_dir).format(split=split)) if audio_dir else None
        self.sensors = select_sensors(sensors, self.SENSORS, type(self).__name__)
        if self.sensors and self.media_dir is None:
            raise AnnotationError(type(self).__name__, "media_dir", f"a folder to read {list(self.sensors)} from", got=None)
        self._class_names = tuple(class_names) if class_names is not None else None
        self.sample_rate = int(sample_rate) if sample_rate is not None else None
        self.fps, self.max_frames = check_frame_options(type(self).__name__, fps, max_frames, spread_frames)
        self.spread_frames = spread_frames

    @property
    def class_names(self) -> tuple[str, ...]:
        _ = self.index
        return self._class_names

    def _build_index(self) -> list:
        data = load_json(self.annotation_file)
        if not isinstance(data, dict):
            raise AnnotationError(self.annotation_file, "<root>", "{video_id: {duration, timestamps, sentences}}", got=type(data).__name__)
        if self._class_names is None:
            found = {x for e in data.values() if isinstance(e, dict) and isinstance(e.get("labels"), list) for x in e["labels"] if isinstance(x, str)}
            self._class_names = tuple(sorted(found))
        return sorted(data.items())

    def _load(self, entry) -> Sample:
        vid, e = entry
        events, meta = parse_event_entry(vid, e, self.annotation_file, self._class_names)
        audio = video = None
        if self.sensors:
            audio, video = load_clip(
                self.media_dir, self.audio_dir, vid, self.sensors, self.sample_rate, self.fps, self.max_frames,
                mic_positions=e.get("mic_positions"), annotation_source=self.annotation_file, duration=meta["duration"],
                spread_frames=self.spread_frames,
            )
        return Sample(sample_id=vid, audio=audio, video=video, events=events, meta=meta)
