"""3D boxes in dense3d's one convention, with converters to the conventions of the data sets.

Convention (used everywhere in dense3d):

* a box is ``(x, y, z, dx, dy, dz, yaw)``, optionally followed by a velocity ``(vx, vy)``;
* ``(x, y, z)`` is the **gravity centre** (the centre of the box's volume), in metres,
  in the sensor frame (LiDAR frame for outdoor scenes, the aligned scan for indoor ones);
* ``dx`` is the size along the box's heading, ``dy`` across it, ``dz`` its height;
* ``yaw`` is the rotation about +z in radians, counter-clockwise seen from above,
  0 when the heading points along +x.

This equals mmdet3d's ``LiDARInstance3DBoxes`` (since mmdet3d 1.0) except that mmdet3d
stores the **bottom** centre: use :meth:`Boxes3D.from_mmdet3d` / :meth:`Boxes3D.to_mmdet3d`.
ScanNet / ScanRefer boxes are axis-aligned ``[cx, cy, cz, dx, dy, dz]`` gravity-centred:
use :meth:`Boxes3D.from_scannet` / :meth:`Boxes3D.to_scannet`.

Corner order of :meth:`Boxes3D.corners` (box frame, before rotation and translation)::

          7 -------- 6          z (up)
         /|         /|          |   x (heading)
        4 -------- 5 |          |  /
        | 3 -------|- 2         | /
        |/         |/   y <-----+
        0 -------- 1

    0 (-dx/2, -dy/2, -dz/2)  1 (+dx/2, -dy/2, -dz/2)  2 (+dx/2, +dy/2, -dz/2)  3 (-dx/2, +dy/2, -dz/2)
    4..7: the same four with +dz/2 (4 above 0, 5 above 1, ...)

so the bottom face is 0-1-2-3 counter-clockwise seen from above, the top face is 4-5-6-7,
and the front face (towards +heading) is 1-2-6-5.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from dense3d.errors import BoxError

__all__ = ["Boxes3D", "BOX_CORNER_SIGNS"]

# (8, 3) signs of the half sizes for each corner, in the order drawn in the module docstring.
BOX_CORNER_SIGNS = (
    (-1, -1, -1),
    (+1, -1, -1),
    (+1, +1, -1),
    (-1, +1, -1),
    (-1, -1, +1),
    (+1, -1, +1),
    (+1, +1, +1),
    (-1, +1, +1),
)

# The 12 edges of a box as pairs of corner indices (for drawing).
BOX_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
)


def _rotz(yaw: torch.Tensor) -> torch.Tensor:
    """(N,) angles -> (N, 3, 3) rotation matrices about +z."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    zeros, ones = torch.zeros_like(yaw), torch.ones_like(yaw)
    rows = [torch.stack([c, -s, zeros], -1), torch.stack([s, c, zeros], -1), torch.stack([zeros, zeros, ones], -1)]
    return torch.stack(rows, -2)  # (N, 3, 3)


def limit_period(angle: torch.Tensor, offset: float = 0.5, period: float = 2 * math.pi) -> torch.Tensor:
    """Wrap angles into ``[-offset * period, (1 - offset) * period)``."""
    return angle - torch.floor(angle / period + offset) * period


class Boxes3D:
    """A batch of N boxes, ``tensor`` of shape (N, 7) or (N, 9) (with velocity).

    Args:
        tensor: (N, 7) ``x, y, z, dx, dy, dz, yaw`` or (N, 9) with ``vx, vy`` appended;
            anything ``torch.as_tensor`` accepts. An empty input gives N = 0.
        source: where the boxes came from, for error messages (a file path or a description).
        allow_zero_size: zero sizes are accepted unless this is False (loaders of real data
            set it False: a zero-size annotation is broken). Negative sizes are always rejected.

    Raises:
        BoxError: wrong shape, non-finite values, negative (or zero) sizes.
    """

    def __init__(self, tensor, source: str = "Boxes3D(tensor)", allow_zero_size: bool = True):
        t = torch.as_tensor(tensor)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        if t.numel() == 0 and not (t.dim() == 2 and t.shape[1] == 9):
            t = t.reshape(0, 7)  # [] or (0,) -> (0, 7); (0, 9) keeps its velocity columns
        if t.dim() != 2 or t.shape[1] not in (7, 9):
            raise BoxError(source, "boxes", "shape (N, 7) or (N, 9)", got=f"shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).any(1).nonzero()[0, 0])
            raise BoxError(source, f"boxes[{bad}]", "finite numbers", got=t[bad].tolist())
        sizes = t[:, 3:6]
        if bool((sizes < 0).any()):
            bad = int((sizes < 0).any(1).nonzero()[0, 0])
            raise BoxError(source, f"boxes[{bad}].size", "dx, dy, dz >= 0", got=sizes[bad].tolist())
        if not allow_zero_size and bool((sizes == 0).any()):
            bad = int((sizes == 0).any(1).nonzero()[0, 0])
            raise BoxError(source, f"boxes[{bad}].size", "dx, dy, dz > 0", got=sizes[bad].tolist())
        self.tensor = t

    # ---------------------------------------------------------------- basic access
    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item) -> "Boxes3D":
        t = self.tensor[item]
        if t.dim() == 1:
            t = t.unsqueeze(0)  # (7,) -> (1, 7)
        return Boxes3D._wrap(t)

    def __repr__(self) -> str:
        return f"Boxes3D(n={len(self)}, box_dim={self.box_dim}, dtype={self.tensor.dtype})"

    @classmethod
    def _wrap(cls, tensor: torch.Tensor) -> "Boxes3D":
        """Wrap an already validated tensor (no checks; internal use)."""
        obj = cls.__new__(cls)
        obj.tensor = tensor
        return obj

    @classmethod
    def cat(cls, boxes: Sequence["Boxes3D"]) -> "Boxes3D":
        """Concatenate boxes of one width: all (N, 7) or all (N, 9).

        7- and 9-column boxes are not mixed (as in mmdet3d): padding the velocity with 0 would
        claim the boxes stand still, and dropping it loses data silently. Drop it explicitly
        with ``Boxes3D._wrap(b.tensor[:, :7])`` where that is meant.

        Raises:
            BoxError: boxes of different widths or on different devices.
        """
        if not boxes:
            return cls(torch.zeros(0, 7))
        first = boxes[0]
        for i, b in enumerate(boxes):
            if b.box_dim != first.box_dim:
                raise BoxError("Boxes3D.cat", f"boxes[{i}]", f"{first.box_dim} columns like boxes[0] (7: no velocity, 9: with vx, vy)", got=f"{b.box_dim} columns")
            if b.device != first.device:
                raise BoxError("Boxes3D.cat", f"boxes[{i}]", f"boxes on {first.device} like boxes[0]", got=str(b.device))
        return cls._wrap(torch.cat([b.tensor for b in boxes], 0))

    def clone(self) -> "Boxes3D":
        return Boxes3D._wrap(self.tensor.clone())

    def to(self, *args, **kwargs) -> "Boxes3D":
        return Boxes3D._wrap(self.tensor.to(*args, **kwargs))

    @property
    def box_dim(self) -> int:
        return self.tensor.shape[1]

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @property
    def center(self) -> torch.Tensor:
        """(N, 3) gravity centres."""
        return self.tensor[:, 0:3]

    @property
    def bottom_center(self) -> torch.Tensor:
        """(N, 3) centres of the bottom faces."""
        c = self.tensor[:, 0:3].clone()
        c[:, 2] -= self.tensor[:, 5] / 2
        return c

    @property
    def dims(self) -> torch.Tensor:
        """(N, 3) sizes ``dx, dy, dz``."""
        return self.tensor[:, 3:6]

    @property
    def yaw(self) -> torch.Tensor:
        """(N,) yaw angles."""
        return self.tensor[:, 6]

    @property
    def velocity(self) -> torch.Tensor | None:
        """(N, 2) velocities, or None for 7-dim boxes."""
        return self.tensor[:, 7:9] if self.box_dim == 9 else None

    @property
    def volume(self) -> torch.Tensor:
        return self.dims.prod(-1)

    # ---------------------------------------------------------------- geometry
    def corners(self) -> torch.Tensor:
        """(N, 8, 3) corners in the order documented in the module docstring."""
        signs = torch.tensor(BOX_CORNER_SIGNS, dtype=self.tensor.dtype, device=self.device)  # (8, 3)
        local = 0.5 * signs[None] * self.dims[:, None, :]  # (N, 8, 3)
        rot = _rotz(self.yaw)  # (N, 3, 3)
        # (N, 8, 3) @ (N, 3, 3)^T -> (N, 8, 3); in the boxes' dtype also under autocast (metres)
        with torch.autocast(self.tensor.device.type, enabled=False):
            return local @ rot.transpose(1, 2) + self.center[:, None, :]

    def bev_corners(self) -> torch.Tensor:
        """(N, 4, 2) corners of the box seen from above (x, y), counter-clockwise: 0, 1, 2, 3."""
        return self.corners()[:, 0:4, 0:2]

    def points_in_boxes(self, points: torch.Tensor) -> torch.Tensor:
        """(P, 3+) points -> (P, N) bool, True where point p lies inside box n (faces included)."""
        pts = points[:, 0:3].to(self.tensor.dtype)
        rel = pts[:, None, :] - self.center[None, :, :]  # (P, N, 3)
        c, s = torch.cos(self.yaw), torch.sin(self.yaw)  # (N,)
        # rotate into each box frame by -yaw
        lx = rel[..., 0] * c + rel[..., 1] * s  # (P, N)
        ly = -rel[..., 0] * s + rel[..., 1] * c  # (P, N)
        half = self.dims / 2  # (N, 3)
        return (lx.abs() <= half[:, 0]) & (ly.abs() <= half[:, 1]) & (rel[..., 2].abs() <= half[:, 2])

    # ---------------------------------------------------------------- transforms (return new boxes)
    def rotate(self, angle: float | torch.Tensor) -> "Boxes3D":
        """Rotate the boxes about the +z axis through the origin by ``angle`` (radians, CCW)."""
        angle = torch.as_tensor(angle, dtype=self.tensor.dtype, device=self.device)
        rot = _rotz(angle.reshape(1))[0]  # (3, 3)
        t = self.tensor.clone()
        t[:, 0:3] = self.center @ rot.T
        t[:, 6] = limit_period(t[:, 6] + angle)
        if self.box_dim == 9:
            t[:, 7:9] = self.tensor[:, 7:9] @ rot[:2, :2].T
        return Boxes3D._wrap(t)

    def translate(self, offset: Sequence[float] | torch.Tensor) -> "Boxes3D":
        """Move the boxes by ``offset`` (3,)."""
        offset = torch.as_tensor(offset, dtype=self.tensor.dtype, device=self.device)
        t = self.tensor.clone()
        t[:, 0:3] += offset
        return Boxes3D._wrap(t)

    def scale(self, factor: float) -> "Boxes3D":
        """Scale positions, sizes and velocities about the origin by ``factor``."""
        t = self.tensor.clone()
        t[:, 0:6] *= factor
        if self.box_dim == 9:
            t[:, 7:9] *= factor
        return Boxes3D._wrap(t)

    def flip(self, axis: str = "y") -> "Boxes3D":
        """Mirror the scene.

        ``axis="y"``: y -> -y (mirror across the x-z plane; left and right swap), yaw -> -yaw.
        ``axis="x"``: x -> -x (mirror across the y-z plane; front and back swap), yaw -> pi - yaw.
        """
        t = self.tensor.clone()
        if axis == "y":
            t[:, 1] = -t[:, 1]
            t[:, 6] = -t[:, 6]
            if self.box_dim == 9:
                t[:, 8] = -t[:, 8]
        elif axis == "x":
            t[:, 0] = -t[:, 0]
            t[:, 6] = math.pi - t[:, 6]
            if self.box_dim == 9:
                t[:, 7] = -t[:, 7]
        else:
            raise BoxError("Boxes3D.flip", "axis", "'x' or 'y'", got=repr(axis))
        t[:, 6] = limit_period(t[:, 6])
        return Boxes3D._wrap(t)

    # ---------------------------------------------------------------- conversions
    @classmethod
    def from_mmdet3d(
        cls,
        tensor,
        origin: Sequence[float] = (0.5, 0.5, 0.0),
        source: str = "mmdet3d boxes",
        allow_zero_size: bool = True,
    ) -> "Boxes3D":
        """From mmdet3d LiDAR boxes ``(x, y, z, dx, dy, dz, yaw[, vx, vy])``.

        ``origin`` is where the given point sits inside the box, as fractions of its size,
        exactly as mmdet3d's ``LiDARInstance3DBoxes(..., origin=...)``: ``(0.5, 0.5, 0)``
        (the default, mmdet3d's own) means bottom centre, ``(0.5, 0.5, 0.5)`` gravity centre
        (which is how mmdet3d v1.1 nuScenes info files store ``bbox_3d``).
        """
        t = torch.as_tensor(tensor)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        z = _mmdet3d_origin_z(origin, source)
        boxes = cls(t, source=source, allow_zero_size=allow_zero_size)
        if z != 0.5:
            t = boxes.tensor.clone()
            t[:, 2] += (0.5 - z) * t[:, 5]  # gravity centre: half the height above a bottom origin
            boxes = cls._wrap(t)
        return boxes

    def to_mmdet3d(self, origin: Sequence[float] = (0.5, 0.5, 0.0)) -> torch.Tensor:
        """To mmdet3d LiDAR boxes with the given ``origin`` (default bottom centre): (N, 7|9)."""
        z = _mmdet3d_origin_z(origin, "Boxes3D.to_mmdet3d")
        t = self.tensor.clone()
        t[:, 2] -= (0.5 - z) * t[:, 5]
        return t

    @classmethod
    def from_scannet(cls, tensor, source: str = "ScanNet boxes", allow_zero_size: bool = True) -> "Boxes3D":
        """From ScanNet / ScanRefer axis-aligned ``[cx, cy, cz, dx, dy, dz]`` (N, 6+); extra
        columns (e.g. the label and object id of ``*_aligned_bbox.npy``) are ignored."""
        t = torch.as_tensor(tensor)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        if t.numel() == 0:
            t = t.reshape(0, 6)
        if t.dim() != 2 or t.shape[1] < 6:
            raise BoxError(source, "boxes", "shape (N, 6) [cx, cy, cz, dx, dy, dz]", got=f"shape {tuple(t.shape)}")
        yaw = torch.zeros(t.shape[0], 1, dtype=t.dtype, device=t.device)
        return cls(torch.cat([t[:, 0:6], yaw], 1), source=source, allow_zero_size=allow_zero_size)

    def to_scannet(self) -> torch.Tensor:
        """To axis-aligned ``[cx, cy, cz, dx, dy, dz]`` (N, 6): the axis-aligned box that encloses
        each (possibly rotated) box; exact for yaw = 0 (mod pi)."""
        corners = self.corners()  # (N, 8, 3)
        lo, hi = corners.min(1).values, corners.max(1).values  # (N, 3) each
        return torch.cat([(lo + hi) / 2, hi - lo], 1)


def _mmdet3d_origin_z(origin: Sequence[float], source: str) -> float:
    """The z fraction of an mmdet3d box ``origin``; its x and y must be 0.5 (the centre): mmdet3d
    moves an off-centre x/y origin by the size along the *frame's* axes, whatever the yaw, which
    no data set here uses, so it is refused rather than copied."""
    try:
        o = [float(v) for v in origin]
    except (TypeError, ValueError):
        o = []
    if len(o) != 3 or o[0] != 0.5 or o[1] != 0.5 or not 0.0 <= o[2] <= 1.0:
        raise BoxError(source, "origin", "(0.5, 0.5, z) with z in [0, 1] (0: bottom centre, 0.5: gravity centre)",
                       got=origin)
    return o[2]
