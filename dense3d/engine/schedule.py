"""Learning-rate schedules tied to the run (``configs/scheduler/*.yaml``).

A schedule with a length (``T_max``, the cosine's) left null in its config spans the whole run:
:class:`RunLengthSchedule` reads the run's optimizer steps from the trainer
(``trainer.estimated_stepping_batches``: ``trainer.max_steps``, or ``max_epochs`` times the
batches of an epoch over ``accumulate_grad_batches``) when Lightning builds the optimizer.

A resumed run follows the schedule of its config, not the checkpoint's (:class:`ScheduleFromConfig`):
Lightning restores the scheduler's ``T_max``, ``eta_min``, ``base_lrs`` and the optimizer's
learning rate from the checkpoint, so a run extended with a larger ``trainer.max_steps`` climbed
back to the peak learning rate while its ``config.yaml`` recorded the new schedule.
"""
from __future__ import annotations

import functools
import math
import sys
import warnings
import weakref
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

from dense3d.engine.module import SOURCE
from dense3d.errors import ConfigError
from dense3d.utils.config import instantiate_config

__all__ = ["RunLengthSchedule", "ScheduleFromConfig", "apply_config_schedule", "scheduler_from_config"]

_T_MAX = "an integer >= 1 (or null: the run's length in optimizer steps)"


class RunLengthSchedule:
    """A scheduler partial (it takes the optimizer) whose ``T_max`` is the run's length in
    optimizer steps. :func:`dense3d.engine.train.build` hands it the trainer (:meth:`attach`);
    before that (the module's probe of the schedule) ``T_max`` is 1."""

    def __init__(self, factory: functools.partial):
        self.factory = factory
        self._trainer = None

    def attach(self, trainer) -> None:
        self._trainer = weakref.ref(trainer)

    def run_steps(self) -> int:
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is None:
            return 1
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps) or steps < 1:  # max_steps=-1 with max_epochs=-1, or an iterable data set
            raise ConfigError(SOURCE, "scheduler.T_max", _T_MAX + " with a run of known length (trainer.max_steps or "
                              "trainer.max_epochs)", got=f"null and the run's length {steps}")
        return int(steps)

    def __call__(self, optimizer, **kwargs: Any):
        return self.factory(optimizer, **{"T_max": self.run_steps(), **kwargs})


def scheduler_from_config(node: DictConfig | None):
    """The scheduler partial of a ``scheduler`` config (None for none). ``T_max``: an integer
    >= 1, or null for the run's length (:class:`RunLengthSchedule`); else a one-line ConfigError
    naming ``scheduler.T_max`` (a negative one alternated the learning rate every step)."""
    if not node:
        return None
    if "T_max" in node:
        t_max = node.get("T_max")
        if t_max is not None and (isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1):
            raise ConfigError(SOURCE, "scheduler.T_max", _T_MAX, got=t_max)
    factory = instantiate_config(node, SOURCE, "scheduler")
    if "T_max" in node and node.get("T_max") is None:
        return RunLengthSchedule(factory)
    return factory


# the scheduler's progress (restored from the checkpoint and kept), not its hyper-parameters
_PROGRESS = {"last_epoch", "_step_count", "_get_lr_called_within_step", "_last_lr", "_is_initial", "verbose", "optimizer"}


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def apply_config_schedule(scheduler, optimizer_factory, scheduler_factory) -> list[str]:
    """Set a restored ``scheduler`` (and its optimizer's hyper-parameters) to what the config
    (``optimizer_factory``, ``scheduler_factory``) gives at the scheduler's step: the config's
    hyper-parameters (``T_max``, ``eta_min``, ``base_lrs``, each group's ``initial_lr``, weight
    decay, ...) and the learning rate an uninterrupted run of this config would have now (the
    config's schedule replayed on a stand-in optimizer up to that step). Returns what changed,
    as ``"name old -> new"``; [] when the checkpoint followed this config.

    One parameter group (what ``DenseCaptionModule.configure_optimizers`` builds): with several,
    their own options (per-group learning rates, weight decay) are not in the config, so the
    checkpoint's schedule is kept and this says so. ``ReduceLROnPlateau`` (a subclass of
    ``LRScheduler`` in torch 2.9) follows a metric, not steps: kept as restored."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or \
            not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        return []
    groups = scheduler.optimizer.param_groups
    if len(groups) != 1:
        return [f"kept the checkpoint's schedule: {len(groups)} parameter groups (the config describes one)"]
    step = int(scheduler.last_epoch)
    with warnings.catch_warnings():  # stepping the stand-in's schedule without its optimizer: torch warns
        warnings.simplefilter("ignore")
        stand_in = optimizer_factory([{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in groups])
        fresh = scheduler_factory(stand_in)
        for _ in range(step):
            fresh.step()
    changed = []
    for key, value in vars(fresh).items():
        if key in _PROGRESS or key.startswith("_") or not _plain(value):
            continue
        old = getattr(scheduler, key, None)
        if not _same(old, value):
            changed.append(f"scheduler.{key} {old} -> {value}")
        setattr(scheduler, key, list(value) if isinstance(value, list) else value)
    for i, (group, new) in enumerate(zip(groups, stand_in.param_groups)):
        for key, value in new.items():
            if key == "params" or not _plain(value):
                continue
            old = group.get(key)
            if not _same(old, value):
                where = f"group {i} " if len(groups) > 1 else ""
                changed.append(f"{where}lr at step {step} {old:.4g} -> {value:.4g}" if key == "lr" else f"optim.{where}{key} {old} -> {value}")
            group[key] = value
    scheduler._last_lr = [group["lr"] for group in groups]
    return changed


class ScheduleFromConfig(pl.Callback):
    """On resume (added by :func:`dense3d.engine.train.build`), after Lightning restored the
    optimizer and scheduler from the checkpoint: the config's schedule wins
    (:func:`apply_config_schedule`), said on stderr in one line when it differs from the
    checkpoint's, e.g. a run extended with a larger ``trainer.max_steps``."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer_factory = getattr(pl_module, "optimizer_factory", None)
        scheduler_factory = getattr(pl_module, "scheduler_factory", None)
        if optimizer_factory is None or scheduler_factory is None:
            return
        changed = []
        for config in trainer.lr_scheduler_configs:
            changed += apply_config_schedule(config.scheduler, optimizer_factory, scheduler_factory)
        kept = [c for c in changed if c.startswith("kept ")]
        changed = [c for c in changed if not c.startswith("kept ")]
        if trainer.is_global_zero:
            if changed:
                print(f"dense3d train: resuming with the config's learning-rate schedule, not the checkpoint's: {', '.join(changed)}",
                      file=sys.stderr)
            if kept:
                print(f"dense3d train: resuming: {'; '.join(kept)}", file=sys.stderr)
