"""Bird's-eye-view plots: points from above, boxes with their heading, captions."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dense3d.structures import Boxes3D
from dense3d.utils.io import atomic_write

__all__ = ["plot_bev"]


def plot_bev(
    points: np.ndarray,
    layers: Sequence[tuple[Boxes3D, np.ndarray, Sequence[str]]],
    out_png: str | Path,
    extent: float | None = None,
    title: str = "",
) -> Path:
    """Plot (N, 3+) points from above and each layer's (boxes, (N, 3) colours, labels), with a
    tick from each box centre along its heading; writes ``out_png`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 9), dpi=100)
    ax.scatter(points[:, 0], points[:, 1], s=0.2, c="0.6", linewidths=0)
    for boxes, colors, labels in layers:
        bev = boxes.bev_corners().detach().cpu().numpy()  # (N, 4, 2)
        centers = boxes.center.detach().cpu().numpy()
        yaw = boxes.yaw.detach().cpu().numpy()
        half = boxes.dims[:, 0].detach().cpu().numpy() / 2
        for i in range(len(boxes)):
            poly = np.concatenate([bev[i], bev[i][:1]], 0)  # close the outline: (5, 2)
            ax.plot(poly[:, 0], poly[:, 1], color=colors[i], lw=1.2)
            tip = centers[i, :2] + half[i] * np.array([np.cos(yaw[i]), np.sin(yaw[i])])
            ax.plot([centers[i, 0], tip[0]], [centers[i, 1], tip[1]], color=colors[i], lw=1.2)
            if i < len(labels) and labels[i]:
                ax.text(centers[i, 0], centers[i, 1], labels[i], fontsize=6, color=colors[i], wrap=True)
    if extent is not None:
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title)
    out_png = Path(out_png)
    with atomic_write(out_png, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)
    return out_png
