"""BEV pooling: the extension equals the torch reference, forward and backward."""
from __future__ import annotations

import pytest
import torch

from dense3d.errors import OpInputError
from dense3d.ops import bev_pool, ext_available

needs_ext = pytest.mark.skipif(not ext_available(), reason="dense3d._C not built")


def _inputs(n=500, c=7, b=2, h=6, w=9, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, c, generator=g, dtype=dtype)
    coords = torch.stack(
        [torch.randint(0, b, (n,), generator=g), torch.randint(-1, h + 1, (n,), generator=g), torch.randint(-1, w + 1, (n,), generator=g)], 1
    )  # some points fall outside the grid and must be dropped
    return feats, coords, b, (h, w)


def test_reference_sums_points_per_cell_by_hand():
    feats = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]])
    coords = torch.tensor([[0, 1, 2], [0, 1, 2], [1, 0, 0], [1, 5, 0]])  # the last is outside (H=2)
    out = bev_pool(feats, coords, 2, (2, 3), backend="torch")
    assert out.shape == (2, 2, 2, 3)
    assert out[0, :, 1, 2].tolist() == [3.0, 30.0]
    assert out[1, :, 0, 0].tolist() == [4.0, 40.0]
    assert out.sum().item() == 3.0 + 30.0 + 4.0 + 40.0


@needs_ext
def test_ext_equals_reference_forward_and_backward():
    feats, coords, b, hw = _inputs()
    f1 = feats.clone().requires_grad_(True)
    f2 = feats.clone().requires_grad_(True)
    o1 = bev_pool(f1, coords, b, hw, backend="ext")
    o2 = bev_pool(f2, coords, b, hw, backend="torch")
    torch.testing.assert_close(o1, o2)
    g = torch.randn_like(o1)
    (o1 * g).sum().backward()
    (o2 * g).sum().backward()
    torch.testing.assert_close(f1.grad, f2.grad)
    outside = (coords[:, 1] < 0) | (coords[:, 1] >= hw[0]) | (coords[:, 2] < 0) | (coords[:, 2] >= hw[1])
    assert outside.any() and bool((f1.grad[outside] == 0).all())


@needs_ext
def test_ext_gradcheck_float64():
    feats, coords, b, hw = _inputs(n=30, c=3, b=1, h=3, w=3, dtype=torch.float64)
    feats.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: bev_pool(f, coords, b, hw, backend="ext"), (feats,))


def test_empty_and_bad_input():
    out = bev_pool(torch.zeros(0, 4), torch.zeros(0, 3, dtype=torch.long), 1, (2, 2))
    assert out.shape == (1, 4, 2, 2) and out.abs().sum() == 0
    with pytest.raises(OpInputError, match="coords"):
        bev_pool(torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.long), 1, (2, 2))
    with pytest.raises(OpInputError, match="features"):
        bev_pool(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long), 1, (2, 2))


def test_negative_grid_is_a_one_line_error():
    """A negative H, W or batch size was a RuntimeError from at::zeros / torch.zeros."""
    for backend in ["ext", "torch"]:
        for b, hw, field in [(1, (-1, 4), "grid_size"), (1, (4, -2), "grid_size"), (-1, (4, 4), "batch_size")]:
            with pytest.raises(OpInputError, match=field):
                bev_pool(torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.long), b, hw, backend=backend)


@pytest.mark.cuda
def test_coords_on_another_device_is_a_one_line_error():
    """The ext kernels read coords through a raw pointer: CPU features with CUDA coords read
    device memory on the host (a crash), CUDA features with CPU coords the reverse."""
    feats, coords, b, hw = _inputs(n=50, c=4)
    for f, c in [(feats, coords.cuda()), (feats.cuda(), coords)]:
        with pytest.raises(OpInputError, match="coords"):
            bev_pool(f, c, b, hw, backend="ext")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_features_are_pooled_in_float32(dtype):
    feats, coords, b, hw = _inputs(n=2000, c=16)
    low = feats.to(dtype).requires_grad_(True)
    out = bev_pool(low, coords, b, hw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, bev_pool(low.detach().float(), coords, b, hw, backend="torch"))
    out.sum().backward()
    assert low.grad.dtype == dtype


@pytest.mark.cuda
def test_cuda_equals_cpu():
    feats, coords, b, hw = _inputs(n=2000, c=16)
    f = feats.cuda().requires_grad_(True)
    out = bev_pool(f, coords.cuda(), b, hw, backend="ext")
    torch.testing.assert_close(out.cpu(), bev_pool(feats, coords, b, hw, backend="torch"))
    out.sum().backward()
    assert f.grad.shape == feats.shape
