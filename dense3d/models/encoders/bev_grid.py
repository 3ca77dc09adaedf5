"""The bird's-eye-view grid every BEV producer (LiDAR encoder, LSS, box head) agrees on.

``point_range = (x_min, y_min, z_min, x_max, y_max, z_max)`` in metres (LiDAR frame) and a
square cell of ``cell_size`` metres give an (H, W) = (ny, nx) grid; a BEV map is indexed
``[b, c, y, x]`` and cell ``(y, x)`` covers ``[x_min + x * cell, x_min + (x + 1) * cell)``
(likewise in y).
"""
from __future__ import annotations

from typing import Sequence

from dense3d.errors import ConfigError

__all__ = ["bev_grid_shape"]


def bev_grid_shape(point_range: Sequence[float], cell_size: float, source: str = "BEV grid") -> tuple[int, int]:
    """(H, W) cells of the grid; the range must be a whole number of cells."""
    if len(point_range) != 6:
        raise ConfigError(source, "point_range", "6 numbers (x_min, y_min, z_min, x_max, y_max, z_max)", got=list(point_range))
    nx = (point_range[3] - point_range[0]) / cell_size
    ny = (point_range[4] - point_range[1]) / cell_size
    if nx <= 0 or ny <= 0 or abs(nx - round(nx)) > 1e-4 or abs(ny - round(ny)) > 1e-4:
        raise ConfigError(source, "cell_size", f"a positive size dividing the x/y range {list(point_range)}", got=cell_size)
    return int(round(ny)), int(round(nx))
