"""Rotated BEV / 3D IoU against shapely polygons; axis-aligned IoU and GIoU against hand values."""
import math

import pytest
import torch
from shapely.geometry import Polygon

from dense3d.errors import OpInputError
from dense3d.ops import (
    boxes_iou_3d,
    boxes_iou_3d_axis_aligned,
    boxes_iou_bev,
    generalized_iou_3d_axis_aligned,
    points_in_boxes,
    points_in_boxes_first,
)
from dense3d.ops._backend import ext
from dense3d.structures import Boxes3D

HAS_EXT = hasattr(ext(), "box_iou_rotated")
BACKENDS = ["torch"] + (["ext"] if HAS_EXT else [])


def random_boxes(n, seed, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [
            torch.randn(n, 3, generator=g, dtype=torch.float64) * spread,
            torch.rand(n, 3, generator=g, dtype=torch.float64) * 4 + 0.2,
            (torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1) * math.pi,
        ],
        1,
    )


def degenerate_pairs():
    """(a, b) boxes covering the degenerate cases; returned as two (K, 7) float64 tensors."""
    base = [1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3]
    c, s = math.cos(0.3), math.sin(0.3)
    pairs = [
        (base, base),  # identical
        (base, base[:6] + [0.3 + math.pi]),  # rotated by pi: the same rectangle
        (base, base[:6] + [0.3 - math.pi]),
        ([0, 0, 0, 2, 2, 2, 0], [2, 0, 0, 2, 2, 2, 0]),  # touching edges
        ([0, 0, 0, 2, 2, 2, 0], [2, 2, 0, 2, 2, 2, 0]),  # touching corners
        ([0, 0, 0, 2, 2, 2, 0], [10, 0, 0, 2, 2, 2, 0]),  # disjoint
        (base, [1.0 + 4.0 * c, 2.0 + 4.0 * s, 0.5, 4.0, 2.0, 1.5, 0.3]),  # touching, rotated frame
        ([0, 0, 0, 10, 10, 2, 0.2], [0.5, -0.5, 0, 1, 2, 1, 1.1]),  # one inside another
        ([0, 0, 0, 4, 4, 2, 0], [0, 0, 0, 4, 4, 2, math.pi / 4]),  # octagon
        ([0, 0, 0, 4, 1, 2, 0], [0, 0, 0, 4, 1, 2, math.pi / 2]),  # cross
        ([0, 0, 0, 1e-3, 1e-3, 1e-3, 0.1], [0, 0, 0, 1e-3, 2e-3, 1e-3, 0.7]),  # tiny boxes
        ([0, 0, 0, 2, 2, 2, 0], [0.5, 0, 0, 2, 2, 2, 0]),  # shared (collinear) edges
        ([0, 0, 0, 2, 2, 2, 0], [0, 0, 5, 2, 2, 2, 0]),  # BEV identical, disjoint in height
        ([0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]),  # zero-size: IoU 0
    ]
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    return a, b


def shapely_ious(a, b):
    """(N, M) BEV and 3D IoU with shapely polygons from Boxes3D's corners."""
    pa = [Polygon(c.tolist()) for c in Boxes3D(a).bev_corners()]
    pb = [Polygon(c.tolist()) for c in Boxes3D(b).bev_corners()]
    bev = torch.zeros(len(pa), len(pb), dtype=torch.float64)
    iou3d = torch.zeros_like(bev)
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            inter = p.intersection(q).area
            union = p.area + q.area - inter
            bev[i, j] = inter / union if union > 0 else 0.0
            h = max(0.0, min(a[i, 2] + a[i, 5] / 2, b[j, 2] + b[j, 5] / 2) - max(a[i, 2] - a[i, 5] / 2, b[j, 2] - b[j, 5] / 2))
            vol = a[i, 3:6].prod() + b[j, 3:6].prod() - inter * h
            iou3d[i, j] = inter * h / vol if vol > 0 else 0.0
    return bev, iou3d


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_boxes_match_shapely(backend):
    a, b = random_boxes(40, 0), random_boxes(30, 1)
    bev, iou3d = shapely_ious(a, b)
    assert (bev > 0).sum() > 50, "the random boxes should overlap often"
    torch.testing.assert_close(boxes_iou_bev(a, b, backend=backend), bev, rtol=0, atol=1e-9)
    torch.testing.assert_close(boxes_iou_3d(a, b, backend=backend), iou3d, rtol=0, atol=1e-9)
    out = boxes_iou_bev(a.float(), b.float(), backend=backend)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, bev.float(), rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_pairs_match_shapely(backend):
    a, b = degenerate_pairs()
    bev, iou3d = shapely_ious(a, b)
    got_bev = boxes_iou_bev(a, b, backend=backend).diagonal()
    got_3d = boxes_iou_3d(a, b, backend=backend).diagonal()
    torch.testing.assert_close(got_bev, bev.diagonal(), rtol=0, atol=1e-7)
    torch.testing.assert_close(got_3d, iou3d.diagonal(), rtol=0, atol=1e-7)
    assert got_bev[0] == pytest.approx(1.0) and got_bev[1] == pytest.approx(1.0)
    assert got_bev[3] == 0 and got_bev[5] == 0 and got_bev[-1] == 0
    assert got_bev[-2] == pytest.approx(1.0) and got_3d[-2] == 0
    octagon = 16 * 2 * (math.sqrt(2) - 1)  # a 4 x 4 square and itself turned by 45 degrees
    assert got_bev[8] == pytest.approx(octagon / (32 - octagon))


@pytest.mark.parametrize("backend", BACKENDS)
def test_boxes_far_from_the_origin(backend):
    """The shoelace sums ran in absolute coordinates: far from the origin they cancelled, and two
    identical 1 mm boxes at x = y = 1e5 m got IoU 0 (1 cm boxes 1.02, 10 cm boxes 1.0002). The
    IoU must not depend on where the pair sits: compare with the same pair at the origin."""
    from dense3d.ops import nms_bev

    g = torch.Generator().manual_seed(3)
    for size in [1e-3, 1e-2, 0.1, 2.0]:
        a = random_boxes(20, seed=7, spread=size)
        a[:, 3:6] = a[:, 3:6] * size
        b = a.clone()
        b[:, :2] += torch.randn(20, 2, generator=g, dtype=torch.float64) * size * 0.3
        b[:, 6] += torch.randn(20, generator=g, dtype=torch.float64) * 0.2
        near = boxes_iou_bev(a, b, backend=backend)
        for far in [1e3, 1e5, -3e5]:
            shift = torch.tensor([far, -far, 0, 0, 0, 0, 0], dtype=torch.float64)
            got = boxes_iou_bev(a + shift, b + shift, backend=backend)
            torch.testing.assert_close(got, near, rtol=0, atol=1e-6)
            assert torch.allclose(boxes_iou_bev(a + shift, a + shift, backend=backend).diagonal(), torch.ones(20, dtype=torch.float64), atol=1e-6)
    tiny = torch.tensor([[1e5, 1e5, 0, 1e-3, 1e-3, 1, 0.3]] * 2, dtype=torch.float64)
    assert nms_bev(tiny, torch.tensor([0.9, 0.8], dtype=torch.float64), 0.5, backend=backend).tolist() == [0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_of_a_box_with_itself_is_at_most_one(backend):
    """Intersection and union are rounded separately: this box with itself gave BEV IoU
    1 + 3.4e-14 and 3D IoU 1 + 2.8e-14, and 1 cm boxes 1e5 m out gave 1 + 2e-8. IoU is clamped to [0, 1]."""
    box = torch.tensor([[45.6427909067821, 42.43023251031946, 64.48389511611423, 1.0871162968096069, 0.28995223706161327, 2.399869250200659, -1.6528138905189225]], dtype=torch.float64)
    small_far = torch.tensor([[1e5, -1e5, 0.0, 0.01, 0.02, 0.01, 0.3], [1e5 + 0.1, -1e5, 0.0, 0.005, 0.03, 0.01, -2.0]], dtype=torch.float64)
    for boxes in (box, small_far, random_boxes(200, seed=5, spread=50.0)):
        for op in (boxes_iou_bev, boxes_iou_3d):
            iou = op(boxes, boxes, backend=backend)
            assert float(iou.max()) <= 1.0 and float(iou.min()) >= 0.0, op.__name__
    assert boxes_iou_bev(box, box, backend=backend).item() == 1.0
    assert boxes_iou_3d(box, box, backend=backend).item() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_without_bev_area_overlaps_nothing(backend):
    """Boxes around the origin against boxes of no BEV area there (a point, a segment): IoU 0.

    The clipper kept all of the other box for a zero-size box (its edges have no direction), so
    the union was 0 up to rounding, and a rounding of +1 ulp gave an IoU of about 1e16 (seen on
    the GPU; on the CPU these seeded boxes hit it too)."""
    a = random_boxes(300, 9, spread=0.1)
    empty = torch.tensor([[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0.3], [0, 0, 0, 2, 0, 1, 0.3], [0, 0, 0, 0, 2, 1, 1.0],
                          [0, 0, 0, 5e-324, 5e-324, 1, 0.2]], dtype=torch.float64)  # the last: its area underflows to 0
    for fn in (boxes_iou_bev, boxes_iou_3d):
        assert (fn(a, empty, backend=backend) == 0).all() and (fn(empty, a, backend=backend) == 0).all(), fn.__name__


@pytest.mark.skipif(not HAS_EXT, reason="dense3d._C (with box_iou_rotated) not built")
def test_ext_equals_torch():
    a, b = random_boxes(200, 2, spread=5), random_boxes(150, 3, spread=5)
    for fn in (boxes_iou_bev, boxes_iou_3d):
        torch.testing.assert_close(fn(a, b, backend="ext"), fn(a, b, backend="torch"), rtol=0, atol=1e-12)
        torch.testing.assert_close(fn(a.float(), b.float(), backend="ext"), fn(a.float(), b.float(), backend="torch"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    a = random_boxes(3, 0)
    assert boxes_iou_bev(a, a[:0], backend=backend).shape == (3, 0)
    assert boxes_iou_3d(a[:0], a, backend=backend).shape == (0, 3)
    assert boxes_iou_3d_axis_aligned(a[:0, :6], a[:, :6], backend=backend).shape == (0, 3)
    assert points_in_boxes(torch.zeros(0, 3, dtype=torch.float64), a, backend=backend).shape == (0, 3)
    assert points_in_boxes_first(torch.zeros(4, 3, dtype=torch.float64), a[:0], backend=backend).tolist() == [-1] * 4


def test_axis_aligned_iou_and_giou_hand_values():
    a = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]])
    b = torch.tensor(
        [
            [0.0, 0.0, 0.0, 2.0, 2.0, 2.0],  # identical: IoU 1, GIoU 1
            [1.0, 0.0, 0.0, 2.0, 2.0, 2.0],  # half overlap: inter 4, union 12, enclosing 12
            [3.0, 0.0, 0.0, 2.0, 2.0, 2.0],  # gap of 1 along x: inter 0, union 16, enclosing 5*2*2 = 20
            [4.0, 4.0, 0.0, 2.0, 2.0, 2.0],  # far: enclosing 6*6*2 = 72, union 16
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],  # inside: inter 1, union 8, enclosing 8
        ]
    )
    iou = boxes_iou_3d_axis_aligned(a, b)[0]
    giou = generalized_iou_3d_axis_aligned(a, b)[0]
    torch.testing.assert_close(iou, torch.tensor([1.0, 4 / 12, 0.0, 0.0, 1 / 8]))
    torch.testing.assert_close(giou, torch.tensor([1.0, 4 / 12, -(20 - 16) / 20, -(72 - 16) / 72, 1 / 8]))
    # the 7th column (yaw) is ignored; GIoU is differentiable
    a7 = torch.cat([a, torch.tensor([[1.0]])], 1).requires_grad_()
    g = generalized_iou_3d_axis_aligned(a7, torch.cat([b, torch.zeros(5, 1)], 1))
    torch.testing.assert_close(g[0].detach(), giou)
    g.sum().backward()
    assert torch.isfinite(a7.grad).all() and a7.grad[0, 6] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_points_in_boxes_match_structures(backend):
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(25, 4).float()
    pts = torch.randn(4000, 4, generator=g) * 4
    corners = Boxes3D(boxes).corners().reshape(-1, 3)  # (25 * 8, 3): points exactly on faces
    pts = torch.cat([pts, torch.cat([corners, torch.zeros(corners.shape[0], 1)], 1)])
    expected = Boxes3D(boxes).points_in_boxes(pts)
    got = points_in_boxes(pts, boxes, backend=backend)
    assert got.dtype == torch.bool and torch.equal(got, expected) and expected.any(0).sum() > 10
    n = boxes.shape[0]
    first = torch.where(expected, torch.arange(n), n).amin(1)
    assert torch.equal(points_in_boxes_first(pts, boxes, backend=backend), torch.where(first < n, first, -1))


def test_real_nuscenes_points_in_boxes(samples):
    """The op reproduces what the structures give on the real sweep (gravity-centred infos)."""
    import pickle

    import numpy as np

    pts = torch.from_numpy(np.fromfile(next(samples.glob("nuscenes/*LIDAR_TOP*.pcd.bin")), dtype=np.float32).reshape(-1, 5))
    with open(next(samples.glob("nuscenes/*.pkl")), "rb") as f:
        info = pickle.load(f)
    inst = info["data_list"][0]["instances"]
    boxes = torch.tensor([i["bbox_3d"] for i in inst], dtype=torch.float32)
    expected = Boxes3D(boxes).points_in_boxes(pts)
    for backend in BACKENDS:
        assert torch.equal(points_in_boxes(pts, boxes, backend=backend), expected)


def test_bad_input_raises_one_line_errors():
    a = random_boxes(3, 0)
    nan = a.clone()
    nan[1, 4] = float("nan")
    neg = a.clone()
    neg[2, 3] = -1.0
    cases = [
        (lambda: boxes_iou_bev(a, nan), "boxes_b[1]", "finite"),
        (lambda: boxes_iou_3d(neg, a), "boxes_a[2]", ">= 0"),
        (lambda: boxes_iou_bev(a[:, :6], a), "boxes_a", "(N, 7+)"),
        (lambda: boxes_iou_bev(a.long(), a), "boxes_a", "float32 or float64"),
        (lambda: boxes_iou_3d_axis_aligned(a[:, :5], a[:, :6]), "boxes_a", "(N, 6..7)"),
        (lambda: generalized_iou_3d_axis_aligned(a[:, :6], torch.zeros(2, 8)), "boxes_b", "(N, 6..7)"),
        (lambda: points_in_boxes(torch.zeros(3, 2), a), "points", "(P, 3+C)"),
        (lambda: boxes_iou_bev(a, a, backend="cuda"), "backend", "'auto'"),
    ]
    for fn, field, text in cases:
        with pytest.raises(OpInputError) as e:
            fn()
        msg = str(e.value)
        assert field in msg and text in msg and "\n" not in msg, msg


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_cuda_equals_cpu(backend):
    a, b = random_boxes(300, 5), random_boxes(200, 6)
    da, db = degenerate_pairs()
    a, b = torch.cat([a, da]), torch.cat([b, db])
    for fn in (boxes_iou_bev, boxes_iou_3d):
        torch.testing.assert_close(fn(a.cuda(), b.cuda(), backend=backend).cpu(), fn(a, b, backend="torch"), rtol=0, atol=1e-9)
    pts = torch.randn(20000, 3) * 4
    boxes = random_boxes(30, 7).float()
    got = points_in_boxes(pts.cuda(), boxes.cuda(), backend=backend)
    assert torch.equal(got, points_in_boxes(pts.cuda(), boxes.cuda(), backend="torch"))
    assert (got.cpu() != points_in_boxes(pts, boxes, backend="torch")).sum() <= 2  # cos/sin may differ by an ulp
    first = points_in_boxes_first(pts.cuda(), boxes.cuda(), backend=backend)
    assert torch.equal(first, points_in_boxes_first(pts.cuda(), boxes.cuda(), backend="torch"))
