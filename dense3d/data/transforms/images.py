"""Camera image transforms that keep the calibration right."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from dense3d.errors import ConfigError
from dense3d.structures import Sample

__all__ = ["ImageNormalize", "ImageResize"]


class ImageResize:
    """Resize every camera image to ``size = (H, W)`` (bilinear, antialiased; torchvision) and
    scale the intrinsics: rows 0 and 1 of ``cam2img`` times ``W / W_in`` and ``H / H_in``, so
    ``lidar2img`` keeps mapping a point to the same place in the image."""

    reads = ("cameras",)
    writes = ("cameras.images", "cameras.cam2img")

    def __init__(self, size: Sequence[int]):
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) <= 0:
            raise ConfigError("ImageResize", "size", "(H, W) > 0", got=list(size))

    def __call__(self, sample: Sample) -> Sample:
        from torchvision.transforms.v2 import functional as TF

        cams = sample.cameras
        if cams is None:
            return sample
        h_in, w_in = cams.images.shape[-2:]
        images = TF.resize(cams.images, list(self.size), antialias=True)  # (V, 3, H, W)
        scale = torch.diag(torch.tensor([self.size[1] / w_in, self.size[0] / h_in, 1.0, 1.0], dtype=cams.cam2img.dtype))
        return dataclasses.replace(sample, cameras=dataclasses.replace(cams, images=images, cam2img=scale @ cams.cam2img))


class ImageNormalize:
    """``(image - mean) / std`` per channel (defaults: ImageNet statistics, images in [0, 1])."""

    reads = ("cameras.images",)
    writes = ("cameras.images",)

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)):
        self.mean = torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1)  # (3,) -> (1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(1, 3, 1, 1)
        if self.mean.numel() != 3 or self.std.numel() != 3 or bool((self.std <= 0).any()):
            raise ConfigError("ImageNormalize", "mean/std", "3 means and 3 positive stds", got=[list(mean), list(std)])

    def __call__(self, sample: Sample) -> Sample:
        cams = sample.cameras
        if cams is None:
            return sample
        images = (cams.images - self.mean.to(cams.images)) / self.std.to(cams.images)
        return dataclasses.replace(sample, cameras=dataclasses.replace(cams, images=images))
