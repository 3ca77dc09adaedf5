"""Every config file composes, and every object it describes instantiates."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.mmdet3d_guard import need_mmdet3d

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
ROOT_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _group_options():
    """(group, option) for every yaml below a group folder (nested groups: ``model/encoder``)."""
    out = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONFIG_DIR)
        if len(rel.parts) == 1 or rel.parts[0] == "local":
            continue
        group, option = "/".join(rel.parts[:-1]), rel.stem
        # the mmdet3d bridge's configs (named so) need mmdet3d: `make test` runs them last
        out.append(pytest.param(group, option, marks=pytest.mark.mmdet3d) if "mmdet3d" in option else (group, option))
    return out


def _root_defaults(root: str) -> set[str]:
    cfg = OmegaConf.load(CONFIG_DIR / f"{root}.yaml")
    groups = set()
    for item in cfg.get("defaults", []):
        if isinstance(item, str):
            continue
        for key in item:
            groups.add(str(key).replace("optional ", "").replace("override ", "").split("@")[0])
    return groups


def _compose(root: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=root, overrides=overrides)


def _cpu_overrides(group: str) -> list[str]:
    """Trainer configs for GPUs are instantiated on the CPU when no GPU exists (the rest of the
    config stays as written)."""
    if group == "trainer" and not torch.cuda.is_available():
        return ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true"]
    return []


def _finish(obj, group: str):
    """Call partials (optimizers, schedulers) with what they would get in training."""
    if isinstance(obj, functools.partial):
        params = [torch.nn.Parameter(torch.zeros(2))]
        if group.startswith("optim"):
            return obj(params)
        if group.startswith("scheduler"):
            return obj(torch.optim.SGD(params, lr=0.1))
        return obj
    return obj


def _instantiate_all(node, group: str):
    """Instantiate every `_target_` node reachable from ``node``; returns how many."""
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            if any(str(t).endswith("MMDet3DBoxDetector") for t in _targets(node)):
                need_mmdet3d()
            obj = _finish(instantiate(node), group)
            assert obj is not None
            return 1
        return sum(_instantiate_all(v, group) for v in node.values())
    if OmegaConf.is_list(node):
        return sum(_instantiate_all(v, group) for v in node)
    return 0


def _targets(node):
    """Every `_target_` below ``node`` (itself included)."""
    if OmegaConf.is_dict(node):
        here = [node["_target_"]] if "_target_" in node else []
        return here + [t for v in node.values() for t in _targets(v)]
    if OmegaConf.is_list(node):
        return [t for v in node for t in _targets(v)]
    return []


@pytest.mark.parametrize("root", ROOT_CONFIGS)
def test_root_config_composes_and_instantiates(root, tmp_path, monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    cfg = _compose(root, [])
    OmegaConf.resolve(cfg)
    for key in cfg:
        if key not in ("trainer",) or torch.cuda.is_available():
            _instantiate_all(cfg[key], str(key))
    assert cfg.seed == 0


@pytest.mark.parametrize("group,option", _group_options(), ids=lambda v: str(v))
def test_group_option_composes_and_instantiates(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    root = "train"
    prefix = "" if group in _root_defaults(root) else "+"
    cfg = _compose(root, [f"{prefix}{group}={option}"] + _cpu_overrides(group))
    OmegaConf.resolve(cfg)  # every interpolation resolves
    package = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
    first_line = (CONFIG_DIR / group / f"{option}.yaml").read_text().splitlines()[0:2]
    if any("@package _global_" in ln for ln in first_line):
        node = cfg  # experiment / debug files change the whole config
        assert package is not None
    else:
        node = OmegaConf.select(cfg, group.replace("/", "."))
        assert node is not None, f"{group}={option} did not land at {group}"
    _instantiate_all(node, group)


@pytest.mark.parametrize("experiment", ["perception_events", "captioning_events"])
def test_event_head_names_the_data_classes(experiment, tmp_path, monkeypatch):
    """The av model's event head names the classes the data and the synthetic generator use, in
    their order (labels map by name; captions and records name each event's class)."""
    from dense3d.data.synthetic.av import EVENT_CLASSES

    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    cfg = _compose("train", [f"experiment={experiment}"])
    head = cfg.model.event_detector.event_head
    assert list(head.class_names) == list(cfg.data.train.class_names) == list(EVENT_CLASSES)
    assert "num_classes" not in head


def test_range_filters_run_after_the_global_augmentations():
    """As in mmdet3d's pipelines: points and boxes rotated, scaled or flipped out of the grid are
    filtered after the augmentation, not before it (configs/data/tod3cap.yaml had them first)."""
    checked = 0
    for path in sorted((CONFIG_DIR / "data").glob("*.yaml")):
        steps = OmegaConf.select(OmegaConf.load(path), "transforms.transforms", default=None)
        if not OmegaConf.is_dict(steps):
            continue
        targets = [str(v.get("_target_", "")).rsplit(".", 1)[-1] for v in steps.values() if OmegaConf.is_dict(v)]
        augments = [i for i, t in enumerate(targets) if t.startswith("Global")]
        filters = [i for i, t in enumerate(targets) if t.endswith("RangeFilter")]
        if augments and filters:
            assert min(filters) > max(augments), f"{path.name}: {targets}"
            checked += 1
    assert checked >= 1


def test_no_data_config_normalises_camera_images():
    """Images reach the model in [0, 1]: CameraEncoder(normalize=true) and the image region
    encoder apply the ImageNet mean and std themselves (tod3cap.yaml normalised them twice)."""
    for path in sorted((CONFIG_DIR / "data").glob("*.yaml")):
        steps = OmegaConf.select(OmegaConf.load(path), "transforms.transforms", default=None) or {}
        targets = [str(v.get("_target_", "")) for v in steps.values() if OmegaConf.is_dict(v)]
        assert "dense3d.data.transforms.ImageNormalize" not in targets, path.name
    assert OmegaConf.load(CONFIG_DIR / "model" / "encoder" / "camera_lss.yaml").normalize is True
