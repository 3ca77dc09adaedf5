"""``SampleDataset.reference_captions()``: every annotated region's references, read without the
sensors (the corpus of SCST's reward with ``scst_document_frequency=train``)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from dense3d.data.synthetic import SynthConfig, generate

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


def _dataset(data_root: Path, name: str, sensors: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}", f"paths.synthetic_dir={data_root}", f"sensors={sensors}"])
    return instantiate(cfg.data)


def _loaded_references(ds) -> list[list[str]]:
    """The references of each region of the samples read in full (sensors on, no transforms)."""
    found = []
    for entry in ds.index:
        s = ds._load(entry)
        for regions in (s.boxes, s.events):
            if regions is not None and regions.captions is not None:
                found += [list(c) for c in regions.captions if c]
    return found


@pytest.mark.parametrize("name, sensors", [("synthetic_outdoor", "lidar_camera"), ("synthetic_indoor", "lidar"),
                                           ("synthetic_events", "audio_video")])
def test_reference_captions_are_the_loaded_samples_references(synth_root, name, sensors):
    ds = _dataset(synth_root, name, sensors)
    refs = ds.reference_captions()
    assert refs and all(isinstance(r, list) and r and all(isinstance(c, str) and c for c in r) for r in refs)
    assert refs == _loaded_references(ds)
    assert ds.sensors  # the data set itself keeps its sensors (a copy read the annotations)


def test_reference_captions_do_not_read_the_sensors(synth_root, tmp_path):
    """The outdoor set's references come from its caption file and infos alone: with the LiDAR
    sweeps and camera images gone, they are still read (a full read would fail)."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_root / "outdoor", root / "outdoor")
    ds = _dataset(root, "synthetic_outdoor", "lidar_camera")
    expected = _loaded_references(ds)
    for f in (root / "outdoor").rglob("*"):
        if f.is_file() and f.suffix in (".bin", ".jpg", ".png"):
            f.unlink()
    with pytest.raises(Exception):
        ds._load(ds.index[0])  # the sensors are gone
    assert ds.reference_captions() == expected


def test_joint_reference_captions_are_the_boxes_then_the_events(tmp_path):
    generate(SynthConfig(kind="joint", scenes=4, seed=0), tmp_path / "joint")
    ds = _dataset(tmp_path, "synthetic_joint", "all").train_set  # the data module's training half
    boxes, events = ds.scenes.reference_captions(), ds.recordings.reference_captions()
    assert boxes and events
    assert ds.reference_captions() == boxes + events
