"""Converters write atomically: a failure leaves no partial output and an older one untouched."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dense3d.data.converters import convert_tod3cap_captions, write_mp4, write_points_bin, write_wav
from dense3d.data.datasets.tod3cap import parse_caption_entry
from dense3d.data.readers import read_points_bin
from dense3d.errors import AnnotationError, AudioError, PointCloudError, VideoError


def test_tod3cap_captions_to_final_caption(tmp_path):
    src = tmp_path / "old.json"
    src.write_text(json.dumps({
        "a": {"attribute_caption": "a red car", "motion_caption": "driving"},
        "b": {"final_caption": "a bus."},
    }))
    counts = convert_tod3cap_captions(src, tmp_path / "new.json")
    assert counts == {"final_caption": 1, "template": 0, "composed": 1}
    new = json.loads((tmp_path / "new.json").read_text())
    assert new["a"]["final_caption"] == "a red car. driving." and new["a"]["motion_caption"] == "driving"
    assert parse_caption_entry(new["a"], "new.json", "a") == (["a red car. driving."], "final_caption")


def test_failed_conversion_leaves_nothing(tmp_path):
    src = tmp_path / "bad.json"
    src.write_text(json.dumps({"a": {"final_caption": "ok"}, "b": {"text": "no caption field"}}))
    dst = tmp_path / "out.json"
    with pytest.raises(AnnotationError, match=r"bad.json: field 'b.final_caption'"):
        convert_tod3cap_captions(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]
    dst.write_text("older output")
    with pytest.raises(AnnotationError):
        convert_tod3cap_captions(src, dst)
    assert dst.read_text() == "older output" and len(list(tmp_path.iterdir())) == 2


def test_points_bin_round_trip_and_failures(tmp_path):
    pts = torch.randn(100, 5)
    write_points_bin(tmp_path / "a.pcd.bin", pts)
    assert torch.equal(read_points_bin(tmp_path / "a.pcd.bin", 5), pts)
    pts[3, 2] = float("nan")
    with pytest.raises(PointCloudError, match=r"b.pcd.bin: field 'points': expected finite values"):
        write_points_bin(tmp_path / "b.pcd.bin", pts)
    with pytest.raises(VideoError, match=r"c.mp4: field 'frames': expected \(T, 3, H, W\) with even H and W"):
        write_mp4(tmp_path / "c.mp4", torch.zeros(2, 3, 5, 5), fps=8)
    with pytest.raises(AudioError):
        write_wav(tmp_path / "d.wav", np.full((1, 10), np.inf), 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pcd.bin"]


def test_add_ann_tokens_links_captions(samples, tmp_path):
    from dense3d.data.converters import add_ann_tokens
    from dense3d.data.datasets import TOD3CapDataset

    pkl = samples / "nuscenes" / "n015-2018-07-24-11-22-45+0800.pkl"
    token = "ca9a282c9e77460f8360f564131a8af5"
    table = [{"token": f"a{i}", "sample_token": token} for i in range(69)]
    table.insert(10, {"token": "other", "sample_token": "another sample"})
    (tmp_path / "sample_annotation.json").write_text(json.dumps(table))
    (tmp_path / "caps.json").write_text(json.dumps({"a68": {"final_caption": "the last box"}}))
    assert add_ann_tokens(pkl, tmp_path / "sample_annotation.json", tmp_path / "infos.pkl") == 69
    ds = TOD3CapDataset(str(tmp_path / "infos.pkl"), data_root=str(pkl.parent), caption_file=str(tmp_path / "caps.json"), sensors=())
    s = ds[0]
    assert s.boxes.object_ids[:2] == ["a0", "a1"] and s.boxes.captions[68] == ["the last box"] and s.boxes.captions[0] == []
    (tmp_path / "short.json").write_text(json.dumps(table[:30]))
    with pytest.raises(AnnotationError, match=r"field 'data_list\[0\].instances': expected 29 boxes .*, got 69"):
        add_ann_tokens(pkl, tmp_path / "short.json", tmp_path / "bad.pkl")
    assert not (tmp_path / "bad.pkl").exists() and not list(tmp_path.glob(".bad.pkl*"))


def test_tod3cap_released_captions_to_final_caption(tmp_path):
    nested = {"attribute_caption": {"attribute_caption": "red bus"}, "depth_caption": {"depth": 20.6},
              "localization_caption": {"localization_caption": "behind the ego car"},
              "motion_caption": {"motion_caption": "stopped"}, "map_caption": {"map_caption": "at the bus stop"}}
    src = tmp_path / "released.json"
    src.write_text(json.dumps({"a": nested, "b": dict(nested, final_caption="A red bus waits behind us.")}))
    assert convert_tod3cap_captions(src, tmp_path / "new.json") == {"final_caption": 1, "template": 1, "composed": 0}
    new = json.loads((tmp_path / "new.json").read_text())
    assert new["a"]["final_caption"] == "red bus about 21 meters away behind the ego car is stopped at the bus stop"
    assert new["b"]["final_caption"] == "A red bus waits behind us." and new["a"]["map_caption"] == nested["map_caption"]
    assert convert_tod3cap_captions(src, tmp_path / "tpl.json", caption_source="template")["template"] == 2
    assert json.loads((tmp_path / "tpl.json").read_text())["b"]["final_caption"] == new["a"]["final_caption"]
