"""Converters between the formats dense3d reads; every output is written atomically
(temporary file + rename: a failure leaves no partial file and an older output untouched)."""
from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from dense3d.data.datasets.tod3cap import TOD3CapDataset, parse_caption_entry
from dense3d.data.readers import check_rigid, load_json, load_pickle, require, to_matrix
from dense3d.errors import AnnotationError, PointCloudError, PredictionFormatError
from dense3d.utils.io import atomic_write

__all__ = ["add_ann_tokens", "convert_nuscenes_results", "convert_tod3cap_captions", "tod3cap_ground_truth", "write_mp4",
           "write_points_bin", "write_wav"]


def convert_tod3cap_captions(src: str | os.PathLike, dst: str | os.PathLike,
                             caption_source: str = "final_caption") -> dict[str, int]:
    """Rewrite a TOD3Cap caption JSON so that every entry has a ``final_caption``: the caption
    :func:`~dense3d.data.datasets.tod3cap.parse_caption_entry` chooses with ``caption_source``
    (an existing ``final_caption``, TOD3Cap's evaluation template from the nested fields, or the
    flat ``*_caption`` strings composed). The other fields are kept. Every entry is checked
    before anything is written.

    Returns how many entries had each schema: ``{"final_caption": n, "template": m, "composed": k}``.
    """
    data = load_json(src)
    if not isinstance(data, dict):
        raise AnnotationError(src, "<root>", "an object keyed by sample_annotation token", got=type(data).__name__)
    out, counts = {}, {"final_caption": 0, "template": 0, "composed": 0}
    for token, entry in data.items():
        caps, schema = parse_caption_entry(entry, src, str(token), caption_source)
        counts[schema] += 1
        out[str(token)] = dict(entry, final_caption=caps[0] if len(caps) == 1 else caps)
    with atomic_write(dst, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    return counts


def _sample_poses(info_file) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{sample token: (lidar2ego, ego2global)}`` (float64, checked rigid) of an mmdet3d v1.1 info file."""
    infos = load_pickle(info_file)
    data_list = infos.get("data_list") if isinstance(infos, dict) else None
    if not isinstance(data_list, list):
        raise AnnotationError(info_file, "data_list", "a list of samples", got=type(data_list).__name__)
    poses = {}
    for i, info in enumerate(data_list):
        where = f"data_list[{i}]"
        token = str(require(info, "token", info_file, where))
        lidar = require(info, "lidar_points", info_file, where)
        l2e = check_rigid(to_matrix(require(lidar, "lidar2ego", info_file, f"{where}.lidar_points"), info_file,
                                    f"{where}.lidar_points.lidar2ego"), info_file, f"{where}.lidar_points.lidar2ego")
        e2g = check_rigid(to_matrix(require(info, "ego2global", info_file, where), info_file, f"{where}.ego2global"),
                          info_file, f"{where}.ego2global")
        poses[token] = (l2e.numpy(), e2g.numpy())
    return poses


def _finite_list(src, fld: str, value, n: int) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        v = None
    if v is None or v.shape != (n,) or not np.isfinite(v).all():
        raise PredictionFormatError(src, fld, f"{n} finite numbers", got=value)
    return v


def convert_nuscenes_results(results_file: str | os.PathLike, info_file: str | os.PathLike,
                             dst: str | os.PathLike) -> dict[str, int]:
    """A nuScenes detection results file with a caption per box (what TOD3Cap's and mmdet3d's
    ``_format_bbox`` write: ``results_nusc.json``) -> dense3d's 3D predictions JSON
    (``docs/eval.md``), so ``dense3d eval tod3cap`` (both modes) and ``detection`` score it.

    Each box goes from the global frame back to the sample's LiDAR frame with the info file's
    ``ego2global`` and ``lidar2ego`` (the inverse of mmdet3d's ``lidar_nusc_box_to_global``):
    ``box`` = [x, y, z, dx, dy, dz, yaw] (centre, nuScenes ``size`` w, l, h -> dx = l, dy = w,
    dz = h; yaw of the box's length axis about +z), ``ego_dist`` = its centre's distance from
    the ego in the ego frame's x-y plane (what nuScenes filters by), ``label`` =
    ``detection_name``, ``score`` = ``detection_score``, ``caption`` = ``caption`` (a string, or
    the first of a list, as TOD3Cap's evaluation reads ``caption[0]``). Every box is checked
    before anything is written; a sample token missing from the info file is an error.

    Returns ``{"samples": n, "boxes": m}``.
    """
    data = load_json(results_file)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise PredictionFormatError(results_file, "results", "a nuScenes results file {meta, results: {sample_token: [box, ...]}}",
                                    got=type(results).__name__ if isinstance(data, dict) else type(data).__name__)
    poses = _sample_poses(info_file)
    out: dict[str, list[dict]] = {}
    n_boxes = 0
    for token, boxes in results.items():
        if token not in poses:
            raise PredictionFormatError(results_file, f"results.{token}", f"a sample token of {info_file}", got="not in it")
        if not isinstance(boxes, list):
            raise PredictionFormatError(results_file, f"results.{token}", "a list of boxes", got=type(boxes).__name__)
        l2e, e2g = poses[token]
        lidar2global = e2g @ l2e  # (4, 4)
        global2lidar = np.linalg.inv(lidar2global)
        global2ego = np.linalg.inv(e2g)
        recs = []
        for i, b in enumerate(boxes):
            fld = f"results.{token}[{i}]"
            if not isinstance(b, dict):
                raise PredictionFormatError(results_file, fld, "a box object", got=type(b).__name__)
            centre_g = _finite_list(results_file, f"{fld}.translation", b.get("translation"), 3)
            wlh = _finite_list(results_file, f"{fld}.size", b.get("size"), 3)
            if not (wlh > 0).all():
                raise PredictionFormatError(results_file, f"{fld}.size", "w, l, h > 0", got=b.get("size"))
            quat = _finite_list(results_file, f"{fld}.rotation", b.get("rotation"), 4)  # (w, x, y, z), nuScenes' order
            if abs(np.linalg.norm(quat) - 1.0) > 1e-3:
                raise PredictionFormatError(results_file, f"{fld}.rotation", "a unit quaternion (w, x, y, z)", got=b.get("rotation"))
            rot_g = Rotation.from_quat(quat[[1, 2, 3, 0]]).as_matrix()  # scipy orders (x, y, z, w)
            centre_l = global2lidar[:3, :3] @ centre_g + global2lidar[:3, 3]
            rot_l = global2lidar[:3, :3] @ rot_g  # the box's axes in the LiDAR frame; column 0: its length
            yaw = float(np.arctan2(rot_l[1, 0], rot_l[0, 0]))
            centre_ego = global2ego[:3, :3] @ centre_g + global2ego[:3, 3]
            name, score, cap = b.get("detection_name"), b.get("detection_score"), b.get("caption")
            if not isinstance(name, str):
                raise PredictionFormatError(results_file, f"{fld}.detection_name", "a class name", got=name)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise PredictionFormatError(results_file, f"{fld}.detection_score", "a finite number", got=score)
            if isinstance(cap, list) and cap and isinstance(cap[0], str):
                cap = cap[0]
            if not isinstance(cap, str):
                raise PredictionFormatError(results_file, f"{fld}.caption", "a string or a list of strings", got=cap)
            recs.append({"box": [*centre_l.tolist(), float(wlh[1]), float(wlh[0]), float(wlh[2]), yaw],
                         "caption": cap, "score": float(score), "label": name,
                         "ego_dist": float(np.hypot(centre_ego[0], centre_ego[1]))})
        out[str(token)] = recs
        n_boxes += len(recs)
    with atomic_write(dst, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return {"samples": len(out), "boxes": n_boxes}


def tod3cap_ground_truth(info_file: str | os.PathLike, caption_file: str | os.PathLike | None, dst: str | os.PathLike,
                         caption_source: str = "template", data_root: str | os.PathLike | None = None) -> dict[str, int]:
    """The ground truth of a TOD3Cap split in dense3d's 3D format (``docs/eval.md``), for
    ``dense3d eval tod3cap`` / ``detection``: per sample token, every box of the info file in
    the LiDAR frame with its class, ``num_pts`` (LiDAR + radar points, as nuScenes counts them),
    ``ego_dist`` (from ``lidar2ego``) and its
    reference (``caption_source="template"``: TOD3Cap's own, see
    :func:`~dense3d.data.datasets.tod3cap.parse_caption_entry`; none where the caption file has
    no entry, which the compatible mode scores against "The object is ignored.").

    Returns ``{"samples": n, "objects": m, "captioned": k}``.
    """
    ds = TOD3CapDataset(str(info_file), data_root=None if data_root is None else str(data_root),
                        caption_file=None if caption_file is None else str(caption_file),
                        caption_source=caption_source, sensors=())
    # nuScenes drops a GT box only when it has neither LiDAR nor radar points: num_pts is their sum
    # (the data set reads the LiDAR count; its instances keep the info file's order, none dropped)
    radar = {str(info.get("token")): [inst.get("num_radar_pts", 0) for inst in info.get("instances", [])]
             for info in load_pickle(info_file)["data_list"]}
    out: dict[str, list[dict]] = {}
    n_obj = n_cap = 0
    for i in range(len(ds)):
        s = ds[i]
        boxes, l2e = s.boxes, s.meta["lidar2ego"].double()
        params = boxes.boxes.tensor[:, :7].double()  # (K, 7)
        centre_ego = params[:, :3] @ l2e[:3, :3].T + l2e[:3, 3]  # (K, 3)
        counts = boxes.num_points.tolist() if boxes.num_points is not None else [-1] * len(boxes)
        for k, r in enumerate(radar.get(s.sample_id, [])[: len(counts)]):
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
                raise AnnotationError(info_file, f"{s.sample_id}.instances[{k}].num_radar_pts", "an integer >= 0", got=repr(r))
            if counts[k] >= 0:
                counts[k] += int(r)
        recs = []
        for k, label in enumerate(boxes.labels.tolist()):
            if not 0 <= label < len(boxes.class_names):
                continue  # a class outside metainfo.categories
            recs.append({"object_id": boxes.object_ids[k], "label": boxes.class_names[label],
                         "box": params[k].tolist(), "descriptions": list(boxes.captions[k]),
                         "num_pts": int(counts[k]) if counts[k] >= 0 else None,
                         "ego_dist": float(torch.hypot(centre_ego[k, 0], centre_ego[k, 1]))})
            n_cap += bool(boxes.captions[k])
        out[s.sample_id] = recs
        n_obj += len(recs)
    with atomic_write(dst, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return {"samples": len(out), "objects": n_obj, "captioned": n_cap}


def add_ann_tokens(info_file: str | os.PathLike, sample_annotation_file: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Give each box of an mmdet3d v1.1 nuScenes info file its ``sample_annotation`` token
    (``instances[i]["ann_token"]``, the key TOD3Cap captions are looked up by).

    mmdet3d writes a sample's instances in the order of the nuScenes sample's ``anns``, which the
    devkit builds in the file order of ``sample_annotation.json``; this function relies on that
    and checks the counts agree for every sample. Returns the number of tokens written.
    """
    infos = load_pickle(info_file)
    anns = load_json(sample_annotation_file)
    if not isinstance(anns, list):
        raise AnnotationError(sample_annotation_file, "<root>", "the nuScenes sample_annotation table (a list)", got=type(anns).__name__)
    by_sample: dict[str, list[str]] = {}
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or "token" not in a or "sample_token" not in a:
            raise AnnotationError(sample_annotation_file, f"[{i}].sample_token", "token and sample_token fields", got="missing")
        by_sample.setdefault(str(a["sample_token"]), []).append(str(a["token"]))
    data_list = infos.get("data_list") if isinstance(infos, dict) else None
    if not isinstance(data_list, list):
        raise AnnotationError(info_file, "data_list", "a list of samples", got=type(data_list).__name__)
    written = 0
    for k, info in enumerate(data_list):
        if not isinstance(info, dict) or "token" not in info:
            raise AnnotationError(info_file, f"data_list[{k}].token", "a present field", got="missing")
        instances = info.get("instances", [])
        tokens = by_sample.get(str(info["token"]), [])
        if len(tokens) != len(instances):
            raise AnnotationError(
                info_file, f"data_list[{k}].instances", f"{len(tokens)} boxes (the sample's annotations in {Path(sample_annotation_file).name})", got=len(instances)
            )
        for inst, tok in zip(instances, tokens):
            inst["ann_token"] = tok
            written += 1
    with atomic_write(dst, "wb") as f:
        pickle.dump(infos, f)
    return written


def write_points_bin(path: str | os.PathLike, points: torch.Tensor | np.ndarray) -> Path:
    """Write (N, F) points as raw little-endian float32 (``.pcd.bin`` / mmdet3d ``.bin``)."""
    arr = np.asarray(points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else points, dtype="<f4")
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise PointCloudError(path, "points", "shape (N, 3 + C)", got=f"shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PointCloudError(path, "points", "finite values", got="nan or inf")
    with atomic_write(path, "wb") as f:
        f.write(np.ascontiguousarray(arr).tobytes())
    return Path(path)


def write_wav(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write (A, S) samples in [-1, 1] as a WAV file (soundfile)."""
    import soundfile as sf

    wave = np.asarray(waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else waveform, dtype=np.float32)
    if wave.ndim != 2 or not np.isfinite(wave).all():
        from dense3d.errors import AudioError

        raise AudioError(path, "waveform", "finite (channels, samples)", got=f"shape {wave.shape}")
    with atomic_write(path, "wb") as f:
        sf.write(f, wave.T, int(sample_rate), format="WAV", subtype=subtype)  # (A, S) -> (S, A)
    return Path(path)


def write_mp4(
    path: str | os.PathLike,
    frames: torch.Tensor,
    fps: float,
    waveform: torch.Tensor | None = None,
    sample_rate: int | None = None,
    codec: str = "libx264",
) -> Path:
    """Write (T, 3, H, W) frames in [0, 1] (H, W even) as an H.264 mp4 with PyAV, plus an AAC
    audio stream from ``waveform`` (A, S) when given."""
    import av
    from fractions import Fraction

    from dense3d.errors import VideoError

    if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[2] % 2 or frames.shape[3] % 2:
        raise VideoError(path, "frames", "(T, 3, H, W) with even H and W", got=f"shape {tuple(frames.shape)}")
    rgb = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (T, 3, H, W) -> (T, H, W, 3)
    rate = Fraction(fps).limit_denominator(1000)
    with atomic_write(path, "wb") as f:
        with av.open(f, mode="w", format="mp4") as out:
            vs = out.add_stream(codec, rate=rate)
            vs.width, vs.height, vs.pix_fmt = rgb.shape[2], rgb.shape[1], "yuv420p"
            aus = None
            if waveform is not None:
                layouts = {1: "mono", 2: "stereo", 4: "quad", 6: "5.1"}
                aus = out.add_stream("aac", rate=int(sample_rate), layout=layouts.get(waveform.shape[0], "mono"))
            for i, img in enumerate(rgb):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                frame.time_base = 1 / rate
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
            if aus is not None:
                wave = waveform.detach().to(torch.float32).cpu().numpy()  # (A, S) planar
                step = 1024  # AAC frame size
                for start in range(0, wave.shape[1], step):
                    chunk = np.ascontiguousarray(wave[:, start : start + step])
                    af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=aus.layout.name)
                    af.sample_rate, af.pts = int(sample_rate), start
                    for packet in aus.encode(af):
                        out.mux(packet)
                for packet in aus.encode():
                    out.mux(packet)
    return Path(path)
