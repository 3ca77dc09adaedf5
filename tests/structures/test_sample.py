import pytest
import torch

from dense3d.errors import AudioError, CalibrationError, PointCloudError, VideoError
from dense3d.structures import AudioClip, Batch, CameraImages, PointCloud, Sample, VideoFrames


def test_sample_sensors_and_shapes():
    pc = PointCloud(torch.randn(10, 5), ("x", "y", "z", "intensity", "ring"))
    cams = CameraImages(torch.rand(2, 3, 8, 8), torch.eye(4).repeat(2, 1, 1), torch.eye(4).repeat(2, 1, 1))
    assert cams.lidar2img.shape == (2, 4, 4)
    audio = AudioClip(torch.zeros(4, 1600), 16000)
    assert audio.duration == pytest.approx(0.1)
    s = Sample("s0", points=pc, audio=audio)
    assert s.sensors == ("points", "audio")
    b = Batch([s], points=torch.zeros(10, 6))
    assert len(b) == 1 and b.to("cpu").points.shape == (10, 6)


def test_bad_sensor_inputs():
    with pytest.raises(PointCloudError, match="finite"):
        PointCloud(torch.tensor([[0.0, float("inf"), 0.0]]), source="a.bin")
    with pytest.raises(PointCloudError, match="feature_names"):
        PointCloud(torch.zeros(3, 4), ("x", "y", "z"))
    with pytest.raises(CalibrationError, match="lidar2cam"):
        CameraImages(torch.rand(2, 3, 8, 8), torch.eye(4).repeat(2, 1, 1), torch.eye(4).repeat(3, 1, 1))
    with pytest.raises(AudioError, match="sample_rate"):
        AudioClip(torch.zeros(1, 10), 0)
    with pytest.raises(VideoError, match="increasing"):
        VideoFrames(torch.zeros(2, 3, 4, 4), torch.tensor([1.0, 0.5]))
