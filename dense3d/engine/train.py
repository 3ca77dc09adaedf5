"""Building and running a training run from a composed hydra config (``configs/train.yaml``).

``tools/train.py``, ``dense3d train`` and ``dense3d demo`` all go through :func:`build` and
:func:`fit`; the config decides everything (data, model, trainer, optimizer, stage).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dense3d.engine.checkpoint import SafeCheckpointIO
from dense3d.engine.module import DenseCaptionModule, RNGStateCallback
from dense3d.errors import ConfigError

__all__ = ["compose_config", "build", "fit"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_config(overrides: list[str] | None = None, config_name: str = "train", config_dir: str | Path | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra overrides (outside ``@hydra.main``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def _instantiate_dict(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def build(cfg: DictConfig, **trainer_overrides) -> tuple[DenseCaptionModule, pl.LightningDataModule, pl.Trainer]:
    """Instantiate the data module, the model (inside ``DenseCaptionModule``) and the trainer."""
    for key in ("data", "model", "trainer"):
        if cfg.get(key) is None:
            raise ConfigError("configs/train.yaml", key, f"a '{key}' config (e.g. experiment=demo)")
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    module = DenseCaptionModule(
        model,
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        frozen=list(cfg.get("frozen", []) or []),
    )
    callbacks = [RNGStateCallback(), *_instantiate_dict(cfg.get("callbacks"))]
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer_kwargs = dict(callbacks=callbacks, logger=loggers or False, plugins=[SafeCheckpointIO()])
    trainer_kwargs.update(trainer_overrides)
    trainer = instantiate(cfg.trainer, **trainer_kwargs)
    return module, datamodule, trainer


def fit(cfg: DictConfig, ckpt_path: str | None = None, **trainer_overrides) -> tuple[DenseCaptionModule, pl.LightningDataModule, pl.Trainer]:
    """Build and train; ``ckpt_path`` resumes a run exactly (weights, optimizer, loops, RNG)."""
    module, datamodule, trainer = build(cfg, **trainer_overrides)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule, ckpt_path=ckpt_path)
    return module, datamodule, trainer
