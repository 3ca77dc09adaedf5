"""Camera encoder: multi-view images -> image backbone -> LSS view transform -> BEV map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.errors import CalibrationError, ConfigError, ImageError
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.camera.lss import LSSViewTransform

__all__ = ["CameraEncoder", "ImageFeatureNeck"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFeatureNeck(nn.Module):
    """Sums 1x1-projected backbone maps at the finest returned resolution (a light FPN).

    [(N, C_i, H_i, W_i)] -> (N, out_channels, H_0, W_0).
    """

    def __init__(self, in_channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.out = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]
        x = sum(F.interpolate(lat(m), size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size else lat(m) for lat, m in zip(self.lateral, maps))
        return self.out(x)


class CameraEncoder(nn.Module):
    """Args:
        backbone: the image trunk (``ResNetBackbone``).
        view_transform: ``LSSViewTransform`` whose ``in_channels`` equals ``neck_channels``.
        neck_channels: channels of the image feature map given to the view transform.
        normalize: apply the ImageNet mean / std to images given in [0, 1].

    ``forward(batch)`` reads ``batch.images`` (B, V, 3, H, W), ``batch.lidar2img`` (B, V, 4, 4)
    (calibration of the images *as given*, i.e. already resized) and ``batch.camera_mask``
    (B,); returns a BEV map (B, C, H_bev, W_bev), zero for samples without cameras.
    """

    def __init__(self, backbone: ResNetBackbone, view_transform: LSSViewTransform, neck_channels: int = 128, normalize: bool = True):
        super().__init__()
        if view_transform.in_channels != neck_channels:
            raise ConfigError("CameraEncoder", "view_transform.in_channels",
                              f"the image features' {neck_channels} channels (neck_channels)", got=view_transform.in_channels)
        self.backbone = backbone
        self.neck = ImageFeatureNeck(backbone.out_channels, neck_channels)
        self.view_transform = view_transform
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.view_transform.out_channels

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) -> (B, V, C, fH, fW)."""
        B, V = images.shape[:2]
        x = images.flatten(0, 1)  # (B, V, 3, H, W) -> (B * V, 3, H, W)
        if self.normalize:
            x = (x - self.mean) / self.std
        feats = self.neck(self.backbone(x))
        return feats.view(B, V, *feats.shape[1:])  # (B * V, C, fH, fW) -> (B, V, C, fH, fW)

    def forward(self, batch) -> torch.Tensor:
        if batch.images is None or batch.images.dim() != 5:
            raise ImageError("Batch", "images", "a (B, V, 3, H, W) tensor", got=None if batch.images is None else tuple(batch.images.shape))
        lidar2img = batch.lidar2img
        if lidar2img is None and batch.cam2img is not None and batch.lidar2cam is not None:
            lidar2img = batch.cam2img @ batch.lidar2cam
        if lidar2img is None or tuple(lidar2img.shape) != (*batch.images.shape[:2], 4, 4):
            raise CalibrationError("Batch", "lidar2img", f"shape {(*batch.images.shape[:2], 4, 4)}", got=None if lidar2img is None else tuple(lidar2img.shape))
        if batch.camera_mask is not None and not bool(batch.camera_mask.all()):
            # samples without cameras carry no calibration: any invertible matrix will do
            eye = torch.eye(4, dtype=lidar2img.dtype, device=lidar2img.device)
            lidar2img = torch.where(batch.camera_mask.view(-1, 1, 1, 1), lidar2img, eye)
        feats = self.image_features(batch.images)
        bev = self.view_transform(feats, lidar2img, tuple(batch.images.shape[-2:]))
        if batch.camera_mask is not None:
            bev = bev * batch.camera_mask.to(bev.dtype).view(-1, 1, 1, 1)
        return bev
