"""CUDA sparse conv (dense3d._C CUDA kernels) equals the CPU kernels; half precision runs."""
from __future__ import annotations

import pytest
import torch
from sparse_helpers import random_sparse

from dense3d.ops import SparseConv3d, SparseInverseConv3d, SparseSequential, SparseTensor, SubMConv3d, ext_has_cuda
from dense3d.ops.sparse import build_kernel_map

pytestmark = pytest.mark.cuda


def _net(backend: str):
    torch.manual_seed(0)
    return SparseSequential(
        SubMConv3d(3, 8, 3, indice_key="s1", backend=backend),
        torch.nn.ReLU(),
        SparseConv3d(8, 16, 3, stride=2, padding=1, indice_key="d", backend=backend),
        SubMConv3d(16, 16, (3, 1, 3), dilation=2, indice_key="s2", backend=backend),
        SparseInverseConv3d(16, 4, 3, indice_key="d", backend=backend),
    )


def test_extension_was_built_with_cuda():
    assert ext_has_cuda(), "a GPU is here but dense3d._C has no CUDA kernels: rebuild with CUDA"


@pytest.mark.parametrize("subm,kernel,stride,padding", [(True, 3, 1, 0), (False, 3, 2, 1), (False, 2, 2, 0)])
def test_cuda_kernel_map_equals_cpu(subm, kernel, stride, padding):
    x = random_sparse(3000, (20, 30, 40), 2, 1)
    args = (x.spatial_shape, (kernel,) * 3, (stride,) * 3, (padding,) * 3, (1, 1, 1), subm)
    cpu = build_kernel_map(x.indices, *args, backend="ext")
    gpu = build_kernel_map(x.indices.cuda(), *args, backend="ext")
    for name in ["in_idx", "out_idx", "offsets", "out_indices", "out_rowptr", "out_perm", "in_rowptr", "in_perm", "out_order", "in_order"]:
        assert torch.equal(getattr(cpu, name), getattr(gpu, name).cpu()), name


def test_cuda_forward_backward_equal_cpu_float64():
    x = random_sparse(2000, (16, 24, 24), 2, 3)
    outs = []
    for device in ["cpu", "cuda"]:
        net = _net("ext").double().to(device)
        f = x.features.detach().to(device, copy=True).requires_grad_(True)  # a leaf on each device
        y = net(SparseTensor(f, x.indices.to(device), x.spatial_shape, x.batch_size))
        (y.features * torch.linspace(-1, 1, y.features.numel(), dtype=torch.float64, device=device).view_as(y.features)).sum().backward()
        outs.append([y.features.detach().cpu(), f.grad.cpu()] + [p.grad.cpu() for p in net.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_close_to_float32(dtype):
    x = random_sparse(2000, (16, 24, 24), 2, 3, dtype=torch.float32, device="cuda")
    net = _net("ext").cuda()
    ref = net(x).features
    y = net.to(dtype)(x.replace_feature(x.features.to(dtype)))
    assert y.features.dtype == dtype
    torch.testing.assert_close(y.features.float(), ref, rtol=5e-2, atol=5e-2)
    y.features.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_cuda_empty_input():
    x = SparseTensor(torch.zeros(0, 3, device="cuda", requires_grad=True), torch.zeros(0, 4, dtype=torch.int32, device="cuda"), (5, 5, 5), 1)
    y = _net("ext").cuda()(x)
    assert y.features.shape == (0, 4)
    y.features.sum().backward()


def test_cuda_autocast_computes_in_the_autocast_dtype():
    """Under autocast (Lightning's bf16-mixed) float32 weights and float32 or bfloat16 inputs are
    computed in bfloat16, like torch's convolutions; the weights' gradients stay float32."""
    x = random_sparse(2000, (16, 24, 24), 2, 3, dtype=torch.float32, device="cuda")
    net = _net("ext").cuda()
    ref = net(x).features
    for feats in (x.features, x.features.to(torch.bfloat16)):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = net(x.replace_feature(feats))
        assert y.features.dtype == torch.bfloat16
        torch.testing.assert_close(y.features.float(), ref, rtol=5e-2, atol=5e-2)
    net.zero_grad()
    y.features.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in net.parameters())
