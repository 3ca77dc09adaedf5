"""The hydra data configs of the synthetic sets load the generated files through the loaders."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize(
    "name, sensors, check",
    [
        ("synthetic_outdoor", "lidar_camera", lambda s: s.points is not None and s.cameras.images.shape[0] == 6 and len(s.boxes) > 0 and all(s.boxes.captions)),
        ("synthetic_indoor", "lidar", lambda s: s.points.points.shape[1] == 6 and len(s.boxes) > 0 and all(s.boxes.captions)),
        ("synthetic_events", "audio_video", lambda s: s.audio.waveform.shape == (4, 160000) and len(s.events) > 0),
        ("synthetic_favd", "audio_video", lambda s: s.video.frames.shape[0] == 80 and len(s.paragraph.split()) > 20),
    ],
)
def test_synthetic_data_configs_read_the_generated_sets(synth_root, tmp_path, name, sensors, check):
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "default").symlink_to(synth_root, target_is_directory=True)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}", f"paths.data_dir={tmp_path}", f"sensors={sensors}"])
    ds = instantiate(cfg.data)
    assert len(ds) == 2  # the train split of the 4-scene sets
    assert check(ds[0])
