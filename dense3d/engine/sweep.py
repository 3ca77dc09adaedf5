"""Hydra callback for ``tools/train.py -m``: a sweep into a folder that holds an earlier
sweep's runs is refused before hydra writes anything.

Each job would be refused on its own (its folder ``paths.output_dir/<job number>`` holds
checkpoints, :func:`dense3d.engine.train.check_new_run_folder`), but hydra's sweeper first
overwrites the earlier sweep's ``multirun.yaml``, the record of the config its runs were
trained with. Configured in ``configs/train.yaml`` (``hydra.callbacks``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dense3d.engine.train import run_checkpoints
from dense3d.errors import ConfigError

__all__ = ["RefuseEarlierSweep", "earlier_sweep_checkpoint"]


def earlier_sweep_checkpoint(sweep_dir: Path) -> Path | None:
    """The first checkpoint of a job folder (``sweep_dir/<job number>/checkpoints/*.ckpt``), or None."""
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) if sweep_dir.is_dir() else []
    for job in jobs:
        ckpts = run_checkpoints(job)
        if ckpts:
            return ckpts[0]
    return None


class RefuseEarlierSweep(Callback):
    """Exits with one line and status 2 (as tools/train.py does for bad input) when the sweep's
    folder holds an earlier sweep's runs.

    Args:
        prog: the program named in the message.
    """

    def __init__(self, prog: str = "tools/train.py"):
        self.prog = prog

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        ckpt = earlier_sweep_checkpoint(sweep_dir)
        if ckpt is not None:
            e = ConfigError(sweep_dir / "multirun.yaml", "paths.output_dir",
                            "a sweep folder without an earlier sweep's runs (choose another task_name / "
                            "paths.output_dir, or delete the folder)", got=str(ckpt))
            print(f"{self.prog}: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(2)  # before hydra's sweeper writes multirun.yaml
