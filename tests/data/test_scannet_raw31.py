"""dense3d convert scannet: raw ScanNet v2 scene folders -> the ScanRefer loader's npy files.

Each test builds a tiny raw scene in tmp_path (a binary ply written with plyfile, a segs.json,
an aggregation.json, a {scene}.txt with an axisAlignment rotating about z and translating, a
label tsv), converts it and reads the result back with ScanReferDataset.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from dense3d.cli import main
from dense3d.data.datasets import SCANNET_CLASSES, ScanReferDataset
from dense3d.data.scannet_raw import convert_scannet_scans
from dense3d.errors import AnnotationError, CalibrationError, PointCloudError

SCENE = "scene0042_00"
ANGLE = math.radians(30.0)
ALIGN = np.array([
    [math.cos(ANGLE), -math.sin(ANGLE), 0.0, 1.0],
    [math.sin(ANGLE), math.cos(ANGLE), 0.0, -2.0],
    [0.0, 0.0, 1.0, 0.5],
    [0.0, 0.0, 0.0, 1.0],
])
LABEL_TSV = "id\traw_category\tcategory\tnyu40id\n1\tchair\tchair\t5\n2\ttable\ttable\t7\n3\twall\twall\t1\n"


def _cube(lo, hi):
    """8 corners and 12 outward triangles of an axis-parallel box."""
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    v = np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)], dtype=np.float64)
    f = [[0, 2, 3], [0, 3, 1], [4, 5, 7], [4, 7, 6], [0, 1, 5], [0, 5, 4],
         [2, 6, 7], [2, 7, 3], [0, 4, 6], [0, 6, 2], [1, 3, 7], [1, 7, 5]]
    return v, np.array(f, dtype=np.int64)[:, ::-1]  # (12, 3), counter-clockwise seen from outside


def _raw_scene(scans, scene=SCENE, align=ALIGN, segments_of=None, label_tsv=LABEL_TSV):
    """Write a raw ScanNet scene folder; returns (vertices (V, 6), per-object vertex masks, files)."""
    parts = [  # (vertices, faces, segment ids of the vertices)
        (*_cube((0.0, 0.0, 0.0), (0.5, 0.6, 0.9)), [10] * 4 + [11] * 4),      # chair: segments 10, 11
        (*_cube((2.0, 1.0, 0.0), (3.2, 1.8, 0.75)), [20] * 8),               # table: segment 20
        (np.array([[4.0, 0, 0], [4.0, 3, 0], [4.0, 3, 2.5], [4.0, 0, 2.5]]),  # wall: plane x = 4
         np.array([[0, 1, 2], [0, 2, 3]]), [30] * 4),
        (np.array([[1.0, 3.0, 0.0], [1.5, 3.0, 0.0], [1.0, 3.5, 0.0]]), np.array([[0, 1, 2]]), [40] * 3),  # no object
    ]
    xyz, faces, seg = [], [], []
    for v, f, s in parts:
        faces.append(f + sum(len(p) for p in xyz))
        xyz.append(v)
        seg += s
    xyz, faces = np.concatenate(xyz), np.concatenate(faces)
    rgb = np.random.default_rng(0).integers(0, 256, (len(xyz), 3))
    d = scans / scene
    d.mkdir(parents=True)
    vertex = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                                        ("blue", "u1"), ("alpha", "u1")])
    for k, name in enumerate("xyz"):
        vertex[name] = xyz[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb[:, k]
    vertex["alpha"] = 255
    face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = faces
    PlyData([PlyElement.describe(vertex, "vertex"), PlyElement.describe(face, "face")]).write(str(d / f"{scene}_vh_clean_2.ply"))
    (d / f"{scene}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"sceneId": scene, "segIndices": seg}))
    groups = segments_of or [(0, "chair", [10, 11]), (1, "table", [20]), (2, "wall", [30])]
    (d / f"{scene}.aggregation.json").write_text(json.dumps({"sceneId": scene, "segGroups": [
        {"id": oid, "objectId": oid, "label": label, "segments": segs} for oid, label, segs in groups]}))
    meta = "colorHeight = 968\n"
    if align is not None:
        meta += "axisAlignment = " + " ".join(f"{x:.6f}" for x in np.asarray(align).ravel()) + "\n"
    (d / f"{scene}.txt").write_text(meta + "sceneType = Bedroom / Hotel\n")
    (scans / "labels.tsv").write_text(label_tsv)
    seg = np.asarray(seg)
    masks = {oid: np.isin(seg, segs) for oid, _, segs in groups}
    return np.concatenate([xyz.astype(np.float32).astype(np.float64), rgb], 1), masks


def _aligned(xyz):
    return (np.concatenate([xyz, np.ones((len(xyz), 1))], 1) @ ALIGN.T)[:, :3]


def _convert(tmp_path, *extra):
    argv = ["convert", "scannet", "--scans", str(tmp_path / "scans"), "--label-map", str(tmp_path / "scans" / "labels.tsv"),
            "--out", str(tmp_path / "out"), *extra]
    return main(argv)


def test_converted_scene_is_axis_aligned_with_min_max_boxes_and_nyu40_labels(tmp_path, capsys):
    vertices, masks = _raw_scene(tmp_path / "scans")
    assert _convert(tmp_path) == 0
    assert "wrote 1 scenes" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{SCENE}_aligned_bbox.npy", f"{SCENE}_aligned_vert.npy"]

    sample = ScanReferDataset(None, str(tmp_path / "out"), use_normals=True)[0]
    pts = sample.points.points.double().numpy()
    aligned = _aligned(vertices[:, :3])  # the matrix applied by hand
    np.testing.assert_allclose(pts[:, :3], aligned, atol=1e-5)
    np.testing.assert_array_equal(pts[:, 3:6], vertices[:, 3:6])

    ann = sample.boxes
    assert ann.object_ids == ["0", "1"]  # the wall (nyu40 1) is no detection class: its box is in the file, not read
    assert [SCANNET_CLASSES[i] for i in ann.labels.tolist()] == ["chair", "table"]
    boxes = ann.boxes.tensor.double().numpy()
    for row, oid in zip(boxes, (0, 1)):
        lo, hi = aligned[masks[oid]].min(0), aligned[masks[oid]].max(0)
        np.testing.assert_allclose(row[:3], (lo + hi) / 2, atol=1e-5)
        np.testing.assert_allclose(row[3:6], hi - lo, atol=1e-5)
        assert row[6] == 0.0  # axis-aligned: yaw 0
    raw = np.load(tmp_path / "out" / f"{SCENE}_aligned_bbox.npy")
    # the wall's row is kept (a description of it is a dropped description, not an unknown object id)
    assert raw.shape == (3, 8) and raw[:, 6].tolist() == [5.0, 7.0, 1.0] and raw[:, 7].tolist() == [0.0, 1.0, 2.0]


def test_vertex_normals_are_rotated_into_the_aligned_frame(tmp_path):
    vertices, masks = _raw_scene(tmp_path / "scans")
    assert _convert(tmp_path) == 0
    pts = ScanReferDataset(None, str(tmp_path / "out"), use_normals=True)[0].points.points.double().numpy()
    normals = pts[:, 6:9]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    wall = masks[2]  # the plane x = 4 of the raw scan: normal +-x there, +-(cos 30, sin 30, 0) once aligned
    np.testing.assert_allclose(np.abs(normals[wall] @ ALIGN[:3, 0]), 1.0, atol=1e-5)
    # a cube corner: the mean of its three faces' unit normals, e.g. (-1, -1, -1) / sqrt(3) at the chair's minimum corner
    np.testing.assert_allclose(normals[0], ALIGN[:3, :3] @ (-np.ones(3) / math.sqrt(3)), atol=1e-5)


def test_max_points_keeps_a_seeded_subset_and_workers_do_not_change_the_output(tmp_path):
    for scene in (SCENE, "scene0043_00"):
        _raw_scene(tmp_path / "scans", scene=scene)
    outs = []
    for workers, out in ((1, "a"), (2, "b")):
        n = convert_scannet_scans(tmp_path / "scans", tmp_path / out, tmp_path / "scans" / "labels.tsv", workers=workers, max_points=10)
        assert n["scenes"] == 2 and n["points"] == 20 and n["boxes"] == 6  # chair, table, wall per scene
        outs.append({p.name: np.load(p) for p in sorted((tmp_path / out).iterdir())})
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) == 4
    for name in outs[0]:
        np.testing.assert_array_equal(outs[0][name], outs[1][name])
    vert = outs[0][f"{SCENE}_aligned_vert.npy"]
    assert vert.shape == (10, 9)
    full = _aligned(_raw_scene(tmp_path / "again", scene=SCENE)[0][:, :3])
    # every kept point is one of the scene's aligned vertices
    assert (np.abs(vert[:, None, :3] - full[None]).max(-1).min(1) < 1e-5).all()


def test_unannotated_scene_needs_the_flag_and_then_has_no_boxes(tmp_path, capsys):
    _raw_scene(tmp_path / "scans", align=None)
    (tmp_path / "scans" / SCENE / f"{SCENE}.aggregation.json").unlink()
    assert _convert(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{SCENE}.aggregation.json" in err and "--allow-unannotated" in err and not (tmp_path / "out").exists()
    assert _convert(tmp_path, "--allow-unannotated") == 0
    out = capsys.readouterr().out
    assert "1 scenes without an aggregation file" in out and "1 scenes have no axisAlignment" in out
    sample = ScanReferDataset(None, str(tmp_path / "out"))[0]
    assert len(sample.boxes.boxes) == 0


def _write(path, text):
    path.write_text(text)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


BAD_INPUTS = {
    "missing ply": (lambda d: (d / f"{SCENE}_vh_clean_2.ply").unlink(), f"{SCENE}_vh_clean_2.ply", "<file>", PointCloudError),
    "missing segs": (lambda d: (d / f"{SCENE}_vh_clean_2.0.010000.segs.json").unlink(),
                     f"{SCENE}_vh_clean_2.0.010000.segs.json", "<file>", AnnotationError),
    "segment not in segs": (lambda d: _edit_json(d / f"{SCENE}.aggregation.json",
                                                 lambda a: a["segGroups"][1]["segments"].append(99)),
                            f"{SCENE}.aggregation.json", "segGroups[1].segments[1]", AnnotationError),
    "15 alignment numbers": (lambda d: _write(d / f"{SCENE}.txt", "axisAlignment = " + " ".join(["1"] * 15) + "\n"),
                             f"{SCENE}.txt", "axisAlignment", CalibrationError),
    "non-rigid alignment": (lambda d: _write(d / f"{SCENE}.txt", "axisAlignment = 2 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\n"),
                            f"{SCENE}.txt", "axisAlignment", CalibrationError),
    "label not in the map": (lambda d: _edit_json(d / f"{SCENE}.aggregation.json",
                                                  lambda a: a["segGroups"][0].update(label="armchair")),
                             f"{SCENE}.aggregation.json", "segGroups[0].label", AnnotationError),
    "segIndices of another mesh": (lambda d: _edit_json(d / f"{SCENE}_vh_clean_2.0.010000.segs.json",
                                                        lambda s: s["segIndices"].pop()),
                                   f"{SCENE}_vh_clean_2.0.010000.segs.json", "segIndices", AnnotationError),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_file_and_field_and_leaves_out_untouched(tmp_path, capsys, case):
    spoil, filename, field, error = BAD_INPUTS[case]
    _raw_scene(tmp_path / "scans")
    _raw_scene(tmp_path / "scans", scene="scene0000_00")  # a good scene converted before the bad one
    spoil(tmp_path / "scans" / SCENE)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("a file of the user's")
    assert _convert(tmp_path) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert filename in err and f"'{field}'" in err and error.__name__ in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]  # not even the good scene
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scans"]  # no staging folder left
    with pytest.raises(error, match=field.replace("[", r"\[").replace("]", r"\]")):
        convert_scannet_scans(tmp_path / "scans", tmp_path / "out", tmp_path / "scans" / "labels.tsv", workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scans"]


@pytest.mark.parametrize("argv, field", [
    (["--scenes", "scene9999_00"], "--scenes"),
    (["--scans", "/nonexistent/scans"], "--scans"),
])
def test_unknown_scene_or_scans_folder_is_one_line(tmp_path, capsys, argv, field):
    _raw_scene(tmp_path / "scans")
    assert _convert(tmp_path, *argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"'{field}'" in err and not (tmp_path / "out").exists()


def test_scene_list_file_and_label_map_without_nyu40id_column(tmp_path, capsys):
    _raw_scene(tmp_path / "scans")
    _raw_scene(tmp_path / "scans", scene="scene0000_00")
    (tmp_path / "val.txt").write_text(f"{SCENE}\n\n")
    assert _convert(tmp_path, "--scenes", str(tmp_path / "val.txt")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{SCENE}_aligned_bbox.npy", f"{SCENE}_aligned_vert.npy"]
    capsys.readouterr()
    (tmp_path / "scans" / "labels.tsv").write_text("id\traw_category\tnyu40class\n1\tchair\tchair\n")
    assert _convert(tmp_path) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "labels.tsv" in err and "'nyu40id'" in err
