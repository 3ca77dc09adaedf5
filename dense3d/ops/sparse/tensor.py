"""``SparseTensor``: active sites (indices) with features, shaped like spconv's ``SparseConvTensor``."""
from __future__ import annotations

from typing import Sequence

import torch

from dense3d.errors import SparseTensorError

__all__ = ["SparseTensor"]

_SRC = "SparseTensor"


class SparseTensor:
    """Features of the active sites of a batch of 3-D (or 2-D) grids.

    Args:
        features: (N, C) floating point, one row per active site, all finite.
        indices: (N, 4) int32 rows ``[batch, z, y, x]`` (or (N, 3) ``[batch, y, x]`` for 2-D),
            unique, ``0 <= z < spatial_shape[0]`` etc. and ``0 <= batch < batch_size``.
        spatial_shape: the grid size ``(D, H, W)`` (or ``(H, W)``).
        batch_size: number of samples in the batch.
        indice_dict: kernel maps cached by ``indice_key``; tensors derived from this one (by
            ``replace_feature`` or a conv layer) share the same dict, so a map built by one layer
            is reused by every later layer with the same key (spconv's ``indice_dict``).
        validate: check dtypes, shapes, bounds, duplicates and finiteness (one pass each);
            layers pass False for the tensors they derive.

    N = 0 is allowed: layers then return empty outputs with the right shapes.
    """

    def __init__(
        self,
        features: torch.Tensor,
        indices: torch.Tensor,
        spatial_shape: Sequence[int],
        batch_size: int,
        indice_dict: dict | None = None,
        validate: bool = True,
    ):
        self.features = features
        self.indices = indices
        self.spatial_shape = [int(s) for s in spatial_shape]
        self.batch_size = int(batch_size)
        self.indice_dict = {} if indice_dict is None else indice_dict
        if validate:
            self._validate()

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    def _validate(self) -> None:
        f, idx = self.features, self.indices
        if len(self.spatial_shape) not in (2, 3) or any(s < 1 for s in self.spatial_shape):
            raise SparseTensorError(_SRC, "spatial_shape", "2 or 3 positive sizes", got=self.spatial_shape)
        if self.batch_size < 1:
            raise SparseTensorError(_SRC, "batch_size", "a positive integer", got=self.batch_size)
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or not f.is_floating_point():
            got = f"{tuple(f.shape)} {f.dtype}" if isinstance(f, torch.Tensor) else type(f).__name__
            raise SparseTensorError(_SRC, "features", "a floating point (N, C) tensor", got=got)
        nd = self.ndim
        layout = "[batch, z, y, x]" if nd == 3 else "[batch, y, x]"
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int32 or idx.dim() != 2 or idx.shape[1] != nd + 1:
            got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise SparseTensorError(_SRC, "indices", f"an int32 (N, {nd + 1}) tensor {layout}", got=got)
        if idx.shape[0] != f.shape[0]:
            raise SparseTensorError(_SRC, "indices", f"{f.shape[0]} rows like features", got=idx.shape[0])
        if idx.device != f.device:
            raise SparseTensorError(_SRC, "indices", f"the features' device {f.device}", got=idx.device)
        if idx.shape[0] == 0:
            return
        hi = torch.tensor([self.batch_size, *self.spatial_shape], device=idx.device)
        bad = (idx < 0) | (idx >= hi)  # (N, 1 + nd)
        if bool(bad.any()):
            row = int(bad.any(1).nonzero()[0, 0])
            col = int(bad[row].nonzero()[0, 0])
            what = "batch index < batch_size" if col == 0 else f"indices inside spatial_shape {self.spatial_shape}"
            raise SparseTensorError(_SRC, f"indices[{row}]", what, got=idx[row].tolist())
        if not bool(torch.isfinite(f).all()):
            row = int((~torch.isfinite(f)).any(1).nonzero()[0, 0])
            raise SparseTensorError(_SRC, f"features[{row}]", "finite numbers (no NaN/inf)", got="a non-finite value")
        keys = idx[:, 0].long()
        for a in range(nd):
            keys = keys * self.spatial_shape[a] + idx[:, a + 1].long()
        sorted_keys, order = keys.sort()
        same = sorted_keys[1:] == sorted_keys[:-1]
        if bool(same.any()):
            j = int(same.nonzero()[0, 0])
            raise SparseTensorError(_SRC, "indices", "unique sites", got=f"rows {int(order[j])} and {int(order[j + 1])} both at {idx[order[j]].tolist()}")

    def replace_feature(self, features: torch.Tensor) -> "SparseTensor":
        """The same sites (and kernel-map cache) with new (N, C') features."""
        if features.dim() != 2 or features.shape[0] != self.indices.shape[0]:
            raise SparseTensorError(_SRC, "features", f"({self.indices.shape[0]}, C) rows like the indices", got=tuple(features.shape))
        return SparseTensor(features, self.indices, self.spatial_shape, self.batch_size, self.indice_dict, validate=False)

    def dense(self, channels_first: bool = True) -> torch.Tensor:
        """(B, C, *spatial_shape) (or (B, *spatial_shape, C)) with zeros at inactive sites; differentiable."""
        c = self.features.shape[1]
        out = self.features.new_zeros(self.batch_size, *self.spatial_shape, c)
        idx = self.indices.long()
        out = out.index_put(tuple(idx[:, a] for a in range(idx.shape[1])), self.features)  # (B, *S, C)
        if channels_first:
            out = out.movedim(-1, 1)  # (B, *S, C) -> (B, C, *S)
        return out.contiguous()

    def __repr__(self) -> str:
        return (
            f"SparseTensor(n={self.indices.shape[0]}, channels={self.features.shape[1]}, spatial_shape={self.spatial_shape}, "
            f"batch_size={self.batch_size}, dtype={self.features.dtype}, device={self.features.device}, keys={sorted(self.indice_dict)})"
        )
