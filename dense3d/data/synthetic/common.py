"""Shared pieces of the synthetic generators: config, colours, seeds, tokens, splits and the
all-or-nothing output folder."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from dense3d.errors import ConfigError

__all__ = [
    "SynthConfig",
    "PALETTE",
    "KINDS",
    "GENERATOR_VERSION",
    "scene_rng",
    "make_token",
    "split_of",
    "atomic_output_dir",
    "write_json",
    "SPLITS",
]

GENERATOR_VERSION = 3  # 2: fixed-phrasing oracles (outdoor); 3: also indoor. Bump when generated files change for the same config (the demo then regenerates)
KINDS = ("outdoor", "indoor", "av")
SPLITS = ("train", "val", "test")

# Named colours (RGB 0-255). Chosen so that a Lambert-shaded face (factor 0.7-1.0) of one
# colour is never closer to another palette colour than to its own.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "white": (240, 240, 240),
    "black": (28, 28, 30),
    "gray": (128, 128, 128),
    "blue": (30, 60, 200),
    "green": (30, 150, 50),
    "yellow": (235, 210, 30),
    "orange": (245, 130, 20),
    "brown": (120, 70, 35),
    "purple": (130, 40, 160),
}


@dataclass
class SynthConfig:
    """What to generate; a hydra config (``configs/synthetic/*.yaml``) builds one.

    Args:
        kind: ``"outdoor"`` (nuScenes / TOD3Cap files), ``"indoor"`` (ScanRefer / ScanNet)
            or ``"av"`` (FAVDBench clips + dense audible events).
        scenes: number of scenes (clips for ``av``).
        seed: every file follows from it (scene ``i`` uses the generator seeded ``(seed, i)``).
        split: fractions of train / val / test (the rest of a rounding goes to train).
        image_size: camera (outdoor) or video (av) image ``(width, height)``.
        lidar_beams, lidar_azimuth_steps: the spinning LiDAR's rays per sweep.
        min_objects, max_objects: objects per scene.
        clip_seconds, fps, sample_rate: audio-visual clip length, video frame rate, audio rate.
    """

    kind: str = "outdoor"
    scenes: int = 24
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    image_size: tuple[int, int] | None = None
    lidar_beams: int = 32
    lidar_azimuth_steps: int = 1084
    min_objects: int | None = None
    max_objects: int | None = None
    clip_seconds: float = 10.0
    fps: int = 8
    sample_rate: int = 16000

    def __post_init__(self):
        src = "SynthConfig"
        if self.kind not in KINDS:
            raise ConfigError(src, "kind", f"one of {', '.join(KINDS)}", got=repr(self.kind))
        if int(self.scenes) < 1:
            raise ConfigError(src, "scenes", "an integer >= 1", got=self.scenes)
        self.split = tuple(float(f) for f in self.split)
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(src, "split", "three fractions >= 0 summing to 1", got=list(self.split))
        defaults = {
            "outdoor": ((448, 252), 3, 15),
            "indoor": (None, 6, 16),
            "av": ((224, 128), 2, 6),
        }[self.kind]
        if self.image_size is None:
            self.image_size = defaults[0]
        if self.min_objects is None:
            self.min_objects = defaults[1]
        if self.max_objects is None:
            self.max_objects = defaults[2]
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)
            if len(self.image_size) != 2 or min(self.image_size) < 16 or any(v % 2 for v in self.image_size):
                raise ConfigError(src, "image_size", "(width, height), even numbers >= 16", got=list(self.image_size))
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(src, "min_objects/max_objects", "1 <= min <= max", got=[self.min_objects, self.max_objects])
        self.scenes, self.seed = int(self.scenes), int(self.seed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split"] = list(self.split)
        d["image_size"] = list(self.image_size) if self.image_size else None
        d["generator_version"] = GENERATOR_VERSION
        return d

    def fingerprint(self) -> str:
        """Hash of everything that decides the output (the demo skips regeneration on a match)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def scene_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The random generator of one scene: independent of the order scenes are made in."""
    return np.random.default_rng([int(seed), KINDS.index(kind), int(index)])


def make_token(*parts) -> str:
    """A 32-hex token (like nuScenes tokens) that follows from ``parts`` only."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def split_of(index: int, n: int, fractions: tuple[float, float, float]) -> str:
    """Contiguous split blocks: the first ``n * fractions[0]`` scenes are train, and so on."""
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    if n >= 3:  # every split gets at least one scene when it has a share
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = n - n_val - n_test
    if index < n_train:
        return "train"
    return "val" if index < n_train + n_val else "test"


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` (an older
    ``out`` is removed only then), on failure it is deleted and ``out`` is untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj, indent: int | None = None) -> None:
    """Deterministic JSON (sorted keys only where the caller sorted; fixed separators)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")
