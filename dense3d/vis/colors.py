"""Colours shared by every plot: class palette and height colouring."""
from __future__ import annotations

import numpy as np

__all__ = ["class_colors", "label_colors", "height_colors", "GT_COLOR", "PRED_COLOR"]

GT_COLOR = (0.10, 0.75, 0.20)  # green
PRED_COLOR = (0.90, 0.10, 0.10)  # red


def class_colors(labels: np.ndarray) -> np.ndarray:
    """(N,) integer class ids -> (N, 3) RGB in [0, 1] from matplotlib's tab10/tab20 palette."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return np.asarray([cmap(int(k) % 20)[:3] for k in np.asarray(labels).reshape(-1)], dtype=np.float64).reshape(-1, 3)


def label_colors(labels, class_names=()) -> np.ndarray:
    """(N,) class names -> (N, 3) RGB, one colour per class in every picture: the data set's class
    order ``class_names`` first (the same in every scene), then the names it does not know, sorted."""
    known = list(class_names)
    names = known + sorted(set(labels) - set(known))
    return class_colors(np.array([names.index(n) for n in labels])) if len(labels) else np.zeros((0, 3))


def height_colors(z: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(N,) heights -> (N, 3) RGB in [0, 1] (viridis, between the 2nd and 98th percentiles)."""
    from matplotlib import colormaps

    z = np.asarray(z, dtype=np.float64)
    if len(z) == 0:
        return np.zeros((0, 3))
    lo = np.percentile(z, 2) if lo is None else lo
    hi = np.percentile(z, 98) if hi is None else hi
    t = np.clip((z - lo) / max(hi - lo, 1e-6), 0, 1)
    return colormaps["viridis"](t)[:, :3]
