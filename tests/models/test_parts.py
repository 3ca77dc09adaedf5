"""Geometry of the parts: LSS frustum points, region sampling grids, missing cameras."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.encoders.bev_grid import bev_grid_shape
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.camera.encoder import CameraEncoder
from dense3d.models.encoders.camera.lss import LSSViewTransform
from dense3d.models.proposals.boxes.region_features import BEVRegionSampler
from tests.models.real_samples import collate, nuscenes_sample

RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def test_frustum_points_project_back_to_their_pixels(samples):
    s = nuscenes_sample(samples, image_size=(64, 176))
    lidar2img = collate([s]).lidar2img  # (1, 6, 4, 4) real calibration
    vt = LSSViewTransform(8, 4, RANGE, 1.6, depth_bins=(1.0, 11.0, 5.0))  # depths 3.5, 8.5
    pts = vt.frustum_points((4, 11), (64, 176), lidar2img)  # (1, 6, 2, 4, 11, 3)
    assert pts.shape == (1, 6, 2, 4, 11, 3)
    hom = torch.cat([pts, torch.ones_like(pts[..., :1])], -1)
    back = (lidar2img[:, :, None, None, None] @ hom[..., None])[..., 0]  # (..., 4)
    d = back[..., 2]
    assert torch.allclose(d[0, :, 0], torch.full_like(d[0, :, 0], 3.5), atol=1e-3)
    u, v = back[..., 0] / d, back[..., 1] / d
    assert torch.allclose(u[0, 0, 0, 0], (torch.arange(11) + 0.5) * 16, atol=1e-2)
    assert torch.allclose(v[0, 0, 0, :, 0], (torch.arange(4) + 0.5) * 16, atol=1e-2)
    # nuScenes LIDAR_TOP: x right, y forward; the front camera looks along +y, the back one along -y
    assert pts[0, 0, 1, :, :, 1].mean() > 5 and pts[0, 3, 1, :, :, 1].mean() < -5


def test_camera_encoder_zeroes_samples_without_cameras(samples):
    s = nuscenes_sample(samples, image_size=(64, 176))
    batch = collate([s, s])
    batch.camera_mask = torch.tensor([True, False])
    batch.lidar2img = batch.lidar2img.clone()
    batch.lidar2img[1] = 0  # no calibration for the sample without cameras
    torch.manual_seed(0)
    enc = CameraEncoder(ResNetBackbone(18, (3,)), LSSViewTransform(32, 8, RANGE, 1.6, depth_bins=(1.0, 40.0, 3.0)), neck_channels=32).eval()
    with torch.no_grad():
        bev = enc(batch)
    assert bev.shape == (2, 8, 64, 64)
    assert bev[0].abs().sum() > 0 and bev[1].abs().sum() == 0


def test_region_sampling_grid_follows_the_rotated_box():
    sampler = BEVRegionSampler(1, 4, (0.0, 0.0, -1.0, 10.0, 10.0, 1.0), grid_points=3)
    boxes = torch.tensor([[[5.0, 5.0, 0.0, 3.0, 1.5, 1.0, math.pi / 2]]])  # heading along +y
    pts = sampler.sample_points(boxes)[0, 0]  # (9, 2)
    assert pts[:, 0].min().item() == pytest.approx(4.5) and pts[:, 0].max().item() == pytest.approx(5.5)
    assert pts[:, 1].min().item() == pytest.approx(4.0) and pts[:, 1].max().item() == pytest.approx(6.0)
    # on a map whose value is the x coordinate of each cell centre, bilinear samples read x back
    xs = (torch.arange(10) + 0.5).view(1, 1, 1, 10).expand(1, 1, 10, 10)
    sampler.token_proj.weight.data = torch.ones(4, 1)
    sampler.token_proj.bias.data.zero_()
    r = sampler(xs, boxes, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))
    assert r.tokens.shape == (1, 1, 9, 4)
    assert torch.allclose(r.tokens[0, 0, :, 0], pts[:, 0], atol=1e-5)


def test_bev_grid_must_tile_the_range():
    assert bev_grid_shape(RANGE, 0.8) == (128, 128)
    with pytest.raises(ConfigError, match="cell_size"):
        bev_grid_shape(RANGE, 0.7)


@pytest.mark.parametrize("depth_bins", [(1.0, 60.0, 0.0), (60.0, 1.0, 1.0), (1.0, 60.0)])
def test_lss_depth_bins_must_give_bins(depth_bins):
    """A zero step, reversed bounds or two numbers raised torch's RuntimeError from arange (or a
    ValueError from unpacking) at build time, naming no field."""
    with pytest.raises(ConfigError, match="depth_bins"):
        LSSViewTransform(8, 8, RANGE, 0.8, depth_bins=depth_bins)
