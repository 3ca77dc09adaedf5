"""Indoor scans lie at x, y >= 0: their augmentation turns, scales and mirrors them about the room's
middle (``center: points``), so a training sample keeps its points and boxes in the detector's range.
Before, mirrored about the origin, about 3 of 4 training samples of ``perception_indoor`` left the
range [-0.4, 9.2] m with their boxes (which the head then dropped from its targets)."""
from __future__ import annotations

import math

import pytest
import torch

from dense3d.data.transforms import GlobalFlip, GlobalRotate, GlobalScale
from dense3d.errors import ConfigError
from dense3d.structures import Boxes3D, Sample
from dense3d.structures.sample import BoxAnnotations, CameraImages, PointCloud

C = (4.0, 3.0)


@pytest.fixture(scope="module")
def synthetic_root():
    """The demo's synthetic set (as tests/engine/conftest.py: generated once when missing)."""
    from pathlib import Path

    from dense3d.data.synthetic import generate_default

    root = Path("data/synthetic/default")
    generate_default(root)
    return root.resolve()


def _scene() -> Sample:
    pts = torch.tensor([[1.0, 2.0, 0.5, 7.0], [6.0, 5.0, 1.0, 8.0], [3.0, 0.5, 0.0, 9.0]])
    boxes = Boxes3D(torch.tensor([[2.0, 1.0, 0.5, 1.0, 2.0, 1.0, 0.3]]))
    l2c = torch.eye(4)[None].clone()
    l2c[0, :3, 3] = torch.tensor([0.5, -0.2, 3.0])
    cams = CameraImages(images=torch.zeros(1, 3, 8, 8), cam2img=torch.diag(torch.tensor([4.0, 4.0, 1.0, 1.0]))[None], lidar2cam=l2c)
    return Sample(sample_id="s", points=PointCloud(pts, feature_names=("x", "y", "z", "intensity")),
                  boxes=BoxAnnotations(boxes=boxes, labels=torch.tensor([0]), class_names=("chair",)), cameras=cams)


def _project(sample: Sample, xyz: torch.Tensor) -> torch.Tensor:
    cam = (sample.cameras.lidar2cam[0] @ torch.cat([xyz, torch.ones(len(xyz), 1)], 1).T).T[:, :3]  # (N, 3)
    uvw = cam @ sample.cameras.cam2img[0, :3, :3].T
    return uvw[:, :2] / uvw[:, 2:]


@pytest.mark.parametrize("axis", ["x", "y"])
def test_flip_about_a_center_mirrors_points_and_boxes_across_it(axis):
    s = _scene()
    out = GlobalFlip.flip(s, axis, C)
    k = 0 if axis == "x" else 1
    want = s.points.points.clone()
    want[:, k] = 2 * C[k] - want[:, k]
    assert torch.allclose(out.points.points, want)
    assert math.isclose(float(out.boxes.boxes.center[0, k]), 2 * C[k] - float(s.boxes.boxes.center[0, k]), abs_tol=1e-6)
    assert torch.allclose(out.boxes.boxes.tensor[0, 6], GlobalFlip.flip(s, axis).boxes.boxes.tensor[0, 6])  # yaw as about 0
    # the camera still sees each point where it saw it before
    assert torch.allclose(_project(out, out.points.points[:, :3]), _project(s, s.points.points[:, :3]), atol=1e-4)
    a = out.meta["lidar_aug"]
    assert torch.allclose(a[:3, 3], torch.tensor([2 * C[0], 0, 0]) if axis == "x" else torch.tensor([0, 2 * C[1], 0]))


def test_rotate_and_scale_about_a_center_keep_it_fixed():
    s = _scene()
    s.points.points[0, :2] = torch.tensor(C)
    r = GlobalRotate.rotate(s, 0.7, C)
    assert torch.allclose(r.points.points[0, :2], torch.tensor(C), atol=1e-6)
    assert math.isclose(float(r.boxes.boxes.tensor[0, 6]), 1.0, abs_tol=1e-6)
    d_before = (s.boxes.boxes.center[0, :2] - torch.tensor(C)).norm()
    d_after = (r.boxes.boxes.center[0, :2] - torch.tensor(C)).norm()
    assert math.isclose(float(d_before), float(d_after), rel_tol=1e-6)
    g = torch.Generator().manual_seed(0)
    sc = GlobalScale((2.0, 2.0), center=C)(s, generator=g)
    assert torch.allclose(sc.points.points[0, :2], torch.tensor(C))
    assert torch.allclose(sc.boxes.boxes.center[0, :2], 2 * (s.boxes.boxes.center[0, :2] - torch.tensor(C)) + torch.tensor(C))
    assert torch.allclose(_project(sc, sc.points.points[:, :3]), _project(s, s.points.points[:, :3]), atol=1e-4)


def test_no_center_is_the_origin_bit_for_bit():
    s = _scene()
    flipped = GlobalFlip.flip(s, "x")
    assert torch.equal(flipped.points.points[:, 0], -s.points.points[:, 0])
    assert torch.equal(GlobalFlip.flip(s, "x", (0.0, 0.0)).points.points, flipped.points.points)


def test_flip_about_the_points_middle_keeps_the_room_where_it_was():
    s = _scene()
    for axis in ("x", "y"):
        out = GlobalFlip.flip(s, axis, "points").points.points[:, :2]
        assert torch.allclose(out.min(0).values, s.points.points[:, :2].min(0).values)
        assert torch.allclose(out.max(0).values, s.points.points[:, :2].max(0).values)
    # the room's middle is (3.5, 2.75): a box at x = 2 goes to x = 5
    assert math.isclose(float(GlobalFlip.flip(s, "x", "points").boxes.boxes.center[0, 0]), 5.0, abs_tol=1e-6)


@pytest.mark.parametrize("center", [[1.0], "ab", [1.0, float("nan")], [1, 2, 3]])
def test_a_bad_center_is_one_line(center):
    with pytest.raises(ConfigError, match=r"GlobalFlip.*center"):
        GlobalFlip(center=center)


def test_indoor_training_samples_stay_in_the_detector_range(synthetic_root):
    from hydra.utils import instantiate

    from dense3d.engine.train import compose_config

    cfg = compose_config(["experiment=perception_indoor", f"paths.synthetic_dir={synthetic_root}"])
    x0, y0, _, x1, y1, _ = cfg.model.box_detector.box_head.point_range
    assert {cfg.data.train.transforms.transforms[k].center for k in ("rotate", "scale", "flip")} == {"points"}
    data = instantiate(cfg.data.train)
    inside_points, inside_boxes, n_boxes = [], 0, 0
    for i in range(min(len(data), 12)):
        for draw in range(3):
            torch.manual_seed(10 * i + draw)  # the transforms draw from torch's generator outside training
            s = data[i]
            xy = s.points.points[:, :2]
            inside_points.append(((xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)).float().mean())
            c = s.boxes.boxes.center[:, :2]
            inside_boxes += int(((c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1)).sum())
            n_boxes += len(c)
    assert float(torch.stack(inside_points).min()) > 0.97
    assert inside_boxes == n_boxes
