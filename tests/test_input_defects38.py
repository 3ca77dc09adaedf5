"""User-facing input defects left by earlier sessions (session 38): a model whose LiDAR encoder
reads another number of point columns than its data set gives failed at the first training batch."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def indoor_root(tmp_path_factory):
    """A few synthetic indoor rooms (x, y, z, r, g, b points): ``paths.synthetic_dir=root``."""
    from dense3d.data.synthetic import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(kind="indoor", scenes=6, seed=0), root / "indoor")
    return root


def test_a_model_for_other_point_columns_is_refused_before_training(indoor_root, tmp_path, capsys):
    """experiment=perception_outdoor data=indoor_rooms: the outdoor LiDAR encoder reads 5 columns
    (x, y, z, intensity, ring), the rooms give 6 (x, y, z, r, g, b). It built the data, the model
    and the trainer, printed the model summary and failed at the first batch ("Batch: field
    'points[0]'"). Now one line naming the model field, the data set's columns and the model
    configs made for them (the models without LiDAR, or for 5 columns, are not offered), before
    the trainer is set up; nothing written."""
    from dense3d.cli import main

    out = tmp_path / "run"
    status = main(["train", "experiment=perception_outdoor", "data=indoor_rooms", "trainer.max_steps=1",
                   f"paths.synthetic_dir={indoor_root}", f"paths.output_dir={out}"])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.err.strip() == (
        "dense3d train: ConfigError: configs/train.yaml: field 'model': expected a model for the 6 point columns of "
        "data.train (ScanReferDataset: x, y, z, r, g, b): model=indoor_rooms, "
        "got model.box_detector.lidar_encoder.voxel_encoder.in_channels=5")
    assert "Trainable params" not in captured.out + captured.err and not out.exists()


def test_check_point_columns_passes_the_model_made_for_the_data(indoor_root):
    """The indoor model on the indoor rooms (6 columns both): no error, and the global random
    states are as they were (the first sample's augmentation draws from its own: a run's dropout
    and initialisation streams do not depend on the check); a model without a LiDAR encoder of
    dense3d's (the audio-visual one) is not checked."""
    import random

    import numpy as np
    import torch

    from dense3d.engine.train import check_point_columns, compose_config
    from dense3d.utils.config import instantiate_config

    cfg = compose_config(["experiment=perception_indoor", f"paths.synthetic_dir={indoor_root}"])
    model, datamodule = instantiate_config(cfg.model, "test", "model"), instantiate_config(cfg.data, "test", "data")
    assert datamodule.train_set.transforms is not None  # the training split augments: its draws must not leak
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    check_point_columns(model, datamodule)
    assert torch.equal(torch.get_rng_state(), states[0]) and np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    cfg = compose_config(["experiment=perception_indoor", "model=av_events", f"paths.synthetic_dir={indoor_root}"])
    check_point_columns(instantiate_config(cfg.model, "test", "model"), instantiate_config(cfg.data, "test", "data"))


def test_the_refusal_offers_the_model_configs_made_for_the_columns():
    """Each model config is composed and offered when its LiDAR encoder reads the data's columns;
    none for a column count no config reads (the option to set instead)."""
    from dense3d.engine.train import _models_reading

    assert _models_reading(5) == "model=outdoor_demo"
    assert _models_reading(4) == "a model with box_detector.lidar_encoder.voxel_encoder.in_channels=4"


def test_a_model_config_that_does_not_compose_alone_is_left_out(tmp_path, monkeypatch):
    """A user's model config that needs other overrides to compose (here a default that names a
    missing option) is not offered, and does not replace the refusal with another error."""
    import shutil

    import dense3d.engine.train as train

    configs = tmp_path / "configs"
    shutil.copytree(train.CONFIG_DIR, configs)
    (configs / "model" / "aa_broken.yaml").write_text("defaults:\n  - proposals@box_detector: no_such_option\n")
    (configs / "model" / "ab_copy.yaml").write_text((configs / "model" / "indoor_rooms.yaml").read_text())
    monkeypatch.setattr(train, "CONFIG_DIR", configs)
    assert train._models_reading(6) == "model=ab_copy / model=indoor_rooms"
