"""Shared pieces of the synthetic generators: config, colours, seeds, tokens, splits and the
all-or-nothing output folder."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import numbers
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dense3d.errors import ConfigError
from dense3d.utils.io import check_output_path

__all__ = [
    "SynthConfig",
    "load_synth_config",
    "PALETTE",
    "KINDS",
    "GENERATOR_VERSION",
    "scene_rng",
    "make_token",
    "split_of",
    "atomic_output_dir",
    "check_output_dir",
    "write_json",
    "SPLITS",
]

GENERATOR_VERSION = 4  # 2: fixed-phrasing oracles (outdoor); 3: also indoor; 4: TOD3Cap fields nested as released. Bump when generated files change for the same config (the demo then regenerates)
KINDS = ("outdoor", "indoor", "av", "joint")  # append only: a kind's index seeds its scenes (scene_rng)
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
        kind: ``"outdoor"`` (nuScenes / TOD3Cap files), ``"indoor"`` (ScanRefer / ScanNet),
            ``"av"`` (FAVDBench clips + dense audible events) or ``"joint"`` (outdoor scenes
            with a 4-microphone recording whose events come from the scene's boxes).
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
        self.scenes = _int(src, "scenes", self.scenes, 1)
        self.seed = _int(src, "seed", self.seed, 0)
        self.split = _numbers(src, "split", self.split, float, "three fractions >= 0 summing to 1")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(src, "split", "three fractions >= 0 summing to 1", got=list(self.split))
        defaults = {
            "outdoor": ((448, 252), 3, 15),
            "indoor": (None, 6, 16),
            "av": ((224, 128), 2, 6),
            "joint": ((448, 252), 3, 15),
        }[self.kind]
        if self.image_size is None:
            self.image_size = defaults[0]
        if self.min_objects is None:
            self.min_objects = defaults[1]
        if self.max_objects is None:
            self.max_objects = defaults[2]
        if self.image_size is not None:
            self.image_size = _numbers(src, "image_size", self.image_size, int, "(width, height), even numbers >= 16")
            if len(self.image_size) != 2 or min(self.image_size) < 16 or any(v % 2 for v in self.image_size):
                raise ConfigError(src, "image_size", "(width, height), even numbers >= 16", got=list(self.image_size))
        self.min_objects = _int(src, "min_objects", self.min_objects, 1)
        self.max_objects = _int(src, "max_objects", self.max_objects, 1)
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(src, "min_objects/max_objects", "1 <= min <= max", got=[self.min_objects, self.max_objects])
        for name in ("lidar_beams", "lidar_azimuth_steps", "fps", "sample_rate"):
            setattr(self, name, _int(src, name, getattr(self, name), 1))
        self.clip_seconds = _float(src, "clip_seconds", self.clip_seconds)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split"] = list(self.split)
        d["image_size"] = list(self.image_size) if self.image_size else None
        d["generator_version"] = GENERATOR_VERSION
        return d

    def fingerprint(self) -> str:
        """Hash of everything that decides the output (the demo skips regeneration on a match)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def load_synth_config(path: str | os.PathLike | None, **overrides) -> SynthConfig:
    """A :class:`SynthConfig` from a generator yaml (``configs/synthetic/*.yaml``; its
    ``_target_``, if any, must name ``SynthConfig``) updated with ``overrides`` (e.g. ``kind``, ``seed``, ``scenes``,
    ``split`` from the command line); ``path=None`` uses ``overrides`` alone. Another kind of
    config (``configs/train.yaml``, a data config) is a one-line ``ConfigError`` saying so.

    A missing or unreadable file, a YAML syntax error, a top level that is not a mapping, an
    unknown key and a wrong value are one-line ``ConfigError`` naming the file (or
    ``SynthConfig`` for a bad override) and the key.
    """
    fields = [f.name for f in dataclasses.fields(SynthConfig)]
    params: dict = {}
    src = "SynthConfig"
    if path is not None:
        import yaml
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        src = path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(path, "<file>", "an existing generator yaml (configs/synthetic/*.yaml)", got="missing") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(path, "<file>", "a readable UTF-8 yaml file", got=type(e).__name__) from None
        try:
            cfg = OmegaConf.create(text)  # OmegaConf's yaml loader (1e-3 is a float)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(path, "<file>", "valid YAML", got=f"{getattr(e, 'problem', None) or type(e).__name__}{where}") from None
        except Exception:  # a scalar at the top level (OmegaConf asserts), ...
            cfg = None
        if not OmegaConf.is_dict(cfg):
            raise ConfigError(path, "<file>", "a mapping of SynthConfig fields", got="a list" if OmegaConf.is_list(cfg) else "a scalar")
        _check_generator_config(path, OmegaConf.to_container(cfg, resolve=False), fields)
        try:  # resolve ${...} interpolations as hydra would
            raw = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(path, "<file>", "resolvable ${...} interpolations", got=str(e).splitlines()[0]) from None
        for key, value in raw.items():
            if key == "_target_":
                continue
            if key not in fields:
                raise ConfigError(path, str(key), f"a SynthConfig field ({', '.join(fields)})", got="an unknown key")
            params[key] = value
    for key in overrides:
        if key not in fields:
            raise ConfigError("SynthConfig", str(key), f"a SynthConfig field ({', '.join(fields)})", got="an unknown key")
    try:
        return SynthConfig(**{**params, **overrides})
    except ConfigError as e:
        if any(f in params and f not in overrides for f in e.field.split("/")):  # the file's value: name the file
            raise ConfigError(src, e.field, e.expected, got=e.got) from None
        raise


def _check_generator_config(path: Path, raw: dict, fields: list[str]) -> None:
    """Another kind of config given as a generator yaml (``configs/train.yaml``, a data or model
    config: its ``${...}`` would not resolve here, or its keys are no ``SynthConfig`` fields) is
    one line naming the first key that gives it away, before its interpolations are resolved."""
    target = raw.get("_target_")
    if target is not None and (not isinstance(target, str) or target.rsplit(".", 1)[-1] != "SynthConfig"):
        raise ConfigError(path, "_target_", "dense3d.data.synthetic.SynthConfig, as in configs/synthetic/*.yaml",
                          got=f"{target}: this file is not a synthetic-generator config")
    unknown = [str(k) for k in raw if k != "_target_" and k not in fields]
    if unknown and ("defaults" in raw or not any(k in fields for k in raw)):  # no typo in a generator config
        raise ConfigError(path, unknown[0], "only SynthConfig fields, as in configs/synthetic/*.yaml",
                          got="an unknown key: this file is not a synthetic-generator config")


def _int(src, name: str, value, minimum: int) -> int:
    """An integer field (a whole float such as ``2.0`` is accepted; bools and strings are not)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(src, name, f"an integer >= {minimum}", got=repr(value))
    return int(value)


def _float(src, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ConfigError(src, name, "a finite number > 0", got=repr(value))
    return float(value)


def _numbers(src, name: str, value, kind, expected: str) -> tuple:
    """A list / tuple of numbers converted with ``kind`` (int: whole numbers only)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ConfigError(src, name, expected, got=repr(value))
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or (kind is int and float(v) != int(v)):
            raise ConfigError(src, name, expected, got=repr(list(value)))
        out.append(kind(v))
    return tuple(out)


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


OUT_EXPECTED = "a new or empty folder, or one written by `dense3d convert synth` (with its meta.json)"


def _is_generated_set(folder: Path) -> bool:
    """True when ``folder/meta.json`` is the one :func:`generate` writes (kind, fingerprint, splits)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("kind") in KINDS and "fingerprint" in meta and isinstance(meta.get("splits"), dict)


def check_output_dir(out: str | os.PathLike) -> Path:
    """Refuse (``ConfigError`` naming ``out``) an output path whose contents generation would
    destroy: a file, or a non-empty folder that is not a synthetic set written by the generator.
    Also refuses a path below a file. Returns ``out`` as a Path."""
    out = check_output_path(out, str(out), "out", folder=True)  # not a file, not below a file
    if out.is_symlink():
        raise ConfigError(out, "out", OUT_EXPECTED, got="a symbolic link")
    if out.is_dir():
        try:
            entries = sorted(p.name for p in out.iterdir())
        except OSError as e:
            raise ConfigError(out, "out", OUT_EXPECTED, got=f"an unreadable folder ({type(e).__name__})") from None
        if entries and not _is_generated_set(out):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ConfigError(out, "out", OUT_EXPECTED, got=f"a folder of {len(entries)} other entries ({shown})")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` (an older
    ``out`` is removed only then), on failure it is deleted and ``out`` is untouched.
    ``out`` is checked first (:func:`check_output_dir`): only an empty folder or an earlier
    generated set is ever replaced."""
    out = check_output_dir(out)
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
