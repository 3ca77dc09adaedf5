"""Run reports: training-curve PNGs from Lightning's CSV log, and a ``report.md`` with the
metric tables, pictures and example captions of a run."""
from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from dense3d.utils.io import atomic_write

__all__ = ["read_metrics_csv", "merge_equal_rates", "plot_curves", "markdown_table", "write_report"]


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning ``CSVLogger``'s ``metrics.csv`` -> {metric: [(step, value), ...]} (empty cells skipped)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for k, v in row.items():
                if k in ("step", "epoch") or v in (None, ""):
                    continue
                value = float(v)
                if math.isfinite(value):
                    series[k].append((step, value))
    return dict(series)


def ema(values: Sequence[float], decay: float) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing)."""
    out, m = [], 0.0
    for i, v in enumerate(values, 1):
        m = decay * m + (1 - decay) * v
        out.append(m / (1 - decay**i))
    return out


def merge_equal_rates(series: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, Sequence[tuple[int, float]]]:
    """``series`` with the learning rates (``lr-*``: Lightning's LearningRateMonitor, one per
    parameter group) that are the same curve kept once, under one name: ``lr-AdamW/decay`` and
    ``lr-AdamW/no_decay`` of one schedule -> ``lr-AdamW (decay, no_decay)`` (two groups of weight
    decay share the schedule: two panels drew the same curve). Rates that differ stay apart."""
    merged: dict[str, Sequence[tuple[int, float]]] = {}
    same: dict[tuple, list[str]] = defaultdict(list)  # the curve -> the names logging it
    for name, points in series.items():
        if name.startswith("lr-"):
            same[tuple(points)].append(name)
        else:
            merged[name] = points
    for points, names in same.items():
        names = sorted(names)
        prefixes = {n.split("/", 1)[0] for n in names}
        if len(names) > 1 and len(prefixes) == 1 and all("/" in n for n in names):  # lr-AdamW/a, lr-AdamW/b
            name = f"{prefixes.pop()} ({', '.join(n.split('/', 1)[1] for n in names)})"
        else:
            name = " = ".join(names)
        merged[name] = list(points)
    return merged


def plot_curves(series: Mapping[str, Sequence[tuple[int, float]]], out_png: str | Path, title: str = "") -> Path:
    """One panel per metric (loss terms, learning rate, validation scores) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = merge_equal_rates(series)
    names = sorted(series)
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), dpi=100, squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = zip(*series[name]) if series[name] else ((), ())
        if len(steps) >= 30 and not name.startswith("lr"):  # noisy per-step losses: faint raw curve + exponential moving average
            ax.plot(steps, values, alpha=0.3, color="tab:blue")
            ax.plot(steps, ema(values, 0.9), color="tab:blue", label="EMA 0.9")
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, values, marker=".")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_write(out_png, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out_png


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Rows of dicts -> a GitHub markdown table (floats rounded to ``digits``)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())

    def fmt(v):
        # a cell is one line, and a '|' in it (a generated caption may hold either) would split it
        s = f"{v:.{digits}f}" if isinstance(v, float) else str(v)
        return " ".join(s.split()).replace("|", "\\|")

    lines = ["| " + " | ".join(fmt(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(
    path: str | Path,
    title: str,
    sections: Sequence[tuple[str, str]],
    pictures: Sequence[tuple[str, str | Path]] = (),
) -> Path:
    """Write ``report.md``: a title, then (heading, markdown body) sections, then pictures
    (caption, path of the picture file: absolute, or relative to the working directory like
    ``path``).

    Every picture is linked relative to the report's folder, also one outside it
    (``../curves.png``): the report folder (or a tree holding it and its pictures) can be
    moved or shared and its links still resolve, which an absolute link would not.
    """
    path = Path(path)
    report_dir = os.path.abspath(path.parent)
    parts = [f"# {title}\n"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body.rstrip()}\n")
    if pictures:
        parts.append("## Pictures\n")
        for caption, pic in pictures:
            # both made absolute first: a relative report path and an absolute picture (or the
            # reverse) name the same folders, and relpath needs them on the same footing
            rel = os.path.relpath(os.path.abspath(pic), report_dir)
            parts.append(f"![{caption}]({Path(rel).as_posix()})\n")
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
