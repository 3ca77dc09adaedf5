"""TOD3Cap (outdoor 3D dense captioning on nuScenes): a compatible and a corrected protocol.

Both first filter boxes as the nuScenes detection evaluation does: a box is kept when its
label is one of the 10 detection classes and its BEV distance from the ego (``ego_dist`` of a
prediction or GT box if given, else ``hypot(x, y)`` of the box centre, boxes being in the LiDAR
frame: up to a metre off nuScenes' ego-frame distance) is
**below** the class range (``CLASS_RANGE``); GT boxes with ``num_pts == 0`` (no LiDAR nor
radar point) are dropped; more than 500 predictions in a sample is an error (nuScenes
asserts). nuScenes' bicycle-rack filter needs the map's rack annotations and is not applied.

``mode="compatible"`` reproduces TOD3Cap's ``evaluate_utils/get_text_results.py``:

* each *prediction* of a sample that has GT boxes is matched to the GT box of that sample with
  the highest nuScenes ``scale_iou`` -- sizes only: centre and yaw are ignored (first GT on
  ties); predictions of samples without GT boxes are left out of everything;
* at k in {0.25, 0.5} the predictions with IoU strictly **> k** are kept; candidate and
  reference lose only the standalone tokens ``","`` and ``"."`` (no other tokenisation);
  one reference: the GT box's caption, or ``"The object is ignored."`` when it has none;
* each metric over the kept predictions is multiplied by the kept fraction
  (#kept / #predictions matched to some GT). Several predictions can take the same GT box,
  and a prediction the size of a car anywhere in the scene matches a car.

``mode="corrected"``: rotated 3D IoU (``dense3d.ops.boxes_iou_3d``; BEV IoU reported beside
it), one-to-one Hungarian matching on the negative IoU per sample, GT boxes with a caption as
targets, and the Scan2Cap-style precision / recall / F1 of :mod:`dense3d.eval.scan2cap`
(pass when IoU >= k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from dense3d.errors import PredictionFormatError
from dense3d.eval.caption_metrics import CaptionScorer
from dense3d.eval.formats import BoxPrediction, ObjectGT, unknown_scenes
from dense3d.eval.geometry import iou_rotated, scale_iou
from dense3d.eval.scan2cap import f1_from_pairs, metric_scorer, object_shares, paired_stats
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = ["CLASS_RANGE", "IGNORED_REFERENCE", "filter_boxes", "clean", "evaluate", "per_object_scores", "paired_difference"]

# nuScenes detection_cvpr_2019 class ranges (metres from the ego, BEV).
CLASS_RANGE = {
    "car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50,
    "pedestrian": 40, "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30,
}
IGNORED_REFERENCE = "The object is ignored."
MAX_BOXES_PER_SAMPLE = 500
_METRICS = ("CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L")


def _ego_dist(box_params: np.ndarray, given: float | None) -> float:
    return float(given) if given is not None else math.hypot(box_params[0], box_params[1])


def filter_boxes(pred: dict[str, list[BoxPrediction]], gt: dict[str, list[ObjectGT]], source: str = "predictions"):
    """nuScenes-style filtering of both sides (see the module docstring)."""
    fp: dict[str, list[BoxPrediction]] = {}
    for s, ps in pred.items():
        if len(ps) > MAX_BOXES_PER_SAMPLE:
            raise PredictionFormatError(source, s, f"at most {MAX_BOXES_PER_SAMPLE} predictions per sample", got=len(ps))
        keep = []
        for i, p in enumerate(ps):
            if p.label not in CLASS_RANGE:
                raise PredictionFormatError(source, f"{s}[{i}].label", f"one of {sorted(CLASS_RANGE)}", got=p.label)
            if _ego_dist(p.box.params, p.ego_dist) < CLASS_RANGE[p.label]:
                keep.append(p)
        fp[s] = keep
    fg: dict[str, list[ObjectGT]] = {}
    for s, objs in gt.items():
        for i, o in enumerate(objs):  # a GT box without a label would silently vanish; other classes are
            if not o.name_given:       # dropped as the protocol does (nuScenes' detection classes only)
                raise PredictionFormatError(o.source or "ground truth", f"{s}[{i}].label", f"one of {sorted(CLASS_RANGE)}",
                                            got="missing")
        fg[s] = [
            o for o in objs
            if o.name in CLASS_RANGE
            and _ego_dist(o.box.params, o.ego_dist) < CLASS_RANGE[o.name]
            and (o.num_pts is None or o.num_pts > 0)
        ]
    return fp, fg


def clean(text: str) -> str:
    """TOD3Cap's only text processing: drop the standalone tokens ',' and '.'."""
    return " ".join(t for t in text.split() if t not in (",", "."))


def _reference(o: ObjectGT) -> str:
    return o.references[0] if o.references else IGNORED_REFERENCE


def _compatible(pred, gt, ious, scorer, bar: ProgressBar) -> dict:
    bar.add_total(1)
    bar.update("matching scenes (size IoU)")
    records = []  # (iou, candidate, reference)
    for s in pred:
        objs = gt.get(s, [])
        if not objs or not pred[s]:
            continue
        iou = scale_iou(np.stack([p.box.params[3:6] for p in pred[s]]), np.stack([o.box.params[3:6] for o in objs]))  # (P, G)
        best = iou.argmax(1)
        for i, p in enumerate(pred[s]):
            g = int(best[i])
            records.append((float(iou[i, g]), p.caption, _reference(objs[g])))
    bar.advance()
    result: dict = {"records": len(records)}
    for k in ious:
        kept = [r for r in records if r[0] > k]
        result[f"kept@{k:g}"] = len(kept)
        if not kept:
            for m in _METRICS:
                result[f"{m}@{k:g}"] = 0.0
            continue
        corpus, _ = scorer.score_many([[(clean(c), [clean(r)]) for _, c, r in kept]], progress=bar, names=[f"@{k:g}"])[0]
        frac = len(kept) / len(records)
        for m in _METRICS:
            result[f"{m}@{k:g}"] = 100.0 * corpus.get(m, 0.0) * frac
    return result


@dataclass
class _CorrectedPairs:
    pairs: list[tuple[str, list[str]]] = field(default_factory=list)  # (caption, [reference]) per matched pair, cleaned
    ious: list[float] = field(default_factory=list)                    # per pair
    pair_objects: list[int] = field(default_factory=list)              # per pair: its index in ``objects``
    objects: list[tuple[str, str]] = field(default_factory=list)       # (scene, object_id) per GT box with a caption
    n_pred: int = 0                                                    # predictions of scenes with ground truth


def _corrected_pairs(pred, gt, bev: bool) -> _CorrectedPairs:
    """The corrected protocol's one-to-one pairs (Hungarian on the negative rotated IoU, scenes
    sorted) between filtered predictions and the GT boxes with a caption."""
    m = _CorrectedPairs(n_pred=sum(len(v) for s, v in pred.items() if s in gt))
    for s in sorted(gt):
        objs = [o for o in gt[s] if o.references]
        first = len(m.objects)
        m.objects += [(s, o.object_id) for o in objs]
        ps = pred.get(s, [])
        if not ps or not objs:
            continue
        iou = iou_rotated(np.stack([p.box.params for p in ps]), np.stack([o.box.params for o in objs]), bev=bev)
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols):
            m.pairs.append((clean(ps[r].caption), [clean(objs[c].references[0])]))
            m.ious.append(float(iou[r, c]))
            m.pair_objects.append(first + int(c))
    return m


def _corrected(pred, gt, ious, scorer, bar: ProgressBar) -> dict:
    result: dict = {}
    for variant, bev in (("", False), ("/bev", True)):
        bar.add_total(1)
        bar.update(f"matching scenes ({'BEV' if bev else '3D'} IoU, Hungarian)")
        matched = _corrected_pairs(pred, gt, bev)
        pairs, pair_iou, n_pred, n_gt = matched.pairs, matched.ious, matched.n_pred, len(matched.objects)
        bar.advance()
        _, per = scorer.score_many([pairs], progress=bar, names=["BEV" if bev else "3D"])[0] if pairs else ({}, {m: [] for m in _METRICS})
        for k in ious:
            for m in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L"):
                if pairs and m not in per:  # a scorer without this metric (CaptionScorer(metrics=...))
                    continue
                p, r, f = f1_from_pairs(np.array(per.get(m, [])), np.array(pair_iou), n_pred, n_gt, k)
                result[f"{m}-P@{k:g}{variant}"], result[f"{m}-R@{k:g}{variant}"], result[f"{m}-F1@{k:g}{variant}"] = 100 * p, 100 * r, 100 * f
        result[f"pairs{variant}"] = len(pairs)
    return result


def per_object_scores(pred: dict[str, list[BoxPrediction]], gt: dict[str, list[ObjectGT]], k: float = 0.25,
                      metric: str = "CIDEr", scorer: CaptionScorer | None = None, bev: bool = False,
                      source: str = "predictions") -> tuple[list[tuple[str, str]], np.ndarray]:
    """Each GT box's share of the corrected protocol's ``{metric}-R@{k}``: after the
    benchmark's box filter (:func:`filter_boxes`), its matched caption's score (TOD3Cap's
    cleaning, every matched pair scored in one call as :func:`evaluate` does, so CIDEr's IDF is
    the same) when the pair's rotated IoU is ``>= k``, else 0; the mean over the GT boxes
    with a caption is the recall (/100). The F1 is that recall times 2 n_gt / (n_gt + n_pred)
    (boxes with a caption, predictions), a factor two runs on the same boxes share. Returns the
    objects ((scene, object_id), scenes sorted) and their scores."""
    if metric not in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L"):
        raise ValueError(f"per_object_scores: metric must be CIDEr, BLEU-4, METEOR or ROUGE-L, got {metric!r}")
    fp, fg = filter_boxes(pred, gt, source)
    m = _corrected_pairs(fp, fg, bev)
    if not m.pairs:
        return m.objects, np.zeros(len(m.objects))
    with metric_scorer(scorer, metric) as own_or_given:
        per = own_or_given.score_pairs(m.pairs)[1]
    return m.objects, object_shares(len(m.objects), m.pair_objects, m.ious, per, metric, k)


def paired_difference(pred_a: dict[str, list[BoxPrediction]], pred_b: dict[str, list[BoxPrediction]],
                      gt: dict[str, list[ObjectGT]], k: float = 0.25, metric: str = "CIDEr",
                      scorer: CaptionScorer | None = None,
                      sources: tuple[str, str] = ("run A's predictions", "run B's predictions")) -> dict[str, float]:
    """Run B against run A on the same GT boxes under the corrected protocol
    (:func:`per_object_scores`; :func:`dense3d.eval.scan2cap.paired_stats`). Needs >= 2 GT boxes
    with a caption. ``sources`` name the two prediction sets in errors."""
    n_objects = sum(bool(o.references) for objs in filter_boxes({}, gt)[1].values() for o in objs)
    if n_objects < 2:
        raise ValueError(f"paired_difference: needs at least 2 GT boxes with a caption, got {n_objects}")
    with metric_scorer(scorer, metric) as both:  # one scorer (one METEOR process) for both runs
        _, a = per_object_scores(pred_a, gt, k, metric, both, source=sources[0])
        _, b = per_object_scores(pred_b, gt, k, metric, both, source=sources[1])
    return paired_stats(a, b)


def evaluate(
    pred: dict[str, list[BoxPrediction]],
    gt: dict[str, list[ObjectGT]],
    ious: Sequence[float] = (0.25, 0.5),
    mode: str = "compatible",
    scorer: CaptionScorer | None = None,
    source: str = "predictions",
    progress: ProgressBar | None = None,
) -> dict:
    """TOD3Cap caption metrics (x100) in ``mode`` "compatible" or "corrected". ``progress``:
    stages (matching, then the scorers), see :mod:`dense3d.utils.progress`."""
    if mode not in ("compatible", "corrected"):
        raise ValueError(f"mode must be 'compatible' or 'corrected', got {mode!r}")
    unknown = unknown_scenes(pred, gt)
    fp, fg = filter_boxes(pred, gt, source)
    own = scorer is None
    scorer = scorer or CaptionScorer()
    try:
        bar = ensure_progress(progress)
        result = _compatible(fp, fg, ious, scorer, bar) if mode == "compatible" else _corrected(fp, fg, ious, scorer, bar)
    finally:
        if own:
            scorer.close()
    result["mode"] = mode
    result["unknown_scenes"] = unknown
    return result
