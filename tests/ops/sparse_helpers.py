"""Small helpers for the sparse conv tests: random sparse tensors, dense weights, sweep voxels."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch

from dense3d.ops import SparseTensor

# nuScenes LiDAR range (x, y, z min, then max) in metres.
PC_RANGE = np.array([-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])


def random_sparse(n, shape, batch_size, channels, dtype=torch.float64, seed=0, device="cpu"):
    """n distinct random sites of a (batch_size, *shape) grid with standard normal features."""
    g = torch.Generator().manual_seed(seed)
    vol = int(np.prod(shape))
    keys = torch.randperm(batch_size * vol, generator=g)[:n]
    cols = [keys // vol]
    rest = keys % vol
    for a in range(len(shape)):
        inner = int(np.prod(shape[a + 1 :]))
        cols.append(rest // inner)
        rest = rest % inner
    idx = torch.stack(cols, 1).to(torch.int32)
    feats = torch.randn(n, channels, generator=g, dtype=dtype)
    return SparseTensor(feats.to(device), idx.to(device), shape, batch_size)


def dense_weight(layer) -> torch.Tensor:
    """Our (K, C_in, C_out) weight as a torch conv weight (C_out, C_in, *kernel); differentiable."""
    w = layer.weight.reshape(*layer.kernel_size, layer.in_channels, layer.out_channels)  # (K, Ci, Co) -> (*k, Ci, Co)
    nd = len(layer.kernel_size)
    return w.permute(nd + 1, nd, *range(nd))  # (*k, Ci, Co) -> (Co, Ci, *k)


def sweep_path(samples: Path) -> str:
    paths = sorted(glob.glob(str(samples / "nuscenes" / "*LIDAR_TOP*.pcd.bin")))
    assert paths, f"no LIDAR_TOP sweep under {samples}"
    return paths[0]


def voxelize_sweep(path: str, voxel: float = 0.1, crop: float | None = None):
    """Floor-divide + unique voxelization of a nuScenes sweep (float32 (N, 5): x, y, z, intensity, ring).

    Returns (indices (V, 4) int32 [0, z, y, x], mean point features (V, 4) float32 [x, y, z, intensity],
    spatial_shape (D, H, W)). ``crop`` keeps |x|, |y| < crop metres. The real voxelization op lives
    elsewhere in dense3d.ops; this is just enough to get real sites.
    """
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    lo, hi = PC_RANGE[:3], PC_RANGE[3:]
    keep = np.all((pts[:, :3] >= lo) & (pts[:, :3] < hi), axis=1)
    if crop is not None:
        keep &= (np.abs(pts[:, 0]) < crop) & (np.abs(pts[:, 1]) < crop)
    pts = pts[keep]
    zyx = np.floor((pts[:, :3] - lo) / voxel).astype(np.int64)[:, ::-1]  # (x, y, z) -> (z, y, x)
    shape = tuple(int(round(v)) for v in ((hi - lo) / voxel)[::-1])
    uniq, inverse = np.unique(zyx, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    feats = np.zeros((len(uniq), 4), np.float64)
    np.add.at(feats, inverse, pts[:, :4])
    feats /= np.bincount(inverse, minlength=len(uniq))[:, None]
    idx = np.concatenate([np.zeros((len(uniq), 1), np.int64), uniq], axis=1)
    return torch.from_numpy(idx).to(torch.int32), torch.from_numpy(feats).float(), shape
