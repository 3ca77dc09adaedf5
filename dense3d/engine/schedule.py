"""Learning-rate schedules tied to the run (``configs/scheduler/*.yaml``).

A schedule with a length (``T_max``, the cosine's) left null in its config spans the whole run:
:class:`RunLengthSchedule` reads the run's optimizer steps from the trainer
(``trainer.estimated_stepping_batches``: ``trainer.max_steps``, or ``max_epochs`` times the
batches of an epoch over ``accumulate_grad_batches``) when Lightning builds the optimizer.

A resumed run follows the schedule of its config, not the checkpoint's (:class:`ScheduleFromConfig`):
Lightning restores the scheduler's ``T_max``, ``eta_min``, ``base_lrs`` and the optimizer's
learning rate from the checkpoint, so a run extended with a larger ``trainer.max_steps`` climbed
back to the peak learning rate while its ``config.yaml`` recorded the new schedule.

The configs' schedules (:func:`cosine`, :func:`constant`) start with ``warmup_steps`` of linear
warmup (:func:`with_warmup`: torch's ``LinearLR`` then the schedule, in a ``SequentialLR``; 0: the
schedule alone, as before warmup existed). A resumed run follows the config's warmup too (its
length, and the schedules inside it), and a checkpoint of the other kind (warmup added or
removed since) is given the config's schedule when it loads
(``DenseCaptionModule.on_load_checkpoint``).
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

__all__ = ["RunLengthSchedule", "ScheduleFromConfig", "apply_config_schedule", "scheduler_from_config", "cosine", "constant",
           "with_warmup"]

_T_MAX = "an integer >= 1 (or null: the run's length in optimizer steps)"
_WARMUP = "an integer >= 0 (optimizer steps of linear warmup)"


def _check_warmup(warmup_steps) -> int:
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(SOURCE, "scheduler.warmup_steps", _WARMUP, got=warmup_steps)
    return warmup_steps


def with_warmup(optimizer: torch.optim.Optimizer, schedule, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """``schedule`` (a partial taking the optimizer) after ``warmup_steps`` optimizer steps of linear
    warmup: at step t < W the learning rate is ``lr * (t + 1) / (W + 1)`` (torch's ``LinearLR`` from
    ``1 / (W + 1)`` to 1 over W steps), then ``schedule`` from its start at step W
    (``SequentialLR``). ``warmup_steps`` 0: ``schedule`` alone, the same object as without warmup
    (its checkpoints and those written before warmup existed are alike)."""
    warmup_steps = _check_warmup(warmup_steps)
    if warmup_steps == 0:
        return schedule(optimizer)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), end_factor=1.0,
                                               total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, schedule(optimizer)], milestones=[warmup_steps])


def cosine(optimizer: torch.optim.Optimizer, T_max: int | None, eta_min: float = 0.0,
           warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over ``warmup_steps`` (:func:`with_warmup`), then ``CosineAnnealingLR`` from
    the optimizer's rate to ``eta_min`` over the rest of ``T_max`` (the whole schedule's length,
    warmup included: ``T_max - warmup_steps`` steps of cosine; null: not known yet, only for
    building the schedule's first step)."""
    warmup_steps = _check_warmup(warmup_steps)
    if T_max is not None and warmup_steps > 0 and T_max - warmup_steps < 1:
        raise ConfigError(SOURCE, "scheduler.warmup_steps", f"fewer than the schedule's {T_max} steps (scheduler.T_max, or the "
                          "run's length)", got=warmup_steps)
    decay_steps = None if T_max is None else T_max - warmup_steps
    return with_warmup(optimizer, functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=decay_steps,
                                                    eta_min=eta_min), warmup_steps)


def constant(optimizer: torch.optim.Optimizer, factor: float = 1.0, total_iters: int = 0,
             warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over ``warmup_steps`` (:func:`with_warmup`), then torch's ``ConstantLR``
    (``factor`` for ``total_iters`` steps, then the optimizer's rate)."""
    return with_warmup(optimizer, functools.partial(torch.optim.lr_scheduler.ConstantLR, factor=factor,
                                                    total_iters=total_iters), warmup_steps)


class RunLengthSchedule:
    """A scheduler partial (it takes the optimizer) whose ``T_max`` is the run's length in
    optimizer steps. :func:`dense3d.engine.train.build` hands it the trainer (:meth:`attach`);
    before that (the module's probe of the schedule) ``T_max`` is 1 step more than the warmup."""

    def __init__(self, factory: functools.partial):
        self.factory = factory
        self._trainer = None

    def attach(self, trainer) -> None:
        self._trainer = weakref.ref(trainer)

    def run_steps(self) -> int:
        trainer = self._trainer() if self._trainer is not None else None
        warmup = self.factory.keywords.get("warmup_steps", 0) if isinstance(self.factory, functools.partial) else 0
        shortest = (warmup if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup > 0 else 0) + 1
        if trainer is None:  # the probe: the shortest schedule the warmup allows
            return shortest
        if trainer.fast_dev_run:  # debug=fast_dev_run, a smoke test of the config: its steps are no run's length
            return max(shortest, int(trainer.fast_dev_run))
        loads_data = trainer.train_dataloader is None and trainer.max_epochs != -1
        steps = trainer.estimated_stepping_batches
        if loads_data and trainer.ckpt_path is not None:
            _drop_early_train_loader(trainer)
        if not math.isfinite(steps) or steps < 1:  # max_steps=-1 with max_epochs=-1, or an iterable data set
            raise ConfigError(SOURCE, "scheduler.T_max", _T_MAX + " with a run of known length (trainer.max_steps or "
                              "trainer.max_epochs)", got=f"null and the run's length {steps}")
        return int(steps)

    def __call__(self, optimizer, **kwargs: Any):
        return self.factory(optimizer, **{"T_max": self.run_steps(), **kwargs})


def _drop_early_train_loader(trainer) -> None:
    """Forget the training loader Lightning built to count a run's steps (a run of
    ``trainer.max_epochs``: ``estimated_stepping_batches`` loads it) while resuming, so that the
    fit loop builds it again once the checkpoint's loops are restored. Lightning builds the
    optimizer and its schedule before it restores the loops, and keeps the loader (and the
    iterator it made over it) for the whole run: ``DenseCaptionDataModule.train_dataloader`` then
    saw epoch 0 and no batch done, so a run resumed inside an epoch started that epoch again
    from its first batch, and one resumed at an epoch's end (with workers) drew epoch 0's order."""
    loop = trainer.fit_loop
    fetcher = getattr(loop, "_data_fetcher", None)
    if fetcher is not None:
        fetcher.teardown()  # its iterator's worker processes
    loop._data_fetcher = None
    loop._combined_loader = None


def scheduler_from_config(node: DictConfig | None):
    """The scheduler partial of a ``scheduler`` config (None for none). ``T_max``: an integer
    >= 1, or null for the run's length (:class:`RunLengthSchedule`); else a one-line ConfigError
    naming ``scheduler.T_max`` (a negative one alternated the learning rate every step)."""
    if not node:
        return None
    if "warmup_steps" in node:
        _check_warmup(node.get("warmup_steps"))
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


def _copy_hyper(restored, fresh, name: str, progress: bool) -> list[str]:
    """Set ``restored``'s plain attributes to ``fresh``'s; returns the hyper-parameters changed.
    ``progress``: the progress too (a schedule inside ``SequentialLR``: where it stands depends on
    the config's milestones)."""
    changed = []
    for key, value in vars(fresh).items():
        if key in ("optimizer", "_schedulers") or not _plain(value):
            continue
        if key in _PROGRESS or (key.startswith("_") and key != "_milestones"):  # (a warmup's length: SequentialLR's)
            if progress:
                setattr(restored, key, list(value) if isinstance(value, list) else value)
            continue
        old = getattr(restored, key, None)
        if not _same(old, value):
            changed.append(f"{name}.{key} {old} -> {value}")
        setattr(restored, key, list(value) if isinstance(value, list) else value)
    return changed


def _structure(scheduler) -> list[str]:
    subs = getattr(scheduler, "_schedulers", None)
    return [type(scheduler).__name__] + ([type(s).__name__ for s in subs] if subs is not None else [])


def apply_config_schedule(scheduler, optimizer_factory, scheduler_factory, params=None) -> list[str]:
    """Set a restored ``scheduler`` (and its optimizer's hyper-parameters) to what the config
    (``optimizer_factory``, ``scheduler_factory``) gives at the scheduler's step: the config's
    hyper-parameters (``T_max``, ``eta_min``, ``base_lrs``, each group's ``initial_lr``, weight
    decay, ..., those of the schedules inside a warmup's ``SequentialLR`` too) and the learning
    rate an uninterrupted run of this config would have now (the config's schedule replayed on a
    stand-in optimizer up to that step). Returns what changed, as ``"name old -> new"``; [] when
    the checkpoint followed this config.

    ``params``: what the module builds its optimizer over (``DenseCaptionModule.optimizer_params``):
    the stand-in is the config's optimizer over them, so its parameter groups (weight decay only
    where it belongs: :mod:`dense3d.engine.optim`) are the run's. Without it the config describes
    one group: with several, their own options are not in the config, so the checkpoint's
    schedule is kept and this says so; likewise when the config's groups or schedule (a warmup
    added) differ in kind from the checkpoint's. ``ReduceLROnPlateau`` (a subclass of
    ``LRScheduler`` in torch 2.9) follows a metric, not steps: kept as restored."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or \
            not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        return []
    groups = scheduler.optimizer.param_groups
    if params is None and len(groups) != 1:
        return [f"kept the checkpoint's schedule: {len(groups)} parameter groups (the config describes one)"]
    step = int(scheduler.last_epoch)
    with warnings.catch_warnings():  # stepping the stand-in's schedule without its optimizer: torch warns
        warnings.simplefilter("ignore")
        if params is None:
            stand_in = optimizer_factory([{"params": [torch.nn.Parameter(torch.zeros(1))]}])
        else:
            stand_in = optimizer_factory(params)  # no optimizer state is made: nothing steps it
        if len(stand_in.param_groups) != len(groups):
            return [f"kept the checkpoint's schedule: {len(groups)} parameter groups (the config builds {len(stand_in.param_groups)})"]
        fresh = scheduler_factory(stand_in)
        if _structure(fresh) != _structure(scheduler):
            return [f"kept the checkpoint's schedule: {'+'.join(_structure(scheduler))} (the config's: {'+'.join(_structure(fresh))})"]
        for _ in range(step):
            fresh.step()
    changed = _copy_hyper(scheduler, fresh, "scheduler", progress=False)
    for i, (sub, fresh_sub) in enumerate(zip(getattr(scheduler, "_schedulers", []), getattr(fresh, "_schedulers", []))):
        changed += _copy_hyper(sub, fresh_sub, f"scheduler[{i}]", progress=True)
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
        params = pl_module.optimizer_params() if hasattr(pl_module, "optimizer_params") else None
        changed = []
        for config in trainer.lr_scheduler_configs:
            changed += apply_config_schedule(config.scheduler, optimizer_factory, scheduler_factory, params)
        kept = [c for c in changed if c.startswith("kept ")]
        changed = [c for c in changed if not c.startswith("kept ")]
        if trainer.is_global_zero:
            if changed:
                print(f"dense3d train: resuming with the config's learning-rate schedule, not the checkpoint's: {', '.join(changed)}",
                      file=sys.stderr)
            if kept:
                print(f"dense3d train: resuming: {'; '.join(kept)}", file=sys.stderr)
