"""Audio-visual timing and channels: where video frames read below their native rate sit in time,
and FAVDBench's mono / stereo soundtracks through its config, collate and the audio encoder."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dense3d.data.collate import collate
from dense3d.data.datasets.media import load_clip
from dense3d.data.readers import read_video_frames
from dense3d.data.synthetic.av import _write_mp4
from dense3d.errors import VideoError
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.video.encoder import VideoEncoder
from dense3d.structures import Sample, VideoFrames

NATIVE_FPS = 8
FLASH = 4  # the one frame (pts 0.5 s) that shows the event: white, every other frame black


def _flash_clip(folder: Path) -> Path:
    """A 2 s, 8 fps clip (16 frames) written as the synthetic generator writes its clips (each
    frame the picture of the instant f / 8), black except frame FLASH."""
    frames = np.zeros((2 * NATIVE_FPS, 32, 32, 3), np.uint8)
    frames[FLASH] = 255
    _write_mp4(folder / "flash.mp4", frames, NATIVE_FPS)
    return folder / "flash.mp4"


def _video_encoder() -> VideoEncoder:
    torch.manual_seed(0)
    return VideoEncoder(ResNetBackbone(18, out_indices=(1,)), out_channels=16).eval()


@pytest.mark.parametrize("fps", [None, 8.0, 2.0])
def test_a_frame_read_below_its_native_rate_sits_at_its_own_centre(tmp_path, fps):
    """perception_events reads the 8 fps clips at 2 fps: the encoder put each kept frame at its pts
    plus half the gap between *kept* frames (0.25 s), so the frame of 0.5-0.625 s sat at 0.75 s,
    0.19 s after the audio of the same instant; read at 8 fps it sat at 0.5625 s. Frame f shows
    [f / 8, (f + 1) / 8): its features belong at f / 8 + 1 / 16 at any read rate."""
    _flash_clip(tmp_path)
    _, video = load_clip(tmp_path, None, "flash", ("video",), None, fps, None)
    assert video.frame_duration == pytest.approx(1 / NATIVE_FPS)
    kept = video.timestamps.tolist()
    assert kept == pytest.approx([k / NATIVE_FPS for k in range(0, 16, 8 // int(fps or 8))])
    batch = collate([Sample("flash", video=video)])
    enc = _video_encoder()
    centre = FLASH / NATIVE_FPS + 0.5 / NATIVE_FPS  # 0.5625 s
    with torch.no_grad():
        at_frames = enc(batch)
        i = kept.index(FLASH / NATIVE_FPS)
        assert float(at_frames.times[0, i]) == pytest.approx(centre)
        # resampled onto an audio-like grid (every 10 ms): the flash's features peak at its centre
        grid = torch.arange(0.0, 2.0, 0.01)[None]
        on_grid = enc(batch, grid, torch.ones_like(grid, dtype=torch.bool))
    dark = at_frames.features[0, 0]  # a black frame's features
    away = (on_grid.features[0] - dark).norm(dim=-1)  # (T',) how far each time is from "black"
    assert float(grid[0, int(away.argmax())]) == pytest.approx(centre, abs=0.006)


def test_read_video_frames_gives_the_native_frame_duration(tmp_path):
    path = _flash_clip(tmp_path)
    for fps in (None, 8.0, 2.0, 3.0):
        frames, times, duration = read_video_frames(path, fps=fps, return_frame_duration=True)
        assert duration == pytest.approx(0.125)
    frames, times = read_video_frames(path, fps=2.0)  # the two-value form callers use stays
    assert len(times) == 4


def test_video_frames_without_a_frame_duration_fall_back_to_the_kept_gap_with_a_warning():
    """VideoFrames built by user code (no frame_duration): the kept frames' half gap, documented,
    with one warning; a mixed batch centres each clip its own way."""
    enc = _video_encoder()
    frames = torch.zeros(4, 3, 32, 32)
    starts = torch.arange(4) * 0.5
    user = Sample("user", video=VideoFrames(frames, starts))
    read = Sample("read", video=VideoFrames(frames, starts, frame_duration=0.125))
    batch = collate([user, read])
    assert torch.isnan(batch.video_frame_duration[0]) and float(batch.video_frame_duration[1]) == 0.125
    with pytest.warns(UserWarning, match="without VideoFrames.frame_duration"), torch.no_grad():
        out = enc(batch)
    assert out.times[0].tolist() == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert out.times[1].tolist() == pytest.approx([0.0625, 0.5625, 1.0625, 1.5625])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per encoder
        with torch.no_grad():
            enc(batch)
            enc(collate([read]))


@pytest.mark.parametrize("bad", [0.0, -0.125, float("nan"), "1/8", True])
def test_a_bad_frame_duration_is_one_line(bad):
    with pytest.raises(VideoError, match=r"^/data/c\.mp4: field 'frame_duration': expected seconds > 0 .*, got ") as e:
        VideoFrames(torch.zeros(2, 3, 8, 8), torch.arange(2.0), source="/data/c.mp4", frame_duration=bad)
    assert "\n" not in str(e.value)
