"""Sparse conv layers with spconv-shaped constructors, and ``SparseSequential``.

Weight layout: ``weight`` is (K, C_in, C_out) with K = prod(kernel_size) and offset
``k = (kz * KH + ky) * KW + kx`` (z-major; 2-D: ``k = ky * KW + kx``). Output site ``o`` reads
input site ``o * stride - padding + k * dilation`` per axis, exactly like ``torch.nn.Conv3d``
(cross-correlation, no flip): ``weight[k] == conv3d_weight[:, :, kz, ky, kx].T``.
spconv 2.x stores (C_out, KD, KH, KW, C_in); ``load_spconv_weight`` converts.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from dense3d.errors import SparseTensorError
from dense3d.ops.sparse.functional import sparse_conv
from dense3d.ops.sparse.kernel_map import KernelMap, build_kernel_map
from dense3d.ops.sparse.tensor import SparseTensor

__all__ = [
    "SparseModule",
    "SparseConvNd",
    "SubMConv3d",
    "SparseConv3d",
    "SparseInverseConv3d",
    "SubMConv2d",
    "SparseConv2d",
    "SparseSequential",
    "load_spconv_weight",
]


class SparseModule(nn.Module):
    """Marks modules whose ``forward`` takes and returns a ``SparseTensor``."""


def _tuple(v: int | Sequence[int], n: int, name: str) -> tuple:
    t = (int(v),) * n if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != n:
        raise SparseTensorError("sparse conv layer", name, f"an int or {n} ints", got=v)
    return t


class SparseConvNd(SparseModule):
    """A sparse convolution (submanifold, strided, or the inverse of a strided one).

    Args:
        ndim: 2 or 3 spatial axes.
        in_channels, out_channels: feature sizes.
        kernel_size, stride, padding, dilation: per axis (ints broadcast), as in ``nn.Conv3d``.
        bias: learn a (C_out,) bias.
        subm: submanifold: outputs at the input sites, kernel centred (padding ignored).
        inverse: transposed conv reusing the map saved under ``indice_key`` by the strided conv
            whose output this layer receives; the outputs are that conv's input sites.
        indice_key: cache key of the kernel map in the tensor's ``indice_dict``.
        backend: "auto" | "ext" | "torch" (see ``dense3d.ops._backend``).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        subm: bool = False,
        inverse: bool = False,
        indice_key: str | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        if inverse and indice_key is None:
            raise SparseTensorError("SparseInverseConv", "indice_key", "the key of the strided conv to invert", got=None)
        self.ndim = ndim
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _tuple(kernel_size, ndim, "kernel_size")
        self.stride = _tuple(stride, ndim, "stride")
        self.padding = _tuple(padding, ndim, "padding")
        self.dilation = _tuple(dilation, ndim, "dilation")
        self.subm = subm
        self.inverse = inverse
        self.indice_key = indice_key
        self.backend = backend
        k = math.prod(self.kernel_size)
        self.weight = nn.Parameter(torch.empty(k, in_channels, out_channels))  # (K, C_in, C_out)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv3d's default init (kaiming uniform, a=sqrt(5)), fan_in = C_in * K.
        fan_in = self.in_channels * self.weight.shape[0]
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        kind = "subm" if self.subm else ("inverse" if self.inverse else "strided")
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, {kind}, indice_key={self.indice_key!r}, bias={self.bias is not None}"
        )

    def _kernel_map(self, x: SparseTensor) -> KernelMap:
        name = type(self).__name__
        if self.inverse:
            saved = x.indice_dict.get(self.indice_key)
            if saved is None or saved.subm:
                raise SparseTensorError(name, "indice_key", "the key of an earlier strided conv on this tensor's path", got=self.indice_key)
            if saved.kernel_size != self.kernel_size or saved.num_out != x.indices.shape[0]:
                raise SparseTensorError(name, "indice_key", f"a map with kernel {self.kernel_size} whose outputs are this tensor's sites", got=self.indice_key)
            return saved.inverse()
        if self.indice_key is not None and self.indice_key in x.indice_dict:
            saved = x.indice_dict[self.indice_key]
            differs = self._reuse_difference(saved, x)
            if differs is None:
                return saved
            # rebuilding would replace the saved map: the layers sharing the key, and an inverse
            # conv reading it later, would silently run on another layer's map
            what, theirs, ours = differs
            raise SparseTensorError(
                name, "indice_key", f"'{self.indice_key}' reused with the same {what} as the layer that saved it ({theirs})", got=f"{what} {ours}"
            )
        kmap = build_kernel_map(x.indices, x.spatial_shape, self.kernel_size, self.stride, self.padding, self.dilation, self.subm, self.backend)
        if self.indice_key is not None:
            x.indice_dict[self.indice_key] = kmap
        return kmap

    def _reuse_difference(self, saved: KernelMap, x: SparseTensor) -> tuple | None:
        """The first parameter in which this layer on ``x`` differs from the layer that saved
        ``saved``, as (name, saved value, this value); None when the saved map is this layer's."""
        kind = lambda subm: "submanifold" if subm else "strided"  # noqa: E731
        if saved.subm != self.subm:
            return "kind of conv", kind(saved.subm), kind(self.subm)
        checks = [("kernel_size", saved.kernel_size, self.kernel_size), ("dilation", saved.dilation, self.dilation)]
        if not self.subm:  # a submanifold conv ignores stride and padding
            checks += [("stride", saved.stride, self.stride), ("padding", saved.padding, self.padding)]
        checks.append(("spatial_shape", tuple(saved.in_shape), tuple(x.spatial_shape)))
        for what, theirs, ours in checks:
            if theirs != ours:
                return what, theirs, ours
        same_sites = saved.in_indices is x.indices or (
            saved.in_indices.shape == x.indices.shape and bool(torch.equal(saved.in_indices, x.indices))
        )
        if not same_sites:
            return "input sites", f"{saved.in_indices.shape[0]} sites", f"{x.indices.shape[0]} other sites"
        return None

    def forward(self, x: SparseTensor) -> SparseTensor:
        name = type(self).__name__
        if not isinstance(x, SparseTensor):
            raise SparseTensorError(name, "input", "a SparseTensor", got=type(x).__name__)
        if x.ndim != self.ndim:
            raise SparseTensorError(name, "input", f"a {self.ndim}-D SparseTensor", got=f"{x.ndim}-D")
        f = x.features
        if f.shape[1] != self.in_channels:
            raise SparseTensorError(name, "input.features", f"{self.in_channels} channels", got=f.shape[1])
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(f.device.type) and torch.float64 not in (f.dtype, weight.dtype):
            # Like torch's convolutions under autocast: on a GPU in the autocast dtype (our CUDA
            # kernels take float16 / bfloat16); our CPU kernels are float32 / float64 only, so on
            # the CPU in the weights' dtype. float64 is left alone, as autocast leaves it.
            dtype = torch.get_autocast_dtype("cuda") if f.is_cuda else weight.dtype
            f, weight = f.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if f.dtype != weight.dtype:
            raise SparseTensorError(name, "input.features", f"dtype {weight.dtype} like the weights", got=f.dtype)
        kmap = self._kernel_map(x)
        out = sparse_conv(f, weight, bias, kmap, self.backend)
        return SparseTensor(out, kmap.out_indices, list(kmap.out_shape), x.batch_size, x.indice_dict, validate=False)


class SubMConv3d(SparseConvNd):
    """Submanifold 3-D conv: outputs only at the input sites (odd kernels; padding ignored)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, indice_key=None, backend="auto"):
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, dilation, bias, subm=True, indice_key=indice_key, backend=backend)


class SparseConv3d(SparseConvNd):
    """Regular (strided) 3-D sparse conv: outputs wherever some input reaches."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, indice_key=None, backend="auto"):
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, dilation, bias, indice_key=indice_key, backend=backend)


class SparseInverseConv3d(SparseConvNd):
    """Transposed conv back to the input sites of the ``SparseConv3d`` that saved ``indice_key``."""

    def __init__(self, in_channels, out_channels, kernel_size, indice_key, bias=True, backend="auto"):
        super().__init__(3, in_channels, out_channels, kernel_size, bias=bias, inverse=True, indice_key=indice_key, backend=backend)


class SubMConv2d(SparseConvNd):
    """Submanifold 2-D conv (BEV); indices [batch, y, x]."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, indice_key=None, backend="auto"):
        super().__init__(2, in_channels, out_channels, kernel_size, stride, padding, dilation, bias, subm=True, indice_key=indice_key, backend=backend)


class SparseConv2d(SparseConvNd):
    """Strided 2-D sparse conv (BEV); indices [batch, y, x]."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, indice_key=None, backend="auto"):
        super().__init__(2, in_channels, out_channels, kernel_size, stride, padding, dilation, bias, indice_key=indice_key, backend=backend)


class SparseSequential(nn.Sequential, SparseModule):
    """Runs sparse layers on the ``SparseTensor`` and any other module (BatchNorm1d, ReLU, ...) on its features."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        for m in self:
            if isinstance(m, SparseModule):
                x = m(x)
            else:
                if x.features.shape[0] == 1 and uses_batch_statistics(m):  # torch: "Expected more than 1 value per channel"
                    raise SparseTensorError("SparseSequential", "features", f"at least 2 active sites for {type(m).__name__} in training (it "
                                            "normalises each channel over the sites; a strided conv may merge the voxels): a larger batch or crop",
                                            got=f"1 site at [b, z, y, x] = {x.indices[0].tolist()} of spatial shape {x.spatial_shape}")
                x = x.replace_feature(m(x.features))
        return x


def uses_batch_statistics(m: nn.Module) -> bool:
    """Whether ``m`` is a batch norm that normalises with the statistics of this process's rows
    alone (training mode, or no running statistics); a SyncBatchNorm pools every process's rows.
    Such a norm fails on one row (torch: "Expected more than 1 value per channel")."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm) and (m.training or m.running_mean is None)


@torch.no_grad()
def load_spconv_weight(layer: SparseConvNd, spconv_weight: torch.Tensor) -> None:
    """Copy an spconv 2.x weight ((C_out, *kernel_size, C_in), "KRSC") into ``layer.weight`` ((K, C_in, C_out))."""
    expected = (layer.out_channels, *layer.kernel_size, layer.in_channels)
    if tuple(spconv_weight.shape) != expected:
        raise SparseTensorError("load_spconv_weight", "spconv_weight", f"shape {expected} (C_out, *kernel, C_in)", got=tuple(spconv_weight.shape))
    w = spconv_weight.reshape(layer.out_channels, -1, layer.in_channels)  # (C_out, *kernel, C_in) -> (C_out, K, C_in)
    layer.weight.copy_(w.permute(1, 2, 0))  # (C_out, K, C_in) -> (K, C_in, C_out)
