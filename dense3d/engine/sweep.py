"""Hydra callback for ``tools/train.py -m``: a sweep that would overwrite the ``multirun.yaml``
of an earlier sweep's runs, or train into a job folder that holds a run, is refused before
hydra writes anything.

Each job would be refused on its own (its folder holds checkpoints,
:func:`dense3d.engine.train.check_new_run_folder`), but hydra (1.3) writes ``multirun.yaml``,
the record of the config a sweep's runs were trained with, before the first job starts:
``Hydra.multirun`` composes the sweep's config, calls ``on_multirun_start`` (this callback),
then ``BasicSweeper.sweep`` saves that config to ``hydra.sweep.dir/multirun.yaml`` and only then
launches the jobs. The sweep's config is composed *without* the swept values, so a sweep over
``task_name`` (or over ``experiment``, whose files set it) writes ``multirun.yaml`` to the folder
of the default task name, ``outputs/train``, while its jobs train into ``outputs/a/0``,
``outputs/b/1``: a check of ``outputs/train`` alone found nothing, and a rerun (or another sweep
over task names) overwrote the record while the jobs themselves were still refused. So this
callback works out every job's folder as hydra's BasicSweeper and BasicLauncher will, for this
sweep and for the earlier sweep that ``multirun.yaml`` records. Configured in
``configs/train.yaml`` (``hydra.callbacks``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from dense3d.engine.train import run_checkpoints
from dense3d.errors import ConfigError, print_error

__all__ = ["RefuseEarlierSweep", "earlier_sweep_checkpoint", "sweep_job_dirs"]

# the only sweeper whose jobs are all known before it starts (optuna and the like choose as they go)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def earlier_sweep_checkpoint(sweep_dir: Path) -> Path | None:
    """The first checkpoint of a job folder (``sweep_dir/<job number>/checkpoints/*.ckpt``), or None."""
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) if sweep_dir.is_dir() else []
    for job in jobs:
        ckpts = run_checkpoints(job)
        if ckpts:
            return ckpts[0]
    return None


def sweep_job_dirs(master: DictConfig) -> list[Path] | None:
    """The folder of each job of the sweep whose composed config (what hydra composes for ``-m``,
    or an earlier sweep's ``multirun.yaml``) is ``master``, in job-number order; None when the
    jobs are not known in advance (another sweeper than hydra's basic one, or hydra not running).

    Mirrors hydra 1.3: BasicSweeper.sweep (sweeper params, then the command line's overrides,
    split into the cartesian product of the swept values) and BasicLauncher.launch +
    run_job (each job's config composed with its overrides, ``hydra.job.num`` its index,
    folder ``hydra.sweep.dir / hydra.sweep.subdir``). Raises what composing a job raises.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(master, "hydra.sweeper._target_") != BASIC_SWEEPER or not GlobalHydra.instance().is_initialized():
        return None
    loader = GlobalHydra.instance().config_loader()
    params = OmegaConf.select(master, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(master.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    dirs = []
    hydra_cfg = HydraConfig.instance().cfg
    try:
        for num, job in enumerate(jobs):
            cfg = loader.load_sweep_config(master, list(job))
            with open_dict(cfg):
                cfg.hydra.job.id = num
                cfg.hydra.job.num = num
            HydraConfig.instance().set_config(cfg)  # as run_job: a path may read ${hydra:...}
            dirs.append(Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
    finally:
        HydraConfig.instance().cfg = hydra_cfg
    return dirs


def _first_checkpoint(job_dirs: list[Path]) -> Path | None:
    for job in job_dirs:
        ckpts = run_checkpoints(job)
        if ckpts:
            return ckpts[0]
    return None


class RefuseEarlierSweep(Callback):
    """Exits with one line and status 2 (as tools/train.py does for bad input) when the sweep's
    folder holds an earlier sweep's runs, when one of this sweep's job folders holds a run, or
    when the ``multirun.yaml`` hydra is about to overwrite records a sweep whose runs exist.

    Args:
        prog: the program named in the message.
    """

    def __init__(self, prog: str = "tools/train.py"):
        self.prog = prog

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        record = sweep_dir / "multirun.yaml"
        ckpt = earlier_sweep_checkpoint(sweep_dir)
        if ckpt is None:
            # a sweep over task_name / experiment trains outside sweep_dir (module docstring)
            try:
                job_dirs = sweep_job_dirs(config)
            except Exception:  # a job that does not compose: hydra reports it when it validates the jobs
                job_dirs = None
            ckpt = _first_checkpoint(job_dirs or [])
        if ckpt is None and record.is_file():
            try:
                earlier = sweep_job_dirs(OmegaConf.load(record))
            except Exception as e:  # a record hydra no longer composes: whether its runs exist is unknown
                self._refuse(record, "a multirun.yaml whose sweep composes (to tell whether its runs exist; move it away, "
                             "or choose another task_name / paths.output_dir)", f"{type(e).__name__}: {e}")
            ckpt = _first_checkpoint(earlier or [])
        if ckpt is not None:
            # paths.output_dir=<new folder> puts this sweep's record and all its jobs there
            self._refuse(record, "a sweep folder and job folders without an earlier sweep's record or runs (pass "
                         "another paths.output_dir, or move the earlier sweep away)", str(ckpt))

    def _refuse(self, record: Path, expected: str, got: str) -> None:
        e = ConfigError(record, "paths.output_dir", expected, got=got)
        print_error(self.prog, e)
        sys.exit(2)  # before hydra's sweeper writes multirun.yaml
