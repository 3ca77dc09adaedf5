"""Joint scenes: an outdoor keyframe and the 4-microphone recording around it, whose audible
events come from the scene's own boxes (see docs/synthetic.md, "Joint scenes").

The scene is the outdoor generator's (``outdoor.make_outdoor_scene`` seeded by kind
``"joint"``): LiDAR sweep, six cameras, mmdet3d v1.1 infos and TOD3Cap captions, written as the
outdoor set writes them. The recording is ``audio/{sample token}.wav`` (the av set's microphone
array on the roof, 16 kHz, ``clip_seconds`` long) with its events in the dense-events JSON keyed
by the same token, so ``TOD3CapDataset`` and ``DenseEventsDataset`` read the two halves and
``dense3d.data.datasets.JointScenesDataset`` joins them by id.

Each event's source is a box of the scene that can make the sound (horn, engine, siren and door
slam from cars, trucks and buses, the engine also from motorcycles, a bell from a bicycle, speech
and footsteps from pedestrians; as the av set's), or, for about one event in five, nothing in the
scene (an off-screen source somewhere around, ``source_box`` -1). A boxed source sounds from its
box centre (the boxes are a snapshot at the keyframe; sources are still during their event), so
the event's ``azimuth`` is the box's direction from the array centre. Its caption names the
source by the facts the box captions use, colour, class and direction: "a horn sounds twice from
the red car on the front left." (``grammar.event_caption``).

Frames: ``azimuth`` (radians, counter-clockwise from +x) and ``mic_positions`` are in the ego frame
(x forward, y left, z up), as in the av set; the boxes are in the LiDAR frame (x right, y forward),
so a box's ego azimuth is ``atan2(y_ego, x_ego)`` of its centre through the info's ``lidar2ego``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dense3d.data.synthetic import grammar
from dense3d.data.synthetic.av import ARRAY_CENTRE, EMITTERS, EVENT_CLASSES, MIC_POSITIONS, dense_events_entry, place_event, spatialise
from dense3d.data.synthetic.common import KINDS, SynthConfig
from dense3d.data.synthetic.outdoor import make_outdoor_scene

__all__ = ["AUDIO_DIR", "OFFSCREEN_FRACTION", "make_joint_scene", "event_emitters"]

AUDIO_DIR = "audio"  # the recordings: {AUDIO_DIR}/{sample token}.wav
OFFSCREEN_FRACTION = 0.2  # events whose source is no box of the scene


def event_emitters(label: str, classes: list[str], speeds: list[float]) -> list[int]:
    """Indices of the boxes that can make sound ``label``: doors slam on parked vehicles,
    footsteps come from walking people, engines run in moving vehicles (as the av set's rules)."""
    out = []
    for i, (cls, speed) in enumerate(zip(classes, speeds)):
        if cls not in EMITTERS[label]:
            continue
        moving = speed > 0.3
        if label == "door_slam" and moving or label in ("footsteps", "engine") and not moving:
            continue
        out.append(i)
    return out


def make_joint_scene(cfg: SynthConfig, index: int, out: Path, split: str) -> tuple[dict, dict, dict, dict]:
    """Generate joint scene ``index``: its outdoor files under ``out`` (``samples/...``) and its
    recording ``out/audio/{token}.wav``.

    Returns (info sample dict, TOD3Cap caption entries, dense-events entry keyed by the info's
    token, our annotation record: the outdoor record plus ``events``).
    """
    import soundfile as sf

    info, captions, record = make_outdoor_scene(cfg, index, out, split, kind="joint")
    token = info["token"]
    rng = np.random.default_rng([int(cfg.seed), KINDS.index("joint"), int(index), 1])  # the recording's own stream
    sr, dur = cfg.sample_rate, float(cfg.clip_seconds)
    objects = record["objects"]
    classes = [o["label"] for o in objects]
    speeds = [float(np.hypot(*inst["velocity"])) for inst in info["instances"]]
    emitters = {label: event_emitters(label, classes, speeds) for label in EVENT_CLASSES}
    sounding = [label for label in EVENT_CLASSES if emitters[label]]

    n_events = int(rng.integers(2, 6))
    audio = rng.normal(0, 10 ** (-58 / 20), (len(MIC_POSITIONS), int(round(dur * sr))))  # sensor noise
    events, used = [], []
    for _ in range(n_events * 20):
        if len(events) == n_events:
            break
        offscreen = not sounding or rng.random() < OFFSCREEN_FRACTION
        label = EVENT_CLASSES[int(rng.integers(len(EVENT_CLASSES)))] if offscreen else sounding[int(rng.integers(len(sounding)))]
        placed = place_event(label, rng, sr, dur, used)  # non-overlapping, 0.3 s apart
        if placed is None:
            continue
        dry, count, t0, t1 = placed
        if offscreen:
            src = -1
            a, d = float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(8, 30))
            pos = np.array([d * math.cos(a), d * math.sin(a), 1.0])
        else:
            pool = emitters[label]
            src = pool[int(rng.integers(len(pool)))]
            x, y = objects[src]["ego_xy"]
            pos = np.array([x, y, 1.0])  # the box centre on the ground plane, at the av set's source height
        rel = pos - ARRAY_CENTRE
        level_db = float(rng.uniform(-24, -8))  # level at the array
        sig = spatialise(dry * 10 ** (level_db / 20), pos, MIC_POSITIONS, sr)
        s0 = int(round(t0 * sr))
        audio[:, s0 : s0 + sig.shape[1]] += sig[:, : audio.shape[1] - s0]
        used.append((t0, t1))
        # a boxed source is said where its box caption says it is; an off-screen one by its sector
        direction = objects[src]["direction"] if src >= 0 else grammar.direction_word(rel[0], rel[1])
        events.append(dict(label=label, count=count, t0=t0, t1=round(t1, 4), source=src,
                           source_token=objects[src]["ann_token"] if src >= 0 else "",
                           azimuth=math.atan2(rel[1], rel[0]), direction=direction, level_db=level_db, loud=level_db > -14,
                           distance=float(np.linalg.norm(rel[:2]))))
    events.sort(key=lambda e: e["t0"])
    peak = np.abs(audio).max()
    if peak > 0.95:
        audio *= 0.95 / peak
    (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    sf.write(str(out / AUDIO_DIR / f"{token}.wav"), audio.T.astype(np.float32), sr, subtype="PCM_16")

    sentences, free_sentences = [], []
    for e in events:
        src = e["source"]
        source = (objects[src]["colour"], objects[src]["label"]) if src >= 0 else None
        s, fr = grammar.event_caption(e["label"], e["count"], e["loud"], source, e["direction"], rng, seen=True)
        sentences.append(s)
        free_sentences.append(fr)
    # source_box: index into the info's instances (-1: no box); source_token: that box's ann_token ("": no box)
    dense = dense_events_entry(dur, events, sentences, source_token=[e["source_token"] for e in events])
    record = dict(record, events=[dict(e, caption=s, context_free_caption=fr)
                                  for e, s, fr in zip(events, sentences, free_sentences)])
    return info, captions, dense, record
