"""Compare training runs in one figure: each run's training loss (exponential moving average)
and the score of each of its evaluations, against the training step.

    python tools/plot_runs.py --out docs/figures/captioning_ablation.png \\
        full=outputs/cap_full "BiCA off=outputs/cap_no_bica" [--evals "eval_gt40*"] [--ref "oracle=498.9"]

A run is ``NAME=FOLDER``: a training run's folder with ``csv/version_*/metrics.csv`` (every
version, so a resumed run joins up; a later version wins a step both logged) and evaluation
folders (``--evals``, a glob under it) whose ``metrics.json`` carries the checkpoint's ``step``
(``dense3d eval`` writes it). ``--score`` is the dotted key of the score in ``metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dense3d.engine.report import ema, read_metrics_csv
from dense3d.errors import ConfigError, PredictionFormatError, exit_status
from dense3d.utils.io import atomic_write, check_output_path

SCORE = "boxes.tod3cap_corrected.CIDEr-F1@0.25"


MISSING = object()


def _lookup(tree: dict, dotted: str):
    """``tree["a"]["b.c"]`` for ``"a.b.c"``: keys may hold dots themselves ("CIDEr-F1@0.25"), so
    each level takes the key that the rest of the path starts with; MISSING where none does."""
    for key in sorted(tree, key=len, reverse=True) if isinstance(tree, dict) else ():
        if dotted == key:
            return tree[key]
        if dotted.startswith(key + "."):
            return _lookup(tree[key], dotted[len(key) + 1:])
    return MISSING


def run_series(folder: Path, metric: str, evals: str, score: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(training curve [(step, value)], evaluations [(step, score)]) of one run folder."""
    csvs = sorted(folder.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not csvs:
        raise ConfigError(str(folder), "csv/version_*/metrics.csv", "a training run's folder (CSVLogger output)")
    curve: dict[int, float] = {}
    for path in csvs:
        curve.update(read_metrics_csv(path).get(metric, []))
    if not curve:
        raise ConfigError(str(csvs[-1]), metric, "a logged metric of the run")
    points = []
    for path in sorted(folder.glob(f"{evals}/metrics.json")):
        metrics = json.loads(path.read_text())
        value = _lookup(metrics, score)
        if value is None:  # an undefined score (written as null, e.g. nothing matched): a gap in the curve
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PredictionFormatError(path, score, "the score in the evaluation's metrics.json")
        if not isinstance(metrics.get("step"), int):
            raise PredictionFormatError(path, "step", "the checkpoint's training step (re-run dense3d eval)")
        points.append((metrics["step"], float(value)))
    return sorted(curve.items()), sorted(points)


def plot(series: dict[str, tuple[list, list]], out: Path, metric: str, score: str,
         refs: dict[str, float] | None = None) -> Path:
    """Two panels: the training metric (EMA 0.95 over the logged values) and the scores, with
    ``refs`` (name -> score, e.g. oracles) as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for i, (name, (curve, points)) in enumerate(series.items()):
        colour = f"C{i}"
        steps, values = zip(*curve)
        ax_loss.plot(steps, ema(values, 0.95), color=colour, label=name)
        if points:
            ax_score.plot(*zip(*points), marker="o", color=colour, label=name)
    for j, (name, value) in enumerate((refs or {}).items()):
        ax_score.axhline(value, ls="--", lw=1, color=f"C{len(series) + j}", label=name)
    ax_loss.set(title=f"{metric} (EMA 0.95)", xlabel="step")
    ax_score.set(title=score, xlabel="step")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--metric", default="train/loss", help="column of metrics.csv")
    p.add_argument("--evals", default="eval_gt40*", help="glob of evaluation folders under each run")
    p.add_argument("--score", default=SCORE, help="dotted key of the score in each metrics.json")
    p.add_argument("--ref", action="append", default=[], help="NAME=VALUE: a reference score drawn as a line")
    a = p.parse_args(argv)
    check_output_path(a.out, "tools/plot_runs.py")  # before reading the runs
    series = {}
    for item in a.runs:
        name, sep, folder = item.partition("=")
        if not sep or not name:
            raise ConfigError("plot_runs", "runs", "NAME=RUN_FOLDER", got=item)
        series[name] = run_series(Path(folder), a.metric, a.evals, a.score)
    refs = {}
    for item in a.ref:
        name, sep, value = item.rpartition("=")
        try:
            refs[name] = float(value)
        except ValueError:
            raise ConfigError("plot_runs", "--ref", "NAME=NUMBER", got=item) from None
        if not sep or not name:
            raise ConfigError("plot_runs", "--ref", "NAME=NUMBER", got=item)
    plot(series, Path(a.out), a.metric, a.score, refs)
    for name, (curve, points) in series.items():
        print(f"{name}: {a.metric} {curve[-1][1]:.3f} at step {curve[-1][0]}; "
              + ", ".join(f"{v:.1f} at {s}" for s, v in points))
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/plot_runs.py"))
