"""Inference API: load a trained run, caption samples.

    import dense3d.api
    model = dense3d.api.load("outputs/demo")          # a run folder (config.yaml + checkpoint)
    captions = model.caption(sample)                  # list[DenseCaption]

A run folder is what ``dense3d train`` / ``dense3d demo`` write: ``config.yaml`` (the resolved
config) and ``checkpoints/last.ckpt`` (or pass the checkpoint folder itself and its run's
``config.yaml`` is found two levels up). Only targets inside ``dense3d`` and ``torch`` are
instantiated from a checkpoint's config (``ConfigError`` otherwise); weights are safetensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from omegaconf import OmegaConf

from dense3d.errors import CheckpointError, ConfigError, Dense3DError
from dense3d.structures import DenseCaption, Sample
from dense3d.utils.config import instantiate_config
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = ["DenseCaptionerRun", "load"]

_MISSING = object()


class DenseCaptionerRun:
    """A loaded model with its data config; ``caption`` and ``caption_many`` run inference."""

    def __init__(self, model: torch.nn.Module, config, regions: str = "proposals",
                 checkpoint: Path | None = None, step: int | None = None, config_path: Path | None = None):
        self.model = model.eval()
        self.config = config
        self.config_path = config_path  # the run's config.yaml (for messages)
        self.regions = regions
        self.checkpoint = checkpoint  # the checkpoint folder the weights came from
        self.step = step  # its training step (global_step), None where the checkpoint has none

    @torch.no_grad()
    def caption(self, sample: Sample) -> list[DenseCaption]:
        """Every region of one sample with its caption."""
        return self.caption_many([sample])[0]

    @torch.no_grad()
    def caption_many(self, samples: Iterable[Sample], batch_size: int = 2,
                     progress: ProgressBar | None = None) -> list[list[DenseCaption]]:
        """Captions of many samples, ``batch_size`` at a time; ``progress`` (e.g. from
        :func:`dense3d.utils.progress.progress_bar`) advances by one per sample."""
        from dense3d.data import collate

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError("DenseCaptionerRun.caption_many", "batch_size", "an integer >= 1", got=batch_size)
        if isinstance(samples, Sample) or not isinstance(samples, Iterable):
            raise ConfigError("DenseCaptionerRun.caption_many", "samples", "a list of dense3d Samples (caption() takes one)",
                              got=type(samples).__name__)
        samples = list(samples)
        bad = next((i for i, s in enumerate(samples) if not isinstance(s, Sample)), None)
        if bad is not None:
            raise ConfigError("DenseCaptionerRun.caption_many", f"samples[{bad}]", "a dense3d Sample (e.g. run.dataset('val')[0])",
                              got=type(samples[bad]).__name__)
        if self.regions == "gt":  # captioning the ground-truth boxes / events: a sample without any failed deep inside the model
            for kind, detector in (("boxes", "box_detector"), ("events", "event_detector")):
                if getattr(self.model, detector, None) is None:
                    continue
                bad = next((s for s in samples if getattr(s, kind) is None), None)
                if bad is not None:
                    raise ConfigError("DenseCaptionerRun.caption_many", f"sample {bad.sample_id!r}.{kind}",
                                      f"ground-truth {kind} to caption (regions='gt'; load with regions='proposals' to detect them)",
                                      got="None")
        bar = ensure_progress(progress)
        device = next(self.model.parameters(), torch.empty(0)).device  # where load(map_location=...) put the weights
        out: list[list[DenseCaption]] = []
        for i in range(0, len(samples), batch_size):
            batch = samples[i : i + batch_size]
            try:
                # samples are read on the CPU; a model loaded with map_location="cuda" takes its batch on its device
                out += self.model.predict(collate(batch).to(device), regions=self.regions)
            except Dense3DError as e:  # the model checks the collated batch: name the samples the caller passed
                if e.source != "Batch":
                    raise
                ids = ", ".join(repr(s.sample_id) for s in batch)
                raise type(e)(f"samples[{i}:{i + len(batch)}] ({ids})", e.field, e.expected, got=e.got) from None
            bar.advance(len(batch))
        return out

    def dataset(self, split: str = "val"):
        """The run's data set of ``split`` (built from its config), e.g. to caption its scenes, as
        evaluation reads it: the split's own files with the validation split's pipeline
        (:func:`inference_data_config`), so no training augmentation."""
        from dense3d.engine.checkpoint import check_config_targets

        source = str(self.config_path or "the run's config.yaml")
        if not isinstance(split, str) or not split:
            raise ConfigError("DenseCaptionerRun.dataset", "split", "a split name such as 'val'", got=split)
        data = self.config.get("data")
        if not OmegaConf.is_dict(data) or not OmegaConf.is_dict(data.get(split) or data.get("val")):
            raise CheckpointError(source, f"data.{split}", "the run's data config (data.train / data.val)", got="missing")
        node = data.get(split)
        if node is None and split not in ("train", "val", "test"):  # its missing file would read as data never generated
            splits = sorted({"train", "val", "test", *(k for k in data if OmegaConf.is_dict(data.get(k)) and "split" in data.get(k))})
            raise ConfigError(source, "split", f"a split of the run's data ({', '.join(splits)})", got=split)
        if node is None:  # e.g. "test": the val set's config with the split swapped
            node = OmegaConf.merge(data.val, {"split": split})
        node = inference_data_config(node, data.val)
        check_config_targets(OmegaConf.to_container(node), source=source, path=f"data.{split}")  # untrusted: no foreign targets
        try:  # the data set reads its index file (at the latest in len): a synthetic set not generated, or deleted since
            dataset = instantiate_config(node, source, f"data.{split}")
            size = len(dataset)
        except Dense3DError as e:
            from dense3d.engine.train import _with_synthetic_data_hint

            raise _with_synthetic_data_hint(e, self.config) from None
        if size == 0:  # a wrong split name or annotation file; scoring it would report 0 samples and exit 0
            raise ConfigError(source, f"data.{split}", "a data split with samples", got="0 samples")
        return dataset


# Keys of a data node that say how training reads a split, not which files it reads: the
# augmentation pipeline, and which ground-truth boxes training keeps (mmdet3d's num_lidar_pts).
TRAINING_ONLY_KEYS = ("transforms", "box_filter")


def inference_data_config(node, val):
    """The data node ``node`` (a split's: its files) with :data:`TRAINING_ONLY_KEYS` taken from
    the validation node ``val`` at the same place (dropped where ``val`` has none), at any depth
    (a joint set nests its scenes' node). Evaluating or predicting a training split otherwise drew
    random flips, rotations and scales on every read: a mirrored room, other captions on every
    call, and predicted boxes in the augmented frame instead of the file's. Without a ``val`` node
    there is no evaluation pipeline to take, and ``node`` is returned as it is."""
    if val is None:
        return node
    # resolved here: the nodes are parts of the run's config, and ${paths...} means nothing outside it
    node = OmegaConf.to_container(node, resolve=True)
    val = OmegaConf.to_container(val, resolve=True)

    def swap(n: dict, v: dict) -> dict:
        out = {}
        for key, value in n.items():
            if key in TRAINING_ONLY_KEYS:
                if key in v:
                    out[key] = v[key]
            elif isinstance(value, dict):
                out[key] = swap(value, v.get(key) if isinstance(v.get(key), dict) else {})
            else:
                out[key] = value
        return out

    return OmegaConf.create(swap(node, val))


def read_run_config(cfg_path: Path):
    """A run's ``config.yaml`` as a DictConfig with a ``model`` node; else a one-line
    ``CheckpointError`` naming the file."""
    try:
        cfg = OmegaConf.load(cfg_path)
    except Exception as e:  # yaml's ScannerError / ParserError, unreadable files, ...
        raise CheckpointError(cfg_path, "<file>", "the run's config written by `dense3d train` (YAML)",
                              got=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not OmegaConf.is_dict(cfg) or not OmegaConf.is_dict(cfg.get("model")):
        raise CheckpointError(cfg_path, "model", "the run's model config (a mapping with _target_)",
                              got="missing" if not OmegaConf.is_dict(cfg) or cfg.get("model") is None else type(cfg.get("model")).__name__)
    return cfg


def find_run(path: Path) -> tuple[Path, Path]:
    """(config.yaml, checkpoint folder) of a run folder or a checkpoint folder."""
    if (path / "model.safetensors").exists():
        ckpt = path
        for cand in (path.parent.parent / "config.yaml", path.parent / "config.yaml"):
            if cand.exists():
                return cand, ckpt
        raise CheckpointError(path, "config.yaml", "the run's config.yaml beside its checkpoints/ folder")
    cfg = path / "config.yaml"
    if not cfg.exists():
        raise CheckpointError(path, "config.yaml", "a run folder (config.yaml + checkpoints/) or a checkpoint folder")
    # the checkpoint of the most optimizer steps (meta.json's global_step): a step checkpoint (step=N.ckpt,
    # callbacks.step_checkpoint) written after the epoch's last.ckpt holds the newer weights; among as many
    # steps, or in folders written before global_step was recorded, the newest last*.ckpt (Lightning writes
    # last-v1.ckpt when a folder already held last.ckpt), else the newest
    ckpts = sorted((path / "checkpoints").glob("*.ckpt"),
                   key=lambda p: (_global_step(p), p.name.startswith("last"), p.lstat().st_mtime), reverse=True)
    if not ckpts:
        raise CheckpointError(path / "checkpoints", "*.ckpt", "a checkpoint folder written by dense3d")
    return cfg, ckpts[0]


def _global_step(ckpt: Path) -> int:
    """The optimizer steps a checkpoint folder records in its meta.json (-1: not recorded, or unreadable:
    loading it reports that in one line)."""
    import json

    try:
        step = json.loads((ckpt / "meta.json").read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        return -1
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def load(path: str | Path, map_location: str | torch.device = "cpu", regions: str = "proposals",
         overrides: Sequence[str] = (), new_parts: Sequence[str] = ()) -> DenseCaptionerRun:
    """Build the run's model from its config and load its weights (see the module docstring).

    ``overrides``: ``key=value`` changes of existing keys of the run's config before the model is
    built, e.g. ``model.captioner.num_beams=3``, or ``+key=value`` for a constructor argument the
    config leaves at its default (``+model.captioner.repetition_penalty=1.2``); the weights must
    still fit. ``new_parts``: prefixes of the model's weights (``"captioner.motion_hint."``) the
    checkpoint may lack, left as the config builds them: a part the overrides add, to be fitted
    after loading (tools/fit_hint.py); every other weight must still be there."""
    from dense3d.engine.checkpoint import check_config_targets, check_weight_shapes, load_checkpoint

    if not isinstance(path, (str, Path)):
        raise ConfigError("dense3d.api.load", "path", "a run folder or checkpoint folder (str or Path)", got=type(path).__name__)
    if regions not in ("proposals", "gt"):
        raise ConfigError("dense3d.api.load", "regions", "'proposals' or 'gt'", got=regions)
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as e:
        raise ConfigError("dense3d.api.load", "map_location", "a torch device such as 'cpu' or 'cuda:0'", got=map_location) from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("dense3d.api.load", "map_location", "'cpu' on a machine without a CUDA GPU", got=map_location)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("dense3d.api.load", "map_location", f"a GPU index below {torch.cuda.device_count()} (the GPUs of this machine)",
                          got=map_location)
    if device.type not in ("cpu", "cuda", "mps"):  # 'meta' holds no data: the weights could not be loaded into it
        raise ConfigError("dense3d.api.load", "map_location", "'cpu', 'cuda[:N]' or 'mps'", got=map_location)
    if isinstance(overrides, str):  # one override: a str was read letter by letter (field 's' of "seed=1")
        overrides = [overrides]
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("dense3d.api.load", "overrides", "a list of KEY=VALUE strings, e.g. ['model.captioner.num_beams=3']",
                          got=repr(overrides))
    if isinstance(new_parts, str):  # one prefix: a str would be read letter by letter (every weight starting "c" forgiven)
        new_parts = [new_parts]
    if not isinstance(new_parts, (list, tuple)) or not all(isinstance(p, str) and p for p in new_parts):
        raise ConfigError("dense3d.api.load", "new_parts", "a list of weight-name prefixes, e.g. ['captioner.motion_hint.']",
                          got=repr(new_parts))
    cfg_path, ckpt = find_run(Path(path))
    cfg = read_run_config(cfg_path)
    dotlist = []
    for item in overrides:  # KEY=VALUE changes a key the config has; +KEY=VALUE adds one (as in hydra)
        key, sep, _ = item.removeprefix("+").partition("=")
        if not sep or (not item.startswith("+") and OmegaConf.select(cfg, key, default=_MISSING) is _MISSING):
            raise ConfigError(str(cfg_path), key or item,
                              "KEY=VALUE of a key the run's config has (+KEY=VALUE adds a constructor argument)", got=item)
        dotlist.append(item.removeprefix("+"))
    if dotlist:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    check_config_targets(OmegaConf.to_container(cfg.model), source=str(cfg_path), path="model")
    model = instantiate_config(cfg.model, str(cfg_path), "model")
    loaded = load_checkpoint(ckpt, map_location=map_location)
    state = loaded["state_dict"]
    # Lightning prefixes the module's attribute name ("model.") to every key
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    check_weight_shapes(model.state_dict(), state, ckpt, prefix="model.", hint=", as the run's config (with overrides) builds it")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not any(k.startswith(p) for p in new_parts)]
    if missing or unexpected:
        raise CheckpointError(ckpt, "state_dict", "weights that fit the run's model",
                              got=f"{len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    return DenseCaptionerRun(model.to(map_location), cfg, regions, checkpoint=ckpt, step=loaded.get("global_step"),
                             config_path=cfg_path)


def prediction_records(sample_ids: Iterable[str], captions: Iterable[list[DenseCaption]],
                       event_model: bool | None = None) -> dict:
    """Captions -> the evaluation tools' prediction JSON (docs/eval.md): the 3D format
    ``{scene: [{"box", "caption", "score", "label"}]}`` for boxes and ActivityNet's
    ``{"results": {video: [{"timestamp", "sentence", "score"}]}}`` for events (under ``"events"``).
    ``event_model``: True for a model that predicts events (every sample gets its list under
    ``"events"``, also an empty one, so ``dense3d eval events`` reads the file even when no event
    was found); None: events only where some caption is one."""
    src = "dense3d.api.prediction_records"
    if isinstance(sample_ids, str):
        raise ConfigError(src, "sample_ids", "a list of sample ids (not one string)", got=sample_ids)
    sample_ids, captions = list(sample_ids), list(captions)
    if len(sample_ids) != len(captions):
        raise ConfigError(src, "captions", f"one list of captions per sample id ({len(sample_ids)})", got=len(captions))
    seen: set = set()
    for sid in sample_ids:
        if sid in seen:
            raise ConfigError(src, "sample_ids", "distinct sample ids", got=f"{sid!r} twice")
        seen.add(sid)
    boxes: dict = {}
    events: dict = {}
    for sid, caps in zip(sample_ids, captions):
        boxes[sid] = [{"box": list(c.region), "caption": c.text, "score": c.score, "label": c.label} for c in caps if c.kind == "box"]
        ev = [{"timestamp": list(c.region), "sentence": c.text, "score": c.score} for c in caps if c.kind == "event"]
        if ev or event_model:
            events[sid] = ev
    out = boxes
    if events or event_model:
        out = {"boxes": boxes, "events": {"results": events}}
    return out
