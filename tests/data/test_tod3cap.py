"""TOD3CapDataset on the real nuScenes keyframe and on small info / caption files written here."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from dense3d.data.datasets import TOD3CapDataset
from dense3d.data.datasets.tod3cap import parse_caption_entry
from dense3d.errors import AnnotationError, BoxError, CalibrationError, ConfigError, ImageError, PointCloudError

PKL = "n015-2018-07-24-11-22-45+0800.pkl"


@pytest.fixture(scope="module")
def real(samples):
    ds = TOD3CapDataset(str(samples / "nuscenes" / PKL))
    return ds, ds[0]


def _info(samples):
    with open(samples / "nuscenes" / PKL, "rb") as f:
        return pickle.load(f)


def _write(tmp_path, infos, samples, name="infos.pkl", **kw):
    """Write ``infos`` to tmp_path; files stay in the samples folder (``data_root``)."""
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump(infos, f)
    return TOD3CapDataset(str(path), data_root=str(samples / "nuscenes"), **kw)


def test_real_keyframe_counts(real):
    ds, s = real
    assert len(ds) == 1
    assert s.sample_id == "ca9a282c9e77460f8360f564131a8af5"
    assert s.points.points.shape == (34688, 5)
    assert s.points.feature_names == ("x", "y", "z", "intensity", "ring")
    assert s.cameras.images.shape == (6, 3, 900, 1600)
    assert s.cameras.names[0] == "CAM_FRONT"
    assert len(s.boxes) == 69 and s.boxes.boxes.box_dim == 9
    assert s.boxes.class_names[0] == "car" and len(s.boxes.class_names) == 10
    assert int((s.boxes.labels == -1).sum()) == 1  # an object outside the 10 classes, kept
    assert s.meta["box_valid"].sum() == 66
    # no caption file: every box is marked (empty list), none is made up
    assert s.boxes.captions == [[]] * 69 and ds.caption_schema == "none"


def test_real_boxes_are_gravity_centred(real):
    _, s = real
    inside = s.boxes.boxes.points_in_boxes(s.points.points).sum(0)  # (K,)
    assert int((inside == s.boxes.num_points).sum()) == 61  # FACTS.md: 61 of 69 with (0.5, 0.5, 0.5)


def test_real_box_centres_project_into_images(real):
    _, s = real
    centres = torch.cat([s.boxes.boxes.center, torch.ones(len(s.boxes), 1)], 1)  # (K, 4)
    p = torch.einsum("vij,kj->vki", s.cameras.lidar2img, centres)  # (V, K, 4)
    depth = p[..., 2]
    uv = p[..., :2] / depth.clamp(min=1e-6)[..., None]
    H, W = s.cameras.images.shape[-2:]
    hit = (depth > 1) & (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    # boxes in front of CAM_FRONT (camera z > 1 m, within its field of view) land inside its image
    cam = torch.einsum("ij,kj->ki", s.cameras.lidar2cam[0], centres)  # (K, 4)
    front = (cam[:, 2] > 1) & (cam[:, 0].abs() < 0.6 * cam[:, 2]) & (cam[:, 1].abs() < 0.35 * cam[:, 2])
    assert front.sum() >= 20 and bool(hit[0][front].all())
    assert bool(hit.any(0).all())  # every box centre is seen by some camera


def test_lidar_only_and_camera_subset(samples):
    ds = TOD3CapDataset(str(samples / "nuscenes" / PKL), sensors=["lidar", "audio"])
    s = ds[0]
    assert s.cameras is None and s.points is not None and len(s.boxes) == 69
    s = TOD3CapDataset(str(samples / "nuscenes" / PKL), sensors=["camera"], cameras=["CAM_BACK", "CAM_FRONT"])[0]
    assert s.points is None and s.cameras.names == ("CAM_BACK", "CAM_FRONT") and s.cameras.images.shape[0] == 2


def test_captions_both_schemas_and_missing(samples, tmp_path):
    infos = _info(samples)
    for i, inst in enumerate(infos["data_list"][0]["instances"]):
        inst["ann_token"] = f"ann{i}"
    caps = {
        "ann0": {"final_caption": "A pedestrian walks far ahead."},
        "ann1": {"attribute_caption": "a grey barrier", "localization_caption": "It stands on the right",
                 "motion_caption": "it is static.", "map_caption": "near the curb", "depth_caption": "about 20 m away"},
        "ann2": {"final_caption": ["one", "two"], "attribute_caption": "ignored when final_caption exists"},
        "unrelated": {"final_caption": "a box of another sample"},
    }
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    ds = _write(tmp_path, infos, samples, caption_file=str(tmp_path / "caps.json"), sensors=())
    s = ds[0]
    assert s.boxes.object_ids[:3] == ["ann0", "ann1", "ann2"]
    assert s.boxes.captions[0] == ["A pedestrian walks far ahead."]
    assert s.boxes.captions[1] == [
        "a grey barrier. It stands on the right. it is static. near the curb. about 20 m away."
    ]
    assert s.boxes.captions[2] == ["one", "two"]
    assert s.boxes.captions[3] == []  # no entry: marked, not invented
    assert s.meta["caption_schema"][:4] == ["final_caption", "composed", "final_caption", None]
    assert ds.caption_schema == "mixed"
    (tmp_path / "old.json").write_text(json.dumps({"ann5": {"motion_caption": "moving"}}))
    ds = _write(tmp_path, infos, samples, caption_file=str(tmp_path / "old.json"), sensors=())
    assert ds.caption_schema == "composed" and ds[0].boxes.captions[5] == ["moving."]


def test_caption_entry_without_fields(tmp_path):
    with pytest.raises(AnnotationError, match=r"caps.json: field 'tok.final_caption': expected final_caption or one of"):
        parse_caption_entry({"caption": "x"}, tmp_path / "caps.json", "tok")
    with pytest.raises(AnnotationError, match=r"'tok.map_caption': expected a string or a list of strings"):
        parse_caption_entry({"map_caption": 3}, "caps.json", "tok")


def test_split_in_path(samples, tmp_path):
    infos = _info(samples)
    _write(tmp_path, infos, samples, name="infos_val.pkl")
    ds = TOD3CapDataset(str(tmp_path / "infos_{split}.pkl"), split="val", data_root=str(samples / "nuscenes"), sensors=())
    assert ds.info_file.name == "infos_val.pkl" and len(ds[0].boxes) == 69


def _rigid(yaw, t):
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m[:3, 3] = t
    return m


def test_multi_sweep_aggregation(samples, tmp_path):
    infos = _info(samples)
    info = infos["data_list"][0]
    sweep2key = _rigid(0.3, [1.0, -2.0, 0.5])
    info["lidar_sweeps"] = [
        {"lidar_points": {"lidar_path": info["lidar_points"]["lidar_path"], "lidar2sensor": np.linalg.inv(sweep2key).tolist()},
         "timestamp": info["timestamp"] - 0.05},
        # fallback: the sweep's own lidar2ego / ego2global (ego moved 2 m along x of the global frame)
        {"lidar_points": {"lidar_path": info["lidar_points"]["lidar_path"], "lidar2ego": info["lidar_points"]["lidar2ego"]},
         "ego2global": (np.asarray(info["ego2global"]) @ _rigid(0.0, [2.0, 0, 0])).tolist(),
         "timestamp": info["timestamp"] - 0.1},
    ]
    ds = _write(tmp_path, infos, samples, sensors=["lidar"], sweeps=2, sweep_remove_close=0)
    pc = ds[0].points
    key = TOD3CapDataset(str(samples / "nuscenes" / PKL), sensors=["lidar"])[0].points.points
    n = len(key)
    assert pc.points.shape == (3 * n, 6) and pc.feature_names[-1] == "time_lag"
    assert torch.equal(pc.points[:n, :5], key) and bool((pc.points[:n, 5] == 0).all())
    s1 = pc.points[n : 2 * n]
    want = key[:, :3].double() @ torch.tensor(sweep2key[:3, :3]).T + torch.tensor(sweep2key[:3, 3])
    assert torch.allclose(s1[:, :3].double(), want, atol=1e-3)
    assert torch.allclose(s1[:, 5], torch.full((n,), 0.05), atol=1e-4)
    assert torch.equal(s1[:, 3:5], key[:, 3:5])
    # ego moved forward 2 m in its own frame: the sweep's points sit 2 m further along ego x
    l2e = torch.tensor(info["lidar_points"]["lidar2ego"], dtype=torch.float64)
    shift = torch.linalg.inv(l2e)[:3, :3] @ torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    s2 = pc.points[2 * n :]
    assert torch.allclose(s2[:, :3].double(), key[:, :3].double() + shift, atol=1e-3)
    assert torch.allclose(s2[:, 5], torch.full((n,), 0.1), atol=1e-4)


def test_sweeps_drop_the_ego_cars_own_points(samples, tmp_path):
    """A sweep's points within 1 m of its sensor in x and y (the ego car's roof) are dropped
    before the sweep moves to the keyframe; the keyframe keeps all of its own."""
    infos = _info(samples)
    info = infos["data_list"][0]
    sweep2key = _rigid(0.0, [3.0, 0.0, 0.0])
    info["lidar_sweeps"] = [{"lidar_points": {"lidar_path": info["lidar_points"]["lidar_path"],
                                              "lidar2sensor": np.linalg.inv(sweep2key).tolist()},
                             "timestamp": info["timestamp"] - 0.05}]
    key = TOD3CapDataset(str(samples / "nuscenes" / PKL), sensors=["lidar"])[0].points.points
    close = (key[:, :2].abs() < 1.0).all(1)  # (N,) the keyframe's own ego points
    assert int(close.sum()) > 0
    pc = _write(tmp_path, infos, samples, sensors=["lidar"], sweeps=1)[0].points.points
    n = len(key)
    assert torch.equal(pc[:n, :5], key)  # the keyframe: every point
    sweep = pc[n:]
    assert len(sweep) == n - int(close.sum())
    assert torch.allclose(sweep[:, :3], key[~close, :3] + torch.tensor([3.0, 0.0, 0.0]), atol=1e-4)
    with pytest.raises(ConfigError, match="field 'sweep_remove_close'"):
        TOD3CapDataset(str(samples / "nuscenes" / PKL), sensors=["lidar"], sweep_remove_close=-1)


# ---------------------------------------------------------------- bad input
def test_truncated_bin(samples, tmp_path):
    src = samples / "nuscenes" / _info(samples)["data_list"][0]["lidar_points"]["lidar_path"]
    bad = tmp_path / "cut.pcd.bin"
    bad.write_bytes(src.read_bytes()[:-6])
    infos = _info(samples)
    infos["data_list"][0]["lidar_points"]["lidar_path"] = str(bad)
    with pytest.raises(PointCloudError, match=r"cut.pcd.bin: field 'points': expected a size that is a multiple of 20 bytes"):
        _write(tmp_path, infos, samples, sensors=["lidar"])[0]


def test_nan_points(samples, tmp_path):
    src = samples / "nuscenes" / _info(samples)["data_list"][0]["lidar_points"]["lidar_path"]
    pts = np.fromfile(src, dtype=np.float32).reshape(-1, 5)
    pts[7, 1] = np.inf
    bad = tmp_path / "nan.pcd.bin"
    pts.tofile(bad)
    infos = _info(samples)
    infos["data_list"][0]["lidar_points"]["lidar_path"] = str(bad)
    with pytest.raises(PointCloudError, match=r"nan.pcd.bin: field 'points\[7\]': expected finite values"):
        _write(tmp_path, infos, samples, sensors=["lidar"])[0]


def test_missing_camera_file(samples, tmp_path):
    infos = _info(samples)
    infos["data_list"][0]["images"]["CAM_BACK"]["img_path"] = "gone.jpg"
    with pytest.raises(ImageError, match=r"gone.jpg: field 'data_list\[0\].images.CAM_BACK.img_path': expected an existing image file"):
        _write(tmp_path, infos, samples, sensors=["camera"], cameras=["CAM_BACK"])[0]


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda m: m[:3, :3] * 1.1, r"R\^T R = I"),
        (lambda m: m @ np.diag([1.0, 1.0, -1.0, 1.0]), r"det R = \+1"),
        (lambda m: np.vstack([m[:3], [[0.0, 0.0, 0.1, 1.0]]]), r"last row \[0, 0, 0, 1\]"),
    ],
)
def test_calibration_not_rigid(samples, tmp_path, change, expected):
    infos = _info(samples)
    cam = infos["data_list"][0]["images"]["CAM_FRONT"]
    m = np.asarray(cam["lidar2cam"])
    new = change(m)
    if new.shape == (3, 3):
        m = m.copy()
        m[:3, :3] = new
        new = m
    cam["lidar2cam"] = new.tolist()
    with pytest.raises(CalibrationError, match=rf"infos.pkl: field 'data_list\[0\].images.CAM_FRONT.lidar2cam': expected .*{expected}"):
        _write(tmp_path, infos, samples, sensors=["camera"], cameras=["CAM_FRONT"])[0]


def test_info_missing_field(samples, tmp_path):
    infos = _info(samples)
    del infos["data_list"][0]["instances"][4]["bbox_3d"]
    with pytest.raises(AnnotationError, match=r"infos.pkl: field 'data_list\[0\].instances\[4\].bbox_3d': expected a present field"):
        _write(tmp_path, infos, samples, sensors=())[0]
    infos = _info(samples)
    del infos["metainfo"]
    with pytest.raises(AnnotationError, match=r"field 'metainfo'"):
        len(_write(tmp_path, infos, samples, sensors=()))


def test_unknown_class(samples, tmp_path):
    infos = _info(samples)
    infos["data_list"][0]["instances"][2]["bbox_label_3d"] = 10
    with pytest.raises(AnnotationError, match=r"'data_list\[0\].instances\[2\].bbox_label_3d': expected a class index in -1..9"):
        _write(tmp_path, infos, samples, sensors=())[0]


def test_zero_size_box(samples, tmp_path):
    infos = _info(samples)
    infos["data_list"][0]["instances"][3]["bbox_3d"][4] = 0.0
    with pytest.raises(BoxError, match=r"'data_list\[0\].instances\[3\].bbox_3d': expected sizes dx, dy, dz > 0"):
        _write(tmp_path, infos, samples, sensors=())[0]


def test_drop_ignored(samples, tmp_path):
    ds = _write(tmp_path, _info(samples), samples, sensors=(), drop_ignored=True)
    assert len(ds[0].boxes) == 68 and bool((ds[0].boxes.labels >= 0).all())


def test_sample_config_builds_and_loads(samples, monkeypatch):
    """configs/data/nuscenes_sample.yaml through hydra: the real keyframe with its pipeline."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    monkeypatch.setenv("DENSE3D_SAMPLES", str(samples))
    config_dir = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=nuscenes_sample", "sensors=lidar_camera"])
    ds = instantiate(cfg.data)
    s = ds[0]
    assert list(ds.transforms.transforms) == ["range", "object_range", "resize"]
    # images stay in [0, 1]: the camera encoder applies the ImageNet statistics itself
    imgs = s.cameras.images  # (6, 3, H, W); resampling may overshoot [0, 1] by rounding
    assert imgs.shape == (6, 3, 256, 704) and -1e-5 <= float(imgs.min()) < float(imgs.max()) <= 1 + 1e-5
    assert 0 < len(s.points) < 34688 and 0 < len(s.boxes) <= 69


@pytest.mark.parametrize("value", [0, -5, 2, "five", 5.0])
def test_bad_num_pts_feats(samples, tmp_path, value):
    infos = _info(samples)
    infos["data_list"][0]["lidar_points"]["num_pts_feats"] = value
    with pytest.raises(AnnotationError, match=r"infos.pkl: field 'data_list\[0\].lidar_points.num_pts_feats': expected an integer >= 3"):
        _write(tmp_path, infos, samples, sensors=["lidar"])[0]


@pytest.mark.parametrize("value,expected", [("fast", "2 numbers"), (None, "2 numbers"), ([1.0, 2.0, 3.0], "2 numbers"),
                                            ([float("inf"), 0.0], "finite numbers")])
def test_bad_velocity(samples, tmp_path, value, expected):
    infos = _info(samples)
    infos["data_list"][0]["instances"][1]["velocity"] = value
    with pytest.raises(AnnotationError, match=rf"infos.pkl: field 'data_list\[0\].instances\[1\].velocity': expected {expected}"):
        _write(tmp_path, infos, samples, sensors=())[0]


@pytest.mark.parametrize("value", ["ten", -3, 1.5])
def test_bad_num_lidar_pts(samples, tmp_path, value):
    infos = _info(samples)
    infos["data_list"][0]["instances"][2]["num_lidar_pts"] = value
    with pytest.raises(AnnotationError, match=r"'data_list\[0\].instances\[2\].num_lidar_pts': expected an integer >= 0"):
        _write(tmp_path, infos, samples, sensors=())[0]


def test_points_reader_needs_xyz(samples):
    from dense3d.data.readers import read_points_bin

    src = samples / "nuscenes" / _info(samples)["data_list"][0]["lidar_points"]["lidar_path"]
    for dims in (0, 2, -1):
        with pytest.raises(PointCloudError, match=r"field 'points features per point': expected an integer >= 3"):
            read_points_bin(src, dims)


def test_index_out_of_range_is_one_line_index_error(samples, tmp_path):
    from dense3d.data.datasets.base import SampleIndexError

    ds = _write(tmp_path, _info(samples), samples, sensors=())
    for i in (1, -2, 10**6):
        with pytest.raises(SampleIndexError, match=r"TOD3CapDataset: field 'index': expected an integer in 0..0 \(the data set has 1 samples\)"):
            ds[i]
    with pytest.raises(IndexError):  # still an IndexError: iteration stops on it
        ds[1]
    assert [s.sample_id for s in ds] == [ds[-1].sample_id]


def _set(path, value):
    """A change to the first sample of an info dict: set ``path`` (keys / indices) to ``value``."""

    def change(info):
        node = info
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


@pytest.mark.parametrize(
    "change,sensors,error,expected",
    [
        (_set(["instances", 0, "bbox_3d"], ["a"] * 7), (), BoxError, r"'data_list\[0\].instances\[0\].bbox_3d': expected 7 numbers"),
        (_set(["instances", 0, "bbox_3d"], [1.0, 2.0, [3.0]]), (), BoxError, r"'data_list\[0\].instances\[0\].bbox_3d': expected 7 numbers"),
        (_set(["instances", 0], 5), (), AnnotationError, r"'data_list\[0\].instances\[0\].bbox_3d': expected a present field"),
        (_set(["instances", 0, "bbox_label_3d"], True), (), AnnotationError, r"'data_list\[0\].instances\[0\].bbox_label_3d': expected a class index"),
        (_set(["images"], []), ("camera",), AnnotationError, r"'data_list\[0\].images': expected a \{camera name: camera\} mapping"),
        (_set(["lidar_sweeps"], 5), ("lidar",), AnnotationError, r"'data_list\[0\].lidar_sweeps': expected a list of sweeps"),
        (_set(["timestamp"], "noon"), ("lidar",), AnnotationError, r"'data_list\[0\].timestamp': expected a time in seconds"),
    ],
    ids=["bbox_strings", "bbox_ragged", "instance_not_dict", "label_bool", "images_list", "sweeps_not_list", "timestamp_text"],
)
def test_malformed_info_fields_are_one_line_errors(samples, tmp_path, change, sensors, error, expected):
    """Malformed values in an info pkl end in the file + field message, not a numpy / dict traceback."""
    infos = _info(samples)
    infos["data_list"][0]["lidar_sweeps"] = []
    change(infos["data_list"][0])
    with pytest.raises(error, match=rf"infos.pkl: field {expected}"):
        _write(tmp_path, infos, samples, sensors=sensors, sweeps=1)[0]


def _released_entry(depth=12.5, **extra):
    """One box as TOD3Cap's released annotations hold it: nested fields with more keys than the
    caption uses (category, offsets, velocities), as read by its evaluation."""
    return {
        "attribute_caption": {"attribute_caption": "white sedan", "category": "car"},
        "depth_caption": {"depth_caption": "near", "depth": depth},
        "localization_caption": {"localization_caption": "in front of the ego car", "x_offset": 1.2, "y_offset": 12.4,
                                 "localization_theta": 5.0},
        "motion_caption": {"motion_caption": "driving", "bev_vel": 3.1},
        "map_caption": {"map_caption": "on the road"},
        "relation_caption": "next to a truck",
        **extra,
    }


def test_released_nested_entry_composes_tod3cap_template():
    # TOD3Cap's get_text_results.py: attribute + " about " + str(round(depth)) + " meters away" + " "
    # + localization + " is " + motion + " " + map; Python's round is half to even (12.5 -> 12)
    want = "white sedan about 12 meters away in front of the ego car is driving on the road"
    assert parse_caption_entry(_released_entry(), "caps.json", "tok") == ([want], "template")
    assert parse_caption_entry(_released_entry(depth=13.5), "caps.json", "tok")[0] == [want.replace("12", "14")]
    assert parse_caption_entry(_released_entry(depth=7), "caps.json", "tok")[0][0].startswith("white sedan about 7 meters")
    # an LLM-written final_caption wins by default; caption_source="template" gives TOD3Cap's references
    entry = _released_entry(final_caption="A white sedan drives on the road ahead.")
    assert parse_caption_entry(entry, "caps.json", "tok") == (["A white sedan drives on the road ahead."], "final_caption")
    assert parse_caption_entry(entry, "caps.json", "tok", "template") == ([want], "template")


def test_released_nested_entry_errors_name_the_field():
    entry = _released_entry()
    del entry["motion_caption"]
    with pytest.raises(AnnotationError, match=r"^caps.json: field 'tok.motion_caption': expected an object with 'motion_caption'"):
        parse_caption_entry(entry, "caps.json", "tok")
    with pytest.raises(AnnotationError, match=r"field 'tok.depth_caption.depth': expected a distance in metres, got nan"):
        parse_caption_entry(_released_entry(depth=float("nan")), "caps.json", "tok")
    entry = _released_entry()
    entry["map_caption"] = {"map": "road"}
    with pytest.raises(AnnotationError, match=r"field 'tok.map_caption.map_caption': expected a string, got missing"):
        parse_caption_entry(entry, "caps.json", "tok")
    with pytest.raises(AnnotationError, match=r"field 'tok.attribute_caption': expected an object with 'attribute_caption'"):
        parse_caption_entry({"final_caption": "a car."}, "caps.json", "tok", "template")
    with pytest.raises(ConfigError, match=r"field 'caption_source': expected one of \['final_caption', 'template'\], got final"):
        parse_caption_entry({"final_caption": "a car."}, "caps.json", "tok", "final")


def test_caption_source_reaches_every_box(samples, tmp_path):
    infos = _info(samples)
    for i, inst in enumerate(infos["data_list"][0]["instances"]):
        inst["ann_token"] = f"ann{i}"
    caps = {"ann0": _released_entry(final_caption="A white sedan drives ahead."), "ann1": _released_entry(depth=30.2)}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    ds = _write(tmp_path, infos, samples, caption_file=str(tmp_path / "caps.json"), sensors=())
    assert ds[0].boxes.captions[:2] == [["A white sedan drives ahead."],
                                        ["white sedan about 30 meters away in front of the ego car is driving on the road"]]
    assert ds.caption_schema == "mixed"
    ds = _write(tmp_path, infos, samples, caption_file=str(tmp_path / "caps.json"), sensors=(), caption_source="template")
    assert ds[0].boxes.captions[0] == ["white sedan about 12 meters away in front of the ego car is driving on the road"]
    assert ds.caption_schema == "template"
    with pytest.raises(ConfigError, match=r"^TOD3CapDataset: field 'caption_source'"):
        _write(tmp_path, infos, samples, caption_file=str(tmp_path / "caps.json"), sensors=(), caption_source="final")
