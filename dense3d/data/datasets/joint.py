"""Joint scenes: a 3D scene data set and a dense-events data set joined by sample id.

A joint sample has the scene's LiDAR, cameras and boxes and the recording's audio and events,
with each event's ``source_box`` pointing at the box that emits it in the *loaded* sample (after
the scene's transforms dropped or kept boxes). ``dense3d convert synth --kind joint`` writes such a
set (docs/synthetic.md, "Joint scenes"); any TOD3Cap / nuScenes infos plus a dense-events JSON
keyed by the infos' sample tokens is one as well.
"""
from __future__ import annotations

from typing import Callable

import torch

from dense3d.data.datasets.base import SampleDataset
from dense3d.data.datasets.dense_events import DenseEventsDataset
from dense3d.errors import AnnotationError, ConfigError
from dense3d.structures import Sample

__all__ = ["JointScenesDataset"]


class JointScenesDataset(SampleDataset):
    """Args:
        scenes: the 3D half (e.g. ``TOD3CapDataset``): samples with points / cameras / boxes,
            its transforms applied (they must not rotate or mirror the scene: an event's
            azimuth, taken in the ego frame, is not turned with it).
        recordings: the audio half (``DenseEventsDataset``), one entry per scene keyed by the
            scene's ``sample_id`` (a nuScenes sample token).
        transforms: a callable ``Sample -> Sample`` applied to the joined sample.

    Items: the scene's ``Sample`` with ``audio``, ``video`` and ``events`` of its recording;
    ``meta["duration"]`` and ``meta["clipped_spans"]`` from the recording. ``events.source_box``:
    index of the emitting box in ``sample.boxes`` (-1: none, or a box the scene's filters dropped),
    found by the box's id when the events JSON gives ``source_token`` (the box's ``ann_token``),
    else taken as written. A scene without a recording is a one-line ``AnnotationError`` naming
    the events file and the id.
    """

    def __init__(self, scenes: SampleDataset, recordings: DenseEventsDataset,
                 transforms: Callable[[Sample], Sample] | None = None):
        super().__init__(transforms)
        if not isinstance(recordings, DenseEventsDataset):
            raise ConfigError(type(self).__name__, "recordings", "a DenseEventsDataset", got=type(recordings).__name__)
        self.scenes = scenes
        self.recordings = recordings

    @property
    def split(self) -> str | None:
        return getattr(self.scenes, "split", None)

    @property
    def class_names(self):
        return self.scenes.class_names

    def _build_index(self) -> list:
        self._recording_of = {vid: k for k, (vid, _) in enumerate(self.recordings.index)}  # sample id -> recording index
        return list(range(len(self.scenes)))

    def _load(self, i: int) -> Sample:
        scene = self.scenes[i]
        k = self._recording_of.get(scene.sample_id)
        if k is None:
            raise AnnotationError(self.recordings.annotation_file, scene.sample_id,
                                  "a recording of this scene (an entry keyed by its sample token)", got="missing")
        rec = self.recordings[k]
        raw = self.recordings.index[k][1]
        events = rec.events
        if isinstance(raw, dict) and "source_token" in raw:
            tokens = raw["source_token"]
            if not isinstance(tokens, list) or len(tokens) != len(events) or not all(isinstance(t, str) for t in tokens):
                raise AnnotationError(self.recordings.annotation_file, f"{scene.sample_id}.source_token",
                                      f"{len(events)} box ids ('' for an event without a box)", got=tokens)
            ids = list(scene.boxes.object_ids) if scene.boxes is not None else []
            events.source_box = torch.tensor([ids.index(t) if t in ids else -1 for t in tokens], dtype=torch.long)
        return Sample(
            sample_id=scene.sample_id, points=scene.points, cameras=scene.cameras, audio=rec.audio, video=rec.video,
            boxes=scene.boxes, events=events, meta={**scene.meta, **rec.meta},
        )
