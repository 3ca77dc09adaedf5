"""ScanNet scans with ScanRefer descriptions, one sample per scene (Scan2Cap style).

File layout, keys, shapes and units: ``docs/data_formats.md`` section 2.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dense3d.data.datasets.base import SampleDataset, select_sensors
from dense3d.data.readers import load_json, read_npy, read_points_bin
from dense3d.errors import AnnotationError, BoxError, PointCloudError
from dense3d.structures import Boxes3D, BoxAnnotations, PointCloud, Sample

__all__ = ["ScanReferDataset", "SCANNET_CLASSES", "SCANNET_NYU40_IDS", "SCANREFER_FIELDS", "read_scannet_points"]

# The 18 ScanNet detection classes (mmdet3d / Vote2Cap-DETR) and their NYU40 ids.
SCANNET_CLASSES = (
    "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refrigerator", "showercurtrain", "toilet", "sink", "bathtub", "garbagebin",
)
SCANNET_NYU40_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANREFER_FIELDS = ("scene_id", "object_id", "object_name", "ann_id", "description", "token")


def _colours_0_255(pts: torch.Tensor, path: Path, field: str) -> torch.Tensor:
    """Colours (columns 3:6) on ScanNet's 0-255 scale. A scan whose colours all lie in [0, 1] (an
    export that stores colours as 0-1 floats, e.g. Open3D's) is scaled by 255; colours outside
    [0, 255] (e.g. mean-subtracted, normalised ones) are refused."""
    rgb = pts[:, 3:6]  # (N, 3)
    bad = ((rgb < 0) | (rgb > 255)).any(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise PointCloudError(path, f"{field}[{i}].rgb", "colours in 0-255 (ScanNet's) or all in 0-1, not normalised ones",
                              got=rgb[i].tolist())
    if len(rgb) and float(rgb.max()) <= 1.0:
        pts = pts.clone()
        pts[:, 3:6] = rgb * 255.0
    return pts


def read_scannet_points(scans_dir: Path, scene: str, use_normals: bool = False) -> PointCloud:
    """``{scene}_aligned_vert.npy`` (N, 9) xyz rgb normal, else mmdet3d's ``{scene}.bin`` (N, 6) xyzrgb.
    Colours come out 0-255: a scan stored with 0-1 colours is scaled by 255."""
    npy = scans_dir / f"{scene}_aligned_vert.npy"
    if npy.is_file():
        arr = read_npy(npy, "vertices", ncols=9 if use_normals else 6)
        cols = 9 if use_normals else 6
        pts = torch.from_numpy(np.ascontiguousarray(arr[:, :cols], dtype=np.float32))
        bad = ~torch.isfinite(pts)
        if bool(bad.any()):
            i = int(bad.any(1).nonzero()[0, 0])
            raise PointCloudError(npy, f"vertices[{i}]", "finite values", got=pts[i].tolist())
        src = npy
    else:
        src = scans_dir / f"{scene}.bin"
        if use_normals:
            raise PointCloudError(src, "normals", f"{npy.name} (the mmdet3d .bin has no normals)", got="use_normals=True")
        if not src.is_file():
            raise PointCloudError(npy, "vertices", f"{npy.name} or {src.name}", got="missing")
        pts = read_points_bin(src, 6)
    pts = _colours_0_255(pts, src, "vertices" if src == npy else "points")
    names = ("x", "y", "z", "r", "g", "b") + (("nx", "ny", "nz") if use_normals else ())
    return PointCloud(pts, feature_names=names, source=str(src))


class ScanReferDataset(SampleDataset):
    """ScanNet scenes: points, the boxes of the 18 detection classes, ScanRefer descriptions.

    Args:
        scanrefer_file: ``ScanRefer_filtered_{split}.json`` (``{split}`` replaced), or None to
            read every scan in ``scans_dir`` without descriptions (e.g. mmdet3d ``.bin`` files).
        scans_dir: folder with ``{scene}_aligned_vert.npy`` (or ``{scene}.bin``) and
            ``{scene}_aligned_bbox.npy``.
        split: ``"train"``, ``"val"`` or ``"test"`` (ScanNet's test scenes have no annotations:
            their descriptions are read but attach to no box, see below).
        sensors: ``lidar`` (the scan) or nothing (annotations only).
        use_normals: add the vertex normals ``nx, ny, nz`` as point features.
        scene_ids: restrict to these scenes.
        transforms: a callable ``Sample -> Sample``.

    Items: ``Sample`` with ``points`` and ``boxes`` (``BoxAnnotations`` with yaw 0, labels into
    ``SCANNET_CLASSES``, ``object_ids`` the ScanNet object ids as strings, ``captions`` the
    descriptions); ``meta["object_names"]`` (ScanRefer's name per box, "" when undescribed),
    ``meta["dropped_descriptions"]`` (descriptions attached to no box: of objects outside the 18
    classes, or of a scene without annotations). A scene whose bbox file is all zeros (ScanRefer's
    preprocessing writes ``zeros((1, 8))`` for the ScanNet test scenes) has no boxes, with or
    without descriptions. Scenes without a bbox file (only with ``scanrefer_file=None``) have
    ``boxes=None``.
    """

    SENSORS = ("lidar",)  # the sensors this data set has (a run's sensors.names may ask for more)

    def __init__(
        self,
        scanrefer_file: str | None,
        scans_dir: str,
        split: str = "train",
        sensors: Sequence[str] = ("lidar",),
        use_normals: bool = False,
        scene_ids: Sequence[str] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ):
        super().__init__(transforms)
        self.split = split
        self.scanrefer_file = Path(str(scanrefer_file).format(split=split)) if scanrefer_file else None
        self.scans_dir = Path(scans_dir)
        self.sensors = select_sensors(sensors, self.SENSORS, type(self).__name__)
        self.use_normals = bool(use_normals)
        self.scene_ids = tuple(scene_ids) if scene_ids is not None else None
        self.class_names = SCANNET_CLASSES

    def _build_index(self) -> list:
        by_scene: dict[str, list[dict]] = defaultdict(list)
        if self.scanrefer_file is None:
            scenes = {p.name[: -len("_aligned_vert.npy")] for p in self.scans_dir.glob("*_aligned_vert.npy")}
            scenes |= {p.stem for p in self.scans_dir.glob("*.bin")}
            by_scene = {s: [] for s in scenes}
        else:
            anns = load_json(self.scanrefer_file)
            if not isinstance(anns, list):
                raise AnnotationError(self.scanrefer_file, "<root>", "a list of descriptions", got=type(anns).__name__)
            for i, a in enumerate(anns):
                for key in SCANREFER_FIELDS:
                    if not isinstance(a, dict) or key not in a:
                        raise AnnotationError(self.scanrefer_file, f"[{i}].{key}", "a present field", got="missing")
                if not isinstance(a["description"], str):
                    raise AnnotationError(self.scanrefer_file, f"[{i}].description", "a sentence string", got=repr(a["description"]))
                try:
                    int(a["object_id"])
                except (TypeError, ValueError):
                    raise AnnotationError(self.scanrefer_file, f"[{i}].object_id", "an integer id as a string", got=a["object_id"]) from None
                by_scene[str(a["scene_id"])].append(dict(a, _row=i))
        if self.scene_ids is not None:
            by_scene = {s: by_scene.get(s, []) for s in self.scene_ids}
        return sorted(by_scene.items())

    def _load(self, entry) -> Sample:
        scene, descriptions = entry
        points = read_scannet_points(self.scans_dir, scene, self.use_normals) if "lidar" in self.sensors else None
        bbox_path = self.scans_dir / f"{scene}_aligned_bbox.npy"
        if not bbox_path.is_file() and self.scanrefer_file is None:
            return Sample(sample_id=scene, points=points, meta={"scene_id": scene})
        boxes, meta = self._load_boxes(bbox_path, scene, descriptions)
        meta["scene_id"] = scene
        return Sample(sample_id=scene, points=points, boxes=boxes, meta=meta)

    def _load_boxes(self, bbox_path: Path, scene: str, descriptions: list[dict]) -> tuple[BoxAnnotations, dict]:
        arr = read_npy(bbox_path, "boxes", ncols=8, error=AnnotationError).astype(np.float64)
        unannotated = bool((arr == 0).all())
        if unannotated:  # ScanRefer writes one all-zero row for an unannotated (test) scene: no boxes
            arr = arr[:0]
        if not np.isfinite(arr).all():
            i = int(np.nonzero(~np.isfinite(arr).all(1))[0][0])
            raise BoxError(bbox_path, f"boxes[{i}]", "finite numbers", got=arr[i].tolist())
        zero = (arr[:, 3:6] <= 0).any(1)
        if zero.any():
            i = int(np.nonzero(zero)[0][0])
            raise BoxError(bbox_path, f"boxes[{i}].size", "dx, dy, dz > 0", got=arr[i, 3:6].tolist())
        nyu = arr[:, 6]
        unknown = (nyu != np.round(nyu)) | (nyu < 1) | (nyu > 40)
        if unknown.any():
            i = int(np.nonzero(unknown)[0][0])
            raise AnnotationError(bbox_path, f"boxes[{i}].nyu40_label", "a NYU40 class id in 1..40", got=float(nyu[i]))
        all_ids = arr[:, 7].astype(np.int64)
        nyu_to_label = {n: k for k, n in enumerate(SCANNET_NYU40_IDS)}
        keep = np.array([int(n) in nyu_to_label for n in nyu], dtype=bool)
        kept_ids = [str(int(o)) for o in all_ids[keep]]
        caps: dict[str, list[tuple[int, str]]] = defaultdict(list)
        names: dict[str, str] = {}
        dropped = 0
        known = {str(int(o)) for o in all_ids}
        for d in descriptions:
            if unannotated:
                # ScanRefer's test split describes objects of ScanNet's test scenes, whose boxes
                # are not published: no object id can be checked or matched, so none is an error
                dropped += 1
                continue
            oid = str(int(d["object_id"]))
            if oid not in known:
                raise AnnotationError(self.scanrefer_file, f"[{d['_row']}].object_id", f"an object id in {bbox_path.name}", got=oid)
            if oid not in kept_ids:
                dropped += 1
                continue
            try:
                order = int(d["ann_id"])
            except (TypeError, ValueError):
                order = len(caps[oid])
            caps[oid].append((order, str(d["description"]).strip()))
            names[oid] = str(d["object_name"])
        boxes = Boxes3D.from_scannet(torch.tensor(arr[keep, :6], dtype=torch.float32), source=str(bbox_path), allow_zero_size=False)
        ann = BoxAnnotations(
            boxes=boxes,
            labels=torch.tensor([nyu_to_label[int(n)] for n in nyu[keep]], dtype=torch.long),
            class_names=SCANNET_CLASSES,
            captions=[[t for _, t in sorted(caps[o])] for o in kept_ids],
            object_ids=kept_ids,
        )
        return ann, {"object_names": [names.get(o, "") for o in kept_ids], "dropped_descriptions": dropped}
