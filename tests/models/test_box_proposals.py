"""LiDAR + camera BEV detection on the real nuScenes keyframe and the real ScanNet scene."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.camera.encoder import CameraEncoder
from dense3d.models.encoders.camera.lss import LSSViewTransform
from dense3d.models.encoders.lidar.bev_backbone import BEVBackbone
from dense3d.models.encoders.lidar.encoder import LidarEncoder
from dense3d.models.encoders.lidar.sparse_backbone import SparseEncoder
from dense3d.models.encoders.lidar.voxel_encoder import DynamicVoxelEncoder
from dense3d.models.fusion.conv_fuser import ConvFuser
from dense3d.models.losses.center_loss import CenterPointLoss
from dense3d.models.proposals.boxes.center_head import CenterHead, CenterPredictions
from dense3d.models.proposals.boxes.detector import BoxDetector
from dense3d.models.proposals.boxes.region_features import BEVRegionSampler
from tests.models.real_samples import collate, nuscenes_sample, scannet_sample

OUTDOOR = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
INDOOR = (-0.4, -0.4, -0.2, 9.2, 9.2, 3.0)
GROUPS = [["car"], ["truck", "trailer", "bus", "construction_vehicle"], ["bicycle", "motorcycle"], ["pedestrian"], ["traffic_cone", "barrier"]]


def lidar_encoder(in_channels, point_range, voxel):
    vox = DynamicVoxelEncoder(in_channels, voxel, point_range, out_channels=16, hidden_channels=16)
    sparse = SparseEncoder(16, vox.sparse_shape, stage_channels=(16, 32, 64), out_channels=32)
    bev = BEVBackbone(sparse.out_channels, layer_channels=(64, 128), layer_nums=(1, 1), layer_strides=(1, 2), upsample_channels=(64, 64))
    return LidarEncoder(vox, sparse, bev)


def outdoor_detector(lidar=True, camera=True, seed=0):
    torch.manual_seed(seed)
    cell = 1.6
    lid = lidar_encoder(5, OUTDOOR, (0.4, 0.4, 0.2)) if lidar else None
    cam = CameraEncoder(ResNetBackbone(18, (3, 4)), LSSViewTransform(64, 32, OUTDOOR, cell, depth_bins=(1.0, 60.0, 1.0)), neck_channels=64) if camera else None
    channels = {k: c for k, c in (("lidar", 128 if lidar else 0), ("camera", 32 if camera else 0)) if c}
    fuser = ConvFuser(channels, 128, modality_dropout=0.25)
    head = CenterHead(128, GROUPS, OUTDOOR, cell, head_channels=32, score_threshold=0.05)
    sampler = BEVRegionSampler(128, 64, OUTDOOR, grid_points=5)
    return BoxDetector(head, sampler, lidar_encoder=lid, camera_encoder=cam, fuser=fuser, loss=CenterPointLoss(), max_regions=32)


@pytest.fixture(scope="module")
def nusc(samples):
    return nuscenes_sample(samples)


def test_lidar_camera_shapes_and_regions(nusc):
    det = outdoor_detector().eval()
    batch = collate([nusc])
    with torch.no_grad():
        out = det(batch)
    assert out.sensor_maps["lidar"].shape == (1, 128, 64, 64)
    assert out.sensor_maps["camera"].shape == (1, 32, 64, 64)
    assert out.bev.shape == (1, 128, 64, 64)
    cam = out.sensor_maps["camera"][0].abs().sum(0)
    assert 0.2 < float((cam > 0).float().mean()) < 0.95  # cameras see part of the grid, not all
    assert [p.shape for p in out.predictions.heatmaps] == [(1, len(g), 64, 64) for g in GROUPS]
    r = out.regions
    assert r.kind == "box" and r.features.shape[0] == 1 and r.features.shape[-1] == 64
    assert r.geometry.shape[-1] == 7 and r.tokens.shape[2:] == (25, 64) and r.extra["velocity"].shape[-1] == 2
    assert r.mask.sum() == min(32, len(out.detections[0].boxes)) > 0
    assert torch.equal(r.geometry[0, : int(r.mask.sum())], out.detections[0].boxes[: int(r.mask.sum()), :7])
    assert torch.isfinite(r.features).all()
    losses = det.loss(out, batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_each_encoder_changes_only_with_its_sensor(nusc):
    det = outdoor_detector().eval()
    base = collate([nusc])
    with torch.no_grad():
        m0 = det.sensor_maps(base)
        moved = collate([nusc])
        moved.points = moved.points.clone()
        moved.points[:, 1] += 3.0  # shift the cloud 3 m along x
        m1 = det.sensor_maps(moved)
        assert not torch.allclose(m1["lidar"], m0["lidar"])
        assert torch.equal(m1["camera"], m0["camera"])
        dark = collate([nusc])
        dark.images = dark.images * 0.5
        m2 = det.sensor_maps(dark)
        assert torch.equal(m2["lidar"], m0["lidar"])
        assert not torch.allclose(m2["camera"], m0["camera"])


def test_missing_sensor_and_modality_dropout(nusc):
    det = outdoor_detector().eval()
    with torch.no_grad():
        lidar_only = det(collate([nusc], with_cameras=False))
        camera_only = det(collate([nusc], with_points=False))
    assert lidar_only.sensor_maps["camera"] is None and lidar_only.bev.shape == (1, 128, 64, 64)
    assert camera_only.sensor_maps["lidar"] is None and torch.isfinite(camera_only.bev).all()
    fuser = det.fuser.train()
    maps = {"lidar": torch.ones(64, 128, 2, 2), "camera": torch.ones(64, 32, 2, 2)}
    torch.manual_seed(0)
    fuser.fuse = torch.nn.Identity()  # look at what gets concatenated
    x = fuser(maps)
    kept_l = x[:, :128].flatten(1).amax(1) > 0
    kept_c = x[:, 128:].flatten(1).amax(1) > 0
    assert (kept_l | kept_c).all() and (~kept_l).any() and (~kept_c).any()


def test_scannet_axis_aligned_indoor(samples):
    torch.manual_seed(0)
    lid = lidar_encoder(6, INDOOR, (0.1, 0.1, 0.1))
    cell = 0.4
    head = CenterHead(128, [["chair", "table"], ["bed"]], INDOOR, cell, head_channels=32, with_velocity=False, axis_aligned=True, score_threshold=0.0)
    det = BoxDetector(head, BEVRegionSampler(128, 32, INDOOR, grid_points=3), lidar_encoder=lid, loss=CenterPointLoss(), max_regions=16).eval()
    batch = collate([scannet_sample(samples)])
    with torch.no_grad():
        out = det(batch)
    assert out.bev.shape == (1, 128, 24, 24)
    assert head.code_names == ["dx_off", "dy_off", "z", "log_dx", "log_dy", "log_dz"]
    d = out.detections[0]
    assert d.boxes.shape[1] == 7 and (d.boxes[:, 6] == 0).all() and len(d.boxes) > 0
    assert out.regions.geometry.shape == (1, len(d.boxes[:16]), 7) and out.regions.extra == {}
    with torch.no_grad():  # colour is an input: recolouring changes the map
        recol = collate([scannet_sample(samples)])
        recol.points = recol.points.clone()
        recol.points[:, 4:] = 1 - recol.points[:, 4:]
        assert not torch.allclose(det(recol).bev, out.bev)


def _peaks_head(axis_aligned=False):
    return CenterHead(8, [["a", "b"]], (0.0, 0.0, -1.0, 10.0, 10.0, 1.0), 1.0, head_channels=8, with_velocity=False, axis_aligned=axis_aligned, score_threshold=0.3, nms_iou_threshold=0.1)


def _hand_made_predictions(head, peaks):
    """Heatmap logits with given (class, y, x, prob) peaks and a fixed box code everywhere."""
    heat = torch.full((1, 2, 10, 10), -10.0)
    for c, y, x, p in peaks:
        heat[0, c, y, x] = math.log(p / (1 - p))
    reg = torch.zeros(1, head.code_size, 10, 10)
    reg[0, 0:2] = 0.5  # centre of the cell
    reg[0, 3:6] = math.log(3.0)  # 3 m cubes
    if not head.axis_aligned:
        reg[0, 6], reg[0, 7] = math.sin(0.3), math.cos(0.3)
    return CenterPredictions([heat], [reg])


@pytest.mark.parametrize("axis_aligned", [False, True])
def test_decode_and_nms_hand_made_heatmap(axis_aligned):
    head = _peaks_head(axis_aligned)
    # two overlapping class-0 peaks (1 m apart, 3 m boxes), one far class-0 peak, one class-1
    # peak on top of the first one (other class: not suppressed), one below the threshold
    preds = _hand_made_predictions(head, [(0, 2, 2, 0.9), (0, 2, 3, 0.8), (0, 7, 7, 0.7), (1, 2, 2, 0.6), (1, 8, 1, 0.2)])
    (d,) = head.decode(preds)
    assert d.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert d.labels.tolist() == [0, 0, 1]
    assert d.boxes[0, :3].tolist() == pytest.approx([2.5, 2.5, 0.0])
    assert d.boxes[1, :2].tolist() == pytest.approx([7.5, 7.5])
    assert d.boxes[0, 3:6].tolist() == pytest.approx([3.0, 3.0, 3.0])
    assert d.boxes[0, 6].item() == pytest.approx(0.0 if axis_aligned else 0.3, abs=1e-6)


@pytest.mark.parametrize("axis_aligned", [False, True])
def test_class_agnostic_nms_keeps_one_box_per_object(axis_aligned):
    """The class-1 peak on top of the class-0 box above is suppressed when NMS ignores classes."""
    head = _peaks_head(axis_aligned)
    head.class_agnostic_nms = True
    preds = _hand_made_predictions(head, [(0, 2, 2, 0.9), (0, 2, 3, 0.8), (0, 7, 7, 0.7), (1, 2, 2, 0.6), (1, 8, 1, 0.2)])
    (d,) = head.decode(preds)
    assert d.scores.tolist() == pytest.approx([0.9, 0.7]) and d.labels.tolist() == [0, 0]


def test_targets_put_gaussian_peaks_at_box_centres():
    head = _peaks_head()
    boxes = torch.tensor([[2.5, 7.5, 0.2, 4.0, 2.0, 1.5, 0.5]])
    t = head.targets([boxes], [torch.tensor([1])])
    assert t.heatmaps[0][0, 1, 7, 2] == 1.0 and t.heatmaps[0][0, 0].sum() == 0
    assert t.indices[0][0, 0] == 7 * 10 + 2 and t.masks[0][0].sum() == 1
    assert t.regression[0][0, 0].tolist() == pytest.approx([0.5, 0.5, 0.2, math.log(4), math.log(2), math.log(1.5), math.sin(0.5), math.cos(0.5)])
    # a perfect prediction of these targets decodes back to the box
    reg = torch.zeros(1, head.code_size, 10, 10)
    reg[0, :, 7, 2] = t.regression[0][0, 0]
    logits = torch.where(t.heatmaps[0] == 1, 5.0, -5.0)
    (d,) = head.decode(CenterPredictions([logits], [reg]))
    assert d.labels.tolist() == [1] and d.boxes[0].tolist() == pytest.approx(boxes[0].tolist(), abs=1e-5)


def test_boxes_past_max_objects_keep_their_heatmap_peaks():
    """Past max_objects only the regression targets stop: a crowded group's later boxes were
    left out of the heatmap too, and so trained as background."""
    head = CenterHead(8, [["a", "b"]], (0.0, 0.0, -1.0, 10.0, 10.0, 1.0), 1.0, head_channels=8, with_velocity=False,
                      max_objects=1)
    boxes = torch.tensor([[2.5, 7.5, 0.2, 1.0, 1.0, 1.5, 0.0], [7.5, 2.5, 0.2, 1.0, 1.0, 1.5, 0.0]])
    t = head.targets([boxes], [torch.tensor([0, 0])])
    assert t.heatmaps[0][0, 0, 7, 2] == 1.0 and t.heatmaps[0][0, 0, 2, 7] == 1.0
    assert t.masks[0].shape == (1, 1) and t.indices[0][0, 0] == 7 * 10 + 2


def test_post_center_range_filters_centres_as_centerpoint_does():
    """With ``post_center_range`` (CenterPoint's, mmdet3d's ``get_task_detections``) a decoded
    centre is kept inside that range in x, y and z, bounds included, also past the BEV map's
    edge; without it (default) inside ``point_range`` in x and y, as before."""
    def head(post_center_range=None):
        return CenterHead(8, [["a", "b"]], (0.0, 0.0, -1.0, 10.0, 10.0, 1.0), 1.0, head_channels=8, with_velocity=False,
                          score_threshold=0.3, nms_iou_threshold=0.1, post_center_range=post_center_range)

    old, new = head(), head((-2.0, -2.0, -3.0, 12.0, 12.0, 3.0))
    preds = _hand_made_predictions(old, [(0, 5, 9, 0.9), (0, 2, 2, 0.8), (1, 7, 4, 0.7)])
    reg = preds.regression[0]  # (1, code, H, W), cells (y, x)
    reg[0, 0, 5, 9] = 1.5  # x = 9 + 1.5 = 10.5 m: past the map's edge (10 m)
    reg[0, 2, 2, 2] = 4.0  # z = 4 m: above the range's 3 m
    reg[0, 2, 7, 4] = 3.0  # z = 3 m: on the range's bound (kept)
    (d_old,) = old.decode(preds)
    (d_new,) = new.decode(preds)
    torch.testing.assert_close(d_old.boxes[:, :3], torch.tensor([[2.5, 2.5, 4.0], [4.5, 7.5, 3.0]]))
    torch.testing.assert_close(d_new.boxes[:, :3], torch.tensor([[10.5, 5.5, 0.0], [4.5, 7.5, 3.0]]))
    assert d_new.scores.tolist() == pytest.approx([0.9, 0.7])
    with pytest.raises(ConfigError, match="post_center_range"):
        head((0.0, 0.0, -1.0, 10.0, 10.0))
    with pytest.raises(ConfigError, match="post_center_range"):
        head((5.0, 0.0, -1.0, 1.0, 10.0, 1.0))


def test_real_nuscenes_box_head_uses_centerpoint_post_center_range():
    """The nuScenes box head filters centres as CenterPoint's nuScenes configs do; the synthetic
    outdoor model built on it keeps its point_range (its trained checkpoints decode the same)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        demo = compose(config_name="train", overrides=["model=outdoor_demo"]).model
    nusc = OmegaConf.load(configs / "model" / "proposals" / "boxes_nuscenes.yaml")
    assert list(nusc.box_head.post_center_range) == [-61.2, -61.2, -10.0, 61.2, 61.2, 10.0]
    assert list(nusc.box_head.point_range) == [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
    assert demo.box_detector.box_head.post_center_range is None
    assert list(demo.box_detector.box_head.point_range) == [-16.0, -56.0, -3.0, 16.0, 56.0, 2.0]


@pytest.mark.slow
def test_box_loss_goes_down_when_overfitting_one_sample(samples):
    """A light LiDAR + camera detector (0.8 m voxels, 64 x 176 images) overfits the keyframe."""
    torch.manual_seed(0)
    cell = 1.6
    vox = DynamicVoxelEncoder(5, (0.8, 0.8, 0.4), OUTDOOR, out_channels=16, hidden_channels=16)
    sparse = SparseEncoder(16, vox.sparse_shape, stage_channels=(16, 32), out_channels=32)  # z: 20 -> 10 -> 4
    lid = LidarEncoder(vox, sparse, BEVBackbone(128, (64,), (1,), (1,), (64,)))
    cam = CameraEncoder(ResNetBackbone(18, (3,)), LSSViewTransform(32, 16, OUTDOOR, cell, depth_bins=(1.0, 60.0, 2.0)), neck_channels=32)
    head = CenterHead(64, GROUPS, OUTDOOR, cell, head_channels=32)
    det = BoxDetector(head, BEVRegionSampler(64, 32, OUTDOOR, 3), lid, cam, ConvFuser({"lidar": 64, "camera": 16}, 64), CenterPointLoss())
    batch = collate([nuscenes_sample(samples, image_size=(64, 176))])
    opt = torch.optim.AdamW(det.parameters(), lr=3e-3)
    history = []
    for _ in range(12):
        out = det(batch, decode=False)
        loss = det.loss(out, batch)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in loss.items()})
    assert history[-1]["total"] < 0.5 * history[0]["total"], [h["total"] for h in history]
    assert history[-1]["heatmap"] < history[0]["heatmap"] and history[-1]["regression"] < history[0]["regression"]


# ---------------------------------------------------------------- camera appearance of boxes
def test_project_boxes_hand_made_pinhole():
    from dense3d.models.proposals.boxes.image_features import project_boxes

    # camera at the origin looking along +x (image u to -y, v to -z), f = 100, centre (50, 40)
    lidar2cam = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    cam2img = torch.tensor([[100.0, 0, 50, 0], [0, 100, 40, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    l2i = (cam2img @ lidar2cam).view(1, 1, 4, 4)
    boxes = torch.tensor([[[10.0, 0, 0, 0.2, 2, 2, 0], [-10.0, 0, 0, 2, 2, 2, 0]]])  # ahead; behind
    rects, area = project_boxes(boxes, l2i, (80, 100))
    # near face at x = 9.9: u = 50 -+ 100 * 1 / 9.9, v = 40 -+ 100 * 1 / 9.9
    torch.testing.assert_close(rects[0, 0, 0], torch.tensor([50 - 100 / 9.9, 40 - 100 / 9.9, 50 + 100 / 9.9, 40 + 100 / 9.9]))
    assert area[0, 0, 0] > 0 and area[0, 0, 1] == 0


def test_image_region_features_see_only_their_own_pixels(nusc):
    from dense3d.models.proposals.boxes.image_features import ImageRegionEncoder, project_boxes

    sample = nusc
    batch = collate([sample])
    torch.manual_seed(0)
    enc = ImageRegionEncoder(out_channels=32).eval()
    real = sample.boxes.boxes.tensor[:, :7].float()
    boxes = torch.cat([real, real[:1]])[None]  # + one padded region (mask False) on top of a real box
    mask = torch.ones(boxes.shape[:2], dtype=torch.bool)
    mask[0, -1] = False
    H, W = batch.images.shape[-2:]
    rects, area = project_boxes(boxes, batch.lidar2img, (H, W))
    seen = (area >= enc.min_area).any(1)[0] & mask[0]  # (R,)
    assert seen.sum() >= 10 and (~seen).sum() >= 1
    with torch.no_grad():
        f0 = enc(batch, boxes, mask)
    assert f0.shape == (1, boxes.shape[1], 32)
    assert torch.all(f0[0, ~seen] == 0) and torch.all(f0[0, seen].abs().sum(-1) > 0)
    # repaint the inside of one box's rectangle in the camera that sees most of it
    k = int(torch.nonzero(seen)[0])
    v = int(area[0, :, k].argmax())
    x0, y0, x1, y1 = rects[0, v, k].round().long().tolist()
    batch.images[0, v, :, y0:y1, x0:x1] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    with torch.no_grad():
        f1 = enc(batch, boxes, mask)
    changed = (f1 - f0).abs().amax(-1)[0] > 1e-6
    assert changed[k]
    # boxes whose rectangles (grown by the stem's receptive field) miss the repainted one stay the same
    grow = 12.0
    r = rects[0]  # (V, R, 4)
    overlaps = ((r[..., 0] < x1 + grow) & (r[..., 2] > x0 - grow) & (r[..., 1] < y1 + grow) & (r[..., 3] > y0 - grow))
    touching = (overlaps[v] & (area[0, v] > 0))
    assert not changed[~touching].any()


def _coloured_room():
    """Two boxes (the second turned by 90 degrees) holding red and blue points, grey points outside."""
    from dense3d.structures import Batch, Sample
    from dense3d.structures.sample import PointCloud

    g = torch.Generator().manual_seed(0)
    red = torch.rand(50, 3, generator=g) * torch.tensor([1.0, 0.5, 0.5]) + torch.tensor([0.5, 0.75, 0.25])  # box 0
    blue = torch.rand(30, 3, generator=g) * torch.tensor([0.4, 1.8, 0.8]) + torch.tensor([2.8, 0.1, 0.1])  # box 1 (turned)
    grey = torch.rand(40, 3, generator=g) * torch.tensor([1.0, 1.0, 1.0]) + torch.tensor([5.0, 5.0, 0.0])  # no box
    xyz = torch.cat([red, blue, grey])
    rgb = torch.cat([torch.tensor([[230.0, 20, 20]]).expand(50, 3), torch.tensor([[10.0, 30, 240]]).expand(30, 3),
                     torch.full((40, 3), 128.0)])
    cloud = PointCloud(torch.cat([xyz, rgb], 1), feature_names=("x", "y", "z", "r", "g", "b"), source="room.npy")
    batch = Batch(samples=[Sample("room", points=cloud)], points=torch.cat([torch.zeros(120, 1), cloud.points], 1))
    boxes = torch.tensor([[[1.0, 1.0, 0.5, 1.0, 0.5, 0.5, 0.0],
                           [3.0, 1.0, 0.5, 1.8, 0.4, 0.8, math.pi / 2],  # 1.8 along y once turned
                           [8.0, 8.0, 0.5, 1.0, 1.0, 1.0, 0.0],          # empty
                           [1.0, 1.0, 0.5, 1.0, 0.5, 0.5, 0.0]]])        # padding over box 0
    mask = torch.tensor([[True, True, True, False]])
    return batch, boxes, mask


def test_point_region_features_pool_each_box_own_points():
    from dense3d.models.proposals.boxes.point_features import PointRegionEncoder

    batch, boxes, mask = _coloured_room()
    torch.manual_seed(0)
    enc = PointRegionEncoder(out_channels=16, bins=4).eval()
    with torch.no_grad():
        stats = enc.pool(batch.points, boxes[0], mask[0], [4, 5, 6])  # (R, 64 + 7 + H)
        f0 = enc(batch, boxes, mask)
    # colour statistics of exactly the points inside: 50 red ones in box 0, 30 blue in the turned box 1
    torch.testing.assert_close(stats[0, 64:67], torch.tensor([230.0, 20, 20]) / 255)
    torch.testing.assert_close(stats[1, 64:67], torch.tensor([10.0, 30, 240]) / 255)
    torch.testing.assert_close(stats[:2, 67:70], torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats[:2, :64].sum(1), torch.ones(2))
    assert stats[0, (3 * 4 + 0) * 4 + 0] == 1 and stats[1, (0 * 4 + 0) * 4 + 3] == 1  # one histogram cell each
    torch.testing.assert_close(stats[:2, 70], torch.log1p(torch.tensor([50.0, 30])) / math.log(1e4))
    assert torch.all(stats[2:] == 0)  # the empty box, the padded one
    assert f0.shape == (1, 4, 16) and torch.all(f0[0, 2:] == 0) and torch.all(f0[0, :2].abs().sum(-1) > 0)
    # repaint box 1's points: only box 1 changes
    batch.points[50:80, 4:7] = torch.tensor([250.0, 250, 250])
    with torch.no_grad():
        f1 = enc(batch, boxes, mask)
    changed = (f1 - f0).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [False, True, False, False]


def test_point_region_features_need_colours_and_train():
    from dense3d.errors import ConfigError
    from dense3d.models.proposals.boxes.point_features import PointRegionEncoder

    batch, boxes, mask = _coloured_room()
    enc = PointRegionEncoder(out_channels=8)
    enc(batch, boxes, mask).sum().backward()
    assert enc.point_mlp[0].weight.grad.abs().sum() > 0 and enc.mlp[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="room.npy.*feature_names"):
        PointRegionEncoder(colour_names=("red", "green", "blue"))(batch, boxes, mask)


def test_point_region_features_follow_the_boxes_and_the_batch():
    """Turning and moving the room with its boxes changes nothing (box-local shape, colours);
    a second sample without points in the batch gets zeros; float64 clouds are read as well."""
    from dense3d.models.proposals.boxes.point_features import PointRegionEncoder
    from dense3d.structures import Batch, Boxes3D, Sample

    batch, boxes, mask = _coloured_room()
    torch.manual_seed(0)
    enc = PointRegionEncoder(out_channels=8).eval()
    with torch.no_grad():
        s0 = enc.pool(batch.points, boxes[0], mask[0], [4, 5, 6])
        moved = batch.points.clone()
        turned = Boxes3D._wrap(boxes[0].clone()).rotate(0.7)
        c, s = math.cos(0.7), math.sin(0.7)
        xy = moved[:, 1:3].clone()
        moved[:, 1], moved[:, 2] = c * xy[:, 0] - s * xy[:, 1], s * xy[:, 0] + c * xy[:, 1]
        shift = torch.tensor([3.0, -2.0, 0.5])
        moved[:, 1:4] += shift
        moved_boxes = turned.tensor.clone()
        moved_boxes[:, 0:3] += shift
        s1 = enc.pool(moved.double(), moved_boxes, mask[0], [4, 5, 6])
        torch.testing.assert_close(s1, s0, atol=1e-5, rtol=1e-5)  # PointNet part (71:) included
        # the same box scaled by 2 sees the same points in other box-local places: the PointNet part moves
        s2 = enc.pool(batch.points, torch.cat([boxes[0, :1, :3], 2 * boxes[0, :1, 3:6], boxes[0, :1, 6:]], 1), mask[0, :1], [4, 5, 6])
        assert not torch.allclose(s2[0, 71:], s0[0, 71:])
        # batch of two: the second sample holds no points
        two = Batch(samples=batch.samples + [Sample("empty")], points=batch.points)
        f = enc(two, boxes.expand(2, -1, -1), mask.expand(2, -1))
        assert torch.all(f[1] == 0) and torch.all(f[0, :2].abs().sum(-1) > 0)
        torch.testing.assert_close(f[0], enc(batch, boxes, mask)[0])


def test_encoder_and_head_on_different_bev_grids_is_a_config_error():
    """A LiDAR encoder with 1.6 m cells under a head of 0.8 m cells: decode gathered cells of the
    head's grid from the encoder's map (an IndexError deep in decode, or silently wrong boxes
    when the map is the larger one); now a one-line ConfigError at build and at forward."""
    from dense3d.errors import ConfigError

    rng = (-12.8, -12.8, -5.0, 12.8, 12.8, 3.0)
    lid = lidar_encoder(5, rng, (0.4, 0.4, 0.2))  # cell 0.4 * 4 * 1 = 1.6 m
    with pytest.raises(ConfigError, match="lidar_encoder point_range/cell_size"):
        BoxDetector(CenterHead(128, GROUPS, rng, 0.8), BEVRegionSampler(128, 16, rng, 3), lidar_encoder=lid)
    head = CenterHead(8, GROUPS, rng, 0.8)
    with pytest.raises(ConfigError, match="32 x 32"):
        head(torch.zeros(1, 8, 16, 16))


def test_code_weights_of_another_length_are_a_config_error():
    """10 code weights (nuScenes) for an 8-channel head were cut to 8 silently (vx, vy's 0.2 lost
    on a head without yaw), 6 for 8 channels raised a broadcasting error inside the loss."""
    from dense3d.errors import ConfigError
    from dense3d.models.proposals.boxes.center_head import CenterTargets

    rng = (-12.8, -12.8, -5.0, 12.8, 12.8, 3.0)
    head = CenterHead(128, GROUPS, rng, 1.6, with_velocity=False)  # 8 channels
    with pytest.raises(ConfigError, match="code_weights"):
        BoxDetector(head, BEVRegionSampler(128, 16, rng, 3), lidar_encoder=lidar_encoder(5, rng, (0.4, 0.4, 0.2)),
                    loss=CenterPointLoss(code_weights=[1.0] * 6))
    preds = head(torch.zeros(1, 128, 16, 16))
    targets = head.targets([torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])], [torch.tensor([0])])
    assert isinstance(targets, CenterTargets)
    for n in (6, 10):
        with pytest.raises(ConfigError, match="code_weights"):
            CenterPointLoss(code_weights=[1.0] * n)(preds, targets)
    assert torch.isfinite(CenterPointLoss(code_weights=[1.0] * 8)(preds, targets)["total"])
