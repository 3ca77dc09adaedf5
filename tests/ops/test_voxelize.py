"""Voxelization (hard and dynamic) against a plain numpy loop written here."""
import numpy as np
import pytest
import torch

from dense3d.errors import OpInputError
from dense3d.ops import voxel_grid_size, voxelize, voxelize_batch
from dense3d.ops._backend import ext

HAS_EXT = hasattr(ext(), "voxelize_hard")  # False without dense3d._C or with a build older than the op
BACKENDS = ["torch"] + (["ext"] if HAS_EXT else [])


def numpy_voxelize(points: np.ndarray, voxel_size, point_range, max_points, max_voxels):
    """The obvious loop (mmcv's CPU hard voxelization): returns hard and dynamic outputs."""
    vs = np.asarray(voxel_size, dtype=points.dtype)
    lo = np.asarray(point_range[:3], dtype=points.dtype)
    grid = [int(round((point_range[i + 3] - point_range[i]) / voxel_size[i])) for i in range(3)]
    c = np.floor((points[:, :3] - lo) / vs)
    ids, order, members = {}, [], []
    p2v = np.full(len(points), -1, dtype=np.int64)
    for i, (x, y, z) in enumerate(c):
        if not (0 <= x < grid[0] and 0 <= y < grid[1] and 0 <= z < grid[2]):
            continue
        key = (int(z), int(y), int(x))
        if key not in ids:
            ids[key] = len(order)
            order.append(key)
            members.append([])
        p2v[i] = ids[key]
        members[ids[key]].append(i)
    m = min(len(order), max_voxels)
    voxels = np.zeros((m, max_points, points.shape[1]), dtype=points.dtype)
    num = np.zeros(m, dtype=np.int32)
    for v in range(m):
        sel = members[v][:max_points]
        voxels[v, : len(sel)] = points[sel]
        num[v] = len(sel)
    coords = np.asarray(order, dtype=np.int32).reshape(-1, 3)
    means = np.stack([points[mem].astype(np.float64).mean(0) for mem in members]) if members else np.zeros((0, points.shape[1]))
    return (voxels, coords[:m], num), (means, coords, p2v)


def check_equal(points, voxel_size, point_range, max_points, max_voxels, backend):
    (rv, rc, rn), (rf, rdc, rp) = numpy_voxelize(points.numpy(), voxel_size, point_range, max_points, max_voxels)
    v, c, n = voxelize(points, voxel_size, point_range, "hard", max_points, max_voxels, backend=backend)
    assert v.dtype == points.dtype and c.dtype == torch.int32 and n.dtype == torch.int32
    np.testing.assert_array_equal(c.numpy(), rc)
    np.testing.assert_array_equal(n.numpy(), rn)
    np.testing.assert_array_equal(v.numpy(), rv)
    f, dc, p2v = voxelize(points, voxel_size, point_range, "dynamic", backend=backend)
    assert p2v.dtype == torch.long
    np.testing.assert_array_equal(dc.numpy(), rdc)
    np.testing.assert_array_equal(p2v.numpy(), rp)
    np.testing.assert_allclose(f.double().numpy(), rf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_points_with_outside_and_truncation(backend, dtype):
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.rand(3000, 3, generator=g) * 14 - 7, torch.rand(3000, 2, generator=g)], 1).to(dtype)
    # few big voxels so max_points truncates; a range smaller than the cloud so points fall outside
    check_equal(pts, [1.0, 1.0, 2.0], [-5, -5, -4, 5, 5, 4], max_points=5, max_voxels=100000, backend=backend)
    # max_voxels truncates (first-seen order)
    check_equal(pts, [0.5, 0.5, 0.5], [-5, -5, -4, 5, 5, 4], max_points=3, max_voxels=50, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_nuscenes_sweep(samples, backend):
    path = next(samples.glob("nuscenes/*LIDAR_TOP*.pcd.bin"))
    pts = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 5))
    check_equal(pts, [0.2, 0.2, 0.2], [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0], max_points=10, max_voxels=20000, backend=backend)
    # the CenterPoint setting: 0.075 m, max_voxels truncates nothing or something, both exact
    check_equal(pts, [0.075, 0.075, 0.2], [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0], max_points=10, max_voxels=12000, backend=backend)


@pytest.mark.skipif(not HAS_EXT, reason="dense3d._C (with voxelize) not built")
def test_ext_equals_torch_on_many_points():
    g = torch.Generator().manual_seed(1)
    pts = torch.cat([torch.randn(50000, 3, generator=g) * 20, torch.rand(50000, 1, generator=g)], 1)
    args = ([0.3, 0.3, 0.4], [-40, -40, -3, 40, 40, 3])
    for a, b in zip(voxelize(pts, *args, "hard", 20, 30000, backend="ext"), voxelize(pts, *args, "hard", 20, 30000, backend="torch")):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    fa, ca, pa = voxelize(pts, *args, "dynamic", backend="ext")
    fb, cb, pb = voxelize(pts, *args, "dynamic", backend="torch")
    assert torch.equal(ca, cb) and torch.equal(pa, pb)
    torch.testing.assert_close(fa, fb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    v, c, n = voxelize(torch.zeros(0, 4), [0.1] * 3, [0, 0, 0, 1, 1, 1], max_points=7, backend=backend)
    assert v.shape == (0, 7, 4) and c.shape == (0, 3) and n.shape == (0,)
    f, c, p = voxelize(torch.zeros(0, 4), [0.1] * 3, [0, 0, 0, 1, 1, 1], mode="dynamic", backend=backend)
    assert f.shape == (0, 4) and c.shape == (0, 3) and p.shape == (0,)
    # all points outside
    f, c, p = voxelize(torch.full((5, 3), 9.0), [0.1] * 3, [0, 0, 0, 1, 1, 1], mode="dynamic", backend=backend)
    assert f.shape == (0, 3) and (p == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_helper_adds_batch_column(backend):
    a = torch.tensor([[0.05, 0.05, 0.05], [0.95, 0.95, 0.95], [5.0, 5.0, 5.0]])
    b = torch.tensor([[0.55, 0.05, 0.05]])
    v, c, n = voxelize_batch([a, b], [0.5] * 3, [0, 0, 0, 1, 1, 1], max_points=2, backend=backend)
    assert c.tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [1, 0, 0, 1]] and n.tolist() == [1, 1, 1]
    f, c, p = voxelize_batch([a, b], [0.5] * 3, [0, 0, 0, 1, 1, 1], mode="dynamic", backend=backend)
    assert p.tolist() == [0, 1, -1, 2] and torch.equal(f[2], b[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_clouds_on_mixed_devices_is_one_line_error(backend):
    # a cloud on another device failed inside voxelize (or in torch.cat at the end) with a
    # plain torch error; a meta tensor stands in for a CUDA cloud so this runs without a GPU
    a = torch.rand(10, 4)
    odd = torch.empty(5, 4, device="meta")
    with pytest.raises(OpInputError, match=r"points_list\[1\]': expected a tensor on cpu like points_list\[0\], got meta") as e:
        voxelize_batch([a, odd], [0.5] * 3, [0, 0, 0, 1, 1, 1], backend=backend)
    assert "\n" not in str(e.value)
    with pytest.raises(OpInputError, match=r"points_list\[2\]'.*on meta like points_list\[0\], got cpu"):
        voxelize_batch([odd, odd, a], [0.5] * 3, [0, 0, 0, 1, 1, 1], mode="dynamic", backend=backend)


def test_bad_input_raises_one_line_errors():
    pts = torch.rand(10, 4)
    cases = [
        (lambda: voxelize(pts.double().int(), [0.1] * 3, [0, 0, 0, 1, 1, 1]), "float32 or float64"),
        (lambda: voxelize(pts[:, :2], [0.1] * 3, [0, 0, 0, 1, 1, 1]), "(P, 3+C)"),
        (lambda: voxelize(pts, [0.1, 0.0, 0.1], [0, 0, 0, 1, 1, 1]), "> 0"),
        (lambda: voxelize(pts, [0.1] * 3, [0, 0, 0, 1, 0, 1]), "x1 > x0"),
        (lambda: voxelize(pts, [0.1] * 2, [0, 0, 0, 1, 1, 1]), "3 numbers"),
        (lambda: voxelize(pts, [0.1] * 3, [0, 0, 0, 1, 1, 1], mode="soft"), "'hard' or 'dynamic'"),
        (lambda: voxelize(pts, [0.1] * 3, [0, 0, 0, 1, 1, 1], max_points=0), "positive int"),
        (lambda: voxelize(torch.tensor([[0.0, float("nan"), 0.0]]), [0.1] * 3, [0, 0, 0, 1, 1, 1]), "finite"),
        (lambda: voxelize(pts, [0.1] * 3, [0, 0, 0, 1, 1, 1], backend="gpu"), "'auto', 'ext' or 'torch'"),
    ]
    for fn, text in cases:
        with pytest.raises(OpInputError, match=None) as e:
            fn()
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert voxel_grid_size([0.075, 0.075, 0.2], [-54, -54, -5, 54, 54, 3]) == [1440, 1440, 40]


def test_non_finite_ranges_and_int32_overflowing_grids_are_one_line_errors():
    """A NaN / inf range was a ValueError / OverflowError from round(); a grid of 2**31 or more
    voxels along an axis gave wrapped int32 coords (x = 5e9 came back as 705032704)."""
    pts = torch.tensor([[0.5, 0.5, 0.5]])
    for vs, pr, text in [
        ([0.1] * 3, [0, 0, 0, float("nan"), 1, 1], "finite"),
        ([0.1] * 3, [0, 0, 0, float("inf"), 1, 1], "finite"),
        ([0.1] * 3, [-1e308, 0, 0, 1e308, 1, 1], "2**31"),
        ([float("inf"), 0.1, 0.1], [0, 0, 0, 1, 1, 1], "finite"),
        ([1e-10, 1, 1], [0, 0, 0, 1, 1, 1], "2**31"),
    ]:
        for backend in ["ext", "torch"]:
            with pytest.raises(OpInputError) as e:
                voxelize(pts, vs, pr, backend=backend)
            assert text in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_cuda_equals_cpu(samples, backend):
    path = next(samples.glob("nuscenes/*LIDAR_TOP*.pcd.bin"))
    pts = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 5))
    args = ([0.075, 0.075, 0.2], [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0])
    cpu = voxelize(pts, *args, "hard", 10, 12000, backend="torch")
    gpu = voxelize(pts.cuda(), *args, "hard", 10, 12000, backend=backend)
    for a, b in zip(cpu, gpu):
        assert b.is_cuda and torch.equal(a, b.cpu())
    fc, cc, pc = voxelize(pts, *args, "dynamic", backend="torch")
    fg, cg, pg = voxelize(pts.cuda(), *args, "dynamic", backend=backend)
    assert torch.equal(cc, cg.cpu()) and torch.equal(pc, pg.cpu())
    torch.testing.assert_close(fc, fg.cpu())
    empty = voxelize(pts[:0].cuda(), *args, "dynamic", backend=backend)
    assert empty[0].shape == (0, 5) and empty[1].shape == (0, 3)
