"""Review 30 of dense3d's own C++ operators: the ext (C++) path against the torch reference on
edge cases a user with real data meets (points on the range's edges, non-contiguous inputs,
empty inputs, large grids) and the gradients of the ext paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dense3d.errors import OpInputError
from dense3d.ops._backend import ext_available
from dense3d.ops.bev_pool import bev_pool
from dense3d.ops.box_iou import boxes_iou_3d, boxes_iou_bev
from dense3d.ops.points_in_boxes import points_in_boxes, points_in_boxes_first
from dense3d.ops.voxelize import voxelize

pytestmark = pytest.mark.skipif(not ext_available(), reason="dense3d._C is not built")

VS, PR = [0.25, 0.25, 0.5], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y)


def _points(n: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, dtype=dtype, generator=g) * 1.2 - 0.1  # some outside the range


@pytest.mark.parametrize("mode", ["hard", "dynamic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_voxelize_edges_noncontiguous_and_empty_equal_reference(mode, dtype):
    edge = torch.tensor(
        [[1.0, 0.5, 0.5, 1], [0.5, 1.0, 0.5, 2], [-1e-9, 0.5, 0.5, 3], [-0.0, 0.5, 0.5, 4], [0.99999, 0.99999, 0.99999, 5], [1e30, 0, 0, 6], [-1e30, 0, 0, 7]],
        dtype=dtype,
    )
    pts = torch.cat([edge, _points(50, dtype)])
    wide = torch.cat([pts, pts], 1)[:, 1::2]  # (N, 4) with stride 2: not contiguous
    assert not wide.is_contiguous()
    for p in (pts, wide, pts[:0]):
        _same(voxelize(p, VS, PR, mode, max_points=3, max_voxels=10, backend="ext"),
              voxelize(p, VS, PR, mode, max_points=3, max_voxels=10, backend="torch"))


@pytest.mark.parametrize("mode", ["hard", "dynamic"])
def test_voxelize_ext_is_differentiable_like_the_reference(mode):
    """The ext kernels returned voxels / means without a gradient (requires_grad False) where the
    torch reference had one: points with learned features lost their gradient silently."""
    p = _points(60).requires_grad_()

    def run(backend):
        return lambda x: voxelize(x, VS, PR, mode, max_points=3, max_voxels=10, backend=backend)[0]

    out = run("ext")(p)
    assert out.requires_grad
    w = torch.randn_like(out)
    g_ext = torch.autograd.grad((run("ext")(p) * w).sum(), p)[0]
    g_ref = torch.autograd.grad((run("torch")(p) * w).sum(), p)[0]
    assert torch.equal(g_ext, g_ref) and g_ext.abs().sum() > 0
    assert torch.autograd.gradcheck(run("ext"), (p,))
    empty = p[:0].detach().requires_grad_()
    assert torch.autograd.grad(run("ext")(empty).sum(), empty)[0].shape == (0, 4)


def test_rotated_iou_ext_does_not_drop_the_gradient():
    """boxes_iou_bev / _3d with boxes that require grad: the ext kernel has no backward and its
    IoU had no gradient (the reference's has), so an IoU loss did not train under "auto"."""
    a = torch.tensor([[0, 0, 0, 2, 1, 1, 0.3], [0.2, 0.1, 0.3, 1.5, 1.2, 0.8, -0.4]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.5, 0.2, 0.1, 2, 1.5, 1, 0.1]], dtype=torch.float64)
    for fn in (boxes_iou_bev, boxes_iou_3d):
        iou = fn(a, b)  # backend "auto"
        assert iou.requires_grad
        assert torch.equal(iou.detach(), fn(a.detach(), b, backend="ext"))
        assert torch.autograd.gradcheck(lambda x: fn(x, b), (a,))
        with pytest.raises(OpInputError, match="backend"):
            fn(a, b, backend="ext")
        with torch.no_grad():  # no gradient wanted: the kernel runs
            assert torch.equal(fn(a, b, backend="ext"), fn(a.detach(), b, backend="torch"))


def test_bev_pool_edges_noncontiguous_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 50, dtype=torch.float64, generator=g).t().requires_grad_()  # (50, 3) not contiguous
    c = torch.randint(-2, 6, (3, 50), generator=g).t().int()  # (50, 3) int32, not contiguous; some outside
    c[0] = torch.tensor([2**30, 2**30, 2**30])  # far outside: no overflow into a cell
    assert torch.equal(bev_pool(f, c, 2, (4, 5), backend="ext"), bev_pool(f, c, 2, (4, 5), backend="torch"))
    assert torch.autograd.gradcheck(lambda x: bev_pool(x, c, 2, (4, 5), backend="ext"), (f,))
    assert bev_pool(f[:0], c[:0], 2, (4, 5), backend="ext").shape == (2, 3, 4, 5)


@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_bev_pool_grid_of_other_than_two_ints_is_a_one_line_error(backend):
    """grid_size (B, H, W) was read as (H, W) = (B, H) and (4.7, 5) as (4, 5): a map of another
    shape than asked for, without a word; bool coords ran as cells 0 / 1."""
    f, c = torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.long)
    for grid in [(2, 4, 5), (4.7, 5), (4,), "45", 7]:
        with pytest.raises(OpInputError, match="grid_size"):
            bev_pool(f, c, 2, grid, backend=backend)
    with pytest.raises(OpInputError, match="batch_size"):
        bev_pool(f, c, 2.5, (4, 5), backend=backend)
    with pytest.raises(OpInputError, match="coords"):
        bev_pool(f, c.bool(), 2, (4, 5), backend=backend)
    with pytest.raises(OpInputError, match="features"):
        bev_pool([[0.0]], c, 2, (4, 5), backend=backend)
    # integers of other kinds are whole numbers too (a batch size read off a tensor, numpy sizes)
    assert bev_pool(f, c, torch.tensor(2), (np.int64(4), torch.tensor(5)), backend=backend).shape == (2, 2, 4, 5)


def test_points_in_boxes_edges_equal_reference():
    boxes = torch.tensor([[0, 0, 0, 2, 2, 2, 0.3], [1, 1, 1, 1, 1, 1, 0.0], [0, 0, 0, 0, 0, 0, 0.0]], dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    pts = torch.rand(100, 3, generator=g) * 4 - 2
    pts[0] = torch.tensor([1.5, 1.5, 1.5])  # on a face of box 1
    pts[1] = 0.0  # on the zero-size box 2 (and inside box 0)
    for p in (pts, pts.t().contiguous().t(), pts.double(), pts[:0]):
        for b in (boxes, boxes[:0], torch.cat([boxes, boxes], 1)[:, ::2]):
            assert torch.equal(points_in_boxes(p, b, backend="ext"), points_in_boxes(p, b, backend="torch"))
            assert torch.equal(points_in_boxes_first(p, b, backend="ext"), points_in_boxes_first(p, b, backend="torch"))


def test_bev_pool_ext_double_backward_equals_reference():
    """With create_graph=True the ext backward's gradient was cut from the graph: second-order
    terms (a gradient penalty) were silently lost and gradgradcheck failed."""
    g = torch.Generator().manual_seed(3)
    f = torch.randn(20, 3, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.randint(-1, 4, (20, 3), generator=g)
    assert torch.autograd.gradgradcheck(lambda x: bev_pool(x, c, 2, (3, 3), backend="ext"), (f,))
    scale = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    penalties = []
    for backend in ("ext", "torch"):
        (gf,) = torch.autograd.grad((bev_pool(f, c, 2, (3, 3), backend=backend) * scale).pow(2).sum(), f, create_graph=True)
        penalties.append(torch.autograd.grad(gf.pow(2).sum(), scale)[0])
    torch.testing.assert_close(penalties[0], penalties[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("subm", [True, False])
def test_sparse_conv_ext_double_backward_equals_reference(subm):
    """The same for sparse_conv (submanifold, strided and inverse maps): a gradient penalty
    through the ext backward had no graph ('does not require grad')."""
    from dense3d.ops.sparse.functional import sparse_conv
    from dense3d.ops.sparse.kernel_map import build_kernel_map

    idx = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2], [0, 2, 1, 1], [1, 0, 0, 0], [1, 3, 2, 2]], dtype=torch.int32)
    km = build_kernel_map(idx, (4, 3, 3), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), subm, backend="ext")
    g = torch.Generator().manual_seed(4)
    maps = [km] if subm else [km, km.inverse()]
    for m in maps:
        x = torch.randn(m.num_in, 2, dtype=torch.float64, generator=g, requires_grad=True)
        w = torch.randn(27, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
        b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda x, w, b: sparse_conv(x, w, b, m, backend="ext"), (x, w, b))
        penalties = []
        for backend in ("ext", "torch"):
            (gx,) = torch.autograd.grad(sparse_conv(x, w, b, m, backend=backend).pow(2).sum(), x, create_graph=True)
            penalties.append(torch.autograd.grad(gx.pow(2).sum(), w)[0])
        torch.testing.assert_close(penalties[0], penalties[1], rtol=0, atol=1e-12)


def test_large_grids_equal_reference():
    """nuScenes-sized grids (1440 x 1440 x 40 voxels; a 41 x 1440 x 1440 sparse grid of 4
    samples): linear keys beyond 2**31 on both backends, same voxels and the same kernel maps."""
    from dense3d.ops.sparse.functional import sparse_conv
    from dense3d.ops.sparse.kernel_map import build_kernel_map

    g = torch.Generator().manual_seed(5)
    pts = torch.rand(20000, 4, generator=g) * torch.tensor([110.0, 110.0, 9.0, 1.0]) - torch.tensor([55.0, 55.0, 5.5, 0.0])
    vs, pr = [0.075, 0.075, 0.2], [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
    for mode in ("hard", "dynamic"):
        _same(voxelize(pts, vs, pr, mode, max_points=10, max_voxels=12000, backend="ext"),
              voxelize(pts, vs, pr, mode, max_points=10, max_voxels=12000, backend="torch"))
    shape = (41, 1440, 1440)
    lin = torch.randint(0, 4 * 41 * 1440 * 1440, (3000,), generator=g).unique()  # (N,) distinct sites
    idx = torch.stack([lin // (41 * 1440 * 1440), lin // (1440 * 1440) % 41, lin // 1440 % 1440, lin % 1440], 1).int()  # (N, 4) [b, z, y, x]
    idx[0] = torch.tensor([3, 40, 1439, 1439])  # the last site of the last sample
    for subm, stride in ((True, 1), (False, 2)):
        maps = [build_kernel_map(idx, shape, (3, 3, 3), (stride,) * 3, (1, 1, 1), (1, 1, 1), subm, backend=b) for b in ("ext", "torch")]
        for name in ("in_idx", "out_idx", "offsets", "out_indices", "out_rowptr", "out_perm", "in_rowptr", "in_perm", "out_order", "in_order"):
            assert torch.equal(getattr(maps[0], name), getattr(maps[1], name)), name
        f = torch.randn(idx.shape[0], 2, dtype=torch.float64, generator=g)
        w = torch.randn(27, 2, 3, dtype=torch.float64, generator=g)
        torch.testing.assert_close(sparse_conv(f, w, None, maps[0], backend="ext"), sparse_conv(f, w, None, maps[1], backend="torch"), rtol=0, atol=1e-12)
