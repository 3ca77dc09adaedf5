"""Reading and checking the prediction / ground-truth JSON files of ``dense3d eval``.

Every format is documented in ``docs/eval.md``. A bad file raises
:class:`~dense3d.errors.PredictionFormatError` with one line naming the file and the field.
Boxes are kept as float64 numpy arrays:

* ``box`` with 6 numbers ``[cx, cy, cz, dx, dy, dz]`` (axis-aligned, ScanNet) or 7
  ``[x, y, z, dx, dy, dz, yaw]`` (dense3d convention, gravity centre);
* ``corners``: 8 x 3 corner points (only their axis-aligned extent is used, as Vote2Cap-DETR
  does with its corner boxes).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dense3d.errors import PredictionFormatError

__all__ = [
    "Box",
    "BoxPrediction",
    "ObjectGT",
    "read_json",
    "parse_box",
    "parse_box_predictions",
    "parse_object_gt",
    "parse_event_predictions",
    "parse_event_gt",
    "parse_paragraphs",
    "unknown_scenes",
    "check_integer_ids",
    "is_predict_events_output",
]


@dataclass
class Box:
    """One box: ``params`` (7,) = x, y, z, dx, dy, dz, yaw (yaw 0 for axis-aligned input) and
    ``aa`` (6,) = its axis-aligned extent ``xmin, ymin, zmin, xmax, ymax, zmax``."""

    params: np.ndarray
    aa: np.ndarray


@dataclass
class BoxPrediction:
    box: Box
    caption: str
    score: float
    label: str | None
    ego_dist: float | None = None  # distance from the ego (nuScenes' class-range filter); None: hypot(x, y)


@dataclass
class ObjectGT:
    box: Box
    object_id: str
    name: str
    references: list[str] = field(default_factory=list)  # captions, as given
    tokens: list[list[str]] = field(default_factory=list)  # pre-tokenised descriptions
    num_pts: int | None = None
    ego_dist: float | None = None
    source: str | None = None  # the ground-truth file (for error messages of the protocols)
    name_given: bool = True  # False when neither object_name nor label was in the entry


def read_json(path: str | Path) -> Any:
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PredictionFormatError(p, "(file)", "an existing JSON file", got="no such file") from None
    except IsADirectoryError:
        raise PredictionFormatError(p, "(file)", "an existing JSON file", got="a folder") from None
    except OSError as e:
        raise PredictionFormatError(p, "(file)", "a readable JSON file", got=f"{type(e).__name__}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PredictionFormatError(p, f"(byte {e.start})", "UTF-8 JSON text", got=f"byte 0x{e.object[e.start]:02x}") from None
    except json.JSONDecodeError as e:
        raise PredictionFormatError(p, f"(line {e.lineno})", "valid JSON", got=e.msg) from None


def _finite(src, fld, values, n=None) -> list[float]:
    if not isinstance(values, (list, tuple)) or (n is not None and len(values) not in n):
        want = " or ".join(str(k) for k in n) if n else "some"
        raise PredictionFormatError(src, fld, f"a list of {want} numbers", got=values)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise PredictionFormatError(src, fld, "finite numbers", got=values)
        out.append(float(v))
    return out


def parse_box(src, fld: str, rec: dict) -> Box:
    """A :class:`Box` from a record's ``box`` (6 or 7 numbers) or ``corners`` (8 x 3)."""
    if "box" in rec:
        v = _finite(src, f"{fld}.box", rec["box"], n=(6, 7))
        if any(s < 0 for s in v[3:6]):
            raise PredictionFormatError(src, f"{fld}.box", "sizes dx, dy, dz >= 0", got=v)
        params = np.array(v + [0.0] * (7 - len(v)), dtype=np.float64)
        if len(v) == 6 or params[6] == 0.0:
            half = params[3:6] / 2
            aa = np.concatenate([params[:3] - half, params[:3] + half])
        else:
            c, s = math.cos(params[6]), math.sin(params[6])
            hx, hy = params[3] / 2, params[4] / 2
            ex, ey = abs(c) * hx + abs(s) * hy, abs(s) * hx + abs(c) * hy  # extent of the rotated rectangle
            e = np.array([ex, ey, params[5] / 2])
            aa = np.concatenate([params[:3] - e, params[:3] + e])
        return Box(params, aa)
    if "corners" in rec:
        c = rec["corners"]
        if not isinstance(c, list) or len(c) != 8:
            raise PredictionFormatError(src, f"{fld}.corners", "8 corner points [x, y, z]", got=c)
        pts = np.array([_finite(src, f"{fld}.corners[{i}]", p, n=(3,)) for i, p in enumerate(c)])
        lo, hi = pts.min(0), pts.max(0)
        params = np.concatenate([(lo + hi) / 2, hi - lo, [0.0]])
        return Box(params, np.concatenate([lo, hi]))
    raise PredictionFormatError(src, fld, "a 'box' ([cx, cy, cz, dx, dy, dz(, yaw)]) or 'corners' (8 x 3)", got=sorted(rec))


def _mapping(src, data, what: str) -> dict:
    if not isinstance(data, dict):
        raise PredictionFormatError(src, "(top level)", f"an object {{{what}: [...]}}", got=type(data).__name__)
    return data


def is_predict_events_output(data) -> bool:
    """True for what ``dense3d predict`` writes for a run that captions events:
    ``{"boxes": {scene: [...]}, "events": {"results": {video: [...]}}}`` (api.prediction_records)."""
    return (isinstance(data, dict) and set(data) == {"boxes", "events"} and isinstance(data["boxes"], dict)
            and isinstance(data["events"], dict) and isinstance(data["events"].get("results"), dict))


def _event_predictions_field(data) -> str | None:
    """Where ``data`` holds event predictions instead of 3D boxes: ``"events"`` for ``dense3d
    predict``'s output of an events run, ``"results"`` for ActivityNet's format; else None."""
    if is_predict_events_output(data):
        return "events"
    if isinstance(data, dict) and isinstance(data.get("results"), dict):
        return "results"
    return None


def _is_nuscenes_results(data) -> bool:
    """A nuScenes detection results file (``{meta, results: {token: [{translation, size, ...}]}}``)."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        return False
    first = next((v for v in results.values() if isinstance(v, list) and v), None)
    return isinstance(first, list) and isinstance(first[0], dict) and "translation" in first[0] and "size" in first[0]


def _ego_dist(src, fld: str, value) -> float | None:
    """An optional distance from the ego in metres (hypot(x, y) of the box is used when missing)."""
    if value is None:
        return None
    ego = _finite(src, fld, [value])[0]
    if ego < 0:
        raise PredictionFormatError(src, fld, "a distance >= 0 (metres)", got=ego)
    return float(ego)


def parse_box_predictions(src, data, need_caption: bool = True, need_score: bool = False,
                          for_what: str = "") -> dict[str, list[BoxPrediction]]:
    """``{scene_id: [{"box"|"corners", "caption", "score"?, "label"?, "ego_dist"?}]}`` -> BoxPrediction lists.
    ``for_what`` (e.g. ``" (dense3d vis draws 3D boxes)"``) is added to the message that
    refuses a file of event predictions."""
    if _is_nuscenes_results(data):
        raise PredictionFormatError(src, "results", "3D box predictions {scene_id: [{box, caption, ...}]} in the LiDAR frame; "
                                    "this is a nuScenes results file in the global frame: convert it with `dense3d convert "
                                    "nuscenes-results --results FILE --info INFOS.pkl --out PRED.json`",
                                    got="an object with 'results' of nuScenes boxes")
    where = _event_predictions_field(data)
    if where is not None:
        raise PredictionFormatError(src, where, f"3D box predictions {{scene_id: [{{box, caption, ...}}]}}{for_what}; this file holds "
                                    "event predictions (time spans), which `dense3d eval events` scores",
                                    got="an object with 'boxes' and 'events'" if where == "events" else "an object with 'results'")
    out: dict[str, list[BoxPrediction]] = {}
    for scene, recs in _mapping(src, data, "scene_id").items():
        if not isinstance(recs, list):
            raise PredictionFormatError(src, f"{scene}", "a list of predictions", got=type(recs).__name__)
        preds = []
        for i, r in enumerate(recs):
            fld = f"{scene}[{i}]"
            if not isinstance(r, dict):
                raise PredictionFormatError(src, fld, "an object with 'box' and 'caption'", got=r)
            box = parse_box(src, fld, r)
            cap = r.get("caption")
            if need_caption and not isinstance(cap, str):
                raise PredictionFormatError(src, f"{fld}.caption", "a string", got=cap)
            score = r.get("score", 1.0)
            if need_score and "score" not in r:
                raise PredictionFormatError(src, f"{fld}.score", "a finite number", got="missing")
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise PredictionFormatError(src, f"{fld}.score", "a finite number", got=score)
            label = r.get("label")
            if label is not None and not isinstance(label, str):
                raise PredictionFormatError(src, f"{fld}.label", "a string", got=label)
            preds.append(BoxPrediction(box, cap if isinstance(cap, str) else "", float(score), label,
                                       _ego_dist(src, f"{fld}.ego_dist", r.get("ego_dist"))))
        out[str(scene)] = preds
    return out


def parse_object_gt(src, data) -> dict[str, list[ObjectGT]]:
    """``{scene_id: [{"box"|"corners", "object_id", "object_name"|"label", "descriptions"?,
    "caption"?, "num_pts"?, "ego_dist"?}]}``.

    ``descriptions`` is a list whose items are token lists (ScanRefer's ``token`` field) or
    strings (split on white space); ``caption`` a single reference string (or null). One entry
    per object: a repeated ``object_id`` in a scene is an error (list every description of an
    object, e.g. ScanRefer's several ``ann_id``, in its ``descriptions``); ``num_pts`` >= 0.
    """
    out: dict[str, list[ObjectGT]] = {}
    for scene, recs in _mapping(src, data, "scene_id").items():
        if not isinstance(recs, list):
            raise PredictionFormatError(src, f"{scene}", "a list of objects", got=type(recs).__name__)
        objs, seen = [], {}
        for i, r in enumerate(recs):
            fld = f"{scene}[{i}]"
            if not isinstance(r, dict):
                raise PredictionFormatError(src, fld, "an object with 'box'", got=r)
            box = parse_box(src, fld, r)
            name = r.get("object_name", r.get("label", "unknown"))
            if not isinstance(name, str):
                raise PredictionFormatError(src, f"{fld}.object_name", "a string", got=name)
            tokens, refs = [], []
            descs = r.get("descriptions", [])
            if not isinstance(descs, list):
                raise PredictionFormatError(src, f"{fld}.descriptions", "a list of token lists or strings", got=descs)
            for j, d in enumerate(descs):
                if isinstance(d, str):
                    tokens.append(d.split())
                    refs.append(d)
                elif isinstance(d, list) and all(isinstance(t, str) for t in d):
                    tokens.append(list(d))
                    refs.append(" ".join(d))
                else:
                    raise PredictionFormatError(src, f"{fld}.descriptions[{j}]", "a token list or a string", got=d)
            cap = r.get("caption")
            if cap is not None:
                if not isinstance(cap, str):
                    raise PredictionFormatError(src, f"{fld}.caption", "a string or null", got=cap)
                refs.append(cap)
            num_pts = r.get("num_pts")
            if num_pts is not None and (isinstance(num_pts, bool) or not isinstance(num_pts, int) or num_pts < 0):
                raise PredictionFormatError(src, f"{fld}.num_pts", "an integer >= 0", got=num_pts)
            ego = _ego_dist(src, f"{fld}.ego_dist", r.get("ego_dist"))
            oid = r.get("object_id", i)
            if isinstance(oid, bool) or not isinstance(oid, (int, str)):
                raise PredictionFormatError(src, f"{fld}.object_id", "an integer or a string", got=repr(oid))
            oid = str(oid)
            if oid in seen:  # keys are scene|object_id|name: a second entry would replace the first
                raise PredictionFormatError(src, f"{fld}.object_id", "an id unique in the scene (one entry per object, its descriptions listed together)",
                                            got=f"{oid}, also {scene}[{seen[oid]}]")
            seen[oid] = i
            objs.append(ObjectGT(box, oid, name, refs, tokens, num_pts, ego, source=str(src),
                                 name_given="object_name" in r or "label" in r))
        out[str(scene)] = objs
    return out


def _span(src, fld, ts) -> tuple[float, float]:
    """``[t0, t1]`` in seconds from the video's start: 0 <= t0 <= t1. An end past the video's
    duration is accepted (real PDVC outputs and some ActivityNet references run slightly over)."""
    v = _finite(src, fld, ts, n=(2,))
    if v[0] < 0:
        raise PredictionFormatError(src, fld, "a start t0 >= 0 (seconds from the video's start)", got=v)
    if v[1] < v[0]:
        raise PredictionFormatError(src, fld, "t1 >= t0", got=v)
    return v[0], v[1]


def parse_event_predictions(src, data) -> dict[str, list[dict]]:
    """ActivityNet's ``{"results": {video_id: [{"timestamp": [t0, t1], "sentence", "score"?}]}}``
    (also as ``dense3d predict`` writes it for an events run: under ``"events"``, beside ``"boxes"``)."""
    if is_predict_events_output(data):
        data = data["events"]
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        if isinstance(data, dict) and "results" not in data:  # e.g. a 3D box file {scene: [...]}
            got = f"no 'results' key (top-level keys: {', '.join(map(str, list(data)[:5]))}{', ...' if len(data) > 5 else ''})"
        else:
            got = type(data.get("results") if isinstance(data, dict) else data).__name__
        raise PredictionFormatError(src, "results", "an object {video_id: [...]} (ActivityNet's prediction format)", got=got)
    out = {}
    for vid, recs in data["results"].items():
        if not isinstance(recs, list):
            raise PredictionFormatError(src, f"results.{vid}", "a list of events", got=type(recs).__name__)
        evs = []
        for i, r in enumerate(recs):
            fld = f"results.{vid}[{i}]"
            if not isinstance(r, dict) or "timestamp" not in r:
                raise PredictionFormatError(src, f"{fld}.timestamp", "[t0, t1]", got="missing")
            t = _span(src, f"{fld}.timestamp", r["timestamp"])
            s = r.get("sentence")
            if not isinstance(s, str):
                raise PredictionFormatError(src, f"{fld}.sentence", "a string", got=s)
            sc = r.get("score", 0.0)
            if isinstance(sc, bool) or not isinstance(sc, (int, float)) or not math.isfinite(sc):
                raise PredictionFormatError(src, f"{fld}.score", "a finite number", got=sc)
            evs.append({"timestamp": t, "sentence": s, "score": float(sc)})
        out[str(vid)] = evs
    return out


def parse_event_gt(src, data) -> dict[str, dict]:
    """ActivityNet Captions ``{video_id: {"duration"?, "timestamps": [[t0, t1]...], "sentences": [...]}}``."""
    out = {}
    for vid, rec in _mapping(src, data, "video_id").items():
        if not isinstance(rec, dict):
            raise PredictionFormatError(src, f"{vid}", "an object with 'timestamps' and 'sentences'", got=rec)
        ts, ss = rec.get("timestamps"), rec.get("sentences")
        if not isinstance(ts, list) or not isinstance(ss, list) or len(ts) != len(ss):
            raise PredictionFormatError(src, f"{vid}.timestamps/sentences", "two lists of the same length", got=f"{type(ts).__name__}, {type(ss).__name__}")
        dur = rec.get("duration")
        if dur is not None and (isinstance(dur, bool) or not isinstance(dur, (int, float)) or not math.isfinite(dur) or dur <= 0):
            raise PredictionFormatError(src, f"{vid}.duration", "a number of seconds > 0", got=repr(dur))
        spans = [_span(src, f"{vid}.timestamps[{i}]", t) for i, t in enumerate(ts)]
        for i, s in enumerate(ss):
            if not isinstance(s, str):
                raise PredictionFormatError(src, f"{vid}.sentences[{i}]", "a string", got=s)
        out[str(vid)] = {"timestamps": spans, "sentences": list(ss)}
    return out


def parse_paragraphs(src, data, many: bool) -> dict[str, list[str]]:
    """FAVD ``{clip_id: paragraph}`` (references may also be ``{clip_id: [paragraph, ...]}``)."""
    where = _event_predictions_field(data)
    if where is not None:  # dense3d predict's output of an events run: it failed on 'boxes' ("expected a paragraph string")
        raise PredictionFormatError(src, where, "FAVD paragraphs {clip_id: \"paragraph\"}; this file holds dense event predictions "
                                    "(time spans with a sentence each), which `dense3d eval events` scores",
                                    got="an object with 'boxes' and 'events'" if where == "events" else "an object with 'results'")
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "timestamps" in v for v in data.values()):
        raise PredictionFormatError(src, "(top level)", "FAVD paragraphs {clip_id: \"paragraph\"}; this file holds dense event "
                                    "ground truth (timestamps + sentences), which `dense3d eval events --gt` reads",
                                    got="{clip_id: {timestamps, sentences, ...}}")
    out = {}
    for cid, v in _mapping(src, data, "clip_id").items():
        if isinstance(v, str):
            out[str(cid)] = [v]
        elif many and isinstance(v, list) and v and all(isinstance(p, str) for p in v):
            out[str(cid)] = list(v)
        else:
            raise PredictionFormatError(src, f"{cid}", "a paragraph string" + (" or a list of them" if many else ""), got=v)
    return out


def check_integer_ids(gt: dict[str, list[ObjectGT]], protocol: str) -> None:
    """ScanNet protocols (ScanRefer, Scan2Cap) key objects by the ScanNet object id, an integer
    (ScanRefer's JSON writes it as a string of digits, the official code reads it with ``int``):
    any other ``object_id`` is an error naming the file and entry."""
    for scene, objs in gt.items():
        for i, o in enumerate(objs):
            if not _DIGITS.fullmatch(o.object_id):
                raise PredictionFormatError(o.source or "ground truth", f"{scene}[{i}].object_id",
                                            f"an integer id >= 0 for {protocol} (ScanNet's object id, e.g. 3 or \"3\")",
                                            got=repr(o.object_id))


_DIGITS = re.compile(r"[0-9]+")


def unknown_scenes(pred_keys, gt_keys) -> list[str]:
    """Prediction scene ids absent from the ground truth (reported, never silently dropped)."""
    gt = set(gt_keys)
    return sorted(k for k in pred_keys if k not in gt)
