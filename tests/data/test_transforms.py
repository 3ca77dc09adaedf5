"""Transforms keep the geometry consistent across points, boxes, cameras and microphones."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dense3d.data.datasets import TOD3CapDataset
from dense3d.data.transforms import (
    AudioResample,
    Compose,
    GlobalFlip,
    GlobalRotate,
    GlobalScale,
    ImageNormalize,
    ImageResize,
    LogMelSpectrogram,
    PointRangeFilter,
    PointShuffle,
)
from dense3d.errors import AudioError, ConfigError
from dense3d.structures import AudioClip, EventAnnotations, Events, Sample

PKL = "n015-2018-07-24-11-22-45+0800.pkl"


@pytest.fixture(scope="module")
def front(samples):
    """The real keyframe with CAM_FRONT only."""
    return TOD3CapDataset(str(samples / "nuscenes" / PKL), cameras=["CAM_FRONT"])[0]


def _project(sample):
    """Box corners -> (K, 8, 2) pixels in the first camera and (K, 8) depths."""
    corners = sample.boxes.boxes.corners()  # (K, 8, 3)
    hom = torch.cat([corners, torch.ones(*corners.shape[:2], 1)], -1)  # (K, 8, 4)
    p = hom @ sample.cameras.lidar2img[0].T  # (K, 8, 4)
    return p[..., :2] / p[..., 2:3], p[..., 2]


def _visible(sample):
    uv, depth = _project(sample)
    return (depth > 1).all(1) & (uv.abs() < 5000).all(-1).all(1)  # (K,)


MIRROR = [3, 2, 1, 0, 7, 6, 5, 4]  # a mirrored box lists its corners with the y sign swapped


@pytest.mark.parametrize(
    "transform,perm",
    [
        (lambda s: GlobalRotate.rotate(s, 0.7), list(range(8))),
        (lambda s: GlobalRotate.rotate(s, -2.5), list(range(8))),
        (GlobalScale((0.9, 0.9)), list(range(8))),
        (lambda s: GlobalFlip.flip(s, "y"), MIRROR),
        (lambda s: GlobalFlip.flip(s, "x"), MIRROR),
        (Compose({"rot": GlobalRotate(seed=3), "scale": GlobalScale(seed=4), "flip": GlobalFlip(0.5, 0.5, seed=5)}), None),
    ],
    ids=["rot+0.7", "rot-2.5", "scale0.9", "flip_y", "flip_x", "composed"],
)
def test_global_transforms_keep_projections_and_containment(front, transform, perm):
    out = transform(front)
    keep = _visible(front)
    assert keep.sum() >= 10
    uv0, _ = _project(front)
    uv1, _ = _project(out)
    uv0, uv1 = uv0[keep], uv1[keep]  # (K', 8, 2)
    if perm is not None:
        # every corner lands on the same pixel (sub-pixel: float32 over ~1000 px)
        assert torch.allclose(uv1, uv0[:, perm], atol=0.05)
    else:  # unknown mirroring: every new corner on the pixel of some old corner of its box
        assert float(torch.cdist(uv1, uv0).min(-1).values.max()) < 0.05
    # scaling moves the points away from the camera centre, so depth scales; rotations keep it
    inside0 = front.boxes.boxes.points_in_boxes(front.points.points).sum(0)
    inside1 = out.boxes.boxes.points_in_boxes(out.points.points).sum(0)
    assert (inside0 - inside1).abs().max() <= 1  # float rounding on box faces at most
    assert out.points.points[:, 3:].equal(front.points.points[:, 3:])
    # the accumulated augmentation maps original points to the new ones
    aug = out.meta["lidar_aug"]
    assert torch.allclose(front.points.xyz @ aug[:3, :3].T, out.points.xyz, atol=1e-3)


def test_rotation_moves_velocity_mics_and_azimuth():
    boxes_sample = Sample(
        sample_id="s",
        audio=AudioClip(torch.zeros(2, 10), 16000, mic_positions=torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])),
        events=EventAnnotations(Events([[0.0, 1.0]]), torch.tensor([0]), ("horn",), azimuth=torch.tensor([0.25])),
    )
    out = GlobalRotate.rotate(boxes_sample, math.pi / 2)
    assert torch.allclose(out.audio.mic_positions, torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]), atol=1e-6)
    assert out.events.azimuth.item() == pytest.approx(0.25 + math.pi / 2)
    flipped = GlobalFlip.flip(boxes_sample, "y")
    assert flipped.events.azimuth.item() == pytest.approx(-0.25) and flipped.audio.mic_positions[1, 1] == -1.0
    flipped = GlobalFlip.flip(boxes_sample, "x")
    assert flipped.events.azimuth.item() == pytest.approx(math.pi - 0.25)
    assert boxes_sample.events.azimuth.item() == 0.25  # inputs are not modified


def test_image_resize_updates_intrinsics(front):
    out = ImageResize((450, 800))(front)
    assert out.cameras.images.shape == (1, 3, 450, 800)
    keep = _visible(front)
    uv0, _ = _project(front)
    uv1, _ = _project(out)
    assert torch.allclose(uv1[keep], uv0[keep] * 0.5, atol=0.05)
    norm = ImageNormalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(out)
    assert torch.allclose(norm.cameras.images, (out.cameras.images - 0.5) / 0.25)


def test_point_range_and_shuffle(front):
    out = PointRangeFilter([-50, -50, -5, 50, 50, 3])(front)
    xyz = out.points.xyz
    assert 0 < len(out.points) < len(front.points)
    assert bool(((xyz[:, :2] >= -50) & (xyz[:, :2] < 50)).all()) and bool((xyz[:, 2] < 3).all())
    a, b = PointShuffle(seed=1)(front), PointShuffle(seed=1)(front)
    assert torch.equal(a.points.points, b.points.points) and not torch.equal(a.points.points, front.points.points)
    assert torch.equal(a.points.points.sum(0), front.points.points.sum(0)) or torch.allclose(a.points.points.sum(0), front.points.points.sum(0))
    with pytest.raises(ConfigError, match=r"PointRangeFilter: field 'point_range'"):
        PointRangeFilter([0, 0, 0, 0, 1, 1])


def test_compose_dict_order_and_keys():
    calls = []

    class Mark:
        reads, writes = ("points",), ("meta.x",)

        def __init__(self, name):
            self.name = name

        def __call__(self, s):
            calls.append(self.name)
            return s

    c = Compose({"b": Mark("b"), "off": None, "a": Mark("a")})
    c(Sample(sample_id="x"))
    assert calls == ["b", "a"] and list(c.transforms) == ["b", "a"]
    assert c.reads == ("points",) and c.writes == ("meta.x",)
    assert set(GlobalRotate.writes) >= {"points", "boxes", "cameras"}


def test_audio_resample_and_log_mel():
    t = torch.arange(44100) / 44100
    s = Sample(sample_id="a", audio=AudioClip(torch.stack([torch.sin(2 * math.pi * 1000 * t)] * 4) * 0.5, 44100))
    with pytest.raises(AudioError, match=r"field 'sample_rate': expected 16000 Hz \(add AudioResample"):
        LogMelSpectrogram()(s)
    pipe = Compose({"resample": AudioResample(16000), "mel": LogMelSpectrogram(n_mels=64, hop_length=160)})
    out = pipe(s)
    assert out.audio.sample_rate == 16000 and out.audio.waveform.shape == (4, 16000)
    mel = out.meta["log_mel"]
    assert mel.shape == (4, 64, 101)
    # a 1 kHz tone: the loudest mel band is the one holding 1 kHz, in every frame of every channel
    peak = mel[:, :, 5:-5].argmax(1)
    assert int(peak.min()) == int(peak.max())
    assert LogMelSpectrogram().spectrogram(torch.zeros(2, 4, 16000)).shape == (2, 4, 64, 101)


def test_object_range_filter_keeps_everything_aligned(front):
    from dense3d.data.transforms import ObjectRangeFilter

    ev = EventAnnotations(Events([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]), torch.tensor([0, 0, 0]), ("horn",), source_box=torch.tensor([0, 1, -1]))
    far = front.boxes.boxes.center[:, :2].abs().max(1).values >= 30  # (K,)
    near_idx = (~far).nonzero().flatten()
    # event 0 from the first far box (dropped), event 1 from the second near box
    src = torch.tensor([int(far.nonzero()[0]), int(near_idx[1]), -1])
    ann = dataclasses.replace(front.boxes, captions=[[str(i)] for i in range(len(front.boxes))])
    s = dataclasses.replace(front, boxes=ann, events=dataclasses.replace(ev, source_box=src))
    out = ObjectRangeFilter([-30, -30, -5, 30, 30, 3])(s)
    k = int((~far).sum())
    assert len(out.boxes) == k and 0 < k < 69
    assert out.boxes.captions == [[str(i)] for i in near_idx.tolist()]
    assert out.boxes.num_points.tolist() == front.boxes.num_points[~far].tolist()
    assert out.meta["box_valid"].shape == (k,) and len(out.meta["caption_schema"]) == k
    assert out.events.source_box.tolist() == [-1, 1, -1]


def test_global_transforms_turn_point_normals():
    """ScanNet with use_normals: the nx, ny, nz columns turn with the scene (a rotated or mirrored
    wall keeps facing the same way relative to its points); colours stay; unit length is kept."""
    from dense3d.structures import PointCloud

    names = ("x", "y", "z", "r", "g", "b", "nx", "ny", "nz")
    pts = torch.tensor([[1.0, 0.0, 0.0, 10.0, 20.0, 30.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 1.0, 2.0, 3.0, 0.0, 0.6, 0.8]])
    s = Sample(sample_id="n", points=PointCloud(pts, feature_names=names))
    rot = GlobalRotate.rotate(s, math.pi / 2).points.points
    assert torch.allclose(rot[:, 6:9], torch.tensor([[0.0, 1.0, 0.0], [-0.6, 0.0, 0.8]]), atol=1e-6)
    assert torch.equal(rot[:, 3:6], pts[:, 3:6])
    flip = GlobalFlip.flip(s, "x").points.points
    assert torch.allclose(flip[:, 6:9], torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.6, 0.8]]))
    scaled = GlobalScale((2.0, 2.0))(s).points.points
    assert torch.allclose(scaled[:, 6:9], pts[:, 6:9]) and torch.allclose(scaled[:, :3], 2 * pts[:, :3])
