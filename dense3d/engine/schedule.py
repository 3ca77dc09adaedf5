"""Learning-rate schedules tied to the run (``configs/scheduler/*.yaml``).

A schedule with a length (``T_max``, the cosine's) left null in its config spans the whole run:
:class:`RunLengthSchedule` reads the run's optimizer steps from the trainer
(``trainer.estimated_stepping_batches``: ``trainer.max_steps``, or ``max_epochs`` times the
batches of an epoch over ``accumulate_grad_batches``) when Lightning builds the optimizer.
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Any

from omegaconf import DictConfig

from dense3d.engine.module import SOURCE
from dense3d.errors import ConfigError
from dense3d.utils.config import instantiate_config

__all__ = ["RunLengthSchedule", "scheduler_from_config"]

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
