"""dense3d.data.readers on small files written here."""
from __future__ import annotations

import numpy as np
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
