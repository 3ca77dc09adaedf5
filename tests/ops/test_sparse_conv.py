"""Sparse conv (dense3d.ops.sparse) against torch's dense conv, spconv 2.3.8 and its own reference."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from sparse_helpers import dense_weight, random_sparse, sweep_path, voxelize_sweep

from dense3d.errors import OpInputError, SparseTensorError
from dense3d.ops import (
    SparseConv2d,
    SparseConv3d,
    SparseInverseConv3d,
    SparseSequential,
    SparseTensor,
    SubMConv2d,
    SubMConv3d,
    load_spconv_weight,
)
from dense3d.ops.sparse import build_kernel_map, sparse_conv

BACKENDS = ["ext", "torch"]
CONV = {2: F.conv2d, 3: F.conv3d}


def _active_mask(x: SparseTensor) -> torch.Tensor:
    """(B, 1, *S) 1.0 at x's sites."""
    return x.replace_feature(torch.ones_like(x.features[:, :1])).dense()


def _check_against_dense(layer, x: SparseTensor, dense_kwargs: dict, mask_to_input: bool):
    """Forward and backward (features, weight, bias) of ``layer`` equal torch's dense conv."""
    feats = x.features.clone().requires_grad_(True)
    xs = x.replace_feature(feats)
    y = layer(xs)
    yd = y.dense()
    ref = CONV[x.ndim](xs.dense(), dense_weight(layer), layer.bias, **dense_kwargs)
    if mask_to_input:  # submanifold: outputs only at the input sites
        ref = ref * _active_mask(x)
    else:  # strided: with a bias, inactive outputs are absent (0 in .dense())
        ref = ref * _active_mask(y) if layer.bias is not None else ref
    assert yd.shape == ref.shape
    torch.testing.assert_close(yd, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ref)
    params = [feats, layer.weight] + ([layer.bias] if layer.bias is not None else [])
    ours = torch.autograd.grad((yd * g).sum(), params)
    theirs = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    return y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 1), (3, 2), ((3, 1, 5), (1, 1, 2)), (5, 1)])
def test_subm_conv3d_equals_dense_conv3d(backend, kernel, dilation):
    x = random_sparse(120, (6, 7, 8), 2, 3)
    layer = SubMConv3d(3, 4, kernel, dilation=dilation, backend=backend).double()
    ks = layer.kernel_size
    pad = tuple(d * (k - 1) // 2 for k, d in zip(ks, layer.dilation))
    y = _check_against_dense(layer, x, dict(padding=pad, dilation=layer.dilation), mask_to_input=True)
    assert torch.equal(y.indices, x.indices) and y.spatial_shape == x.spatial_shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,bias",
    [
        (3, 2, 1, 1, False),
        (3, 2, 0, 1, True),
        (2, 2, 0, 1, False),
        (3, 1, 1, 1, True),
        ((3, 2, 1), (2, 1, 3), (1, 0, 0), (1, 2, 1), False),
        (3, 2, 2, 2, True),
    ],
)
def test_sparse_conv3d_equals_dense_conv3d(backend, kernel, stride, padding, dilation, bias):
    x = random_sparse(100, (7, 8, 9), 3, 3)
    layer = SparseConv3d(3, 5, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias, backend=backend).double()
    y = _check_against_dense(layer, x, dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation), mask_to_input=False)
    keys = ((y.indices[:, 0].long() * 100 + y.indices[:, 1]) * 100 + y.indices[:, 2]) * 100 + y.indices[:, 3]
    assert bool((keys[1:] > keys[:-1]).all()), "strided outputs must be sorted (batch, z, y, x)"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, 1), (2, 2, 0), ((3, 3, 1), (2, 1, 1), (0, 1, 0))])
def test_inverse_conv3d_equals_conv_transpose3d(backend, kernel, stride, padding):
    x = random_sparse(90, (7, 8, 9), 2, 3)
    down = SparseConv3d(3, 4, kernel, stride=stride, padding=padding, indice_key="down", backend=backend).double()
    up = SparseInverseConv3d(4, 2, kernel, indice_key="down", backend=backend).double()
    y = down(x)
    yf = y.features.detach().clone().requires_grad_(True)
    z = up(y.replace_feature(yf))
    assert torch.equal(z.indices, x.indices) and z.spatial_shape == x.spatial_shape
    ks, st, pd = down.kernel_size, down.stride, down.padding
    wt = up.weight.reshape(*ks, 4, 2).permute(3, 4, 0, 1, 2)  # (K, Ci, Co) -> (Ci, Co, kz, ky, kx)
    out_pad = [n - ((m - 1) * s - 2 * p + (k - 1) + 1) for n, m, s, p, k in zip(x.spatial_shape, y.spatial_shape, st, pd, ks)]
    ref = F.conv_transpose3d(y.replace_feature(yf).dense(), wt, up.bias, stride=st, padding=pd, output_padding=out_pad)
    ref = ref * _active_mask(x)
    torch.testing.assert_close(z.dense(), ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ref)
    ours = torch.autograd.grad((z.dense() * g).sum(), [yf, up.weight, up.bias])
    theirs = torch.autograd.grad((ref * g).sum(), [yf, up.weight, up.bias])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_2d_layers_equal_dense_conv2d(backend):
    x = random_sparse(80, (11, 13), 2, 3)
    sub = SubMConv2d(3, 4, 3, backend=backend).double()
    _check_against_dense(sub, x, dict(padding=1), mask_to_input=True)
    strided = SparseConv2d(3, 4, (3, 2), stride=2, padding=(1, 0), bias=False, backend=backend).double()
    y = _check_against_dense(strided, x, dict(stride=2, padding=(1, 0)), mask_to_input=False)
    assert y.indices.shape[1] == 3 and y.spatial_shape == [6, 6]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["subm", "strided", "inverse"])
def test_gradcheck_float64(backend, kind):
    x = random_sparse(14, (4, 4, 5), 2, 2)
    if kind == "subm":
        kmap = build_kernel_map(x.indices, x.spatial_shape, (3, 3, 3), (1, 1, 1), (0, 0, 0), (1, 1, 1), True, backend)
    elif kind == "strided":
        kmap = build_kernel_map(x.indices, x.spatial_shape, (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), False, backend)
    else:
        kmap = build_kernel_map(x.indices, x.spatial_shape, (2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), False, backend).inverse()
    assert kmap.num_pairs > 0
    g = torch.Generator().manual_seed(1)
    f = torch.randn(kmap.num_in, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(math.prod(kmap.kernel_size), 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w, b: sparse_conv(f, w, b, kmap, backend), (f, w, b))


def test_ext_equals_torch_reference_on_real_sweep(samples):
    """Same kernel maps (pair for pair) and same outputs/gradients on real nuScenes voxels."""
    idx, feats, shape = voxelize_sweep(sweep_path(samples), crop=12.0)
    assert len(idx) > 2000
    x = SparseTensor(feats.double(), idx, shape, 1)
    for kw in [dict(kernel_size=3, subm=True), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(1, 3, 3), stride=(1, 2, 2))]:
        ks = kw["kernel_size"]
        ks = (ks,) * 3 if isinstance(ks, int) else ks
        st = kw.get("stride", 1)
        st = (st,) * 3 if isinstance(st, int) else st
        pd = kw.get("padding", 0)
        pd = (pd,) * 3 if isinstance(pd, int) else (0, 0, 0)
        maps = [build_kernel_map(idx, shape, ks, st, pd, (1, 1, 1), kw.get("subm", False), b) for b in BACKENDS]
        for name in ["in_idx", "out_idx", "offsets", "out_indices", "out_rowptr", "out_perm", "in_rowptr", "in_perm", "out_order", "in_order"]:
            assert torch.equal(getattr(maps[0], name), getattr(maps[1], name)), name
        assert maps[0].identity_k == maps[1].identity_k
    outs = []
    for backend in BACKENDS:
        torch.manual_seed(0)
        net = SparseSequential(
            SubMConv3d(4, 8, 3, indice_key="s1", backend=backend),
            torch.nn.ReLU(),
            SparseConv3d(8, 8, 3, stride=2, padding=1, indice_key="d1", backend=backend),
            SubMConv3d(8, 8, 3, indice_key="s2", backend=backend),
            SparseInverseConv3d(8, 4, 3, indice_key="d1", backend=backend),
        ).double()
        f = x.features.clone().requires_grad_(True)
        y = net(x.replace_feature(f))
        y.features.square().sum().backward()
        outs.append((y.features.detach(), f.grad, [p.grad for p in net.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-9, atol=1e-9)
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_kernel_map_is_cached_per_indice_key():
    x = random_sparse(50, (6, 6, 6), 1, 4, dtype=torch.float32)
    a, b = SubMConv3d(4, 4, 3, indice_key="s"), SubMConv3d(4, 4, 3, indice_key="s")
    y = b(a(x))
    assert y.indice_dict is x.indice_dict and set(x.indice_dict) == {"s"}
    kmap = x.indice_dict["s"]
    b(y)
    assert x.indice_dict["s"] is kmap
    with pytest.raises(SparseTensorError, match="indice_key"):
        SubMConv3d(4, 4, 5, indice_key="s")(y)  # same key, other kernel
    with pytest.raises(SparseTensorError, match="indice_key"):
        SparseInverseConv3d(4, 4, 3, indice_key="missing")(y)


def test_reused_indice_key_with_other_parameters_raises_naming_the_parameter():
    """A strided conv reusing a key with another stride, padding, kernel, dilation or grid
    silently rebuilt the map and replaced the saved one (so an inverse conv reading the key
    later ran on the wrong map). Now a one-line error naming the key and the parameter;
    reuse with identical parameters still shares the map, and the inverse conv still reads it."""
    x = random_sparse(60, (8, 8, 8), 1, 4, dtype=torch.float32)
    down = SparseConv3d(4, 4, 3, stride=2, padding=1, indice_key="d")
    y = down(x)
    kmap = x.indice_dict["d"]
    assert SparseConv3d(4, 4, 3, stride=2, padding=1, indice_key="d")(x).indices is kmap.out_indices  # same parameters: reused
    cases = [
        (SparseConv3d(4, 4, 3, stride=1, padding=1, indice_key="d"), x, "stride"),
        (SparseConv3d(4, 4, 3, stride=2, padding=0, indice_key="d"), x, "padding"),
        (SparseConv3d(4, 4, 2, stride=2, padding=1, indice_key="d"), x, "kernel_size"),
        (SparseConv3d(4, 4, 3, stride=2, padding=1, dilation=2, indice_key="d"), x, "dilation"),
        (SubMConv3d(4, 4, 3, indice_key="d"), x, "kind of conv"),
        (SparseConv3d(4, 4, 3, stride=2, padding=1, indice_key="d"), SparseTensor(x.features, x.indices, (9, 8, 8), 1, x.indice_dict), "spatial_shape"),
        (SparseConv3d(4, 4, 3, stride=2, padding=1, indice_key="d"), SparseTensor(x.features[:50], x.indices[:50], (8, 8, 8), 1, x.indice_dict), "input sites"),
    ]
    for layer, inp, what in cases:
        with pytest.raises(SparseTensorError, match=rf"field 'indice_key': expected 'd' reused with the same {what} ") as e:
            layer(inp)
        assert "\n" not in str(e.value)
        assert x.indice_dict["d"] is kmap, what  # the saved map is left alone
    z = SparseInverseConv3d(4, 4, 3, indice_key="d")(y)  # the inverse still reads the forward conv's map
    assert torch.equal(z.indices, x.indices)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input_works_forward_and_backward(backend):
    feats = torch.zeros(0, 3, requires_grad=True)
    x = SparseTensor(feats, torch.zeros(0, 4, dtype=torch.int32), (5, 5, 5), 2)
    net = SparseSequential(
        SubMConv3d(3, 4, 3, indice_key="s", backend=backend),
        torch.nn.BatchNorm1d(4).eval(),
        SparseConv3d(4, 6, 3, stride=2, padding=1, indice_key="d", backend=backend),
        SparseInverseConv3d(6, 2, 3, indice_key="d", backend=backend),
    )
    y = net(x)
    assert y.features.shape == (0, 2) and y.indices.shape == (0, 4)
    assert y.dense().shape == (2, 2, 5, 5, 5) and not y.dense().any()
    y.features.sum().backward()
    assert feats.grad.shape == (0, 3)
    assert all(p.grad is not None and not p.grad[: p.grad.numel()].any() for p in net[0].parameters())


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: SparseTensor(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.int64), (4, 4, 4), 1), "int32"),
        (lambda: SparseTensor(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 4, dtype=torch.int32), (4, 4, 4), 1), "floating"),
        (lambda: SparseTensor(torch.zeros(2, 3), torch.tensor([[0, 0, 0, 0], [0, 4, 0, 0]], dtype=torch.int32), (4, 4, 4), 1), "inside spatial_shape"),
        (lambda: SparseTensor(torch.zeros(2, 3), torch.tensor([[0, 0, 0, 0], [0, 0, -1, 0]], dtype=torch.int32), (4, 4, 4), 1), "inside spatial_shape"),
        (lambda: SparseTensor(torch.zeros(2, 3), torch.tensor([[0, 0, 0, 0], [2, 0, 0, 0]], dtype=torch.int32), (4, 4, 4), 2), "batch_size"),
        (lambda: SparseTensor(torch.zeros(2, 3), torch.tensor([[1, 2, 3, 0], [1, 2, 3, 0]], dtype=torch.int32), (4, 4, 4), 2), "unique"),
        (lambda: SparseTensor(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.int32), (4, 4, 4), 1), "finite"),
        (lambda: SparseTensor(torch.zeros(2, 3), torch.zeros(3, 4, dtype=torch.int32), (4, 4, 4), 1), "rows"),
        (lambda: SparseTensor(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int32), (4, 4, 4), 1), "int32"),
        (lambda: SubMConv3d(4, 4, 3)(random_sparse(5, (4, 4, 4), 1, 3, dtype=torch.float32)), "4 channels"),
        (lambda: SubMConv3d(3, 4, 2), None),
        (lambda: load_spconv_weight(SubMConv3d(3, 4, 3), torch.zeros(4, 3, 3, 3, 4)), "C_out"),
    ],
)
def test_bad_input_raises_one_line_sparse_tensor_error(make, match):
    with pytest.raises(SparseTensorError) as e:
        out = make()
        if isinstance(out, SubMConv3d):  # an even submanifold kernel fails when it builds its map
            out(random_sparse(5, (4, 4, 4), 1, 3, dtype=torch.float32))
    assert "\n" not in str(e.value)
    if match:
        assert match in str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make",
    [
        lambda b: SparseConv3d(3, 4, 3, stride=0, backend=b),
        lambda b: SparseConv3d(3, 4, 0, backend=b),
        lambda b: SparseConv3d(3, 4, (1, 1, 65), padding=(0, 0, 40), backend=b),
        lambda b: SparseConv3d(3, 4, 3, padding=-1, backend=b),
        lambda b: SubMConv3d(3, 4, 3, dilation=0, backend=b),
        lambda b: SparseConv3d(3, 4, 3, dilation=(1, -1, 1), backend=b),
    ],
)
def test_bad_conv_parameters_raise_one_line_sparse_tensor_error(make, backend):
    """stride 0 was a ZeroDivisionError, kernel 0 / negative padding / dilation 0 / kernel > 64 a
    RuntimeError from inside dense3d._C."""
    x = random_sparse(5, (6, 6, 6), 1, 3, dtype=torch.float32)
    with pytest.raises(SparseTensorError) as e:
        make(backend)(x)
    assert "\n" not in str(e.value)
    with pytest.raises(SparseTensorError, match="kernel_size"):
        build_kernel_map(x.indices, x.spatial_shape, (3, 3), (1, 1, 1), (0, 0, 0), (1, 1, 1), False, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_conv_on_mixed_devices_is_one_line_error(backend):
    # weight, bias or kernel map on another device than the features gave a plain torch error
    # from inside the gather / GEMM; a meta tensor stands in for a CUDA one (no GPU needed)
    x = random_sparse(30, (5, 5, 5), 1, 3)
    kmap = build_kernel_map(x.indices, x.spatial_shape, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), True)
    w, b = torch.randn(27, 3, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    meta = lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta")  # noqa: E731
    cases = [
        (lambda: sparse_conv(x.features, meta(w), b, kmap, backend), "'weight': expected a tensor on cpu like features, got meta"),
        (lambda: sparse_conv(x.features, w, meta(b), kmap, backend), "'bias': expected a tensor on cpu like features, got meta"),
        (lambda: sparse_conv(meta(x.features), w, None, kmap, backend), "'weight': expected a tensor on meta like features, got cpu"),
        (lambda: sparse_conv(x.features, w, b, dataclasses.replace(kmap, in_idx=meta(kmap.in_idx)), backend), "'kmap.in_idx': expected a tensor on cpu like features, got meta"),
    ]
    for fn, text in cases:
        with pytest.raises(OpInputError) as e:
            fn()
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_duplicates_are_caught_when_validation_is_skipped():
    idx = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.int32)
    x = SparseTensor(torch.zeros(2, 3), idx, (4, 4, 4), 1, validate=False)
    for backend in BACKENDS:
        with pytest.raises(SparseTensorError, match="duplicate"):
            SubMConv3d(3, 3, 3, backend=backend)(x)


def test_cpu_half_precision_uses_the_reference_or_says_why():
    x = random_sparse(40, (5, 5, 5), 1, 3, dtype=torch.float32)
    layer = SubMConv3d(3, 4, 3)
    ref = layer(x).features
    y = layer.to(torch.bfloat16)(x.replace_feature(x.features.to(torch.bfloat16)))  # auto: falls back to torch
    torch.testing.assert_close(y.features.float(), ref, rtol=5e-2, atol=5e-2)
    layer.backend = "ext"
    with pytest.raises(SparseTensorError, match="float32 or float64"):
        layer(x.replace_feature(x.features.to(torch.bfloat16)))


def test_cpu_autocast_runs_in_the_weights_dtype():
    """Under CPU autocast a bfloat16 input (an autocast Linear's output) is computed in float32:
    our CPU kernels are float32 / float64 only. Outside autocast the mismatch is an error."""
    x = random_sparse(40, (5, 5, 5), 1, 3, dtype=torch.float32)
    layer = SubMConv3d(3, 4, 3)
    ref = layer(x).features
    xb = x.replace_feature(x.features.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(xb)
    assert y.features.dtype == torch.float32
    torch.testing.assert_close(y.features, layer(x.replace_feature(xb.features.float())).features)
    torch.testing.assert_close(y.features, ref, rtol=5e-2, atol=5e-2)
    with pytest.raises(SparseTensorError, match="like the weights"):
        layer(xb)
