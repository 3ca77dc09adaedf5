"""collate pads per sensor exactly as the Batch docstring says."""
from __future__ import annotations

import pytest
import torch

from dense3d.data import collate
from dense3d.errors import AudioError, PointCloudError
from dense3d.structures import AudioClip, CameraImages, PointCloud, Sample, VideoFrames


def _sample(i, n_pts=None, cams=False, audio_len=None, frames=None, rate=16000):
    s = Sample(sample_id=str(i))
    if n_pts is not None:
        s.points = PointCloud(torch.full((n_pts, 5), float(i)), ("x", "y", "z", "intensity", "ring"))
    if cams:
        k = torch.eye(4).repeat(2, 1, 1)
        k[:, 0, 0] = 2.0
        s.cameras = CameraImages(torch.rand(2, 3, 8, 12), k, torch.eye(4).repeat(2, 1, 1) * 1.0)
    if audio_len is not None:
        s.audio = AudioClip(torch.ones(4, audio_len), rate)
    if frames is not None:
        s.video = VideoFrames(torch.rand(frames, 3, 6, 10), torch.arange(frames) * 0.125)
    return s


def test_collate_shapes_and_padding():
    samples = [
        _sample(0, n_pts=3, cams=True, audio_len=100, frames=4),
        _sample(1, audio_len=60, frames=2),
        _sample(2, n_pts=5, cams=True),
    ]
    b = collate(samples)
    assert len(b) == 3 and b.samples == samples
    assert b.points.shape == (8, 6)
    assert b.points[:, 0].tolist() == [0, 0, 0, 2, 2, 2, 2, 2] and bool((b.points[3:, 1:] == 2).all())
    assert b.images.shape == (3, 2, 3, 8, 12) and b.camera_mask.tolist() == [True, False, True]
    assert bool((b.images[1] == 0).all()) and torch.equal(b.images[2], samples[2].cameras.images)
    assert b.lidar2img.shape == (3, 2, 4, 4) and b.lidar2img[0, 0, 0, 0] == 2.0
    assert b.audio.shape == (3, 4, 100) and b.audio_lengths.tolist() == [100, 60, 0] and b.sample_rate == 16000
    assert bool((b.audio[1, :, 60:] == 0).all()) and bool((b.audio[1, :, :60] == 1).all())
    assert b.video.shape == (3, 4, 3, 6, 10) and b.video_mask.tolist() == [[True] * 4, [True, True, False, False], [False] * 4]
    assert b.video_timestamps[1, 1] == 0.125 and b.video_timestamps.shape == (3, 4)


def test_collate_absent_sensor_is_none():
    b = collate([_sample(0, n_pts=2)])
    assert b.images is None and b.audio is None and b.video is None and b.points.shape == (2, 6)


def test_collate_mismatches():
    with pytest.raises(AudioError, match=r"collate: field 'audio.sample_rate'"):
        collate([_sample(0, audio_len=10), _sample(1, audio_len=10, rate=8000)])
    other = _sample(1)
    other.points = PointCloud(torch.zeros(2, 3))
    with pytest.raises(PointCloudError, match=r"collate: field 'points.feature_names'"):
        collate([_sample(0, n_pts=2), other])
