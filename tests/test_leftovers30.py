"""Leftovers of earlier sessions: tools/train.py's one-line error for ``logger=null``, a negative
``dense3d convert synth --seed``, NMS at IoU thresholds 1.0 and 0.0 against torchvision, the same
error class for the same bad sparse conv input on every backend, and TOD3Cap ground truth's
``num_pts`` (LiDAR + radar points) in ``dense3d eval``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dense3d.engine.train import check_group_choices
from dense3d.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# -- 1. tools/train.py logger=null -------------------------------------------------------------

@pytest.mark.parametrize("flags", [[], ["-m"]], ids=["run", "multirun"])
def test_tools_train_refuses_a_null_group_choice_in_one_line(flags, tmp_path):
    """Hydra refused ``logger=null`` before ``main`` ran, with its own several-line report and
    status 1; now one line naming the override, status 2, as ``dense3d train`` gives."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *flags, "logger=null", "trainer.max_steps=0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("tools/train.py: ConfigError: configs/train.yaml: field 'override logger=null': "), r.stderr
    assert "~logger" in lines[0]
    assert not any(tmp_path.iterdir())  # nothing written


def test_check_group_choices_skips_flags_deletions_and_null_values():
    check_group_choices(["-m", "-cn", "train", "--config-name=train", "~logger", "trainer.max_steps=null", "seed=1"])
    with pytest.raises(ConfigError, match="override callbacks=null"):
        check_group_choices(["seed=1", "callbacks=null"])
    with pytest.raises(ConfigError, match="override model/encoder=null"):
        check_group_choices(["model/encoder=null"])


# -- 2. dense3d convert synth --seed -3 ----------------------------------------------------------

@pytest.mark.parametrize("seed", ["-3", "x"])
def test_convert_synth_refuses_a_negative_seed_naming_the_flag(seed, tmp_path, capsys):
    """A negative seed was refused only by SynthConfig, naming its field ('seed'), not the flag:
    now argparse's usage error names --seed, as ``dense3d demo --seed`` does, before any work."""
    from dense3d.cli import main

    with pytest.raises(SystemExit) as e:
        main(["convert", "synth", "--kind", "outdoor", "--out", str(tmp_path / "s"), "--scenes", "1", "--seed", seed])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"dense3d convert synth: error: argument --seed: expected an integer >= 0, got '{seed}'", err
    assert not (tmp_path / "s").exists()


# -- 3. NMS at IoU thresholds 1.0 and 0.0 --------------------------------------------------------

def _nms_backends() -> list[str]:
    from dense3d.ops._backend import ext

    return ["torch"] + (["ext"] if hasattr(ext(), "nms_bev") else [])


def _grid_boxes(n: int, seed: int, dtype) -> tuple:
    """Axis-aligned boxes on a quarter-metre grid: exact duplicates (rows n//2.. repeat the
    first rows), boxes that only touch (IoU exactly 0) and nested ones; scores with ties."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centre = torch.randint(0, 40, (n, 2), generator=g).double() / 4  # (N, 2) x, y
    size = torch.randint(2, 12, (n, 2), generator=g).double() / 4  # (N, 2) dx, dy
    centre[n // 2 :], size[n // 2 :] = centre[: n - n // 2], size[: n - n // 2]
    boxes = torch.zeros(n, 7, dtype=torch.float64)
    boxes[:, 0:2], boxes[:, 3:5], boxes[:, 5] = centre, size, 1.0
    scores = torch.randint(0, 10, (n,), generator=g).double() / 10
    labels = torch.randint(0, 3, (n,), generator=g)
    return boxes.to(dtype), scores.to(dtype), labels


@pytest.mark.parametrize("thr", [1.0, 0.0, 0.5])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nms_bev_keeps_what_torchvision_keeps_on_axis_aligned_boxes(thr, dtype):
    """torchvision's rule (mmcv's too): a box is suppressed when a kept box overlaps it with IoU
    strictly above the threshold; at 1.0 nothing is, exact duplicates included; at 0.0 every
    overlapping box is, boxes that only touch are not."""
    import torch
    import torchvision

    for seed in range(3):
        boxes, scores, labels = _grid_boxes(160, seed, getattr(torch, dtype))
        xyxy = torch.cat([boxes[:, :2] - boxes[:, 3:5] / 2, boxes[:, :2] + boxes[:, 3:5] / 2], 1).double()  # (N, 4)
        # torchvision's sort is not stable: the grid's tied scores are broken by index first
        rank = torch.empty(len(scores), dtype=torch.float64)
        rank[torch.sort(scores, descending=True, stable=True).indices] = -torch.arange(len(scores), dtype=torch.float64)
        expected = torchvision.ops.nms(xyxy, rank, thr)
        expected_batched = torchvision.ops.batched_nms(xyxy, rank, labels, thr)
        if thr == 1.0:
            assert len(expected) == len(boxes)
        from dense3d.ops import batched_nms_bev, nms_bev

        for backend in _nms_backends():
            assert torch.equal(nms_bev(boxes, scores, thr, backend=backend), expected), (backend, seed)
            assert torch.equal(batched_nms_bev(boxes, scores, labels, thr, backend=backend), expected_batched), (backend, seed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nms_bev_keeps_exact_duplicates_of_rotated_boxes_at_threshold_one(dtype):
    """The clipped polygon's rounding gave identical rotated boxes an intersection a little above
    their area, so IoU > 1: NMS at 1.0 dropped 22 (float32) and 33 (float64) of these 100
    duplicates with the torch backend, and some with the C++ one. Now the kernels' IoU is at most
    1 (exactly 1 for identical boxes)."""
    import torch

    from dense3d.ops import nms_bev
    from dense3d.ops._backend import ext
    from dense3d.ops._ref.box_iou import boxes_iou_rotated

    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(100, 7, generator=g, dtype=torch.float64) * 5 + 0.5  # yaw in [0.5, 5.5)
    boxes = torch.cat([boxes, boxes]).to(getattr(torch, dtype))  # (200, 7): rows 100.. repeat 0..99
    scores = torch.rand(200, generator=g, dtype=torch.float64).to(boxes.dtype)
    for backend in _nms_backends():
        assert len(nms_bev(boxes, scores, 1.0, backend=backend)) == 200, backend
        kept = nms_bev(boxes, scores, 0.0, backend=backend)
        assert not bool(((kept[:, None] - kept[None, :]).abs() == 100).any()), backend  # a duplicate pair never survives 0.0
    for mode, code in (("bev", 0), ("3d", 1)):  # the kernels' own IoU, before the public ops' clamp
        ious = [boxes_iou_rotated(boxes, boxes, mode)]
        if "ext" in _nms_backends():
            ious.append(ext().box_iou_rotated(boxes, boxes, code))
        for iou in ious:
            assert float(iou.max()) <= 1.0 and bool((iou.diagonal() > 1 - 1e-6).all()), mode


# -- 4. sparse conv: the same bad input, the same error class on every backend -------------------

def _sparse_backends() -> list[str]:
    from dense3d.ops._backend import ext

    return ["torch"] + (["ext"] if hasattr(ext(), "sparse_conv_forward") else [])


def _sites():
    import torch

    return torch.tensor([[0, 1, 1, 1], [0, 1, 2, 1], [0, 2, 2, 2], [1, 0, 0, 0]], dtype=torch.int32)  # (4, 4) [b, z, y, x]


def _subm_map(backend: str, indices=None, shape=(4, 4, 4)):
    from dense3d.ops.sparse.kernel_map import build_kernel_map

    return build_kernel_map(_sites() if indices is None else indices, list(shape), (3, 3, 3), (1, 1, 1), (0, 0, 0), (1, 1, 1),
                            True, backend)


def _conv(backend: str, features=None, weight=None, bias=None):
    import torch

    from dense3d.ops.sparse.functional import sparse_conv

    f = torch.randn(4, 4) if features is None else features
    w = torch.randn(27, 4, 8) if weight is None else weight  # (K, C_in, C_out)
    return sparse_conv(f, w, bias, _subm_map(backend), backend)


def _bad_sparse_inputs():
    import torch

    return {  # name: (call of a backend, the field the error names)
        # torch: RuntimeError from mm; C++: RuntimeError
        "weight_c_in": (lambda b: _conv(b, weight=torch.randn(27, 3, 8)), "weight"),
        # torch: ran (9 of the 27 offsets); C++: RuntimeError
        "weight_offsets": (lambda b: _conv(b, weight=torch.randn(9, 4, 8)), "weight"),
        # torch: IndexError; C++: RuntimeError
        "weight_2d": (lambda b: _conv(b, weight=torch.randn(27, 4)), "weight"),
        # torch: RuntimeError from mm; C++: aborted the process inside an OpenMP loop
        "features_rows": (lambda b: _conv(b, features=torch.randn(3, 4)), "features"),
        # torch: RuntimeError (mm of two dtypes); C++: RuntimeError
        "dtypes": (lambda b: _conv(b, features=torch.randn(4, 4, dtype=torch.float64)), "weight"),
        # torch: RuntimeError (broadcast); C++: ran, reading past the bias's end
        "bias_short": (lambda b: _conv(b, bias=torch.randn(5)), "bias"),
        # torch: ran in int64; C++ (backend='ext'): SparseTensorError
        "int_features": (lambda b: _conv(b, torch.ones(4, 4, dtype=torch.long), torch.ones(27, 4, 8, dtype=torch.long)), "features"),
        # torch: ran; C++: RuntimeError
        "int64_sites": (lambda b: _subm_map(b, _sites().long()), "indices"),
        # torch: IndexError; C++: RuntimeError
        "sites_3_columns": (lambda b: _subm_map(b, _sites()[:, :3].contiguous()), "indices"),
        # both ran: z = 5 aliased the site (b + 1, z = 1)
        "site_outside_grid": (lambda b: _subm_map(b, torch.tensor([[0, 5, 1, 1]], dtype=torch.int32)), "indices[0]"),
    }


@pytest.mark.parametrize("case", list(_bad_sparse_inputs()))
def test_bad_sparse_conv_input_is_the_same_sparse_tensor_error_on_every_backend(case):
    from dense3d.errors import SparseTensorError

    call, field = _bad_sparse_inputs()[case]
    messages = []
    for backend in _sparse_backends():
        with pytest.raises(SparseTensorError) as e:
            call(backend)
        messages.append(str(e.value))
    assert len(set(messages)) == 1, messages  # the same message too
    assert f"field '{field}'" in messages[0] and "\n" not in messages[0], messages[0]


# -- 5. dense3d eval: TOD3Cap ground truth's num_pts is LiDAR + radar points ----------------------

def test_eval_ground_truth_counts_lidar_and_radar_points_as_tod3cap_gt_does(tmp_path):
    """``dense3d eval`` wrote num_pts = LiDAR points only, so a box seen by radar alone (num_pts 0)
    was dropped from its scoring while ``dense3d convert tod3cap-gt`` (and nuScenes) keep it. The
    data set now carries each box's ``num_radar_pts`` in ``meta``, kept aligned when boxes are
    dropped, and box_records adds it."""
    import json

    from dense3d.data.converters import tod3cap_ground_truth
    from dense3d.data.datasets.tod3cap import TOD3CapDataset
    from dense3d.data.transforms import ObjectRangeFilter
    from dense3d.engine.evaluate import box_records
    from tests.data.test_nuscenes_results import _infos

    info_file, infos = _infos(tmp_path)
    ds = TOD3CapDataset(str(info_file), sensors=())
    samples = [ds[i] for i in range(len(ds))]
    _, gt = box_records(samples, [[] for _ in samples])
    tod3cap_ground_truth(info_file, None, tmp_path / "gt.json")
    written = json.loads((tmp_path / "gt.json").read_text())
    for info in infos["data_list"]:
        expected = [i["num_lidar_pts"] + i["num_radar_pts"] for i in info["instances"]]
        assert [o["num_pts"] for o in gt[info["token"]]] == expected
        assert [o["num_pts"] for o in written[info["token"]]] == expected
    assert gt["sample1"][0]["num_pts"] == 7  # no LiDAR point, 7 radar points: kept by the TOD3Cap protocol

    # a transform that drops boxes keeps the radar counts with their boxes
    s1 = samples[1]
    centre = s1.boxes.boxes.center  # (K, 3)
    keep_x = float(centre[0, 0])  # a range around box 0's x only
    filtered = ObjectRangeFilter([keep_x - 0.01, -100, -10, keep_x + 0.01, 100, 10])(s1)
    assert len(filtered.boxes) == 1 and filtered.meta["num_radar_pts"].tolist() == [7]
    _, gt = box_records([filtered], [[]])
    assert [o["num_pts"] for o in gt["sample1"]] == [7]


def test_a_bad_num_radar_pts_is_one_line(tmp_path):
    import pickle

    from dense3d.data.datasets.tod3cap import TOD3CapDataset
    from dense3d.errors import AnnotationError
    from tests.data.test_nuscenes_results import _infos

    info_file, infos = _infos(tmp_path)
    infos["data_list"][0]["instances"][2]["num_radar_pts"] = -1
    info_file.write_bytes(pickle.dumps(infos))
    with pytest.raises(AnnotationError, match=r"instances\[2\].num_radar_pts': expected an integer >= 0, got -1"):
        TOD3CapDataset(str(info_file), sensors=())[0]
