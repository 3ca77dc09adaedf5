"""Gaps from each box to the room's walls (``dense3d.models.context.room_layout``)."""
from __future__ import annotations

import math

import torch

from dense3d.models.context.room_layout import room_extent, wall_gaps


def _room_points(W: float, D: float, sample: int, n: int = 4000, seed: int = 0) -> torch.Tensor:
    """Floor points of a W x D room plus its four walls, as ``Batch.points`` rows (b, x, y, z)."""
    g = torch.Generator().manual_seed(seed)
    floor = torch.rand(n, 2, generator=g) * torch.tensor([W, D])
    t = torch.rand(n // 4, generator=g)
    walls = torch.cat([torch.stack([t * W, torch.zeros_like(t)], 1), torch.stack([t * W, torch.full_like(t, D)], 1),
                       torch.stack([torch.zeros_like(t), t * D], 1), torch.stack([torch.full_like(t, W), t * D], 1)])
    xy = torch.cat([floor, walls])  # (N, 2)
    return torch.cat([torch.full((len(xy), 1), float(sample)), xy, torch.zeros(len(xy), 1)], 1)  # (N, 4)


def test_room_extent_is_the_walls_and_ignores_a_stray_point():
    pts = _room_points(6.0, 4.0, 0)[:, 1:3]
    stray = torch.cat([pts, torch.tensor([[40.0, -30.0]])])
    torch.testing.assert_close(room_extent(stray), torch.tensor([0.0, 6.0, 0.0, 4.0]), atol=0.05, rtol=0)
    assert room_extent(torch.zeros(0, 2)).tolist() == [0, 0, 0, 0]


def test_wall_gaps_of_a_corner_a_wall_and_a_middle_box_per_sample():
    # sample 0: a 6 x 4 m room; sample 1: a 3 x 3 m room; boxes (x, y, z, dx, dy, dz, yaw)
    points = torch.cat([_room_points(6.0, 4.0, 0), _room_points(3.0, 3.0, 1, seed=1)])
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 0.0],  # in the corner at (0, 0)
                           [3.0, 3.6, 0.5, 2.0, 0.8, 1.0, 0.0],  # against the far wall (y = 4)
                           [3.0, 2.0, 0.5, 1.0, 2.0, 1.0, math.pi / 2]],  # middle, turned: 2 m along x
                          [[1.5, 1.5, 0.5, 1.0, 1.0, 1.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],  # padding
                           [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    gaps = wall_gaps(points, boxes, mask)  # (B, R, 4): x_min, x_max, y_min, y_max walls
    assert gaps.shape == (2, 3, 4)
    want = torch.tensor([[[0.0, 5.0, 0.0, 3.0], [2.0, 2.0, 3.2, 0.0], [2.0, 2.0, 1.5, 1.5]],
                         [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(gaps, want, atol=0.05, rtol=0)
    # a sample without points has no room: zeros
    only_first = points[points[:, 0] == 0]
    assert torch.all(wall_gaps(only_first, boxes, mask)[1] == 0)


def test_room_extent_of_a_large_cloud_is_reproducible_and_leaves_the_global_rng_alone():
    """Over a million points the extent comes from a subset: the same for the same cloud, and
    drawn without the global RNG (a random subset changed every later random draw of training)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1_500_001, 2, generator=g) * torch.tensor([6.0, 4.0])  # (N, 2) a 6 m x 4 m room
    torch.manual_seed(1)
    before = torch.rand(3)
    torch.manual_seed(1)
    first = room_extent(xy)
    assert torch.equal(torch.rand(3), before)  # the global RNG did not move
    assert torch.equal(room_extent(xy), first)
    torch.testing.assert_close(first, torch.tensor([0.0, 6.0, 0.0, 4.0]), atol=0.05, rtol=0)
