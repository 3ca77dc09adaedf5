"""2D appearance of 3D boxes: each box projected into the cameras, RoIAlign on image features.

Why this exists: a BEV map trained for detection keeps little of what an object looks like.
A linear probe on the region features of the synthetic-outdoor detector
(``experiment=perception_outdoor``, frozen) names the colour of 24 % of validation boxes
(majority class: 19 %), while captions name colours. Pooling image features inside each box's
projection (the multi-view 2D features of Scan2Cap and its successors) gives the captioner
the appearance the BEV lost. The module trains with the captioner (it is not part of the
frozen detector).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from dense3d.models.encoders.camera.encoder import IMAGENET_MEAN, IMAGENET_STD
from dense3d.structures import Boxes3D

__all__ = ["ImageRegionEncoder", "project_boxes"]


def project_boxes(boxes: torch.Tensor, lidar2img: torch.Tensor, image_size: tuple[int, int],
                  min_depth: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """2D rectangles of 3D boxes in every camera.

    Args:
        boxes: (B, R, >=7) ``x, y, z, dx, dy, dz, yaw`` in the LiDAR frame.
        lidar2img: (B, V, 4, 4) projections onto the (resized) images.
        image_size: (H, W).

    Returns:
        rects (B, V, R, 4) ``x0, y0, x1, y1`` clipped to the image, and their visible area
        (B, V, R) in pixels (0 where a corner is behind the camera or nothing is inside).
    """
    B, R = boxes.shape[:2]
    V = lidar2img.shape[1]
    H, W = image_size
    # float32 also under autocast, whose 16-bit products (corners, projection) would move pixels by 2-4 px
    with torch.autocast(boxes.device.type, enabled=False):
        corners = Boxes3D._wrap(boxes.reshape(B * R, -1)[:, :7].float()).corners().view(B, 1, R * 8, 3)
        homo = torch.cat([corners, torch.ones_like(corners[..., :1])], -1)  # (B, 1, R*8, 4)
        # (B, 1, R*8, 4) @ (B, V, 4, 4)^T -> (B, V, R*8, 4) -> (B, V, R, 8, 4)
        cam = (homo @ lidar2img.float().transpose(-1, -2)).view(B, V, R, 8, 4)
    depth = cam[..., 2]
    uv = cam[..., :2] / depth.clamp(min=min_depth)[..., None]  # (B, V, R, 8, 2)
    in_front = (depth > min_depth).all(-1)  # (B, V, R)
    x0 = uv[..., 0].amin(-1).clamp(0, W)
    x1 = uv[..., 0].amax(-1).clamp(0, W)
    y0 = uv[..., 1].amin(-1).clamp(0, H)
    y1 = uv[..., 1].amax(-1).clamp(0, H)
    rects = torch.stack([x0, y0, x1, y1], -1)
    area = (x1 - x0) * (y1 - y0) * in_front
    return rects, area


class ImageRegionEncoder(nn.Module):
    """Args:
        out_channels: D, the size of the features it returns (the region features' size).
        stem_channels: channels of the two stride-2 convolutions run on every image.
        roi_size: S; each projected box is pooled to S x S (``torchvision.ops.roi_align``).
        min_area: projections smaller than this many pixels count as not seen.
        pixels: also pool the normalised pixels themselves (3 x S x S per box) next to the stem
            features: an object's colour, given as it is rather than learned through the
            captioner's long gradient path (a linear probe on the stem-only features of a
            trained captioner named 65 % of box colours).

    ``forward(batch, boxes (B, R, >=7), mask (B, R))`` -> (B, R, D): the pooled stem features
    (and pixels) averaged over the cameras that see the box (weights: visible area), through an
    MLP; zeros for boxes no camera sees, padded regions and samples without cameras.
    """

    def __init__(self, out_channels: int = 256, stem_channels: tuple[int, int] = (16, 32), roi_size: int = 4,
                 min_area: float = 4.0, pixels: bool = True):
        super().__init__()
        c1, c2 = stem_channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.stride = 4
        self.roi_size = roi_size
        self.min_area = min_area
        self.out_channels = out_channels
        self.pixels = pixels
        pooled = (c2 + 3 * pixels) * roi_size * roi_size
        self.mlp = nn.Sequential(nn.Linear(pooled, out_channels), nn.ReLU(inplace=True),
                                 nn.Linear(out_channels, out_channels))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, batch, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, R = boxes.shape[:2]
        out = boxes.new_zeros(B, R, self.out_channels)
        if batch.images is None or batch.lidar2img is None or R == 0:
            return out
        V, H, W = batch.images.shape[1], batch.images.shape[3], batch.images.shape[4]
        images = (batch.images.flatten(0, 1) - self.mean) / self.std  # (B, V, 3, H, W) -> (B*V, 3, H, W)
        feats = self.stem(images)  # (B*V, C, H/4, W/4)
        rects, area = project_boxes(boxes, batch.lidar2img, (H, W))
        seen = (area >= self.min_area) & mask[:, None, :]
        if batch.camera_mask is not None:
            seen = seen & batch.camera_mask.view(B, 1, 1)
        # RoIs (B*V*R, 5): [image index b*V + v, x0, y0, x1, y1] in image pixels
        index = torch.arange(B * V, device=boxes.device, dtype=rects.dtype).view(B, V, 1, 1).expand(B, V, R, 1)
        rois = torch.cat([index, rects], -1).view(-1, 5)
        dtype = torch.promote_types(feats.dtype, torch.float32)  # pixel coordinates: not in 16 bits under autocast
        pooled = roi_align(feats.to(dtype), rois.to(dtype), (self.roi_size, self.roi_size), spatial_scale=1.0 / self.stride,
                           sampling_ratio=2, aligned=True)  # (B*V*R, C, S, S)
        if self.pixels:
            rgb = roi_align(images.to(dtype), rois.to(dtype), (self.roi_size, self.roi_size), spatial_scale=1.0,
                            sampling_ratio=2, aligned=True)  # (B*V*R, 3, S, S)
            pooled = torch.cat([pooled, rgb], 1)  # (B*V*R, C+3, S, S)
        pooled = pooled.view(B, V, R, -1)  # (B*V*R, C', S, S) -> (B, V, R, C'*S*S)
        w = area * seen  # (B, V, R)
        total = w.sum(1)  # (B, R)
        mean = (pooled * w[..., None]).sum(1) / total.clamp(min=1e-6)[..., None]  # (B, R, C*S*S)
        return self.mlp(mean) * (total > 0)[..., None].to(mean.dtype)
