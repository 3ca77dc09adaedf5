"""Training progress that follows ``DENSE3D_PROGRESS`` like the commands' own bars
(:mod:`dense3d.utils.progress`): a rich bar on a terminal, plain lines in a log, nothing when off.

Lightning's ``RichProgressBar`` draws nothing until the run ends when its output is not a
terminal, so the log of a cluster job or of ``make demo > log`` showed no sign of life for
the whole run (29 minutes of the demo's training on a 2-core AVX2 machine). In a log, the
lines look like (``dense3d train experiment=perception_indoor trainer.max_steps=14
callbacks.progress.interval_s=1 2> log``)

    train: step 1/14 (epoch 0), train/loss 45.72, 1.07 s/step, about 14 s left
    train: step 2/14 (epoch 0), train/loss 38.13, 1.08 s/step, about 13 s left
    ...
    train: step 14/14 (epoch 2), train/loss 16.3, 0.87 s/step
    train: 14 steps in 12 s (0.88 s/step)

and ``val: step N, val/loss ...`` after each validation.

Lightning's ``TQDMProgressBar`` would write a carriage-return redraw per refresh into the
file instead of lines; hence this small callback.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from dense3d.errors import ConfigError
from dense3d.utils.progress import progress_mode

__all__ = ["training_progress_bar", "LineProgressBar"]


def training_progress_bar(interval_s: float = 30.0) -> ProgressBar:
    """The trainer's progress bar (configs/callbacks/*.yaml ``progress``): ``RichProgressBar``
    when stderr is a terminal, else :class:`LineProgressBar` (disabled under
    ``DENSE3D_PROGRESS=0``; ``=log`` gives lines on a terminal too)."""
    mode = progress_mode()
    if mode == "bar":
        return RichProgressBar()
    bar = LineProgressBar(interval_s)
    if mode == "off":
        bar.disable()
    return bar


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _format_metrics(metrics: dict[str, Any], prefix: str) -> str:
    """``name value`` for each scalar metric whose name starts with ``prefix`` (the progress-bar
    metrics are floats; ``trainer.callback_metrics`` holds 0-d tensors)."""
    parts = []
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if name.startswith(prefix) and isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{name} {value:.4g}")
    return ", ".join(parts)


class LineProgressBar(ProgressBar):
    """Plain lines on stderr: training's first optimizer step, then one line at most every
    ``interval_s`` seconds (step / total, epoch, the progress-bar metrics such as
    ``train/loss``, seconds per step, time left), the validation metrics after each validation,
    and a summary when training ends. Only rank 0 prints (Lightning disables the others)."""

    def __init__(self, interval_s: float = 30.0):
        super().__init__()
        if isinstance(interval_s, bool) or not (isinstance(interval_s, (int, float)) and interval_s >= 0):
            raise ConfigError("LineProgressBar", "interval_s", "seconds >= 0 between lines", got=interval_s)
        self.interval_s = float(interval_s)
        self._enabled = True
        self._start: float | None = None  # when this fit's training started
        self._start_step = 0  # global step at that time (> 0 on resume)
        self._last_line: float | None = None
        self._last_step = -1
        self._total: int | None = None  # the run's last global step, when known

    # -- ProgressBar's interface
    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(*args, file=sys.stderr, flush=True, **kwargs)

    # -- hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._start_step = time.monotonic(), trainer.global_step
        self._last_line, self._last_step = None, -1
        self._total = self._total_steps(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.is_disabled or step == self._last_step or step == self._start_step:
            return  # no optimizer step yet (gradient accumulation), or this step was reported
        now = time.monotonic()
        total = self._total
        if self._last_line is not None and now - self._last_line < self.interval_s and step != total:
            return
        self._last_line, self._last_step = now, step
        done = step - self._start_step
        per_step = (now - self._start) / done
        line = f"train: step {step}" + (f"/{total}" if total is not None else "") + f" (epoch {trainer.current_epoch})"
        metrics = _format_metrics(self.get_metrics(trainer, pl_module), "train/")
        line += (f", {metrics}" if metrics else "") + f", {per_step:.2f} s/step"
        if total is not None and total > step:
            line += f", about {_duration(per_step * (total - step))} left"
        self.print(line)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_disabled or trainer.sanity_checking:
            return
        metrics = _format_metrics(trainer.callback_metrics, "val/")
        self.print(f"val: step {trainer.global_step}" + (f", {metrics}" if metrics else ""))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_disabled or self._start is None:
            return
        done, seconds = trainer.global_step - self._start_step, time.monotonic() - self._start
        rate = f" ({seconds / done:.2f} s/step)" if done else ""
        self.print(f"train: {done} steps in {_duration(seconds)}{rate}")

    @staticmethod
    def _total_steps(trainer: pl.Trainer) -> int | None:
        """The run's last global step: Lightning's estimate, the smaller of ``max_steps`` and the
        optimizer steps of ``max_epochs`` (gradient accumulation counted); None when unbounded
        (-1) or unknown (an unsized loader)."""
        total = trainer.estimated_stepping_batches
        return int(total) if isinstance(total, (int, float)) and math.isfinite(total) and total > 0 else None
