"""Review of the real-format readers against the variants users have (mmdet3d v0.x / v1.x
nuScenes infos, sweeps, box filters). Small files in tmp_path; the real nuScenes keyframe in
../shared/samples where it helps."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from dense3d.data.datasets import TOD3CapDataset
from dense3d.errors import AnnotationError, PointCloudError

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
