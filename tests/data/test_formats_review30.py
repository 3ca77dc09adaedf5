"""Review of the real-format readers against the variants users have (mmdet3d v0.x / v1.x
nuScenes infos, sweeps, box filters). Small files in tmp_path; the real nuScenes keyframe in
../shared/samples where it helps."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dense3d.data.datasets import TOD3CapDataset
from dense3d.errors import AnnotationError, ConfigError, PointCloudError

PKL = "n015-2018-07-24-11-22-45+0800.pkl"


def _info(samples):
    with open(samples / "nuscenes" / PKL, "rb") as f:
        return pickle.load(f)


def _write(tmp_path, infos, samples, **kw):
    path = tmp_path / "infos.pkl"
    with open(path, "wb") as f:
        pickle.dump(infos, f)
    return TOD3CapDataset(str(path), data_root=str(samples / "nuscenes"), **kw)


def test_a_v0x_info_file_is_refused_in_one_line_naming_the_converter(samples, tmp_path):
    # mmdet3d v0.x layout: {'infos': [...], 'metadata': {'version': ...}}
    v0 = {"infos": [{"lidar_path": "./data/nuscenes/samples/LIDAR_TOP/x.pcd.bin", "token": "t", "sweeps": [], "cams": {},
                     "gt_boxes": np.zeros((0, 7)), "gt_names": np.array([]), "valid_flag": np.array([], bool)}],
          "metadata": {"version": "v1.0-trainval"}}
    ds = _write(tmp_path, v0, samples)
    with pytest.raises(AnnotationError) as e:
        len(ds)
    msg = str(e.value)
    assert "\n" not in msg and "infos.pkl" in msg and "'metainfo'" in msg
    assert "v0.x" in msg and "update_infos_to_v2" in msg


def test_a_missing_sweep_file_names_the_sweep_field(samples, tmp_path):
    infos = _info(samples)
    info = infos["data_list"][0]
    info["lidar_sweeps"] = [{"lidar_points": {"lidar_path": "gone__LIDAR_TOP__1.pcd.bin", "lidar2sensor": np.eye(4).tolist()},
                             "timestamp": info["timestamp"] - 0.05}]
    ds = _write(tmp_path, infos, samples, sensors=["lidar"], sweeps=1)
    with pytest.raises(PointCloudError) as e:
        ds[0]
    msg = str(e.value)
    assert "\n" not in msg and "gone__LIDAR_TOP__1.pcd.bin" in msg
    assert "data_list[0].lidar_sweeps[0].lidar_points.lidar_path" in msg


@pytest.mark.parametrize("box_filter", ["num_lidar_pts", "bbox_3d_isvalid"])
def test_box_filter_keeps_the_boxes_mmdet3d_keeps(samples, tmp_path, box_filter):
    infos = _info(samples)
    insts = infos["data_list"][0]["instances"]
    # the real keyframe: mark three boxes empty / invalid (mmdet3d drops them by default)
    for i in (0, 5, 7):
        insts[i]["num_lidar_pts"] = 0
        insts[i]["bbox_3d_isvalid"] = False
    ds = _write(tmp_path, infos, samples, sensors=[], box_filter=box_filter)
    s = ds[0]
    if box_filter == "num_lidar_pts":
        kept = [i for i, inst in enumerate(insts) if inst["num_lidar_pts"] > 0]
    else:
        kept = [i for i, inst in enumerate(insts) if inst["bbox_3d_isvalid"]]
    assert 0 < len(kept) <= len(insts) - 3 and not {0, 5, 7} & set(kept)
    assert len(s.boxes) == len(kept)
    assert s.boxes.object_ids == [insts[i]["ann_token"] if "ann_token" in insts[i] else f"{s.sample_id}_{i}" for i in kept]
    assert bool(s.meta["box_valid"].all()) and bool((s.boxes.num_points > 0).all())
    assert len(s.meta["num_radar_pts"]) == len(kept)
    # default: every box, as before
    every = _write(tmp_path, infos, samples, sensors=[])[0]
    assert len(every.boxes) == len(insts) and int((~every.meta["box_valid"]).sum()) == sum(not i["bbox_3d_isvalid"] for i in insts)


def test_box_filter_on_empty_instances_and_missing_fields(samples, tmp_path):
    infos = _info(samples)
    infos["data_list"][0]["instances"] = []
    s = _write(tmp_path, infos, samples, sensors=[], box_filter="num_lidar_pts")[0]
    assert len(s.boxes) == 0
    infos = _info(samples)
    del infos["data_list"][0]["instances"][3]["bbox_3d_isvalid"]
    with pytest.raises(AnnotationError, match=r"data_list\[0\]\.instances\[3\]\.bbox_3d_isvalid.*missing"):
        _write(tmp_path, infos, samples, sensors=[], box_filter="bbox_3d_isvalid")[0]
    with pytest.raises(ConfigError, match="box_filter"):
        TOD3CapDataset(str(tmp_path / "x.pkl"), box_filter="valid_flag")


def test_a_four_column_file_declared_five_is_refused_not_misread(samples, tmp_path):
    """A KITTI-style (N, 4) file whose N is a multiple of 5 passes the size check for 5 columns:
    the ring column (whole beam indices in nuScenes) tells the misread apart."""
    real = np.fromfile(samples / "nuscenes" / _info(samples)["data_list"][0]["lidar_points"]["lidar_path"], "<f4").reshape(-1, 5)
    four = np.ascontiguousarray(real[:34685, :4])  # (34685, 4): 34685 * 16 bytes divides by 20
    four.tofile(tmp_path / "four.pcd.bin")
    infos = _info(samples)
    infos["data_list"][0]["lidar_points"]["lidar_path"] = str(tmp_path / "four.pcd.bin")
    ds = _write(tmp_path, infos, samples, sensors=["lidar"])
    with pytest.raises(PointCloudError) as e:
        ds[0]
    msg = str(e.value)
    assert "\n" not in msg and "four.pcd.bin" in msg and "ring" in msg and "num_pts_feats" in msg
    # the real 5-column keyframe reads as before; so does a sweep of it
    infos = _info(samples)
    info = infos["data_list"][0]
    info["lidar_sweeps"] = [{"lidar_points": {"lidar_path": info["lidar_points"]["lidar_path"], "lidar2sensor": np.eye(4).tolist()},
                             "timestamp": info["timestamp"] - 0.05}]
    pc = _write(tmp_path, infos, samples, sensors=["lidar"], sweeps=1, sweep_remove_close=0)[0].points
    assert pc.points.shape == (2 * len(real), 6)
    # the misread file as a sweep is refused too
    info["lidar_sweeps"][0]["lidar_points"]["lidar_path"] = str(tmp_path / "four.pcd.bin")
    with pytest.raises(PointCloudError, match="four.pcd.bin.*ring"):
        _write(tmp_path, infos, samples, sensors=["lidar"], sweeps=1)[0]


def _scan(samples) -> np.ndarray:
    return np.fromfile(samples / "scannet" / "scene0000_00.bin", "<f4").reshape(-1, 6)  # (N, 6) xyz rgb 0-255


def test_scannet_colours_0_1_are_read_on_the_0_255_scale(samples, tmp_path):
    from dense3d.data.datasets.scanrefer import read_scannet_points

    real = _scan(samples)
    want = read_scannet_points(samples / "scannet", "scene0000_00").points
    assert torch.equal(want, torch.from_numpy(real))  # the real 0-255 scan: unchanged
    # the same scan with 0-1 colours, as a .bin and as an aligned_vert .npy with normals
    unit = real.copy()
    unit[:, 3:6] /= 255.0
    unit.tofile(tmp_path / "scene0000_00.bin")
    got = read_scannet_points(tmp_path, "scene0000_00").points
    assert torch.allclose(got, want, atol=1e-3)
    normals = np.zeros((len(unit), 3), np.float32)
    normals[:, 2] = 1.0
    np.save(tmp_path / "scene0000_00_aligned_vert.npy", np.concatenate([unit, normals], 1))  # (N, 9)
    got = read_scannet_points(tmp_path, "scene0000_00", use_normals=True).points
    assert got.shape == (len(real), 9) and torch.allclose(got[:, :6], want, atol=1e-3)


def test_scannet_normalised_colours_are_refused_in_one_line(samples, tmp_path):
    from dense3d.data.datasets.scanrefer import read_scannet_points

    norm = _scan(samples)
    norm[:, 3:6] = (norm[:, 3:6] - 109.8) / 256.0  # Vote2Cap-DETR's in-memory normalisation, written out
    norm.tofile(tmp_path / "scene0000_00.bin")
    with pytest.raises(PointCloudError) as e:
        read_scannet_points(tmp_path, "scene0000_00")
    msg = str(e.value)
    assert "\n" not in msg and "scene0000_00.bin" in msg and ".rgb" in msg and "0-255" in msg


def test_a_camera_or_lidar_without_a_file_path_is_one_line_naming_the_field(samples, tmp_path):
    infos = _info(samples)
    info = infos["data_list"][0]
    info["images"]["CAM_BACK"]["img_path"] = None  # a camera the sample has no image of
    # default cameras: the ones with an image, in the info's order
    s = _write(tmp_path, infos, samples, sensors=["camera"])[0]
    assert "CAM_BACK" not in s.cameras.names and len(s.cameras.names) == 5
    # asked for by name: refused naming the field, not "<data_root>/None: missing"
    with pytest.raises(AnnotationError) as e:
        _write(tmp_path, infos, samples, sensors=["camera"], cameras=["CAM_FRONT", "CAM_BACK"])[0]
    msg = str(e.value)
    assert "\n" not in msg and "infos.pkl" in msg and "data_list[0].images.CAM_BACK.img_path" in msg and "None" in msg
    info["lidar_points"]["lidar_path"] = None
    with pytest.raises(AnnotationError, match=r"data_list\[0\]\.lidar_points\.lidar_path.*file path"):
        _write(tmp_path, infos, samples, sensors=["lidar"])[0]


def test_favdbench_bare_coco_list_reads_like_the_annotations_dict(tmp_path):
    """FAVDBench's Metrics/README.md shows its COCO format as a bare list of {image_id, caption}."""
    import json

    from dense3d.data.datasets.favdbench import parse_favd_annotations

    rows = [{"image_id": "v1", "caption": "A man plays a guitar. The strings ring."},
            {"image_id": "v1", "caption": "Someone plays guitar."}, {"image_id": "v2", "caption": "A dog barks."}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    from dense3d.data.readers import load_json

    got = parse_favd_annotations(load_json(tmp_path / "list.json"), tmp_path / "list.json")
    assert got == parse_favd_annotations({"annotations": rows}, tmp_path / "list.json")
    assert got["v1"]["summary"] == "A man plays a guitar." and len(got["v1"]["references"]) == 2
    with pytest.raises(AnnotationError, match=r"list\.json: field '\[1\]\.caption'"):
        parse_favd_annotations([rows[0], {"image_id": "v2"}], tmp_path / "list.json")


@pytest.mark.parametrize("scale", [1e6, -1.0])
def test_sweep_timestamps_in_microseconds_are_refused(samples, tmp_path, scale):
    """mmdet3d v1.x stores seconds; a converter that keeps nuScenes' microseconds (or a sweep
    after its keyframe) gave a time_lag column of 50000 (or < 0) without a word."""
    infos = _info(samples)
    info = infos["data_list"][0]
    sweep_time = info["timestamp"] - 0.05
    if scale == 1e6:
        info["timestamp"] *= 1e6
        sweep_time *= 1e6
    else:
        sweep_time = info["timestamp"] + 0.05
    info["lidar_sweeps"] = [{"lidar_points": {"lidar_path": info["lidar_points"]["lidar_path"], "lidar2sensor": np.eye(4).tolist()},
                             "timestamp": sweep_time}]
    with pytest.raises(AnnotationError) as e:
        _write(tmp_path, infos, samples, sensors=["lidar"], sweeps=1)[0]
    msg = str(e.value)
    assert "\n" not in msg and "data_list[0].lidar_sweeps[0].timestamp" in msg and "seconds" in msg


def test_tod3cap_splits_trains_on_the_boxes_mmdet3d_trains_on_and_scores_every_box():
    """configs/data/tod3cap_splits.yaml: the training split keeps boxes with a LiDAR point
    (mmdet3d's NuScenesDataset default); the validation split keeps every box, which the
    TOD3Cap evaluation filters by LiDAR + radar points itself."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(str(configs), version_base=None):
        cfg = compose("train", overrides=["data=tod3cap_splits"])
    assert cfg.data.train.box_filter == "num_lidar_pts" and cfg.data.val.get("box_filter") is None
