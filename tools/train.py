"""Train from a hydra config: ``python tools/train.py experiment=demo trainer.max_steps=50``.

Thin, like lightning-hydra-template's entry points: everything lives in ``dense3d.engine``.
``ckpt_path=PATH`` resumes a run. Bad input is one line and exit status 2, as with
``dense3d train``. In a multirun sweep (``-m seed=0,1``) each job trains into its own folder,
``paths.output_dir/<job number>`` (the sweep's ``multirun.yaml`` beside them; a sweep over
``task_name`` or ``experiment`` trains into each job's own ``outputs/<task_name>/<job number>``
and writes ``multirun.yaml`` where the command line alone puts ``paths.output_dir``, e.g.
``outputs/train`` for ``task_name=a,b``), and a job with bad input is reported in one line while
the sweep's other jobs still run (hydra then reports the sweep as failed). Hydra writes no
folders of its own (``configs/train.yaml``, ``hydra:``), and a sweep is refused in one line
before hydra overwrites a ``multirun.yaml`` whose sweep has runs, or when one of its own job
folders holds a run (:mod:`dense3d.engine.sweep`): pass another ``paths.output_dir``.
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dense3d.engine.train import CONFIG_DIR, check_group_choices, check_hydra_commands, fit
from dense3d.errors import Dense3DError, exit_status

PROG = "tools/train.py"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:  # the jobs would all write outputs/<task_name> (and the second be refused)
        # hydra made the job's folder, paths.output_dir/<job number> (configs/train.yaml, hydra.sweep)
        job_dir = Path(hydra_cfg.runtime.output_dir)
        OmegaConf.update(cfg, "paths.output_dir", str(job_dir))
    try:
        fit(cfg)
    except Dense3DError as e:
        print(f"{PROG}: {type(e).__name__}: {e}", file=sys.stderr)
        if multirun:
            raise  # hydra runs the other jobs, then reports this one
        sys.exit(2)  # SystemExit passes through hydra's error report (it catches Exception only)
    finally:  # any failure (bad input, out of memory, Ctrl-C): fit undid its own writes
        if multirun and job_dir.is_dir() and not any(job_dir.iterdir()):
            job_dir.rmdir()  # the empty folder hydra made for this job


def check_command_line(argv: list[str]) -> None:
    """Bad overrides that hydra would report in several lines before ``main`` runs (``logger=null``),
    and two of hydra's commands at once (``-m --cfg job``), which hydra reports as a traceback:
    one line and exit status 2 instead, as ``dense3d train`` gives."""
    try:
        check_hydra_commands(argv, PROG)
        check_group_choices(argv, "train", CONFIG_DIR)
    except Dense3DError as e:
        print(f"{PROG}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    sys.exit(exit_status(main, PROG))  # a closed stdout (``--help | head``): quiet, status 141
