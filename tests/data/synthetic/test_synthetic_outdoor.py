"""Outdoor synthetic scenes: LiDAR counts, camera colours, caption relations, and the
TOD3Cap loader reading them."""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dense3d.data.datasets import TOD3CapDataset
from dense3d.data.synthetic import PALETTE
from dense3d.data.synthetic.grammar import noun_phrase
from dense3d.structures import Boxes3D

SPLITS = ("train", "val", "test")


def _infos(root):
    out = []
    for s in SPLITS:
        with open(root / "outdoor" / f"nuscenes_infos_{s}.pkl", "rb") as f:
            d = pickle.load(f)
        out.extend(d["data_list"])
    return d["metainfo"], out


def _objects(root):
    ann = json.loads((root / "outdoor" / "synthetic_annotations.json").read_text())
    return {o["ann_token"]: o for r in ann["scenes"] for o in r["objects"]}


def test_info_layout_is_mmdet3d_v11(synth_root):
    meta, infos = _infos(synth_root)
    assert meta["info_version"] == "1.1"
    assert list(meta["categories"]) == ["car", "truck", "trailer", "bus", "construction_vehicle", "bicycle",
                                        "motorcycle", "pedestrian", "traffic_cone", "barrier"]
    assert len(infos) == 4
    for info in infos:
        assert set(info["images"]) == {"CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}
        assert info["lidar_points"]["num_pts_feats"] == 5
        assert 3 <= len(info["instances"]) <= 15
        for inst in info["instances"]:
            assert len(inst["bbox_3d"]) == 7 and min(inst["bbox_3d"][3:6]) > 0
            assert 0 <= inst["bbox_label_3d"] < 10 and len(inst["ann_token"]) == 32


def test_lidar_counts_inside_boxes_match_num_lidar_pts(synth_root):
    _, infos = _infos(synth_root)
    total = 0
    for info in infos:
        pts = np.fromfile(synth_root / "outdoor" / info["lidar_points"]["lidar_path"], np.float32).reshape(-1, 5)
        assert 15000 < len(pts) < 40000
        assert set(np.unique(pts[:, 4]).astype(int)) <= set(range(32))
        assert pts[:, 3].min() >= 0 and pts[:, 3].max() <= 255
        boxes = Boxes3D.from_mmdet3d([i["bbox_3d"] for i in info["instances"]], origin=(0.5, 0.5, 0.5))
        counts = boxes.points_in_boxes(torch.from_numpy(pts)).sum(0)
        expected = torch.tensor([i["num_lidar_pts"] for i in info["instances"]])
        assert torch.equal(counts, expected), (counts, expected)
        total += int(expected.sum())
        # the ground lies at the box bottoms: few points under it, many just above
        z_ground = -1.84023
        assert abs(float(np.median(pts[pts[:, 2] < -1.5, 2])) - z_ground) < 0.05
    assert total > 500  # the boxes are really hit


def _nearest_palette(rgb: np.ndarray) -> str:
    """Name of the palette colour that explains ``rgb`` best as colour * shade, shade in [0.7, 1]."""
    best, name = np.inf, None
    for n, c in PALETTE.items():
        c = np.asarray(c, float)
        s = np.clip(float(rgb @ c) / float(c @ c), 0.7, 1.0)
        err = float(np.linalg.norm(rgb - s * c))
        if err < best:
            best, name = err, n
    return name


def test_boxes_project_onto_pixels_of_their_colour(synth_root):
    _, infos = _infos(synth_root)
    objects = _objects(synth_root)
    checked = 0
    for info in infos:
        boxes = Boxes3D.from_mmdet3d([i["bbox_3d"] for i in info["instances"]], origin=(0.5, 0.5, 0.5))
        for cam, c in info["images"].items():
            img = np.asarray(Image.open(synth_root / "outdoor" / c["img_path"]).convert("RGB"), float)
            h, w = img.shape[:2]
            k = np.eye(4)
            k[:3, :3] = np.asarray(c["cam2img"])
            l2c = np.asarray(c["lidar2cam"])
            lidar2img = k @ l2c
            cam_centre = torch.tensor(-l2c[:3, :3].T @ l2c[:3, 3], dtype=torch.float32)
            for j, inst in enumerate(info["instances"]):
                centre = np.append(np.asarray(inst["bbox_3d"][:3]), 1.0)
                p = lidar2img @ centre
                if p[2] < 1.0:
                    continue
                u, v = p[0] / p[2], p[1] / p[2]
                if not (3 <= u < w - 3 and 3 <= v < h - 3):
                    continue
                # occluded when the sight line to the centre passes through another box
                ts = torch.linspace(0.02, 0.98, 200)[:, None]
                line = cam_centre[None] + ts * (boxes.center[j][None] - cam_centre[None])
                inside = boxes.points_in_boxes(line)  # (200, K)
                inside[:, j] = False
                if bool(inside.any()):
                    continue
                patch = img[int(v) - 1 : int(v) + 2, int(u) - 1 : int(u) + 2].reshape(-1, 3)
                colour = _nearest_palette(np.median(patch, 0))
                assert colour == objects[inst["ann_token"]]["colour"], (cam, j, np.median(patch, 0))
                checked += 1
    assert checked >= 8


def test_captions_name_the_relation_object(synth_root):
    ann = json.loads((synth_root / "outdoor" / "synthetic_annotations.json").read_text())
    caps = {}
    for s in SPLITS:
        caps.update(json.loads((synth_root / "outdoor" / f"tod3cap_captions_{s}.json").read_text()))
    n_rel = 0
    for rec in ann["scenes"]:
        objs = rec["objects"]
        for o in objs:
            cap = caps[o["ann_token"]]["final_caption"]
            assert cap == o["captions"][0]
            assert noun_phrase(o["colour"], o["label"]) in cap
            for t in o["relation_targets"]:
                target = "the " + noun_phrase(objs[t]["colour"], objs[t]["label"])
                assert target in cap
                assert target not in o["context_free_caption"] or target.endswith(noun_phrase(o["colour"], o["label"]))
                n_rel += 1
    assert n_rel > 10


def test_tod3cap_loader_reads_synthetic_outdoor(synth_root):
    root = synth_root / "outdoor"
    ds = TOD3CapDataset(str(root / "nuscenes_infos_{split}.pkl"), split="train", caption_file=str(root / "tod3cap_captions_{split}.json"))
    assert len(ds) == 2
    _, infos = _infos(synth_root)
    by_token = {i["token"]: i for i in infos}
    for k in range(len(ds)):
        s = ds[k]
        info = by_token[s.sample_id]
        assert s.points.points.shape[1] == 5
        assert tuple(s.cameras.images.shape[1:]) == (3, 252, 448) and s.cameras.images.shape[0] == 6
        assert len(s.boxes) == len(info["instances"])
        assert torch.allclose(s.boxes.boxes.tensor[:, :7], torch.tensor([i["bbox_3d"] for i in info["instances"]], dtype=s.boxes.boxes.tensor.dtype), atol=1e-5)
        assert all(len(c) == 1 and c[0] for c in s.boxes.captions)
        assert s.boxes.num_points.tolist() == [i["num_lidar_pts"] for i in info["instances"]]
    assert ds.caption_schema == "final_caption"
    # the per-aspect fields are nested as TOD3Cap releases them: its own references compose
    tpl = TOD3CapDataset(str(root / "nuscenes_infos_{split}.pkl"), split="train", sensors=(),
                         caption_file=str(root / "tod3cap_captions_{split}.json"), caption_source="template")
    assert tpl.caption_schema == "template"
    objs = _objects(synth_root)
    for k in range(len(tpl)):
        s = tpl[k]
        for oid, caps in zip(s.boxes.object_ids, s.boxes.captions):
            o = objs[oid]
            head, tail = caps[0].split(" meters away ")
            assert head == f"{noun_phrase(o['colour'], o['label'])} about {round(round(math.hypot(*o['ego_xy']), 2))}"  # depth kept to cm, Python's round
            assert tail.endswith(("on the road", "on the sidewalk")) and " is " in tail


def test_demo_data_config_reads_the_captions_with_context(synth_root):
    """configs/data/synthetic_outdoor.yaml inherits data/tod3cap.yaml, whose caption_source is
    TOD3Cap's template; the synthetic benchmark's captions are the final captions (with the
    relation), which the demo and every outdoor experiment train on."""
    from hydra.utils import instantiate

    from dense3d.engine.train import compose_config

    cfg = compose_config(["experiment=demo", f"paths.synthetic_dir={synth_root}"])
    ds = instantiate(cfg.data.train)
    objs = _objects(synth_root)
    s = ds[0]
    assert s.boxes.captions and all(caps == objs[oid]["captions"] for oid, caps in zip(s.boxes.object_ids, s.boxes.captions))
