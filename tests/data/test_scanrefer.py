"""ScanReferDataset on the real ScanNet .bin and on ScanRefer JSON + npy files written here."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dense3d.data.datasets import SCANNET_CLASSES, ScanReferDataset
from dense3d.errors import AnnotationError, BoxError, PointCloudError


def _scene(tmp_path, scene="scene0001_00", boxes=None, n=500):
    rng = np.random.default_rng(0)
    vert = np.concatenate([rng.uniform(0, 4, (n, 3)), rng.integers(0, 256, (n, 3)), rng.normal(size=(n, 3))], 1)
    np.save(tmp_path / f"{scene}_aligned_vert.npy", vert.astype(np.float32))
    if boxes is None:
        boxes = [
            [1.0, 1.0, 0.5, 0.6, 0.6, 1.0, 5, 2],  # chair, object 2
            [2.0, 3.0, 0.4, 1.5, 0.8, 0.8, 7, 7],  # table, object 7
            [3.0, 0.5, 1.0, 0.2, 0.2, 2.0, 1, 9],  # wall (not a detection class), object 9
        ]
    np.save(tmp_path / f"{scene}_aligned_bbox.npy", np.asarray(boxes, dtype=np.float64))
    return vert


def _refs(tmp_path, entries, split="train"):
    rows = [
        {"scene_id": s, "object_id": str(o), "object_name": name, "ann_id": str(a), "description": d, "token": d.split()}
        for s, o, name, a, d in entries
    ]
    path = tmp_path / f"ScanRefer_filtered_{split}.json"
    path.write_text(json.dumps(rows))
    return path


ENTRIES = [
    ("scene0001_00", 2, "chair", 1, "the chair next to the table"),
    ("scene0001_00", 2, "chair", 0, "a brown chair"),
    ("scene0001_00", 9, "wall", 0, "the white wall"),
]


def test_real_scannet_bin(samples):
    ds = ScanReferDataset(None, str(samples / "scannet"))
    assert len(ds) == 1
    s = ds[0]
    assert s.sample_id == "scene0000_00" and s.points.points.shape == (40684, 6)
    assert s.points.feature_names == ("x", "y", "z", "r", "g", "b") and s.boxes is None
    assert float(s.points.points[:, 3:].max()) == 255.0


def test_scanrefer_scene(tmp_path):
    vert = _scene(tmp_path)
    _refs(tmp_path, ENTRIES)
    ds = ScanReferDataset(str(tmp_path / "ScanRefer_filtered_{split}.json"), str(tmp_path), split="train")
    assert len(ds) == 1
    s = ds[0]
    assert torch.allclose(s.points.points, torch.tensor(vert[:, :6], dtype=torch.float32))
    b = s.boxes
    assert b.object_ids == ["2", "7"]  # the wall is not one of the 18 classes
    assert [SCANNET_CLASSES[i] for i in b.labels] == ["chair", "table"]
    assert b.captions == [["a brown chair", "the chair next to the table"], []]  # ann_id order; table undescribed
    assert torch.allclose(b.boxes.tensor[1], torch.tensor([2.0, 3.0, 0.4, 1.5, 0.8, 0.8, 0.0]))
    assert s.meta["object_names"] == ["chair", ""] and s.meta["dropped_descriptions"] == 1
    s = ScanReferDataset(str(tmp_path / "ScanRefer_filtered_train.json"), str(tmp_path), use_normals=True)[0]
    assert s.points.points.shape == (500, 9) and s.points.feature_names[-1] == "nz"


def test_bin_fallback_with_boxes(tmp_path, samples):
    shutil.copy(samples / "scannet" / "scene0000_00.bin", tmp_path / "scene0000_00.bin")
    np.save(tmp_path / "scene0000_00_aligned_bbox.npy", np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4, 0]]))
    _refs(tmp_path, [("scene0000_00", 0, "bed", 0, "the bed")])
    s = ScanReferDataset(str(tmp_path / "ScanRefer_filtered_train.json"), str(tmp_path))[0]
    assert len(s.points) == 40684 and s.boxes.captions == [["the bed"]] and SCANNET_CLASSES[int(s.boxes.labels[0])] == "bed"


# ---------------------------------------------------------------- bad input
def test_json_missing_field(tmp_path):
    _scene(tmp_path)
    path = _refs(tmp_path, ENTRIES)
    rows = json.loads(path.read_text())
    del rows[1]["description"]
    path.write_text(json.dumps(rows))
    with pytest.raises(AnnotationError, match=r"ScanRefer_filtered_train.json: field '\[1\].description': expected a present field"):
        len(ScanReferDataset(str(path), str(tmp_path)))


def test_object_id_not_in_scene(tmp_path):
    _scene(tmp_path)
    path = _refs(tmp_path, [("scene0001_00", 42, "lamp", 0, "a lamp")])
    with pytest.raises(AnnotationError, match=r"field '\[0\].object_id': expected an object id in scene0001_00_aligned_bbox.npy, got 42"):
        ScanReferDataset(str(path), str(tmp_path))[0]


def test_unknown_class(tmp_path):
    _scene(tmp_path, boxes=[[1, 1, 1, 1, 1, 1, 41, 0]])
    path = _refs(tmp_path, [("scene0001_00", 0, "x", 0, "x")])
    with pytest.raises(AnnotationError, match=r"scene0001_00_aligned_bbox.npy: field 'boxes\[0\].nyu40_label': expected a NYU40 class id in 1..40"):
        ScanReferDataset(str(path), str(tmp_path))[0]


def test_zero_size_box(tmp_path):
    _scene(tmp_path, boxes=[[1, 1, 1, 1, 1, 1, 5, 0], [1, 1, 1, 1, 0, 1, 5, 1]])
    path = _refs(tmp_path, [("scene0001_00", 0, "chair", 0, "x")])
    with pytest.raises(BoxError, match=r"scene0001_00_aligned_bbox.npy: field 'boxes\[1\].size': expected dx, dy, dz > 0"):
        ScanReferDataset(str(path), str(tmp_path))[0]


def test_truncated_bin_and_nan_vertices(tmp_path, samples):
    (tmp_path / "scene0002_00.bin").write_bytes((samples / "scannet" / "scene0000_00.bin").read_bytes()[:4 * 6 * 10 + 4])
    with pytest.raises(PointCloudError, match=r"scene0002_00.bin: field 'points': expected a size that is a multiple of 24 bytes"):
        ScanReferDataset(None, str(tmp_path))[0]
    (tmp_path / "scene0002_00.bin").unlink()
    vert = _scene(tmp_path)
    vert[3, 0] = np.nan
    np.save(tmp_path / "scene0001_00_aligned_vert.npy", vert.astype(np.float32))
    with pytest.raises(PointCloudError, match=r"scene0001_00_aligned_vert.npy: field 'vertices\[3\]': expected finite values"):
        ScanReferDataset(None, str(tmp_path))[0]


def test_unannotated_scene_placeholder_row(tmp_path):
    """ScanRefer's preprocessing gives a ScanNet test scene (no annotations) the bbox file
    zeros((1, 8)): that scene has no boxes; it is not a zero-size box error."""
    _scene(tmp_path, scene="scene0707_00", boxes=np.zeros((1, 8)))
    s = ScanReferDataset(None, str(tmp_path))[0]
    assert s.sample_id == "scene0707_00" and len(s.boxes) == 0 and len(s.points) == 500
    assert s.boxes.boxes.tensor.shape == (0, 7) and s.meta["object_names"] == []


def test_test_split_descriptions_of_unannotated_scenes(tmp_path):
    """ScanRefer's test split describes objects of ScanNet test scenes, whose bbox file is
    zeros((1, 8)): read the natural way (the descriptions file of split 'test'), the scene has no
    boxes and its descriptions are counted as dropped; this raised 'an object id in
    scene0707_00_aligned_bbox.npy' unless scanrefer_file=None was passed."""
    _scene(tmp_path, scene="scene0707_00", boxes=np.zeros((1, 8)))
    _scene(tmp_path, scene="scene0708_00", boxes=np.zeros((1, 8)))  # described by no test row
    _refs(tmp_path, [("scene0707_00", 3, "chair", 0, "a black chair"), ("scene0707_00", 12, "table", 0, "the round table")],
          split="test")
    ds = ScanReferDataset(str(tmp_path / "ScanRefer_filtered_{split}.json"), str(tmp_path), split="test")
    assert len(ds) == 1  # one sample per described scene, as for train / val
    s = ds[0]
    assert s.sample_id == "scene0707_00" and len(s.boxes) == 0 and len(s.points) == 500
    assert s.meta["dropped_descriptions"] == 2 and s.meta["object_names"] == []


def test_description_not_a_string(tmp_path):
    """A null description was read as the caption "None" (str(None)): a made-up reference."""
    _scene(tmp_path)
    path = _refs(tmp_path, ENTRIES)
    rows = json.loads(path.read_text())
    rows[2]["description"] = None
    path.write_text(json.dumps(rows))
    with pytest.raises(AnnotationError, match=r"ScanRefer_filtered_train.json: field '\[2\].description': expected a sentence string, got None"):
        len(ScanReferDataset(str(path), str(tmp_path)))
