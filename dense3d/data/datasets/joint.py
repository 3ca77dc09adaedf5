"""Joint scenes: a 3D scene data set and a dense-events data set joined by sample id.

A joint sample has the scene's LiDAR, cameras and boxes and the recording's audio and events,
with each event's ``source_box`` pointing at the box that emits it in the *loaded* sample (after
the scene's transforms dropped or kept boxes). ``dense3d convert synth --kind joint`` writes such a
set (docs/synthetic.md, "Joint scenes"); any TOD3Cap / nuScenes infos plus a dense-events JSON
keyed by the infos' sample tokens is one as well.

Frames: a recording's event azimuths and microphone positions are in the ego frame (as the av
set's, and as ``dense3d convert synth --kind joint`` writes them), the scene's points and boxes in
the LiDAR frame. The global augmentations (``dense3d.data.transforms.geometry``) turn and mirror
azimuths and microphones as if they were in the scene's frame, so the join carries the recording
into the scene's LiDAR frame (through ``meta["lidar2ego"]``, after the scene's own augmentations,
``meta["lidar_aug"]``), the joined transforms run there, and the recording goes back to the ego
frame of the augmented scene (``lidar2ego`` applied to the augmented LiDAR frame): an event's
azimuth stays its source box's direction from the array however the scene was turned or mirrored.
A scaled scene moves the array but does not stretch it (the recording's delays are the real
array's).
"""
from __future__ import annotations

import dataclasses
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
            its transforms applied (rotations and flips included: the recording follows them, see
            the module docstring).
        recordings: the audio half (``DenseEventsDataset``), one entry per scene keyed by the
            scene's ``sample_id`` (a nuScenes sample token).
        transforms: a callable ``Sample -> Sample`` applied to the joined sample (its global
            augmentations turn the events' azimuths and the microphones with the boxes).

    Items: the scene's ``Sample`` with ``audio``, ``video`` and ``events`` of its recording;
    ``meta["duration"]`` and ``meta["clipped_spans"]`` from the recording; ``events.azimuth`` and
    ``audio.mic_positions`` in the ego frame of the (augmented) scene. ``events.source_box``:
    index of the emitting box in ``sample.boxes`` (-1: none, or a box the scene's filters dropped),
    found by the box's id when the events JSON gives ``source_token`` (the box's ``ann_token``),
    else through the id of the info's instance the written index names (a scene data set
    without ``(index, info)`` entries: taken as written). A scene without a recording is a one-line ``AnnotationError`` naming
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

    def reference_captions(self) -> list[list[str]]:
        """The scenes' box references, then the recordings' event references."""
        return self.scenes.reference_captions() + self.recordings.reference_captions()

    def _build_index(self) -> list:
        self._recording_of = {vid: k for k, (vid, _) in enumerate(self.recordings.index)}  # sample id -> recording index
        return list(range(len(self.scenes)))

    def __getitem__(self, i: int) -> Sample:
        sample = super().__getitem__(i)  # joined in the scene's LiDAR frame, then the joined transforms
        sample = _map_recording(sample, _lidar2ego(sample))  # (augmented) LiDAR frame -> ego frame
        return _unscale_array(sample)

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
        elif events.source_box is not None:
            events.source_box = self._repoint(i, scene, events.source_box)
        sample = Sample(
            sample_id=scene.sample_id, points=scene.points, cameras=scene.cameras, audio=rec.audio, video=rec.video,
            boxes=scene.boxes, events=events, meta={**scene.meta, **rec.meta},
        )
        # the recording (ego frame) into the scene's LiDAR frame, turned / mirrored as the scene was
        ego_to_lidar = scene.meta.get("lidar_aug", torch.eye(4)).double() @ torch.linalg.inv(_lidar2ego(scene))
        return _map_recording(sample, ego_to_lidar)

    def _repoint(self, i: int, scene: Sample, written: torch.Tensor) -> torch.Tensor:
        """``source_box`` written as indices into the info's ``instances`` (no ``source_token``), as
        indices into the loaded ``scene.boxes``: through the instances' ids (``ann_token``, else
        ``{sample token}_{index}``, the ids ``TOD3CapDataset`` gives its boxes), so boxes the
        scene's filters dropped (-1) or moved are followed. A scene data set whose entries are no
        ``(index, info)`` pairs with ``instances`` keeps the indices as written."""
        entry = self.scenes.index[i]
        info = entry[1] if isinstance(entry, tuple) and len(entry) == 2 else None
        instances = info.get("instances") if isinstance(info, dict) else None
        if not isinstance(instances, list) or scene.boxes is None:
            return written
        bad = written[written >= len(instances)]
        if len(bad):
            raise AnnotationError(self.recordings.annotation_file, f"{scene.sample_id}.source_box",
                                  f"indices into the scene's {len(instances)} instances (-1: no box)", got=int(bad[0]))
        token = str(info.get("token", scene.sample_id))
        raw_ids = [str(inst["ann_token"]) if isinstance(inst, dict) and inst.get("ann_token") is not None else f"{token}_{k}"
                   for k, inst in enumerate(instances)]
        ids = list(scene.boxes.object_ids)
        return torch.tensor([ids.index(raw_ids[k]) if k >= 0 and raw_ids[k] in ids else -1 for k in written.tolist()],
                            dtype=torch.long)


def _lidar2ego(sample: Sample) -> torch.Tensor:
    """(4, 4) float64 ``meta["lidar2ego"]`` of a scene (identity without one: its frame is the ego frame)."""
    m = sample.meta.get("lidar2ego")
    return torch.eye(4, dtype=torch.float64) if m is None else torch.as_tensor(m, dtype=torch.float64)


def _unscale_array(sample: Sample) -> Sample:
    """The microphone array shrunk back about its centre by the scale of the scene's augmentations
    (``meta["lidar_aug"]``): the recording's inter-microphone delays are those of the array as
    built; a scaled scene moves the array (its centre) but does not stretch it."""
    aug = sample.meta.get("lidar_aug")
    audio = sample.audio
    if aug is None or audio is None or audio.mic_positions is None:
        return sample
    scale = float(torch.linalg.det(torch.as_tensor(aug, dtype=torch.float64)[:3, :3]).abs() ** (1 / 3))
    if abs(scale - 1.0) < 1e-9:
        return sample
    mics = audio.mic_positions.double()
    centre = mics.mean(dim=0, keepdim=True)  # (1, 3)
    mics = centre + (mics - centre) / scale  # (A, 3)
    return dataclasses.replace(sample, audio=dataclasses.replace(audio, mic_positions=mics.to(audio.mic_positions.dtype)))


def _map_recording(sample: Sample, matrix: torch.Tensor) -> Sample:
    """The sample with its microphone positions mapped by the (4, 4) affine ``matrix`` and its
    event azimuths (directions from the array: the linear part only) turned with them."""
    changes = {}
    audio, events = sample.audio, sample.events
    if audio is not None and audio.mic_positions is not None:
        mics = audio.mic_positions.double() @ matrix[:3, :3].T + matrix[:3, 3]  # (A, 3) @ (3, 3)^T + (3,)
        changes["audio"] = dataclasses.replace(audio, mic_positions=mics.to(audio.mic_positions.dtype))
    if events is not None and events.azimuth is not None:
        az = events.azimuth.double()
        directions = torch.stack([az.cos(), az.sin()], dim=-1) @ matrix[:2, :2].T  # (E, 2) @ (2, 2)^T
        turned = torch.atan2(directions[:, 1], directions[:, 0])  # (E,) radians, CCW from +x
        changes["events"] = dataclasses.replace(events, azimuth=turned.to(events.azimuth.dtype))
    return dataclasses.replace(sample, **changes) if changes else sample
