"""Progress for long loops (captioning many scenes, generating data) and for the stages of an
evaluation: one helper, used by the commands; library functions only take it as an argument.

    from dense3d.utils.progress import progress_bar
    with progress_bar("captioning val scenes", total=len(samples), unit="scenes") as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))

Library functions accept ``progress: ProgressBar | None = None`` and never print on their own:
with ``None`` they get a silent bar (:func:`ensure_progress`). They name stages with
``update(description)``, count them with ``advance()``, and announce work they discover with
``add_total(n)``; the caller (``dense3d eval``, ``dense3d predict``, ``dense3d demo``) opens the
bar with a title. Where the display goes, in this order:

1. ``disable=True`` -> nothing;
2. ``DENSE3D_PROGRESS=0`` (or ``off`` / ``false`` / ``no``) -> nothing, terminal or not;
3. ``DENSE3D_PROGRESS=log`` -> plain lines, even on a terminal;
4. otherwise (unset, ``1``, ``auto``): a rich bar (description, done/total, elapsed, rate) on
   stderr when stderr is a terminal, else plain lines on stderr, so CI logs stay readable:
   one line per finished stage (its done/total so far and its own time) and one summary line
   at the end (with the rate for a loop without stages), e.g.
   ``eval tod3cap (corrected): METEOR (Java) 3D - 5/6 stages, 1.2 s`` and
   ``captioning val scenes (proposals): 16/16 scenes in 12.3 s (1.3 scenes/s)``.

The rich bar is transient by default (erased when done: the commands print their own results);
stdout is routed through it only when stdout is a terminal too, so ``> file`` redirection keeps
every printed line in the file. Nothing is printed for a block that raises. A bar opened inside
another is drawn under it (rich >= 14 nests live displays; with an older rich it stays silent).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["ENV_VAR", "ProgressBar", "progress_bar", "ensure_progress", "progress_mode"]

ENV_VAR = "DENSE3D_PROGRESS"
_OFF = {"0", "off", "false", "no"}
_LOG = {"log", "plain", "lines"}


def progress_mode(disable: bool = False, is_terminal: bool | None = None) -> str:
    """``"off"``, ``"lines"`` or ``"bar"`` by the rule of the module docstring
    (``is_terminal``: of the output; default: whether stderr is a terminal)."""
    if disable:
        return "off"
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in _OFF:
        return "off"
    if env in _LOG:
        return "lines"
    if is_terminal is None:
        is_terminal = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return "bar" if is_terminal else "lines"


class ProgressBar:
    """Counts work done (``completed`` of ``total``, in ``unit``) under a ``title`` and the name
    of the current stage (``description``), and shows it in ``mode`` "bar" / "lines" / "off".
    Made by :func:`progress_bar`; a silent one by :func:`ensure_progress`."""

    def __init__(self, title: str = "", total: int | None = None, unit: str = "steps", mode: str = "off",
                 file=None, task=None):
        self.title, self.total, self.unit, self.mode = title, total, unit, mode
        self.description: str | None = None
        self.completed = 0
        self._file = file  # "lines": where lines go
        self._task = task  # "bar": (rich Progress, task id)
        self._t0 = self._stage_t0 = time.perf_counter()

    # ------------------------------------------------------------------ what callers use
    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.completed += n
        if self._task is not None:
            self._task[0].advance(self._task[1], n)

    def update(self, description: str | None = None, *, total: int | None = None) -> None:
        """Name the current stage (shown after the title) and / or set the total; in "lines"
        mode a new stage name ends the previous stage with one line."""
        if total is not None:
            self.total = total
        if description is not None and description != self.description:
            if self.mode == "lines" and self.description is not None:
                self._stage_line()
            self.description = description
            self._stage_t0 = time.perf_counter()
        if self._task is not None:
            self._task[0].update(self._task[1], description=self._label(), total=self.total, staged=self.description is not None)

    def add_total(self, n: int) -> None:
        """``n`` more units of work became known (e.g. a protocol's stages once it has matched)."""
        self.update(total=(self.total or 0) + n)

    # ------------------------------------------------------------------ display
    def _label(self) -> str:
        if self.description and self.title:
            return f"{self.title}: {self.description}"
        return self.description or self.title

    def _count(self) -> str:
        return f"{self.completed}/{self.total if self.total is not None else '?'} {self.unit}"

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()

    def _stage_line(self) -> None:
        self._write(f"{self._label()} - {self._count()}, {time.perf_counter() - self._stage_t0:.1f} s")

    def _finish(self) -> None:
        if self.mode != "lines" or (self.description is None and not self.completed and not self.total):
            return  # nothing happened (e.g. every data set already there): no line
        staged = self.description is not None
        if staged:
            self._stage_line()
        dt = time.perf_counter() - self._t0
        # a loop over items gets its rate; staged work has its per-stage times above
        rate = f" ({self.completed / dt:.3g} {self.unit}/s)" if dt > 0 and self.completed and not staged else ""
        self._write(f"{self.title or 'done'}: {self._count()} in {dt:.1f} s{rate}")


def ensure_progress(progress: ProgressBar | None) -> ProgressBar:
    """``progress``, or a silent bar for a library function called without one."""
    return progress if progress is not None else ProgressBar()


def _rate_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """``1.3 scenes/s`` (rich's own speed columns are for bytes); none for staged work."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None or task.fields.get("staged"):
                return Text("")
            return Text(f"{speed:.3g} {task.fields.get('unit', '')}/s", style="progress.data.speed")

    return RateColumn()


@contextmanager
def progress_bar(title: str, total: int | None = None, unit: str = "steps", *, disable: bool = False,
                 console=None, transient: bool = True) -> Iterator[ProgressBar]:
    """A :class:`ProgressBar` shown by the rule of the module docstring.

    Args:
        title: what is being done, e.g. ``"captioning val scenes"``.
        total: units of work, if known (``add_total`` can add more later).
        unit: what a unit is (``"scenes"``, ``"stages"``).
        disable: show nothing.
        console: a ``rich.console.Console`` to draw on (default: a stderr console); whether it
            is a terminal picks "bar" or "lines".
        transient: erase the rich bar when done.
    """
    if console is None and progress_mode(disable) == "off":
        yield ProgressBar(title, total, unit)  # no console built: as cheap as it gets
        return
    from rich.console import Console

    console = console or Console(stderr=True)
    mode = progress_mode(disable, console.is_terminal)
    if mode == "off":
        yield ProgressBar(title, total, unit)
        return
    if mode == "lines":
        bar = ProgressBar(title, total, unit, "lines", file=console.file)
        yield bar  # an exception skips the summary line
        bar._finish()
        return
    from rich.errors import LiveError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    stdout_too = bool(getattr(sys.stdout, "isatty", lambda: False)())
    rich_progress = Progress(
        TextColumn("{task.description}", markup=False), BarColumn(bar_width=24), MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}", markup=False), TimeElapsedColumn(), _rate_column(),
        console=console, transient=transient, refresh_per_second=4, redirect_stdout=stdout_too,
    )
    try:
        rich_progress.start()
    except LiveError:  # rich < 14: one live display at a time, and an outer bar is live
        yield ProgressBar(title, total, unit)
        return
    try:
        task = rich_progress.add_task(title, total=total, unit=unit, staged=False)
        yield ProgressBar(title, total, unit, "bar", task=(rich_progress, task))
    finally:
        rich_progress.stop()
