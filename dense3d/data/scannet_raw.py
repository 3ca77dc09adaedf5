"""Raw ScanNet v2 scans -> the files ``ScanReferDataset`` reads (``dense3d convert scannet``).

Per scene folder ``SCANS/{scene}/`` of a ScanNet v2 download this reads

* ``{scene}_vh_clean_2.ply``: mesh vertices (x, y, z, red, green, blue) and triangles;
* ``{scene}_vh_clean_2.0.010000.segs.json``: ``segIndices``, the segment id of every vertex;
* ``{scene}.aggregation.json``: ``segGroups`` (``objectId``, ``label``, ``segments``);
* ``{scene}.txt``: ``axisAlignment = m00 m01 ... m33`` (row-major 4x4);
* ``scannetv2-labels.combined.tsv`` (``raw_category`` -> ``nyu40id``),

and writes what Scan2Cap's / Vote2Cap-DETR's ``batch_load_scannet_data.py`` writes for the loader:

* ``{scene}_aligned_vert.npy``: float32 (N, 9) ``x, y, z, r, g, b, nx, ny, nz``: the vertices
  moved by ``axisAlignment`` (``[x y z 1] @ M.T``), colours 0-255, unit vertex normals (the mean
  of the unit normals of the triangles around a vertex, as their ``compute_normal``), rotated by
  the rotation of ``axisAlignment`` (Scan2Cap leaves them in the raw scan frame: a difference on
  purpose, so that normals and points share a frame). At most ``max_points`` vertices, a seeded
  random subset as theirs (50,000 by default; 0 keeps every vertex); boxes use every vertex.
* ``{scene}_aligned_bbox.npy``: float64 (K, 8) ``cx, cy, cz, dx, dy, dz, nyu40_id, object_id``:
  per object of the aggregation, the min/max box of its aligned vertices (a vertex belongs to
  the last object that lists its segment, as their per-vertex instance labels), ``object_id``
  ScanNet's ``objectId``; rows sorted by ``objectId``. Objects labelled wall (1), floor (2) or
  ceiling (22) are kept, unlike theirs: ``ScanReferDataset`` reads only the 18 detection classes
  anyway, but refuses a description whose ``object_id`` has no row in this file (theirs ignore
  it), so a description of, say, a "closet wall" (nyu40 wall) would stop the data set. Left out
  are objects whose label maps to nyu40id 0, objects without a vertex and (unlike theirs,
  because the loader refuses them) boxes of zero extent along an axis. A scene
  without an aggregation file (ScanNet's test scans; only with ``allow_unannotated``) gets
  their placeholder ``zeros((1, 8))``, which the loader reads as "no boxes".

Bad input is one line naming the file and the field. Nothing is written half: every scene is
written to a staging folder inside ``out`` (on its file system, so the files move by rename
even where ``out`` is a mount point) first, and moved into ``out`` only when all scenes
converted; on an error ``out`` is left as it was (not made, where it did not exist).
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dense3d.data.readers import check_rigid, load_json
from dense3d.errors import AnnotationError, CalibrationError, ConfigError, Dense3DError, DependencyError, PointCloudError

__all__ = [
    "convert_scannet_scans",
    "read_axis_alignment",
    "read_label_map",
    "read_scannet_mesh",
    "vertex_normals",
]

OWNER = "dense3d convert scannet"


# ---------------------------------------------------------------- readers
def read_label_map(path: str | os.PathLike) -> dict[str, int | None]:
    """``scannetv2-labels.combined.tsv`` -> ``{raw_category: nyu40id}``. A row whose ``nyu40id``
    is not an integer maps to None (an error only when an aggregation uses that label)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "<file>", "an existing label map (scannetv2-labels.combined.tsv)", got="missing")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        for col in ("raw_category", "nyu40id"):
            if col not in (reader.fieldnames or []):
                raise AnnotationError(path, col, "a tab-separated header with columns raw_category and nyu40id",
                                      got=f"columns {reader.fieldnames}")
        out: dict[str, int | None] = {}
        for row in reader:
            try:
                out[row["raw_category"]] = int(row["nyu40id"])
            except (TypeError, ValueError):
                out[row["raw_category"]] = None
    return out


def read_axis_alignment(path: Path) -> tuple[np.ndarray, bool]:
    """``axisAlignment`` of a scene's ``{scene}.txt`` as a (4, 4) float64 rigid transform, and
    whether the file had one (ScanNet's test scans have none: identity, as Scan2Cap does)."""
    if not path.is_file():
        raise CalibrationError(path, "<file>", "an existing scene meta file ({scene}.txt)", got="missing")
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.split("=", 1)[0].strip() == "axisAlignment"]
    if not lines:
        return np.eye(4), False
    if len(lines) > 1:
        raise CalibrationError(path, "axisAlignment", "one axisAlignment line", got=f"{len(lines)} lines")
    words = lines[0].split("=", 1)[1].split() if "=" in lines[0] else []
    try:
        values = [float(w) for w in words]
    except ValueError:
        raise CalibrationError(path, "axisAlignment", "16 numbers (a row-major 4x4 matrix)", got=lines[0].strip()) from None
    if len(values) != 16:
        raise CalibrationError(path, "axisAlignment", "16 numbers (a row-major 4x4 matrix)", got=f"{len(values)} numbers")
    matrix = np.asarray(values, dtype=np.float64).reshape(4, 4)  # (16,) -> (4, 4), row-major as ScanNet writes it
    return check_rigid(matrix, path, "axisAlignment").numpy(), True


def read_scannet_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The vertices (V, 6) float64 ``x, y, z, r, g, b`` (colours 0-255) and triangles (F, 3)
    int64 of a ScanNet ``*_vh_clean_2.ply``."""
    try:
        from plyfile import PlyData, PlyParseError
    except ImportError:
        raise DependencyError(OWNER, "plyfile", "the plyfile package (pip install -r requirements/runtime.txt)", got="not installed") from None
    if not path.is_file():
        raise PointCloudError(path, "<file>", "an existing mesh file ({scene}_vh_clean_2.ply)", got="missing")
    try:
        # fixed-length triangle lists let plyfile memory-map the faces instead of a Python loop per face;
        # it checks every face's length and raises "unexpected list length" otherwise
        ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3, "vertex_index": 3}})
    except PlyParseError as e:
        raise PointCloudError(path, "<file>", "a readable PLY mesh of triangles", got=str(e)) from None
    except (OSError, ValueError) as e:
        raise PointCloudError(path, "<file>", "a readable PLY mesh", got=f"{type(e).__name__}: {e}") from None
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise PointCloudError(path, "vertex", "a vertex element", got=f"elements {names}")
    vdata = ply["vertex"].data
    columns = []
    for prop in ("x", "y", "z", "red", "green", "blue"):
        if prop not in (vdata.dtype.names or ()):
            raise PointCloudError(path, f"vertex.{prop}", "a present vertex property", got=f"properties {list(vdata.dtype.names or ())}")
        columns.append(np.asarray(vdata[prop], dtype=np.float64))
    vertices = np.stack(columns, axis=1)  # 6 x (V,) -> (V, 6)
    bad = ~np.isfinite(vertices[:, :3]).all(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PointCloudError(path, f"vertex[{i}]", "finite x, y, z", got=vertices[i, :3].tolist())
    if "face" not in names:
        raise PointCloudError(path, "face", "a face element (triangles, for the vertex normals)", got=f"elements {names}")
    fdata = ply["face"].data
    key = next((k for k in ("vertex_indices", "vertex_index") if k in (fdata.dtype.names or ())), None)
    if key is None:
        raise PointCloudError(path, "face.vertex_indices", "a present face property", got=f"properties {list(fdata.dtype.names or ())}")
    faces = fdata[key]
    if faces.dtype == object:  # an ASCII ply: one array per face
        lengths = np.array([len(f) for f in faces], dtype=np.int64)
        if (lengths != 3).any():
            i = int(np.flatnonzero(lengths != 3)[0])
            raise PointCloudError(path, f"face[{i}].{key}", "triangles (3 vertex indices)", got=f"{lengths[i]} indices")
        faces = np.stack(faces) if len(faces) else np.zeros((0, 3))  # F x (3,) -> (F, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    out_of_range = (faces < 0) | (faces >= len(vertices))
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range.any(1))[0])
        raise PointCloudError(path, f"face[{i}].{key}", f"vertex indices in 0..{len(vertices) - 1}", got=faces[i].tolist())
    return vertices, faces


def vertex_normals(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals (V, 3): the sum of the unit normals of the triangles around each vertex,
    normalised (VoteNet / Scan2Cap's ``compute_normal``; a vertex in no triangle gets 0)."""
    tris = xyz[faces]  # (F, 3 corners, 3 coords)
    face_n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])  # (F, 3)
    face_n /= np.linalg.norm(face_n, axis=1, keepdims=True) + 1e-8
    normals = np.zeros_like(xyz)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_n)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-8
    return normals


def _read_segments(path: Path, num_vertices: int) -> np.ndarray:
    """``segIndices`` of a segs.json: (V,) int64, one segment id per mesh vertex."""
    data = load_json(path)
    if not isinstance(data, dict) or "segIndices" not in data:
        raise AnnotationError(path, "segIndices", "a present list of segment ids", got="missing")
    try:
        seg = np.asarray(data["segIndices"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError(path, "segIndices", "a list of integer segment ids", got=type(data["segIndices"]).__name__) from None
    if seg.ndim != 1 or len(seg) != num_vertices:
        raise AnnotationError(path, "segIndices", f"one segment id per vertex of the mesh ({num_vertices})",
                              got=f"shape {seg.shape}")
    return seg


@dataclass(frozen=True)
class _SceneFiles:
    scene: str
    ply: Path
    segs: Path
    aggregation: Path
    meta: Path

    @classmethod
    def of(cls, scans: Path, scene: str) -> "_SceneFiles":
        d = scans / scene
        return cls(scene, d / f"{scene}_vh_clean_2.ply", d / f"{scene}_vh_clean_2.0.010000.segs.json",
                   d / f"{scene}.aggregation.json", d / f"{scene}.txt")


def _instance_boxes(files: _SceneFiles, aligned_xyz: np.ndarray, label_map: dict, label_map_path: Path) -> tuple[np.ndarray, dict]:
    """(K, 8) boxes of the aggregation's objects, and counts of what was left out."""
    seg = _read_segments(files.segs, len(aligned_xyz))
    agg = load_json(files.aggregation)
    groups = agg.get("segGroups") if isinstance(agg, dict) else None
    if not isinstance(groups, list):
        raise AnnotationError(files.aggregation, "segGroups", "a list of objects", got="missing" if groups is None else type(groups).__name__)
    known_segments = set(np.unique(seg).tolist())
    instance = np.full(len(aligned_xyz), -1, dtype=np.int64)  # (V,) index into groups; -1: no object
    objects = []  # (objectId, nyu40id) per group, in file order
    seen_ids: set[int] = set()
    for i, g in enumerate(groups):
        for key in ("objectId", "label", "segments"):
            if not isinstance(g, dict) or key not in g:
                raise AnnotationError(files.aggregation, f"segGroups[{i}].{key}", "a present field", got="missing")
        oid = g["objectId"]
        if isinstance(oid, bool) or not isinstance(oid, int) or oid < 0:
            raise AnnotationError(files.aggregation, f"segGroups[{i}].objectId", "an integer >= 0", got=repr(oid))
        if oid in seen_ids:
            raise AnnotationError(files.aggregation, f"segGroups[{i}].objectId", "an id used once", got=f"{oid} again")
        seen_ids.add(oid)
        label = g["label"]
        if label not in label_map:
            raise AnnotationError(files.aggregation, f"segGroups[{i}].label", f"a raw_category of {label_map_path}", got=repr(label))
        nyu = label_map[label]
        if nyu is None or not 0 <= nyu <= 40:
            raise AnnotationError(label_map_path, f"nyu40id of raw_category {label!r}", "an integer NYU40 id in 0..40", got=repr(nyu))
        segments = g["segments"]
        if not isinstance(segments, list):
            raise AnnotationError(files.aggregation, f"segGroups[{i}].segments", "a list of segment ids", got=type(segments).__name__)
        for j, s in enumerate(segments):
            if s not in known_segments:
                raise AnnotationError(files.aggregation, f"segGroups[{i}].segments[{j}]",
                                      f"a segment id of {files.segs.name} segIndices", got=repr(s))
        # a vertex whose segment two objects list goes to the later one (Scan2Cap's per-vertex instance ids)
        instance[np.isin(seg, segments)] = i
        objects.append((oid, nyu))
    rows, dropped = [], {"nyu40_id_0": 0, "empty": 0, "zero_extent": 0}
    for i, (oid, nyu) in sorted(enumerate(objects), key=lambda item: item[1][0]):
        pts = aligned_xyz[instance == i]  # (n_i, 3)
        # wall, floor and ceiling are kept (module docstring); nyu40id 0 is no class the loader reads
        if nyu == 0:
            dropped["nyu40_id_0"] += 1
            continue
        if len(pts) == 0:
            dropped["empty"] += 1
            continue
        lo, hi = pts.min(0), pts.max(0)
        if (hi - lo <= 0).any():
            dropped["zero_extent"] += 1
            continue
        rows.append([*((lo + hi) / 2), *(hi - lo), nyu, oid])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 8), dropped


def _convert_scene(scans: Path, scene: str, stage: Path, label_map: dict, label_map_path: Path,
                   max_points: int, seed: int, allow_unannotated: bool) -> dict:
    files = _SceneFiles.of(scans, scene)
    matrix, aligned = read_axis_alignment(files.meta)
    vertices, faces = read_scannet_mesh(files.ply)
    xyz = vertices[:, :3]
    homogeneous = np.concatenate([xyz, np.ones((len(xyz), 1))], axis=1)  # (V, 3) -> (V, 4)
    aligned_xyz = (homogeneous @ matrix.T)[:, :3]  # (V, 4) -> (V, 3)
    normals = vertex_normals(xyz, faces) @ matrix[:3, :3].T  # (V, 3), rotated into the aligned frame
    if files.aggregation.is_file():
        boxes, dropped = _instance_boxes(files, aligned_xyz, label_map, label_map_path)
        annotated = True
    elif allow_unannotated:
        boxes, dropped, annotated = np.zeros((1, 8)), {}, False  # Scan2Cap's placeholder for a test scene
    else:
        raise AnnotationError(files.aggregation, "<file>",
                              "an existing aggregation file (a test scan without annotations needs --allow-unannotated)",
                              got="missing")
    points = np.concatenate([aligned_xyz, vertices[:, 3:6], normals], axis=1).astype(np.float32)  # (V, 9)
    if max_points and len(points) > max_points:
        rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])
        points = points[np.sort(rng.choice(len(points), max_points, replace=False))]
    np.save(stage / f"{scene}_aligned_vert.npy", points)
    np.save(stage / f"{scene}_aligned_bbox.npy", boxes)
    return {"scene": scene, "points": len(points), "vertices": len(vertices), "boxes": len(boxes) if annotated else 0,
            "annotated": annotated, "aligned": aligned, "dropped": dropped}


_ERRORS = {c.__name__: c for c in (AnnotationError, CalibrationError, ConfigError, DependencyError, PointCloudError)}


def _convert_scene_job(args: tuple) -> tuple[str, object]:
    """Worker entry: ("ok", stats) or ("error", (class name, source, field, expected, got)) --
    a Dense3DError does not pickle (its constructor takes four arguments), so it travels as fields."""
    try:
        return "ok", _convert_scene(*args)
    except Dense3DError as e:
        return "error", (type(e).__name__, e.source, e.field, e.expected, e.got)


def _scene_list(scans: Path, scenes: str | Sequence[str] | None) -> list[str]:
    if not scans.is_dir():
        raise ConfigError(OWNER, "--scans", "a folder of ScanNet scene folders (scans/sceneXXXX_XX)", got=str(scans))
    if scenes is None:
        names = sorted(p.name for p in scans.iterdir() if p.is_dir() and re.fullmatch(r"scene\d{4}_\d{2}", p.name))
        if not names:
            raise ConfigError(OWNER, "--scans", "a folder holding sceneXXXX_XX folders", got=f"none in {scans}")
        return names
    if isinstance(scenes, str):
        listed = Path(scenes)
        if listed.is_file():  # e.g. Scan2Cap's meta_data/scannetv2_val.txt, one scene id a line
            names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            names = [s.strip() for s in scenes.split(",") if s.strip()]
    else:
        names = [str(s) for s in scenes]
    if not names:
        raise ConfigError(OWNER, "--scenes", "a scene list file or comma-separated scene ids", got=repr(scenes))
    for name in names:
        if not (scans / name).is_dir():
            raise ConfigError(OWNER, "--scenes", f"scene folders in {scans}", got=f"no folder {name}")
    return list(dict.fromkeys(names))


def convert_scannet_scans(scans: str | os.PathLike, out: str | os.PathLike, label_map: str | os.PathLike,
                          scenes: str | Sequence[str] | None = None, workers: int = 1, max_points: int = 50000,
                          seed: int = 0, allow_unannotated: bool = False,
                          progress: Callable[[int, int], None] | None = None) -> dict:
    """Convert raw ScanNet v2 scene folders into ``ScanReferDataset``'s ``scans_dir`` layout.

    Args:
        scans: the folder of scene folders (ScanNet's ``scans/`` or ``scans_test/``).
        out: the ``scans_dir`` to write into (created; other files in it are kept, the converted
            scenes' files replaced).
        label_map: ``scannetv2-labels.combined.tsv``.
        scenes: scene ids, a comma-separated string of them, or a file with one id a line
            (default: every ``sceneXXXX_XX`` folder of ``scans``).
        workers: processes (the output does not depend on it).
        max_points: keep at most this many vertices per scene (a seeded random subset; 0: all).
        seed: the subset's seed (with the scene id).
        allow_unannotated: write scenes without ``{scene}.aggregation.json`` with no boxes.
        progress: called with (done, total) after each scene.

    Returns:
        ``{"scenes", "points", "boxes", "unannotated", "unaligned", "dropped": {...}}`` counts.
    """
    scans, out, label_map_path = Path(scans), Path(out), Path(label_map)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 0:
        raise ConfigError(OWNER, "--max-points", "an integer >= 0 (0 keeps every vertex)", got=repr(max_points))
    names = _scene_list(scans, scenes)
    labels = read_label_map(label_map_path)
    if out.exists() and not out.is_dir():
        raise ConfigError(OWNER, "--out", "a folder path (it is a file)", got=str(out))
    # The staging folder lies inside ``out``, on its file system: os.replace moves a file only
    # within one file system, and ``out`` may be a mount point (a volume, a network share) whose
    # parent is another one, or is not writable.
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".dense3d-convert-", suffix=".tmp", dir=out))
    except OSError as e:
        raise ConfigError(OWNER, "--out", "a folder that can be written", got=f"{type(e).__name__}: {e}") from None
    converted = False
    try:
        jobs = [(scans, s, stage, labels, label_map_path, max_points, seed, allow_unannotated) for s in names]
        results = []
        pool = ProcessPoolExecutor(min(workers, len(jobs))) if workers > 1 and len(jobs) > 1 else None
        try:
            outcomes = pool.map(_convert_scene_job, jobs) if pool else map(_convert_scene_job, jobs)
            for kind, value in outcomes:
                if kind == "error":
                    raise _ERRORS.get(value[0], Dense3DError)(*value[1:])
                results.append(value)
                if progress:
                    progress(len(results), len(jobs))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # on an error: the scenes not started are not converted
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
        converted = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not converted:  # on an error, no --out folder this call made (it is empty again)
            with contextlib.suppress(OSError):
                out.rmdir()
    dropped: dict[str, int] = {}
    for r in results:
        for k, v in r["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    return {
        "scenes": len(results),
        "points": sum(r["points"] for r in results),
        "boxes": sum(r["boxes"] for r in results),
        "unannotated": [r["scene"] for r in results if not r["annotated"]],
        "unaligned": [r["scene"] for r in results if not r["aligned"]],
        "dropped": dropped,
    }
