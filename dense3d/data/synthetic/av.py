"""Audio-visual clips in the FAVDBench + dense audible events formats (see docs/synthetic.md).

A 10 s drive (or wait) down a street seen by a front camera (8 fps) and heard by a
4-microphone array (16 kHz) on the ego car's roof. Sound sources play events in time:
horn (two-tone beeps), engine hum, siren sweep, bicycle bell, speech-like formant bursts,
footsteps and door slams, each emitted by an object of the scene when it has a fitting one.

Spatialisation: each event is placed where its source is at the event's mid-time (static
during the event); every microphone gets the signal delayed by its own distance to the
source minus the array centre's (event times are arrival times at the array centre) and
attenuated by 1/distance. Fractional delays are applied exactly (band-limited) as a linear
phase in the frequency domain of the zero-padded event (no circular wrap), not by rounding
to samples.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from dense3d.data.synthetic import grammar
from dense3d.data.synthetic.common import PALETTE, SynthConfig, scene_rng
from dense3d.data.synthetic.geometry import PinholeCamera
from dense3d.errors import ConfigError

__all__ = [
    "EMITTERS",
    "EVENT_CLASSES",
    "SPEED_OF_SOUND",
    "MIC_POSITIONS",
    "synth_event",
    "place_event",
    "dense_events_entry",
    "spatialise",
    "front_camera",
    "make_av_clip",
]

SPEED_OF_SOUND = 343.0
EVENT_CLASSES = ("horn", "engine", "siren", "bell", "speech", "footsteps", "door_slam")
# 4 microphones on a square of 0.3 m diagonal, on the roof (ego frame: x forward, y left, z up)
ARRAY_CENTRE = np.array([0.5, 0.0, 1.7])
MIC_POSITIONS = ARRAY_CENTRE[None, :] + np.array([[0.15, 0.0, 0.0], [0.0, 0.15, 0.0], [-0.15, 0.0, 0.0], [0.0, -0.15, 0.0]])
CAMERA_POSITION = np.array([1.6, 0.0, 1.5])
EMITTERS = {  # event class: the object classes that can make it
    "horn": ("car", "truck", "bus"),
    "engine": ("car", "truck", "bus", "motorcycle"),
    "siren": ("car", "truck", "bus"),
    "bell": ("bicycle",),
    "speech": ("pedestrian",),
    "footsteps": ("pedestrian",),
    "door_slam": ("car", "truck"),
}
_AV_CLASSES = {  # class: (size l, w, h), weight, colours
    "car": ((4.6, 1.95, 1.7), 0.35, ("white", "black", "gray", "red", "blue", "green", "yellow")),
    "truck": ((6.9, 2.5, 2.8), 0.10, ("white", "red", "blue", "orange")),
    "bus": ((11.0, 2.95, 3.4), 0.08, ("white", "red", "yellow", "blue")),
    "motorcycle": ((2.1, 0.8, 1.5), 0.08, ("black", "red", "blue")),
    "bicycle": ((1.7, 0.6, 1.3), 0.12, ("black", "red", "blue", "green", "purple")),
    "pedestrian": ((0.75, 0.7, 1.75), 0.27, ("red", "blue", "black", "white", "green", "yellow", "purple", "orange")),
}


def _can_emit(label: str, obj: "AVObject") -> bool:
    """Whether ``obj`` can make the sound: doors slam on parked cars, footsteps come from
    walking people."""
    if obj.label not in EMITTERS[label]:
        return False
    moving = float(np.linalg.norm(obj.velocity)) > 0.3
    if label == "door_slam":
        return not moving
    if label == "footsteps":
        return moving
    return True


# ----------------------------------------------------------------------------- sounds
def _env(n: int, sr: int, attack: float = 0.01, release: float = 0.02) -> np.ndarray:
    e = np.ones(n)
    a, r = max(1, int(attack * sr)), max(1, int(release * sr))
    e[:a] = np.linspace(0, 1, a)
    e[-r:] = np.minimum(e[-r:], np.linspace(1, 0, r))
    return e


def _harmonic(freq, t, n_harm=5) -> np.ndarray:
    """A bright tone: odd and even harmonics with 1/k amplitudes; ``freq`` scalar or (n,)."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(freq, t.shape)) * (t[1] - t[0]) if np.ndim(freq) else 2 * np.pi * freq * t
    return sum(np.sin(k * phase) / k for k in range(1, n_harm + 1))


def synth_event(label: str, count: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """The dry mono signal of one event (peak about 1). ``count`` repetitions where it counts."""
    def seq(parts_fn, gap_lo, gap_hi):
        out = []
        for k in range(count):
            out.append(parts_fn())
            if k < count - 1:
                out.append(np.zeros(int(rng.uniform(gap_lo, gap_hi) * sr)))
        return np.concatenate(out)

    if label == "horn":
        f1 = float(rng.uniform(380, 460))

        def beep():
            n = int(rng.uniform(0.25, 0.45) * sr)
            t = np.arange(n) / sr
            buzz = lfilter([0.2], [1, -0.5], rng.normal(0, 1, n))  # the diaphragm's broadband rasp
            return (_harmonic(f1, t) + _harmonic(f1 * 1.26, t) + buzz) * _env(n, sr)
        x = seq(beep, 0.15, 0.3)
    elif label == "engine":
        n = int(rng.uniform(2.0, 4.5) * sr)
        t = np.arange(n) / sr
        f0 = float(rng.uniform(30, 55)) * (1 + 0.1 * np.sin(2 * np.pi * 0.3 * t))
        noise = lfilter([0.05], [1, -0.95], rng.normal(0, 1, n))
        x = (_harmonic(f0, t, 8) * (0.7 + 0.3 * np.sin(2 * np.pi * 4 * f0 * t / f0)) + 2.0 * noise) * _env(n, sr, 0.3, 0.3)
    elif label == "siren":
        n = int(rng.uniform(2.0, 4.0) * sr)
        t = np.arange(n) / sr
        rate = float(rng.uniform(0.4, 1.0))
        f = 900 + 400 * np.sin(2 * np.pi * rate * t)  # wail sweep
        x = _harmonic(f, t, 4) * _env(n, sr, 0.1, 0.2)
    elif label == "bell":
        def ring():
            n = int(0.35 * sr)
            t = np.arange(n) / sr
            f = float(rng.uniform(2000, 2600))
            return sum(a * np.sin(2 * np.pi * f * m * t) for a, m in ((1.0, 1.0), (0.6, 2.76), (0.3, 5.4))) * np.exp(-t / 0.1) * _env(n, sr, 0.002, 0.02)
        x = seq(ring, 0.15, 0.3)
    elif label == "speech":
        f0 = float(rng.uniform(100, 220))
        formants = [(float(rng.uniform(500, 800)), 80.0), (float(rng.uniform(1100, 1800)), 100.0), (2500.0, 150.0)]

        def burst():
            n = int(rng.uniform(0.5, 1.0) * sr)
            t = np.arange(n) / sr
            period = sr / (f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t)))
            pulses = (np.floor(np.cumsum(1.0 / period)) != np.floor(np.cumsum(1.0 / period) - 1.0 / period)).astype(float)
            y = np.zeros(n)
            for fc, bw in formants:  # two-pole resonators = vocal-tract formants
                r = math.exp(-math.pi * bw / sr)
                y += lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * fc / sr), r * r], pulses)
            syll = 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t)  # 4 syllables per second
            return y * syll * _env(n, sr, 0.02, 0.05)
        x = seq(burst, 0.2, 0.4)
    elif label == "footsteps":
        steps = int(rng.integers(4, 9))
        step = int(0.5 * sr)
        x = np.zeros(steps * step)
        for k in range(steps):
            m = int(0.04 * sr)
            hit = lfilter([0.3], [1, -0.7], rng.normal(0, 1, m)) * np.exp(-np.arange(m) / (0.008 * sr))
            x[k * step : k * step + m] += hit
    elif label == "door_slam":
        def slam():
            n = int(0.3 * sr)
            t = np.arange(n) / sr
            return (rng.normal(0, 1, n) * np.exp(-t / 0.02) + 1.5 * np.sin(2 * np.pi * 80 * t) * np.exp(-t / 0.06))
        x = seq(slam, 0.5, 0.8)
    else:
        raise ConfigError("synth_event", "label", f"one of {', '.join(EVENT_CLASSES)}", got=repr(label))
    return x / max(np.abs(x).max(), 1e-9)


def spatialise(dry: np.ndarray, source: np.ndarray, mics: np.ndarray, sr: int) -> np.ndarray:
    """(S,) dry signal, source (3,), mics (A, 3) -> (A, S) signals at the microphones.

    Each channel is delayed by (its distance - the array centre's distance) / c, with the
    exact fractional delay applied as a linear phase on the zero-padded spectrum (so the
    shift is band-limited and nothing wraps around), and scaled by centre distance / its
    distance (1/r spreading relative to the centre; the caller sets the level at the centre).
    """
    centre = mics.mean(0)
    r_c = float(np.linalg.norm(source - centre))
    r = np.linalg.norm(mics - source[None, :], axis=1)  # (A,)
    delay = (r - r_c) / SPEED_OF_SOUND * sr  # (A,) samples, may be negative
    pad = int(np.ceil(np.abs(delay).max())) + 32
    n = len(dry) + 2 * pad
    nfft = 1 << (n - 1).bit_length()
    spec = np.fft.rfft(np.concatenate([np.zeros(pad), dry, np.zeros(pad)]), nfft)
    k = np.arange(len(spec))
    shifted = np.fft.irfft(spec[None, :] * np.exp(-2j * np.pi * k[None, :] * delay[:, None] / nfft), nfft)[:, :n]
    return (shifted * (r_c / r)[:, None])[:, pad : pad + len(dry)]


# ----------------------------------------------------------------------------- scene
@dataclass
class AVObject:
    label: str
    colour: str
    xy0: np.ndarray  # (2,) world position at t = 0 (world = ego frame at t = 0)
    velocity: np.ndarray  # (2,) m/s
    yaw: float
    size: tuple[float, float, float]


def _sample_objects(rng, cfg) -> list[AVObject]:
    names = list(_AV_CLASSES)
    p = np.array([_AV_CLASSES[c][1] for c in names])
    p /= p.sum()
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objs: list[AVObject] = []
    for _ in range(n * 30):
        if len(objs) == n:
            break
        cls = names[int(rng.choice(len(names), p=p))]
        size = tuple(v * float(rng.uniform(0.9, 1.1)) for v in _AV_CLASSES[cls][0])
        x = float(rng.uniform(6, 35)) if rng.random() < 0.8 else float(rng.uniform(-25, -6))
        if cls == "pedestrian":
            y = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(6.5, 9.0))
            yaw = float(rng.choice([0.0, math.pi]))
            speed = float(rng.uniform(1.0, 1.5)) if rng.random() < 0.5 else 0.0
        elif cls == "bicycle":
            y = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(4.5, 5.5))
            yaw = 0.0 if y < 0 else math.pi
            speed = float(rng.uniform(3, 5)) if rng.random() < 0.6 else 0.0
        else:
            y = float(rng.choice([-1.75, 1.75, -5.0, 5.0]))
            yaw = 0.0 if y < 0 else math.pi
            speed = float(rng.uniform(3, 9)) if (abs(y) < 3 and rng.random() < 0.6) else 0.0
        if abs(y) < 3 and -8 < x < 10:
            continue
        r = 0.5 * math.hypot(size[0], size[1]) + 0.5
        if any(np.linalg.norm(o.xy0 - [x, y]) < r + 0.5 * math.hypot(o.size[0], o.size[1]) + 0.5 for o in objs):
            continue
        palette = _AV_CLASSES[cls][2]
        vel = np.array([math.cos(yaw), math.sin(yaw)]) * speed
        objs.append(AVObject(cls, palette[int(rng.integers(len(palette)))], np.array([x, y]), vel, yaw, size))
    return objs


def front_camera(width: int, height: int, hfov_deg: float = 70.0) -> PinholeCamera:
    """The front camera in the ego frame (x forward, y left, z up; ground z = 0)."""
    f = width / (2 * math.tan(math.radians(hfov_deg) / 2))
    k = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    rot = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # ego -> camera axes
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = -rot @ CAMERA_POSITION
    return PinholeCamera(k, m, width, height, ground_z=0.0)


_FRONT: dict[tuple[int, int], PinholeCamera] = {}


def _boxes_at(objs: list[AVObject], t: float, ego_x: float) -> np.ndarray:
    """(K, 7) boxes in the ego frame at time t."""
    rows = []
    for o in objs:
        p = o.xy0 + o.velocity * t
        rows.append([p[0] - ego_x, p[1], o.size[2] / 2, *o.size, o.yaw])
    return np.asarray(rows, float).reshape(-1, 7)


def _rgb_to_yuv420p(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H * 3 / 2, W) uint8 planar I420, BT.601 limited range, in
    integer arithmetic (float reductions may round differently with memory alignment, and
    the files must be byte-identical for one seed)."""
    x = img.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    h, w = y.shape
    # (H, W) -> (H/2, 2, W/2, 2) -> rounded mean of each 2 x 2 block
    u = (u.reshape(h // 2, 2, w // 2, 2).sum((1, 3)) + 2) // 4
    v = (v.reshape(h // 2, 2, w // 2, 2).sum((1, 3)) + 2) // 4
    planes = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])
    return np.clip(planes, 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """MPEG-4 Part 2 video in an mp4, FFmpeg's own encoder in bit-exact mode: libx264 gave
    different bytes for identical frames now and then (single-threaded, PyAV 18.1), and the
    files must be byte-identical for one seed. Any PyAV build decodes it."""
    import av

    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps, 1))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 600_000
        stream.options = {"flags": "+bitexact", "g": str(4 * fps)}
        stream.codec_context.thread_count = 1
        for i, img in enumerate(frames):
            # RGB -> YUV 4:2:0 in integers here, not in swscale (see _rgb_to_yuv420p)
            frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(img), format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def place_event(label: str, rng: np.random.Generator, sr: int, dur: float, used: list[tuple[float, float]]
                ) -> tuple[np.ndarray, int, float, float] | None:
    """Draw how often sound ``label`` repeats (horn beeps, bell rings, speech bursts, door slams),
    synthesise it and draw its start in a clip of ``dur`` s: ``(dry, count, t0, t1)``, or None when it
    does not fit or comes within 0.3 s of an event in ``used`` (events do not overlap)."""
    if label == "horn":
        count = int(rng.integers(1, 5))
    elif label in ("bell", "speech"):
        count = int(rng.integers(1, 4))
    else:
        count = int(rng.integers(1, 3)) if label == "door_slam" else 1
    dry = synth_event(label, count, rng, sr)
    length = len(dry) / sr
    if length > dur - 0.2:
        return None
    t0 = float(np.round(rng.uniform(0.1, dur - length - 0.05), 3))
    t1 = t0 + length
    if any(t0 < b + 0.3 and a < t1 + 0.3 for a, b in used):
        return None
    return dry, count, t0, t1


def dense_events_entry(dur: float, events: list[dict], sentences: list[str], **extra) -> dict:
    """One clip's entry of ``dense_events_{split}.json`` (docs/data_formats.md): its events' spans,
    captions, classes, azimuths (ego frame), source objects (-1: none) and the microphones;
    ``extra`` keys (lists per event) go before ``mic_positions``."""
    return {
        "duration": dur,
        "timestamps": [[e["t0"], e["t1"]] for e in events],
        "sentences": sentences,
        "labels": [e["label"] for e in events],
        "azimuth": [float(e["azimuth"]) for e in events],
        "source_box": [int(e["source"]) for e in events],
        **extra,
        "mic_positions": [[float(v) for v in m] for m in MIC_POSITIONS],
    }


def make_av_clip(cfg: SynthConfig, index: int, media_dir: Path, split: str) -> tuple[str, dict, dict, dict]:
    """Generate clip ``index``; write ``{clip}.mp4`` and ``{clip}.wav`` under ``media_dir``.

    Returns (clip id, FAVD entry, dense-events entry, our annotation record).
    """
    import soundfile as sf

    rng = scene_rng(cfg.seed, "av", index)
    clip = f"av{index:05d}"
    sr, dur, fps = cfg.sample_rate, float(cfg.clip_seconds), cfg.fps
    width, height = cfg.image_size
    ego_speed = 0.0 if rng.random() < 0.3 else float(rng.uniform(3, 9))
    objs = _sample_objects(rng, cfg)
    # --- video
    if (width, height) not in _FRONT:
        _FRONT[(width, height)] = front_camera(width, height)
    cam = _FRONT[(width, height)]
    rgb = np.array([PALETTE[o.colour] for o in objs], float).reshape(-1, 3)
    n_frames = int(round(dur * fps))
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    seen = np.zeros(len(objs), int)
    for f in range(n_frames):
        t = f / fps
        img, ids = cam.render(_boxes_at(objs, t, ego_speed * t), rgb)
        frames[f] = img
        if len(objs):
            seen += np.bincount(ids[ids >= 0].ravel(), minlength=len(objs))[: len(objs)]
    _write_mp4(media_dir / f"{clip}.mp4", frames, fps)
    visible = [i for i in range(len(objs)) if seen[i] >= 20 * n_frames // 8]
    # --- audio events (non-overlapping, 0.3 s apart)
    n_events = int(rng.integers(2, 6))
    audio = rng.normal(0, 10 ** (-58 / 20), (len(MIC_POSITIONS), int(dur * sr)))  # sensor noise
    events, used = [], []
    for _ in range(n_events * 20):
        if len(events) == n_events:
            break
        label = EVENT_CLASSES[int(rng.integers(len(EVENT_CLASSES)))]
        placed = place_event(label, rng, sr, dur, used)
        if placed is None:
            continue
        dry, count, t0, t1 = placed
        cands = [i for i, o in enumerate(objs) if _can_emit(label, o)]
        # the scene's object emits it when it has one; mostly one the camera sees
        seen_cands = [i for i in cands if i in visible]
        pool = seen_cands if seen_cands and rng.random() < 0.75 else cands
        src = pool[int(rng.integers(len(pool)))] if pool else -1
        tm = (t0 + t1) / 2
        if src >= 0:
            p = objs[src].xy0 + objs[src].velocity * tm - [ego_speed * tm, 0.0]
            pos = np.array([p[0], p[1], 1.0])
        else:  # an unseen source somewhere around
            a, d = float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(8, 30))
            pos = np.array([d * math.cos(a), d * math.sin(a), 1.0])
        rel = pos - ARRAY_CENTRE
        level_db = float(rng.uniform(-24, -8))  # level at the array
        sig = spatialise(dry * 10 ** (level_db / 20), pos, MIC_POSITIONS, sr)
        s0 = int(round(t0 * sr))
        audio[:, s0 : s0 + sig.shape[1]] += sig
        used.append((t0, t1))
        azimuth = math.atan2(rel[1], rel[0])
        direction = grammar.direction_word(rel[0], rel[1])
        events.append(dict(label=label, count=count, t0=t0, t1=round(t1, 4), source=src, azimuth=azimuth,
                           direction=direction, level_db=level_db, loud=level_db > -14, distance=float(np.linalg.norm(rel[:2]))))
    events.sort(key=lambda e: e["t0"])
    peak = np.abs(audio).max()
    if peak > 0.95:
        audio *= 0.95 / peak
    sf.write(str(media_dir / f"{clip}.wav"), audio.T.astype(np.float32), sr, subtype="PCM_16")
    # --- captions
    keys = [(o.colour, o.label) for o in objs]
    xy_mid = np.array([o.xy0 + o.velocity * dur / 2 - [ego_speed * dur / 2, 0] for o in objs]).reshape(-1, 2)
    sentences, free_sentences = [], []
    for e in events:
        src = e["source"]
        s, fr = grammar.event_caption(e["label"], e["count"], e["loud"], keys[src] if src >= 0 else None, e["direction"], rng,
                                      seen=src in visible)
        sentences.append(s)
        free_sentences.append(fr)
    visual, objects = [], []
    xy0 = np.array([o.xy0 for o in objs]).reshape(-1, 2)
    for i, o in enumerate(objs):
        rel = grammar.choose_relation(i, xy0, keys, rng, indoor=False,
                                     max_dist=grammar.OUTDOOR_MAX_DIST, next_to=grammar.OUTDOOR_NEXT_TO)
        relp = grammar.relation_phrase(rel, keys, rng)
        d = grammar.direction_word(*xy0[i])
        motion = grammar.motion_word(o.label, float(np.linalg.norm(o.velocity)))
        free = f"{grammar.article(grammar.noun_phrase(o.colour, o.label))} is {motion} {grammar.ego_where(d)}"
        sent = free + (f", {relp}." if relp else ".")
        if i in visible:
            visual.append(sent)
        objects.append({"index": i, "label": o.label, "colour": o.colour, "visible": i in visible,
                        "xy0": [float(v) for v in o.xy0], "velocity": [float(v) for v in o.velocity],
                        "yaw": o.yaw, "size": list(o.size), "relation": rel["type"], "relation_targets": rel["targets"],
                        "caption": sent, "context_free_caption": free + "."})
    n_vis = len(visible)
    moving = "drives down a street" if ego_speed > 0 else "waits at the side of a street"
    summary = [f"the camera {moving} with {n_vis} object{'s' if n_vis != 1 else ''} in view and {len(events)} sounds.",
               f"a street scene seen from a car that {moving}; {len(events)} sounds are heard."][int(rng.integers(2))]
    mics = [[float(v) for v in m] for m in MIC_POSITIONS]
    favd = {"summary": summary, "visual": visual, "audio": sentences, "mic_positions": mics}
    dense = dense_events_entry(dur, events, sentences)
    record = {
        "scene_id": clip, "split": split, "ego_speed": ego_speed, "objects": objects,
        "frames_md5": hashlib.md5(frames.tobytes()).hexdigest(),  # the rendered RGB frames, before encoding
        "events": [dict(e, caption=s, context_free_caption=fr) for e, s, fr in zip(events, sentences, free_sentences)],
        "favd_paragraph": grammar.favd_paragraph(summary, visual, sentences),
        "favd_context_free": {"summary": summary, "visual": [o["context_free_caption"] for o in objects if o["visible"]], "audio": free_sentences},
    }
    return clip, favd, dense, record
