"""Review of the real-format readers against the variants users have (mmdet3d v0.x / v1.x
nuScenes infos, sweeps, box filters). Small files in tmp_path; the real nuScenes keyframe in
../shared/samples where it helps."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from dense3d.data.datasets import TOD3CapDataset
from dense3d.errors import AnnotationError

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
