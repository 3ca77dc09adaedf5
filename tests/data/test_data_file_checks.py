"""Data inputs the second probe found crashing or misreported: `dense3d convert stats` on a
damaged synthetic_annotations.json, a camera image of another size in a TOD3Cap sample, and a
corrupt mp4 (libav's own log line before ours)."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from dense3d.cli import main
from dense3d.data.datasets import TOD3CapDataset
from dense3d.data.readers import read_mp4_audio, read_video_frames
from dense3d.data.synthetic import SynthConfig, generate
from dense3d.data.synthetic.generate import dataset_stats
from dense3d.errors import AnnotationError, AudioError, ImageError, VideoError


def _obj(**kw) -> dict:
    return {"label": "chair", "relation": "next_to", "captions": ["a brown chair next to the table ."], **kw}


def _set(tmp_path, scenes: list[dict], kind: str = "indoor"):
    (tmp_path / "synthetic_annotations.json").write_text(json.dumps({"kind": kind, "scenes": scenes}))
    return tmp_path


def _scene(i: int = 0, **kw) -> dict:
    return {"scene_id": f"scene{i:04d}_00", "split": "train", "objects": [_obj(), _obj(label="table")], **kw}


def test_stats_of_a_sound_hand_written_set(tmp_path):
    stats = dataset_stats(_set(tmp_path, [_scene(0), _scene(1, split="val")]))
    assert stats["scenes"] == 2 and stats["splits"] == {"train": 1, "val": 1, "test": 0}
    assert stats["classes"] == {"chair": 2, "table": 2} and stats["captions"] == 4


@pytest.mark.parametrize("scenes,field,expected,got", [
    ([_scene(), _scene(1, objects=[_obj(), {"relation": "next_to", "captions": ["x"]}])],
     "scenes[1].objects[1].label", "a string", "missing"),
    ([_scene(objects=[_obj(label=3)])], "scenes[0].objects[0].label", "a string", "int"),
    ([_scene(objects=[_obj(captions=["a chair .", 7])])], "scenes[0].objects[0].captions[1]", "a string", "int"),
    ([_scene(objects=[_obj(captions="a chair .")])], "scenes[0].objects[0].captions", "a list of strings", "str"),
    ([_scene(objects=[{"label": "chair", "relation": "none", "caption": None}])], "scenes[0].objects[0].caption", "a string", "NoneType"),
    ([_scene(objects=[{"label": "chair", "captions": ["x"]}])], "scenes[0].objects[0].relation", "a string", "missing"),
    ([_scene(objects=["chair"])], "scenes[0].objects[0]", "an object with 'label', 'relation' and captions", "str"),
    ([_scene(), _scene(1, split="dev")], "scenes[1].split", "one of train, val, test", "dev"),
])
def test_stats_of_a_damaged_set_name_the_field(tmp_path, scenes, field, expected, got):
    with pytest.raises(AnnotationError, match=re.escape(f"synthetic_annotations.json: field '{field}': expected {expected}, got {got}")):
        dataset_stats(_set(tmp_path, scenes))


@pytest.mark.parametrize("change,field,got", [
    ({"favd_paragraph": None}, "scenes[0].favd_paragraph", "missing"),
    ({"favd_paragraph": ["a", "b"]}, "scenes[0].favd_paragraph", "list"),
    ({"events": [{"label": "footsteps"}]}, "scenes[0].events[0].caption", "missing"),
    ({"events": [{"label": 1, "caption": "x"}]}, "scenes[0].events[0].label", "int"),
    ({"events": {"label": "x"}}, "scenes[0].events", "dict"),
])
def test_stats_of_a_damaged_av_set(tmp_path, change, field, got):
    scene = {"scene_id": "av00000", "split": "train", "objects": [_obj()], "favd_paragraph": "a car passes .",
             "events": [{"label": "footsteps", "caption": "footsteps sound ."}]}
    scene.update(change)
    scene = {k: v for k, v in scene.items() if v is not None}
    with pytest.raises(AnnotationError, match=re.escape(f"field '{field}': expected ")) as e:
        dataset_stats(_set(tmp_path, [scene], kind="av"))
    assert str(e.value).endswith(f"got {got}")


def test_convert_stats_prints_one_line(tmp_path, capsys):
    _set(tmp_path, [_scene(), _scene(3, objects=[_obj(), _obj(), {"relation": "none", "captions": []}])])
    assert main(["convert", "stats", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "AnnotationError" in err and "field 'scenes[1].objects[2].label'" in err


def test_camera_of_another_size_is_named_by_its_file(tmp_path):
    root = tmp_path / "outdoor"
    generate(SynthConfig(kind="outdoor", scenes=1, seed=0, split=(1.0, 0.0, 0.0)), root)
    info_file = root / "nuscenes_infos_train.pkl"
    with open(info_file, "rb") as f:
        images = pickle.load(f)["data_list"][0]["images"]
    cam = next(iter(images))  # the first camera (CAM_FRONT) is the odd one: the others must not be blamed
    odd = root / images[cam]["img_path"]
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(odd)
    ds = TOD3CapDataset(str(info_file), data_root=str(root), sensors=("lidar", "camera"), sweeps=0, data_prefix=None)
    with pytest.raises(ImageError) as e:
        ds[0]
    msg = str(e.value)
    assert msg.startswith(f"{odd}: field 'data_list[0].images.{cam}.img_path': expected the other cameras' size (H, W) (")
    assert msg.endswith("got (10, 12)")


def test_corrupt_mp4_prints_only_our_line(tmp_path, capfd, caplog):
    import logging

    import av.logging
    import torchvision.io  # noqa: F401  sets PyAV's log level to ERROR process-wide

    bad = tmp_path / "clip.mp4"
    bad.write_text("not a video")
    level = av.logging.get_level()
    caplog.set_level(logging.DEBUG)  # PyAV hands libav's lines to the logging module ("libav.*" loggers)
    with pytest.raises(VideoError, match="clip.mp4: field 'video': expected a decodable video stream"):
        read_video_frames(bad)
    with pytest.raises(AudioError, match="clip.mp4: field 'audio': expected a decodable audio stream"):
        read_mp4_audio(bad)
    assert av.logging.get_level() == level  # restored
    captured = capfd.readouterr()
    assert "moov" not in captured.err and "Invalid data" not in captured.err
    assert [r.getMessage() for r in caplog.records if r.name.startswith("libav")] == []
