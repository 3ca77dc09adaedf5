"""Train from a hydra config: ``python tools/train.py experiment=demo trainer.max_steps=50``.

Thin, like lightning-hydra-template's entry points: everything lives in ``dense3d.engine``.
``ckpt_path=PATH`` resumes a run.
"""
import hydra
from omegaconf import DictConfig

from dense3d.engine.train import CONFIG_DIR, fit


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    fit(cfg, ckpt_path=cfg.get("ckpt_path"))


if __name__ == "__main__":
    main()
