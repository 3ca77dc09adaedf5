"""Train from a hydra config: ``python tools/train.py experiment=demo trainer.max_steps=50``.

Thin, like lightning-hydra-template's entry points: everything lives in ``dense3d.engine``.
``ckpt_path=PATH`` resumes a run; hydra's multirun (``-m``) sweeps work as usual. Bad input is
one line and exit status 2, as with ``dense3d train``.
"""
import sys

import hydra
from omegaconf import DictConfig

from dense3d.engine.train import CONFIG_DIR, fit
from dense3d.errors import exit_status


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    status = exit_status(lambda: fit(cfg) and 0, "tools/train.py")
    if status:
        sys.exit(status)  # SystemExit passes through hydra's error report (it catches Exception only)


if __name__ == "__main__":
    main()
