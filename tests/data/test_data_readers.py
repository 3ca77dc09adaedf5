"""dense3d.data.readers on small files written here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dense3d.data.readers import read_image


def test_read_image_scales_8_and_16_bit_to_unit_range(tmp_path):
    """A 16-bit PNG (depth-like or HDR exports) decodes to uint16: it must be divided by 65535,
    not 255 (which gave values up to 257)."""
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp_path / "white16.png")
    Image.fromarray(np.full((4, 6), 32768, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((4, 6, 3), 255, np.uint8)).save(tmp_path / "white8.png")
    white16, grey16, white8 = (read_image(tmp_path / n) for n in ("white16.png", "grey16.png", "white8.png"))
    assert white16.shape == white8.shape == (3, 4, 6) and white16.dtype == torch.float32
    assert torch.equal(white16, torch.ones(3, 4, 6)) and torch.equal(white8, torch.ones(3, 4, 6))
    assert torch.allclose(grey16, torch.full((3, 4, 6), 32768 / 65535))


@pytest.mark.parametrize("fps, count", [(8.0, 16), (2.0, 4), (50.0, 50), (None, 50)])
def test_read_video_frames_keeps_the_asked_rate(tmp_path, fps, count):
    """2 s of 25 fps video: fps=8 gives 8 frames a second (a gap of at least 1/8 s from the last
    kept frame gave 13, 6.25 a second), each the first frame at or after its 1/fps grid point."""
    from dense3d.data.readers import read_video_frames
    from dense3d.data.synthetic.av import _write_mp4

    frames = np.zeros((50, 32, 32, 3), dtype=np.uint8)
    _write_mp4(tmp_path / "v.mp4", frames, 25)
    video, times = read_video_frames(tmp_path / "v.mp4", fps=fps)
    assert video.shape == (count, 3, 32, 32) and len(times) == count
    if fps is not None and fps < 25:
        grid = torch.arange(count, dtype=torch.float64) / fps  # (count,)
        assert bool(((times.double() - grid) > -1e-4).all() and ((times.double() - grid) < 0.04 + 1e-4).all()), times
