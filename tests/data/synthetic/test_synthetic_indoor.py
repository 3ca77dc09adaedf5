"""Indoor synthetic rooms: coloured points inside their boxes, descriptions that name
another object, and the ScanRefer loader reading them."""
from __future__ import annotations

import json

import numpy as np

from dense3d.data.datasets import ScanReferDataset
from dense3d.data.synthetic import PALETTE
from dense3d.data.synthetic.grammar import class_words


def _ann(root):
    return json.loads((root / "indoor" / "synthetic_annotations.json").read_text())["scenes"]


def test_points_lie_in_their_boxes_with_their_colour(synth_root):
    scans = synth_root / "indoor" / "scans"
    for rec in _ann(synth_root):
        sid = rec["scene_id"]
        vert = np.load(scans / f"{sid}_aligned_vert.npy")
        bbox = np.load(scans / f"{sid}_aligned_bbox.npy")
        ins = np.load(scans / f"{sid}_ins_label.npy")
        sem = np.load(scans / f"{sid}_sem_label.npy")
        assert vert.shape[1] == 9 and bbox.shape[1] == 8 and len(ins) == len(vert) == len(sem)
        assert np.allclose(np.linalg.norm(vert[:, 6:9], axis=1), 1.0)
        for o in rec["objects"]:
            i = o["index"]
            row = bbox[bbox[:, 7] == i][0]
            pts = vert[ins == i]
            assert len(pts) == o["num_points"] > 20
            lo, hi = row[0:3] - row[3:6] / 2 - 1e-4, row[0:3] + row[3:6] / 2 + 1e-4
            assert ((pts[:, 0:3] >= lo) & (pts[:, 0:3] <= hi)).all()
            assert np.abs(pts[:, 3:6].mean(0) - PALETTE[o["colour"]]).max() < 8
        # floor and walls are there too, as ScanNet has them (nyu40 2 and 1)
        assert {1, 2} <= set(bbox[:, 6].astype(int).tolist())


def test_descriptions_name_the_relation_object(synth_root):
    n = 0
    for rec in _ann(synth_root):
        objs = rec["objects"]
        for o in objs:
            assert len(o["captions"]) == 3 and len(set(o["captions"])) == 3
            for c in o["captions"]:
                assert f"{o['colour']} {class_words(o['label'])}" in c or (class_words(o["label"]) in c and o["colour"] in c)
                for t in o["relation_targets"]:
                    assert f"the {objs[t]['colour']} {class_words(objs[t]['label'])}" in c
                    n += 1
            for t in o["relation_targets"]:
                assert f"the {objs[t]['colour']} {class_words(objs[t]['label'])}" not in o["context_free_caption"]
    assert n > 20


def test_scanrefer_loader_reads_synthetic_indoor(synth_root):
    root = synth_root / "indoor"
    refer = json.loads((root / "ScanRefer_filtered_train.json").read_text())
    ds = ScanReferDataset(str(root / "ScanRefer_filtered_{split}.json"), str(root / "scans"), split="train")
    assert len(ds) == 2
    recs = {r["scene_id"]: r for r in _ann(synth_root)}
    for k in range(len(ds)):
        s = ds[k]
        rec = recs[s.sample_id]
        assert s.points.points.shape[1] == 6
        assert len(s.boxes) == len(rec["objects"])  # floor and walls are not detection classes
        n_desc = sum(len(c) for c in s.boxes.captions)
        assert n_desc == sum(1 for e in refer if e["scene_id"] == s.sample_id) == 3 * len(rec["objects"])
        for oid, caps in zip(s.boxes.object_ids, s.boxes.captions):
            assert caps == rec["objects"][int(oid)]["captions"]
