"""Checkpoints that are safe to load and never half-written.

A checkpoint is a folder::

    epoch=3-step=120.ckpt/
        model.safetensors     the weights (``state_dict``), safetensors: no pickle at all
        trainer_state.pt      optimizer / scheduler / loop / callback state, loaded with
                              ``torch.load(weights_only=True)`` (tensors and plain containers only)
        meta.json             format version, hyper-parameters (plain JSON), the SHA-256 and
                              size of both files above

It is written into a temporary sibling folder and renamed into place, so a crash leaves
either the old checkpoint or the new one, never a mix. Loading checks sizes and hashes first:
a truncated or corrupted file gives a one-line ``CheckpointError``.

``SafeCheckpointIO`` plugs this format into Lightning (``Trainer(plugins=[SafeCheckpointIO()])``),
so ``ModelCheckpoint``, ``trainer.fit(ckpt_path=...)`` and resuming use it unchanged.
Hyper-parameters are stored as JSON; configs taken from a checkpoint pass
``check_config_targets`` before anything is instantiated from them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from dense3d.errors import CheckpointError, ConfigError

__all__ = [
    "check_weight_shapes",
    "FORMAT_VERSION",
    "SafeCheckpointIO",
    "check_config_targets",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
META = "meta.json"
ALLOWED_TARGET_PREFIXES = ("dense3d.", "torch.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _to_plain(obj: Any) -> Any:
    """Hyper-parameters (OmegaConf nodes, tuples, paths) -> JSON-ready values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def check_config_targets(cfg: Any, source: str = "checkpoint", path: str = "config") -> None:
    """Raise ``ConfigError`` if any ``_target_`` in ``cfg`` lies outside ``dense3d.`` / ``torch.``.

    Configs that come from a checkpoint are untrusted input: instantiating an arbitrary
    ``_target_`` would run arbitrary code.
    """
    if isinstance(cfg, Mapping):
        target = cfg.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
            raise ConfigError(source, f"{path}._target_", "a target inside dense3d or torch", got=target)
        for k, v in cfg.items():
            check_config_targets(v, source, f"{path}.{k}")
    elif isinstance(cfg, (list, tuple)):
        for i, v in enumerate(cfg):
            check_config_targets(v, source, f"{path}[{i}]")


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a Lightning-style checkpoint dict (``state_dict`` + the rest) to the folder ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().contiguous().cpu() for k, v in checkpoint.get("state_dict", {}).items()}
    hparams = _to_plain(checkpoint.get("hyper_parameters", {}))
    rest = _plain_containers({k: v for k, v in checkpoint.items() if k not in ("state_dict", "hyper_parameters")})
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        # safetensors refuses tensors that share memory (tied weights): store each once.
        save_file(_untie(state_dict), str(tmp / WEIGHTS), metadata={"format": "pt"})
        torch.save(rest, tmp / STATE)
        meta = {
            "format_version": FORMAT_VERSION,
            "hyper_parameters": hparams,
            "global_step": checkpoint.get("global_step"),  # read alone by dense3d.api.find_run (the newest of a run's checkpoints)
            "files": {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in (WEIGHTS, STATE)},
        }
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=2)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _plain_containers(obj: Any) -> Any:
    """OmegaConf containers (e.g. an optimizer's ``betas`` from a config) -> plain lists / dicts,
    so the trainer state loads with ``weights_only=True``; tensors and numbers pass through."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: _plain_containers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_containers(v) for v in obj)
    return obj


def _untie(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: dict[tuple, str] = {}
    out = {}
    for k, v in state_dict.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        out[k] = v.clone() if key in seen else v
        seen.setdefault(key, k)
    return out


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint folder written by ``save_checkpoint``; verifies it first.

    Raises:
        CheckpointError: missing folder or file, unknown format, size or hash mismatch
            (truncated / corrupted), or a trainer state that is not plain tensors and containers.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "checkpoint", "a dense3d checkpoint folder (model.safetensors, trainer_state.pt, meta.json)")
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(path / META, "meta.json", "present") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(path / META, "meta.json", "valid JSON", got=type(e).__name__) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path / META, "format_version", str(FORMAT_VERSION), got=meta.get("format_version"))
    for name in (WEIGHTS, STATE):
        f = path / name
        want = meta.get("files", {}).get(name)
        if want is None or not f.exists():
            raise CheckpointError(f, name, "present and listed in meta.json")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f, "bytes", f"{want['bytes']} bytes (truncated or replaced?)", got=size)
        if _sha256(f) != want["sha256"]:
            raise CheckpointError(f, "sha256", "the hash recorded in meta.json (file corrupted)")
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        state_dict = load_file(str(path / WEIGHTS), device=str(device))
    except SafetensorError as e:
        raise CheckpointError(path / WEIGHTS, "weights", "a readable safetensors file", got=str(e)) from None
    try:
        rest = torch.load(path / STATE, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError for unsafe or broken data
        raise CheckpointError(path / STATE, "trainer_state", "tensors and plain containers only", got=type(e).__name__) from None
    hparams = meta.get("hyper_parameters", {})
    check_config_targets(hparams, source=str(path / META), path="hyper_parameters")
    return {**rest, "state_dict": state_dict, "hyper_parameters": hparams}


def check_weight_shapes(expected: Mapping[str, Any], weights: Mapping[str, Any], source: object, prefix: str = "",
                        hint: str = "") -> None:
    """Every weight in both ``expected`` (a model's ``state_dict``) and ``weights`` (a checkpoint's,
    keys ``prefix + name``) has the same shape; else a one-line CheckpointError naming the first
    that differs (torch's size-mismatch error lists every tensor on its own line)."""
    for k, v in expected.items():
        w = weights.get(prefix + k)
        if w is not None and tuple(w.shape) != tuple(v.shape):
            raise CheckpointError(source, f"state_dict.{prefix}{k}", f"shape {tuple(v.shape)}{hint}", got=tuple(w.shape))


def _lightning_checkpoint_io_base():
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    return CheckpointIO


class SafeCheckpointIO(_lightning_checkpoint_io_base()):
    """Lightning ``CheckpointIO`` writing the folder format above (atomic, safetensors).

    :meth:`hand_over` gives it a checkpoint already read (and verified) for the next load of the
    same path: ``fit`` reads the checkpoint it resumes once, to check it fits the model, and
    Lightning's resume then takes that instead of reading and hashing the files again."""

    def __init__(self):
        super().__init__()
        self._handed_over: tuple[Path, dict[str, Any]] | None = None

    def hand_over(self, path, checkpoint: dict[str, Any]) -> None:
        self._handed_over = (Path(path).resolve(), checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        handed, self._handed_over = self._handed_over, None
        if handed is not None and handed[0] == Path(path).resolve() and map_location in (None, "cpu"):
            return handed[1]
        return load_checkpoint(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path) -> None:
        path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
