"""nuScenes keyframes in the mmdet3d v1.1 info format, with TOD3Cap per-box captions.

File layout, keys, shapes and units: ``docs/data_formats.md`` section 1.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from dense3d.data.datasets.base import SampleDataset, select_sensors
from dense3d.data.readers import check_rigid, load_json, load_pickle, read_image, read_points_bin, require, to_matrix
from dense3d.errors import AnnotationError, BoxError, CalibrationError, ConfigError, ImageError, PointCloudError
from dense3d.structures import Boxes3D, BoxAnnotations, CameraImages, PointCloud, Sample

__all__ = ["TOD3CapDataset", "BOX_FILTERS", "CAPTION_SOURCES", "OLD_CAPTION_FIELDS", "NUSCENES_POINT_FEATURES", "parse_caption_entry",
           "tod3cap_template"]

# Columns of a nuScenes ``.pcd.bin``.
NUSCENES_POINT_FEATURES = ("x", "y", "z", "intensity", "ring")
# TOD3Cap's older caption fields, composed in this order when ``final_caption`` is missing.
OLD_CAPTION_FIELDS = ("attribute_caption", "localization_caption", "motion_caption", "map_caption", "depth_caption")
# How an entry's caption is chosen (``TOD3CapDataset(caption_source=...)``).
CAPTION_SOURCES = ("final_caption", "template")
# The most seconds a LiDAR sweep may precede its keyframe (nuScenes: 20 Hz, mmdet3d merges <= 10
# sweeps, 0.5 s); a larger or negative lag means a timestamp in another unit.
MAX_SWEEP_LAG = 10.0
# Which boxes ``TOD3CapDataset(box_filter=...)`` keeps, as mmdet3d's ``NuScenesDataset``: None keeps
# every box; "num_lidar_pts" those with ``num_lidar_pts > 0`` (mmdet3d's default,
# ``use_valid_flag=False``); "bbox_3d_isvalid" those flagged valid (``use_valid_flag=True``).
BOX_FILTERS = (None, "num_lidar_pts", "bbox_3d_isvalid")


def _as_texts(value, source, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise AnnotationError(source, field, "a string or a list of strings", got=type(value).__name__)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def _nested_text(entry: dict, source, token: str, field: str, key: str) -> str:
    part = entry.get(field)
    if not isinstance(part, dict):
        raise AnnotationError(source, f"{token}.{field}", f"an object with '{key}' (TOD3Cap's annotation fields)",
                              got="missing" if part is None else type(part).__name__)
    value = part.get(key)
    if key == "depth":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise AnnotationError(source, f"{token}.{field}.{key}", "a distance in metres", got=repr(value))
        return str(round(value))  # Python's round, as TOD3Cap's code: half to even (2.5 -> 2)
    if not isinstance(value, str):
        raise AnnotationError(source, f"{token}.{field}.{key}", "a string", got="missing" if value is None else type(value).__name__)
    return value


def tod3cap_template(entry: dict, source, token: str) -> str:
    """The caption TOD3Cap's evaluation (``evaluate_utils/get_text_results.py``) and its
    LLaMA-Adapter targets compose from an annotation's nested fields:
    ``"<attribute> about <round(depth)> meters away <localization> is <motion> <map>"``,
    e.g. ``"white sedan about 12 meters away in front of the ego car is driving on the road"``.
    The words are kept as they are (no added periods, case unchanged), so CIDEr against these
    references equals TOD3Cap's."""
    return (
        _nested_text(entry, source, token, "attribute_caption", "attribute_caption")
        + " about " + _nested_text(entry, source, token, "depth_caption", "depth") + " meters away "
        + _nested_text(entry, source, token, "localization_caption", "localization_caption")
        + " is " + _nested_text(entry, source, token, "motion_caption", "motion_caption")
        + " " + _nested_text(entry, source, token, "map_caption", "map_caption")
    )


def parse_caption_entry(entry, source, token: str, caption_source: str = "final_caption") -> tuple[list[str], str]:
    """One TOD3Cap caption entry -> (captions, schema), schema ``"final_caption"``,
    ``"template"`` or ``"composed"``.

    TOD3Cap's released annotations hold, per box, nested fields (``{"attribute_caption":
    {"attribute_caption": "white sedan", "category": ...}, "depth_caption": {"depth": 12.3, ...},
    "localization_caption": {...}, "motion_caption": {...}, "map_caption": {...}, ...}``) and
    may hold an LLM-written ``final_caption`` paraphrasing them.

    * ``caption_source="final_caption"`` (default): ``final_caption`` when present; otherwise,
      for nested fields, :func:`tod3cap_template`; otherwise the flat ``*_caption`` strings
      present are composed in the order of ``OLD_CAPTION_FIELDS`` (each made a sentence, joined
      by a space; lists of several references index by index).
    * ``caption_source="template"``: always :func:`tod3cap_template`, the references TOD3Cap's
      own evaluation scores against (needed to compare numbers with its papers).
    """
    if caption_source not in CAPTION_SOURCES:
        raise ConfigError("TOD3CapDataset", "caption_source", f"one of {list(CAPTION_SOURCES)}", got=caption_source)
    if not isinstance(entry, dict):
        raise AnnotationError(source, token, "an object with final_caption or the *_caption fields", got=type(entry).__name__)
    nested = any(isinstance(entry.get(k), dict) for k in OLD_CAPTION_FIELDS)
    if caption_source == "template" or (nested and "final_caption" not in entry):
        return [tod3cap_template(entry, source, token)], "template"
    if "final_caption" in entry:
        return [t.strip() for t in _as_texts(entry["final_caption"], source, f"{token}.final_caption")], "final_caption"
    parts = [(k, _as_texts(entry[k], source, f"{token}.{k}")) for k in OLD_CAPTION_FIELDS if k in entry]
    if not parts:
        raise AnnotationError(source, f"{token}.final_caption", f"final_caption or one of {list(OLD_CAPTION_FIELDS)}", got="missing")
    n = max(len(texts) for _, texts in parts)
    captions = []
    for i in range(n):
        pieces = [_sentence(texts[min(i, len(texts) - 1)]) for _, texts in parts]
        captions.append(" ".join(p for p in pieces if p))
    return captions, "composed"


class TOD3CapDataset(SampleDataset):
    """nuScenes keyframes (LiDAR, six cameras, boxes) with TOD3Cap captions.

    Args:
        info_file: mmdet3d v1.1 info pickle; ``{split}`` is replaced by ``split``.
        split: ``"train"``, ``"val"``, ...
        data_root: folder that ``lidar_path`` / ``img_path`` are relative to (default: the
            info file's folder).
        caption_file: TOD3Cap caption JSON keyed by ``sample_annotation`` token (``{split}``
            replaced), or None: every box then has an empty caption list.
        caption_source: ``"final_caption"`` (an entry's ``final_caption`` when it has one) or
            ``"template"`` (TOD3Cap's evaluation references, composed from the nested fields:
            to compare scores with its papers); see :func:`parse_caption_entry`.
        sensors: any of ``lidar``, ``camera`` (other names are ignored: not in this data set).
        cameras: camera names to read, in this order (default: all in the info, in its order).
        sweeps: number of earlier LiDAR sweeps to merge (adds a ``time_lag`` column).
        sweep_remove_close: drop a sweep's points within this many metres of its sensor in x and y
            (a square, before the sweep is moved to the keyframe, as mmdet3d's
            ``LoadPointsFromMultiSweeps(remove_close=True)`` in its nuScenes configs): the ego car's
            own roof and mirrors, which would otherwise leave a trail behind the keyframe's
            sensor. 0 keeps every point. The keyframe's points are never dropped.
        data_prefix: sub-folder per file kind (``"pts"``, camera names), mmdet3d style.
        drop_ignored: drop boxes with label -1 (a class outside ``metainfo.categories``).
        box_filter: None (default: keep every box), ``"num_lidar_pts"`` (keep boxes with at least
            one LiDAR point: what mmdet3d's ``NuScenesDataset`` trains and tests on by default) or
            ``"bbox_3d_isvalid"`` (keep boxes flagged valid, LiDAR + radar points > 0: mmdet3d's
            ``use_valid_flag=True``). A filter needs its field in every instance.
        transforms: a callable ``Sample -> Sample`` (e.g. ``dense3d.data.transforms.Compose``).

    Items are ``Sample`` with ``points``, ``cameras`` and ``boxes`` (``BoxAnnotations``:
    gravity-centred boxes, (K, 9) with velocity when the info has it) and ``meta`` holding
    ``caption_schema`` (per box), ``box_valid``, ``lidar2ego``, ``ego2global``, ``timestamp`` and,
    when the info's instances have them, ``num_radar_pts`` (per box; ``boxes.num_points`` holds
    the LiDAR points).
    """

    SENSORS = ("lidar", "camera")  # the sensors this data set has (a run's sensors.names may ask for more)

    def __init__(
        self,
        info_file: str,
        split: str = "train",
        data_root: str | None = None,
        caption_file: str | None = None,
        caption_source: str = "final_caption",
        sensors: Sequence[str] = ("lidar", "camera"),
        cameras: Sequence[str] | None = None,
        sweeps: int = 0,
        sweep_remove_close: float = 1.0,
        data_prefix: Mapping[str, str] | None = None,
        drop_ignored: bool = False,
        box_filter: str | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ):
        super().__init__(transforms)
        self.split = split
        self.info_file = Path(str(info_file).format(split=split))
        self.data_root = Path(data_root) if data_root is not None else self.info_file.parent
        self.caption_file = Path(str(caption_file).format(split=split)) if caption_file else None
        if caption_source not in CAPTION_SOURCES:
            raise ConfigError(type(self).__name__, "caption_source", f"one of {list(CAPTION_SOURCES)}", got=caption_source)
        self.caption_source = caption_source
        self.sensors = select_sensors(sensors, self.SENSORS, type(self).__name__)
        self.cameras = tuple(cameras) if cameras is not None else None
        self.sweeps = int(sweeps)
        if isinstance(sweep_remove_close, bool) or not isinstance(sweep_remove_close, (int, float)) \
                or not 0 <= sweep_remove_close < float("inf"):
            raise ConfigError(type(self).__name__, "sweep_remove_close", "a distance in metres >= 0 (0: keep every point)",
                              got=sweep_remove_close)
        self.sweep_remove_close = float(sweep_remove_close)
        self.data_prefix = dict(data_prefix or {})
        self.drop_ignored = bool(drop_ignored)
        if box_filter not in BOX_FILTERS:
            raise ConfigError(type(self).__name__, "box_filter", f"one of {list(BOX_FILTERS)}", got=repr(box_filter))
        self.box_filter = box_filter
        self._class_names: tuple[str, ...] | None = None
        self._captions: dict | None = None

    # ------------------------------------------------------------ index and metadata
    def _build_index(self) -> list:
        infos = load_pickle(self.info_file)
        if isinstance(infos, dict) and "metainfo" not in infos and "data_list" not in infos and "infos" in infos:
            # mmdet3d v0.x ('infos' / 'metadata', 'lidar_path', 'cams', 'gt_boxes'): another layout
            raise AnnotationError(self.info_file, "metainfo", "the mmdet3d v1.x info layout ('metainfo', 'data_list'); this is the "
                                  "v0.x layout ('infos', 'metadata'): convert it with mmdet3d's "
                                  "tools/dataset_converters/update_infos_to_v2.py", got="'infos'")
        meta = require(infos, "metainfo", self.info_file, "")
        cats = require(meta, "categories", self.info_file, "metainfo")
        if not isinstance(cats, dict) or not cats:
            raise AnnotationError(self.info_file, "metainfo.categories", "a {class name: index} mapping", got=type(cats).__name__)
        names = sorted(cats, key=lambda k: cats[k])
        if [cats[n] for n in names] != list(range(len(names))):
            raise AnnotationError(self.info_file, "metainfo.categories", "indices 0..C-1", got=sorted(cats.values()))
        self._class_names = tuple(names)
        data_list = require(infos, "data_list", self.info_file, "")
        if not isinstance(data_list, list):
            raise AnnotationError(self.info_file, "data_list", "a list of samples", got=type(data_list).__name__)
        self._captions = self._load_captions()
        return [(i, info) for i, info in enumerate(data_list)]

    @property
    def class_names(self) -> tuple[str, ...]:
        _ = self.index
        return self._class_names

    def _load_captions(self) -> dict:
        if self.caption_file is None:
            return {}
        caps = load_json(self.caption_file)
        if not isinstance(caps, dict):
            raise AnnotationError(self.caption_file, "<root>", "an object keyed by sample_annotation token", got=type(caps).__name__)
        return caps

    @property
    def caption_schema(self) -> str:
        """Which TOD3Cap schema the captions come from: ``"final_caption"``, ``"template"`` (the
        nested fields, as TOD3Cap's evaluation composes them), ``"composed"`` (flat ``*_caption``
        strings), ``"mixed"`` or ``"none"`` (no file / no entries)."""
        _ = self.index
        schemas = {parse_caption_entry(v, self.caption_file, k, self.caption_source)[1] for k, v in self._captions.items()}
        if not schemas:
            return "none"
        return schemas.pop() if len(schemas) == 1 else "mixed"

    def _file_field(self, mapping, key: str, field: str) -> str:
        """A file path field: a non-empty string (mmdet3d writes None for a sensor it has no file of)."""
        value = require(mapping, key, self.info_file, field)
        if not isinstance(value, (str, Path)) or not str(value):
            raise AnnotationError(self.info_file, f"{field}.{key}", "a file path (relative to data_root or absolute)", got=repr(value))
        return str(value)

    def _path(self, kind: str, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.data_root / self.data_prefix.get(kind, "") / p

    def _sweep_path(self, rel: str) -> Path:
        """Like mmdet3d: with a ``sweeps`` (or ``pts``) prefix, the file name goes under it."""
        name = Path(rel).name
        if "samples" in Path(rel).parts and "pts" in self.data_prefix:
            return self.data_root / self.data_prefix["pts"] / name
        if "samples" not in Path(rel).parts and "sweeps" in self.data_prefix:
            return self.data_root / self.data_prefix["sweeps"] / name
        return self._path("pts", rel) if "pts" not in self.data_prefix else self.data_root / rel

    # ------------------------------------------------------------ one sample
    def _load(self, entry) -> Sample:
        idx, info = entry
        where = f"data_list[{idx}]"
        if not isinstance(info, dict):
            raise AnnotationError(self.info_file, where, "a sample dict", got=type(info).__name__)
        token = str(require(info, "token", self.info_file, where))
        lidar = require(info, "lidar_points", self.info_file, where)
        lidar2ego = check_rigid(require(lidar, "lidar2ego", self.info_file, f"{where}.lidar_points"), self.info_file, f"{where}.lidar_points.lidar2ego")
        meta = {
            "info_file": str(self.info_file),
            "index": idx,
            "timestamp": info.get("timestamp"),
            "lidar2ego": lidar2ego.float(),
        }
        if "ego2global" in info:
            meta["ego2global"] = check_rigid(info["ego2global"], self.info_file, f"{where}.ego2global").float()
        points = self._load_points(info, where, lidar) if "lidar" in self.sensors else None
        cameras = self._load_cameras(info, where) if "camera" in self.sensors else None
        boxes, box_meta = self._load_boxes(info, where, token)
        meta.update(box_meta)
        return Sample(sample_id=token, points=points, cameras=cameras, boxes=boxes, meta=meta)

    def _load_points(self, info: dict, where: str, lidar: dict) -> PointCloud:
        nfeat = require(lidar, "num_pts_feats", self.info_file, f"{where}.lidar_points")
        if isinstance(nfeat, bool) or not isinstance(nfeat, (int, np.integer)) or nfeat < 3:
            raise AnnotationError(self.info_file, f"{where}.lidar_points.num_pts_feats", "an integer >= 3 (x, y, z first; nuScenes: 5)", got=repr(nfeat))
        nfeat = int(nfeat)
        path = self._path("pts", self._file_field(lidar, "lidar_path", f"{where}.lidar_points"))
        pts = self._check_ring(read_points_bin(path, nfeat), path, f"{where}.lidar_points.num_pts_feats")
        names = NUSCENES_POINT_FEATURES[:nfeat] + tuple(f"f{i}" for i in range(len(NUSCENES_POINT_FEATURES), nfeat))
        if self.sweeps <= 0:
            return PointCloud(pts, feature_names=names, source=str(path))
        clouds = [torch.cat([pts, torch.zeros(len(pts), 1)], 1)]  # (N, F) -> (N, F + 1) time lag 0
        key_time = self._seconds(require(info, "timestamp", self.info_file, where), f"{where}.timestamp")
        sweeps = info.get("lidar_sweeps", [])
        if not isinstance(sweeps, list):
            raise AnnotationError(self.info_file, f"{where}.lidar_sweeps", "a list of sweeps", got=type(sweeps).__name__)
        for j, sweep in enumerate(sweeps[: self.sweeps]):
            sw = f"{where}.lidar_sweeps[{j}]"
            sl = require(sweep, "lidar_points", self.info_file, sw)
            sp = read_points_bin(self._sweep_path(self._file_field(sl, "lidar_path", f"{sw}.lidar_points")), nfeat,
                                 field=f"{sw}.lidar_points.lidar_path")
            sp = self._check_ring(sp, self._sweep_path(str(sl["lidar_path"])), f"{where}.lidar_points.num_pts_feats")
            if self.sweep_remove_close > 0:  # the ego car's own points, in the sweep's sensor frame
                sp = sp[(sp[:, :2].abs() >= self.sweep_remove_close).any(1)]  # (N, F) -> (N', F)
            sweep2key = self._sweep_to_key(info, sweep, sl, sw).to(torch.float32)  # (4, 4)
            xyz = sp[:, :3] @ sweep2key[:3, :3].T + sweep2key[:3, 3]  # (N, 3)
            lag = key_time - self._seconds(require(sweep, "timestamp", self.info_file, sw), f"{sw}.timestamp")
            if not 0.0 <= lag < MAX_SWEEP_LAG:  # e.g. microseconds (nuScenes' own unit) in one of the two
                raise AnnotationError(self.info_file, f"{sw}.timestamp",
                                      f"seconds, up to {MAX_SWEEP_LAG:g} s before {where}.timestamp (mmdet3d v1.x stores "
                                      "nuScenes' microseconds / 1e6)", got=f"a lag of {lag:g}")
            clouds.append(torch.cat([xyz, sp[:, 3:], torch.full((len(sp), 1), lag)], 1))  # (N, F + 1)
        return PointCloud(torch.cat(clouds, 0), feature_names=names + ("time_lag",), source=str(path))

    @staticmethod
    def _check_ring(pts: torch.Tensor, path: Path, field: str) -> torch.Tensor:
        """With 5 columns, the 5th is nuScenes' ring (beam) index: whole numbers >= 0. A file of
        another column count whose size happens to divide by 20 bytes (a 4-column file of 5k
        points) would otherwise be read as garbage points without a word."""
        if pts.shape[1] != len(NUSCENES_POINT_FEATURES) or len(pts) == 0:
            return pts
        ring = pts[:, 4]
        bad = (ring != torch.round(ring)) | (ring < 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise PointCloudError(path, f"points[{i}].ring (column 5 of {field} = 5)",
                                  "a whole beam index >= 0 (is the file's column count the one num_pts_feats says?)",
                                  got=float(ring[i]))
        return pts

    def _seconds(self, value, field: str) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise AnnotationError(self.info_file, field, "a time in seconds", got=repr(value)) from None

    def _sweep_to_key(self, info: dict, sweep: dict, sl: dict, sw: str) -> torch.Tensor:
        """4x4 transform from a sweep's LiDAR frame to the keyframe's LiDAR frame."""
        if "lidar2sensor" in sl:
            # mmdet3d v1.1: lidar2sensor maps keyframe-LiDAR points to the sweep's LiDAR frame.
            return torch.linalg.inv(check_rigid(sl["lidar2sensor"], self.info_file, f"{sw}.lidar_points.lidar2sensor"))
        where = sw.rsplit(".", 1)[0]
        l2e_key = check_rigid(info["lidar_points"]["lidar2ego"], self.info_file, f"{where}.lidar_points.lidar2ego")
        e2g_key = check_rigid(require(info, "ego2global", self.info_file, where), self.info_file, f"{where}.ego2global")
        l2e = check_rigid(require(sl, "lidar2ego", self.info_file, f"{sw}.lidar_points"), self.info_file, f"{sw}.lidar_points.lidar2ego")
        e2g = check_rigid(require(sweep, "ego2global", self.info_file, sw), self.info_file, f"{sw}.ego2global")
        return torch.linalg.inv(l2e_key) @ torch.linalg.inv(e2g_key) @ e2g @ l2e

    def _load_cameras(self, info: dict, where: str) -> CameraImages:
        images = require(info, "images", self.info_file, where)
        if not isinstance(images, dict):
            raise AnnotationError(self.info_file, f"{where}.images", "a {camera name: camera} mapping", got=type(images).__name__)
        names = self.cameras if self.cameras is not None else tuple(k for k, v in images.items() if isinstance(v, dict) and v.get("img_path"))
        imgs, k_list, e_list, paths = [], [], [], []
        for cam in names:
            cw = f"{where}.images.{cam}"
            c = require(images, cam, self.info_file, f"{where}.images")
            k = to_matrix(require(c, "cam2img", self.info_file, cw), self.info_file, f"{cw}.cam2img", shapes=((3, 3), (4, 4)))
            if not torch.allclose(k[2, :3], torch.tensor([0.0, 0.0, 1.0], dtype=k.dtype), atol=1e-6) or k[0, 0] <= 0 or k[1, 1] <= 0:
                raise CalibrationError(self.info_file, f"{cw}.cam2img", "pinhole intrinsics (fx, fy > 0, row 2 = [0, 0, 1])", got=k[:3, :3].tolist())
            k4 = torch.eye(4, dtype=torch.float64)
            k4[: k.shape[0], : k.shape[1]] = k
            e = check_rigid(require(c, "lidar2cam", self.info_file, cw), self.info_file, f"{cw}.lidar2cam")
            path = self._path(cam, self._file_field(c, "img_path", cw))
            imgs.append(read_image(path, field=f"{cw}.img_path"))
            paths.append(path)
            k_list.append(k4)
            e_list.append(e)
        if not imgs:
            raise ImageError(self.info_file, f"{where}.images", "at least one camera", got="none")
        self._check_image_sizes(imgs, names, paths, where)
        return CameraImages(
            images=torch.stack(imgs),  # (V, 3, H, W)
            cam2img=torch.stack(k_list).float(),  # (V, 4, 4)
            lidar2cam=torch.stack(e_list).float(),  # (V, 4, 4)
            names=tuple(names),
            source=str(self.info_file),
        )

    def _check_image_sizes(self, imgs: list[torch.Tensor], names, paths: list, where: str) -> None:
        """One size for every camera of a sample; else an ImageError naming the image file and
        camera that differs from the others (the commonest size; with a tie, from the first camera's)."""
        sizes = [tuple(img.shape[1:]) for img in imgs]  # (H, W) of each (3, H, W)
        if len(set(sizes)) <= 1:
            return
        counts = Counter(sizes)
        common, n = counts.most_common(1)[0]  # ties: the first camera's size comes first
        others = "the other cameras'" if n > 1 and list(counts.values()).count(n) == 1 else f"{names[sizes.index(common)]}'s"
        i = next(j for j, size in enumerate(sizes) if size != common)
        raise ImageError(paths[i], f"{where}.images.{names[i]}.img_path", f"{others} size (H, W) {common}", got=sizes[i])

    def _passes_filter(self, inst: dict, iw: str) -> bool:
        """Whether ``box_filter`` keeps this instance (its field is checked here, present and typed)."""
        value = require(inst, self.box_filter, self.info_file, iw)
        if self.box_filter == "num_lidar_pts":
            return int(value) > 0  # an integer >= 0, checked by the caller
        if not isinstance(value, (bool, np.bool_)):
            raise AnnotationError(self.info_file, f"{iw}.bbox_3d_isvalid", "True or False", got=repr(value))
        return bool(value)

    def _load_boxes(self, info: dict, where: str, token: str) -> tuple[BoxAnnotations, dict]:
        instances = info.get("instances", [])
        if not isinstance(instances, list):
            raise AnnotationError(self.info_file, f"{where}.instances", "a list", got=type(instances).__name__)
        num_classes = len(self._class_names)
        rows, labels, ids, npts, radar_pts, valid, captions, schemas = [], [], [], [], [], [], [], []
        with_velocity = bool(instances) and all(isinstance(inst, dict) and "velocity" in inst for inst in instances)
        for i, inst in enumerate(instances):
            iw = f"{where}.instances[{i}]"
            raw = require(inst, "bbox_3d", self.info_file, iw)
            try:
                box = np.asarray(raw, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise BoxError(self.info_file, f"{iw}.bbox_3d", "7 numbers x, y, z, dx, dy, dz, yaw", got=repr(raw)) from None
            if box.shape != (7,):
                raise BoxError(self.info_file, f"{iw}.bbox_3d", "7 numbers x, y, z, dx, dy, dz, yaw", got=f"{box.size} numbers")
            if not np.isfinite(box).all():
                raise BoxError(self.info_file, f"{iw}.bbox_3d", "finite numbers", got=box.tolist())
            if (box[3:6] <= 0).any():
                raise BoxError(self.info_file, f"{iw}.bbox_3d", "sizes dx, dy, dz > 0", got=box[3:6].tolist())
            label = require(inst, "bbox_label_3d", self.info_file, iw)
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not -1 <= int(label) < num_classes:
                raise AnnotationError(self.info_file, f"{iw}.bbox_label_3d", f"a class index in -1..{num_classes - 1} (metainfo.categories)", got=label)
            if int(label) == -1 and self.drop_ignored:
                continue
            if with_velocity:
                try:
                    vel = np.asarray(inst["velocity"], dtype=np.float64).reshape(-1)
                except (TypeError, ValueError):
                    vel = None
                if vel is None or vel.shape != (2,):  # mmdet3d v1.1 stores (vx, vy) only
                    raise AnnotationError(self.info_file, f"{iw}.velocity", "2 numbers vx, vy (m/s)", got=repr(inst["velocity"]))
                if np.isinf(vel).any():
                    raise AnnotationError(self.info_file, f"{iw}.velocity", "finite numbers or NaN (unknown)", got=vel.tolist())
                vel = np.where(np.isfinite(vel), vel, 0.0)  # nuScenes leaves some velocities NaN; mmdet3d sets them to 0
                box = np.concatenate([box, vel])
            n_pts = inst.get("num_lidar_pts", -1)
            if "num_lidar_pts" in inst and (isinstance(n_pts, bool) or not isinstance(n_pts, (int, np.integer)) or n_pts < 0):
                raise AnnotationError(self.info_file, f"{iw}.num_lidar_pts", "an integer >= 0", got=repr(n_pts))
            n_radar = inst.get("num_radar_pts", 0)
            if isinstance(n_radar, bool) or not isinstance(n_radar, (int, np.integer)) or n_radar < 0:
                raise AnnotationError(self.info_file, f"{iw}.num_radar_pts", "an integer >= 0", got=repr(n_radar))
            if self.box_filter is not None and not self._passes_filter(inst, iw):
                continue
            rows.append(box)
            labels.append(int(label))
            npts.append(int(n_pts))
            radar_pts.append(int(n_radar))
            valid.append(bool(inst.get("bbox_3d_isvalid", True)))
            ann = inst.get("ann_token")
            ids.append(str(ann) if ann is not None else f"{token}_{i}")
            if ann is not None and str(ann) in self._captions:
                caps, schema = parse_caption_entry(self._captions[str(ann)], self.caption_file, str(ann), self.caption_source)
            else:
                caps, schema = [], None  # no caption for this box: marked by the empty list
            captions.append(caps)
            schemas.append(schema)
        dim = 9 if with_velocity else 7
        tensor = torch.tensor(np.stack(rows), dtype=torch.float32) if rows else torch.zeros(0, dim)
        boxes = Boxes3D.from_mmdet3d(tensor, origin=(0.5, 0.5, 0.5), source=f"{self.info_file} {where}.instances", allow_zero_size=False)
        ann = BoxAnnotations(
            boxes=boxes,
            labels=torch.tensor(labels, dtype=torch.long),
            class_names=self._class_names,
            captions=captions,
            object_ids=ids,
            num_points=torch.tensor(npts, dtype=torch.long) if "num_lidar_pts" in (instances[0] if instances else {}) else None,
        )
        box_meta = {"caption_schema": schemas, "box_valid": torch.tensor(valid, dtype=torch.bool)}
        if any("num_radar_pts" in inst for inst in instances):  # nuScenes' num_pts is LiDAR + radar points
            box_meta["num_radar_pts"] = torch.tensor(radar_pts, dtype=torch.long)
        return ann, box_meta
