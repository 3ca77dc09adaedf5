"""TOD3Cap's outputs scored by dense3d: a nuScenes results file (global frame) back to the LiDAR
frame (`dense3d convert nuscenes-results`) and a TOD3Cap split's ground truth (`tod3cap-gt`).

The results files are written here as mmdet3d's ``lidar_nusc_box_to_global`` writes them:
independently with scipy rotations, and in the mmdet3d phase with mmdet3d's own functions."""
from __future__ import annotations

import json
import re
import pickle

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dense3d.cli import main as cli_main
from dense3d.data.converters import convert_nuscenes_results, tod3cap_ground_truth
from dense3d.errors import PredictionFormatError
from dense3d.eval import tod3cap
from dense3d.eval.caption_metrics import CaptionScorer
from dense3d.eval.formats import parse_box_predictions, parse_object_gt
from tests.mmdet3d_guard import need_mmdet3d

CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian",
           "traffic_cone", "barrier")


def _rigid(rng, yaw, tilt=0.02):
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("zyx", [yaw, rng.uniform(-tilt, tilt), rng.uniform(-tilt, tilt)]).as_matrix()
    m[:3, 3] = rng.uniform(-5, 5, 3)
    return m


def _infos(tmp_path, seed=0):
    """Two samples with their poses (a nuScenes-like LiDAR mount, a far-away global position) and
    gravity-centred LiDAR-frame boxes; written as an mmdet3d v1.1 info pickle."""
    rng = np.random.default_rng(seed)
    data_list = []
    for s in range(2):
        l2e = _rigid(rng, yaw=np.pi / 2 + rng.uniform(-0.05, 0.05))  # LIDAR_TOP: x to the right
        l2e[:3, 3] = [0.94, 0.0, 1.84]
        e2g = _rigid(rng, yaw=rng.uniform(-np.pi, np.pi))
        e2g[:3, 3] = [400.0 + 300 * s, 1100.0, 0.0]  # global coordinates far from the origin
        insts = []
        for k in range(6):
            xy = rng.uniform(-45, 45, 2)
            dims = rng.uniform(0.5, 6.0, 3)
            insts.append({"bbox_3d": [*xy, rng.uniform(-2, 1), *dims, rng.uniform(-np.pi, np.pi)],
                          "bbox_label_3d": int(rng.integers(0, 10)), "num_lidar_pts": int(rng.integers(1, 50)),
                          "num_radar_pts": int(rng.integers(0, 3)), "bbox_3d_isvalid": True, "velocity": [0.0, 0.0],
                          "ann_token": f"ann{s}_{k}"})
        if s == 1:
            insts[0].update(num_lidar_pts=0, num_radar_pts=7)  # seen by radar alone
        data_list.append({"token": f"sample{s}", "sample_idx": s, "timestamp": 1e15 + s, "ego2global": e2g.tolist(),
                          "lidar_points": {"lidar_path": f"s{s}.bin", "num_pts_feats": 5, "lidar2ego": l2e.tolist()},
                          "images": {}, "instances": insts})
    infos = {"metainfo": {"categories": {c: i for i, c in enumerate(CLASSES)}}, "data_list": data_list}
    path = tmp_path / "infos_val.pkl"
    path.write_bytes(pickle.dumps(infos))
    return path, infos


def _caption(inst):
    return f"{CLASSES[inst['bbox_label_3d']]} number {inst['ann_token']} is parked"


def _results_scipy(infos):
    """The global-frame boxes as mmdet3d's output_to_nusc_box + lidar_nusc_box_to_global write
    them (centre, wlh = (dy, dx, dz), quaternion w x y z), written with scipy."""
    results = {}
    for info in infos["data_list"]:
        l2g = np.array(info["ego2global"]) @ np.array(info["lidar_points"]["lidar2ego"])
        boxes = []
        for inst in info["instances"]:
            x, y, z, dx, dy, dz, yaw = inst["bbox_3d"]
            centre = l2g[:3, :3] @ np.array([x, y, z]) + l2g[:3, 3]
            q = Rotation.from_matrix(l2g[:3, :3] @ Rotation.from_euler("z", yaw).as_matrix()).as_quat()  # x y z w
            boxes.append({"sample_token": info["token"], "translation": centre.tolist(), "size": [dy, dx, dz],
                          "rotation": [q[3], q[0], q[1], q[2]], "velocity": [0.0, 0.0],
                          "detection_name": CLASSES[inst["bbox_label_3d"]], "detection_score": 0.5,
                          "attribute_name": "", "caption": [_caption(inst)]})
        results[info["token"]] = boxes
    return {"meta": {"use_lidar": True}, "results": results}


def _check_round_trip(pred_file, infos, atol=1e-6):
    pred = json.loads(pred_file.read_text())
    for info in infos["data_list"]:
        l2e = np.array(info["lidar_points"]["lidar2ego"])
        got = pred[info["token"]]
        assert len(got) == len(info["instances"])
        for rec, inst in zip(got, info["instances"]):
            want = np.array(inst["bbox_3d"])
            box = np.array(rec["box"])
            np.testing.assert_allclose(box[:6], want[:6], atol=atol)
            assert abs((box[6] - want[6] + np.pi) % (2 * np.pi) - np.pi) < atol
            ego = l2e[:3, :3] @ want[:3] + l2e[:3, 3]
            assert rec["ego_dist"] == pytest.approx(np.hypot(ego[0], ego[1]), abs=atol)
            assert rec["caption"] == _caption(inst) and rec["label"] == CLASSES[inst["bbox_label_3d"]]


def test_nuscenes_results_back_to_lidar_frame(tmp_path):
    info_path, infos = _infos(tmp_path)
    (tmp_path / "results_nusc.json").write_text(json.dumps(_results_scipy(infos)))
    n = convert_nuscenes_results(tmp_path / "results_nusc.json", info_path, tmp_path / "pred.json")
    assert n == {"samples": 2, "boxes": 12}
    _check_round_trip(tmp_path / "pred.json", infos)


def test_tod3cap_outputs_scored_end_to_end(tmp_path, capsys):
    """TOD3Cap's results with the ground-truth boxes and their own references: both protocols
    match every box to itself (IoU 1) and score the captions perfectly."""
    info_path, infos = _infos(tmp_path, seed=1)
    caps = {}
    for info in infos["data_list"]:
        for inst in info["instances"][:-1]:  # the last box of each sample has no caption entry
            caps[inst["ann_token"]] = {"attribute_caption": {"attribute_caption": CLASSES[inst["bbox_label_3d"]]},
                                       "depth_caption": {"depth": 3.0}, "localization_caption": {"localization_caption": "ahead"},
                                       "motion_caption": {"motion_caption": "parked"}, "map_caption": {"map_caption": inst["ann_token"]}}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    results = _results_scipy(infos)
    for info in infos["data_list"]:  # the captions TOD3Cap's model would have written: its references
        for box, inst in zip(results["results"][info["token"]], info["instances"]):
            box["caption"] = [f"{CLASSES[inst['bbox_label_3d']]} about 3 meters away ahead is parked {inst['ann_token']}"]
    (tmp_path / "results_nusc.json").write_text(json.dumps(results))
    assert cli_main(["convert", "nuscenes-results", "--results", str(tmp_path / "results_nusc.json"),
                     "--info", str(info_path), "--out", str(tmp_path / "pred.json")]) == 0
    assert cli_main(["convert", "tod3cap-gt", "--info", str(info_path), "--captions", str(tmp_path / "caps.json"),
                     "--out", str(tmp_path / "gt.json")]) == 0
    assert "wrote 12 objects (10 with a caption) of 2 samples" in capsys.readouterr().out
    gt = json.loads((tmp_path / "gt.json").read_text())
    assert gt["sample0"][0]["descriptions"] == [results["results"]["sample0"][0]["caption"][0]]
    assert gt["sample0"][-1]["descriptions"] == []
    # num_pts counts LiDAR and radar points, as nuScenes does (a box seen by radar alone stays)
    assert [o["num_pts"] for o in gt["sample1"]] == [i["num_lidar_pts"] + i["num_radar_pts"] for i in infos["data_list"][1]["instances"]]
    assert gt["sample1"][0]["num_pts"] == 7
    pred = parse_box_predictions("pred.json", json.loads((tmp_path / "pred.json").read_text()))
    objs = parse_object_gt("gt.json", gt)
    with CaptionScorer(metrics=("CIDEr", "BLEU")) as scorer:
        corrected = tod3cap.evaluate(pred, objs, mode="corrected", scorer=scorer)
        compatible = tod3cap.evaluate(pred, objs, mode="compatible", scorer=scorer)
    in_range = [o for s in gt.values() for o in s if o["ego_dist"] < tod3cap.CLASS_RANGE[o["label"]]]
    kept, captioned = len(in_range), sum(bool(o["descriptions"]) for o in in_range)
    assert 0 < captioned < kept
    # every captioned box in range paired with its own prediction, captions equal: recall 100,
    # precision over every prediction in range
    assert corrected["pairs"] == captioned
    assert corrected["BLEU-4-R@0.5"] == pytest.approx(100.0, abs=1e-4)
    assert corrected["BLEU-4-P@0.5"] == pytest.approx(100.0 * captioned / kept, abs=1e-4)
    assert compatible["records"] == kept and compatible["kept@0.5"] == kept
    assert compatible["BLEU-1@0.5"] < 100.0  # the uncaptioned boxes are scored against "The object is ignored."


def test_nuscenes_results_errors_are_one_line(tmp_path):
    info_path, infos = _infos(tmp_path)
    good = _results_scipy(infos)
    for mutate, field in [
        (lambda r: r["results"].update({"other": []}), "results.other"),
        (lambda r: r["results"]["sample0"][1].update(size=[1.0, 0.0, 1.0]), "results.sample0[1].size"),
        (lambda r: r["results"]["sample0"][1].update(rotation=[1.0, 1.0, 0.0, 0.0]), "results.sample0[1].rotation"),
        (lambda r: r["results"]["sample1"][0].update(translation=[1.0, float("nan"), 0.0]), "results.sample1[0].translation"),
        (lambda r: r["results"]["sample1"][0].pop("caption"), "results.sample1[0].caption"),
    ]:
        bad = json.loads(json.dumps(good))
        mutate(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad).replace("NaN", "NaN"))
        with pytest.raises(PredictionFormatError, match=f"bad.json: field {re.escape(repr(field))}"):
            convert_nuscenes_results(tmp_path / "bad.json", info_path, tmp_path / "pred.json")
        assert not (tmp_path / "pred.json").exists()  # nothing half-written
    # scored directly, a results file gets the way to convert it
    with pytest.raises(PredictionFormatError, match=r"convert it with `dense3d convert nuscenes-results"):
        parse_box_predictions("results_nusc.json", good)


@pytest.mark.mmdet3d
def test_nuscenes_results_written_by_mmdet3d(tmp_path):
    """The reference writer: mmdet3d's output_to_nusc_box + lidar_nusc_box_to_global (pyquaternion)."""
    need_mmdet3d()
    import torch
    from mmdet3d.evaluation.metrics.nuscenes_metric import lidar_nusc_box_to_global, output_to_nusc_box
    from mmdet3d.structures import LiDARInstance3DBoxes
    from nuscenes.eval.detection.config import config_factory

    info_path, infos = _infos(tmp_path, seed=2)
    cfg = config_factory("detection_cvpr_2019")
    cfg.class_range = {c: 1000.0 for c in CLASSES}  # keep every box (mmdet3d drops those beyond the class range)
    results = {}
    for info in infos["data_list"]:
        t = torch.tensor([i["bbox_3d"] + i["velocity"] for i in info["instances"]], dtype=torch.float64)
        det = {"bboxes_3d": LiDARInstance3DBoxes(t, box_dim=9, origin=(0.5, 0.5, 0.5)),
               "scores_3d": torch.full((len(t),), 0.5), "labels_3d": torch.tensor([i["bbox_label_3d"] for i in info["instances"]])}
        boxes, _ = output_to_nusc_box(det)
        boxes = lidar_nusc_box_to_global(info, boxes, list(CLASSES), cfg)
        results[info["token"]] = [
            {"sample_token": info["token"], "translation": b.center.tolist(), "size": b.wlh.tolist(),
             "rotation": b.orientation.elements.tolist(), "velocity": b.velocity[:2].tolist(),
             "detection_name": CLASSES[b.label], "detection_score": float(b.score), "attribute_name": "",
             "caption": _caption(inst)}
            for b, inst in zip(boxes, info["instances"])]
    (tmp_path / "results_nusc.json").write_text(json.dumps({"meta": {}, "results": results}))
    convert_nuscenes_results(tmp_path / "results_nusc.json", info_path, tmp_path / "pred.json")
    _check_round_trip(tmp_path / "pred.json", infos, atol=1e-5)  # mmdet3d's pyquaternion from a matrix: ~2e-6 m
