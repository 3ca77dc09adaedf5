"""Scan2Cap benchmark metrics: one-to-one matching, caption precision / recall / F1, DCmAP, mAP.

Per scene, predictions and the scored GT objects (named, with descriptions) are matched one to
one by the Hungarian algorithm on the negative generalised 3D IoU (``scipy.optimize.
linear_sum_assignment``, axis-aligned boxes). A matched pair *passes* at k when its IoU is
``>= k``. Every matched pair's caption (``"sos " + caption + " eos"``) is scored against the
object's references (as in :mod:`dense3d.eval.scanrefer`) with one call of each scorer over
all matched pairs (so CIDEr's IDF comes from the matched objects' references); then, for each
caption metric m::

    precision@k = sum(m * pass) / #predictions      recall@k = sum(m * pass) / #GT objects
    F1@k = 2 P R / (P + R)

DCmAP: mean over IoU thresholds {0.1, 0.2, 0.3, 0.4, 0.5} x METEOR thresholds {0.15, 0.3,
0.45, 0.6, 0.75} of the VOC AP (all points) where a prediction, ranked by score over all
scenes, is a true positive when it is matched, its IoU >= the IoU threshold and its METEOR >=
the METEOR threshold; #GT objects is the positive count. Detection mAP@0.25/0.5 comes from
:func:`dense3d.eval.detection.evaluate_voc` on the same boxes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from dense3d.eval.caption_metrics import CaptionScorer
from dense3d.eval.detection import evaluate_voc, voc_ap
from dense3d.eval.formats import BoxPrediction, ObjectGT, unknown_scenes
from dense3d.eval.geometry import giou_aa, iou_aa
from dense3d.eval.scanrefer import is_scored, references
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = ["hungarian_pairs", "f1_from_pairs", "dcmap", "evaluate", "DCMAP_IOUS", "DCMAP_METEORS"]

DCMAP_IOUS = (0.1, 0.2, 0.3, 0.4, 0.5)
DCMAP_METEORS = (0.15, 0.3, 0.45, 0.6, 0.75)
_METRICS = ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L")


def hungarian_pairs(pred_aa: np.ndarray, gt_aa: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one (pred, gt, IoU) pairs maximising the summed GIoU."""
    if len(pred_aa) == 0 or len(gt_aa) == 0:
        return []
    cost = -giou_aa(pred_aa, gt_aa)  # (P, G)
    rows, cols = linear_sum_assignment(cost)
    iou = iou_aa(pred_aa, gt_aa)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols)]


def f1_from_pairs(scores: np.ndarray, pair_ious: np.ndarray, n_pred: int, n_gt: int, k: float) -> tuple[float, float, float]:
    """(precision, recall, F1) of per-pair caption scores counted where IoU >= k."""
    s = float(np.sum(scores * (pair_ious >= k)))
    p = s / n_pred if n_pred else 0.0
    r = s / n_gt if n_gt else 0.0
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def dcmap(
    pred_scores: np.ndarray,
    pair_of_pred: np.ndarray,
    pair_ious: np.ndarray,
    pair_meteor: np.ndarray,
    n_gt: int,
    ious: Sequence[float] = DCMAP_IOUS,
    meteors: Sequence[float] = DCMAP_METEORS,
) -> float:
    """Mean AP over (IoU, METEOR) thresholds. ``pair_of_pred[i]``: index of prediction i's
    matched pair, or -1."""
    order = np.argsort(-np.asarray(pred_scores, np.float64), kind="stable")
    aps = []
    for t in ious:
        for m in meteors:
            ok = np.zeros(len(order))
            for r, i in enumerate(order):
                j = pair_of_pred[i]
                if j >= 0 and pair_ious[j] >= t and pair_meteor[j] >= m:
                    ok[r] = 1.0
            ctp, cfp = np.cumsum(ok), np.cumsum(1.0 - ok)
            rec = ctp / max(n_gt, 1)
            prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            aps.append(voc_ap(rec, prec) if len(order) else 0.0)
    return float(np.mean(aps))


def evaluate(
    pred: dict[str, list[BoxPrediction]],
    gt: dict[str, list[ObjectGT]],
    ious: Sequence[float] = (0.25, 0.5),
    max_tokens: int = 30,
    scorer: CaptionScorer | None = None,
    progress: ProgressBar | None = None,
) -> dict:
    """``{"CIDEr-F1@0.5", "CIDEr-P@0.5", "CIDEr-R@0.5", ..., "DCmAP", "mAP@0.25", "mAP@0.5"}`` (x100).
    ``progress``: stages (matching, scorers, DCmAP, detection mAP), see :mod:`dense3d.utils.progress`."""
    bar = ensure_progress(progress)
    bar.add_total(1)
    bar.update("matching scenes (Hungarian)")
    pairs, pair_iou, pred_scores, pair_of_pred = [], [], [], []
    n_gt = 0
    scored_gt: dict[str, list[ObjectGT]] = {}
    for scene in sorted(gt):
        objs = [o for o in gt[scene] if is_scored(o)]
        scored_gt[scene] = objs
        n_gt += len(objs)
        preds = pred.get(scene, [])
        base = len(pred_scores)
        pred_scores += [p.score for p in preds]
        pair_of_pred += [-1] * len(preds)
        if not preds or not objs:
            continue
        for pi, gi, iou in hungarian_pairs(np.stack([p.box.aa for p in preds]), np.stack([o.box.aa for o in objs])):
            pair_of_pred[base + pi] = len(pairs)
            pairs.append(("sos " + preds[pi].caption + " eos", references(objs[gi], max_tokens)))
            pair_iou.append(iou)
    bar.advance()
    n_pred = len(pred_scores)
    pair_iou_a = np.array(pair_iou)
    result: dict = {}
    own = scorer is None
    scorer = scorer or CaptionScorer()
    try:
        _, per = scorer.score_pairs(pairs, progress=bar) if pairs else ({}, {m: [] for m in _METRICS})
    finally:
        if own:
            scorer.close()
    for k in ious:
        for m in _METRICS:
            if m not in per:
                continue
            p, r, f = f1_from_pairs(np.array(per[m]), pair_iou_a, n_pred, n_gt, k)
            result[f"{m}-P@{k:g}"], result[f"{m}-R@{k:g}"], result[f"{m}-F1@{k:g}"] = 100 * p, 100 * r, 100 * f
    bar.add_total(2)
    bar.update("DCmAP")
    if "METEOR" in per:
        result["DCmAP"] = 100.0 * dcmap(np.array(pred_scores), np.array(pair_of_pred, int), pair_iou_a, np.array(per["METEOR"]), n_gt)
    bar.advance()
    bar.update("detection mAP")
    det = evaluate_voc({s: pred[s] for s in pred if s in gt}, scored_gt, ious=(0.25, 0.5), class_agnostic=not _has_labels(pred))
    bar.advance()
    result["mAP@0.25"], result["mAP@0.5"] = det["mAP@0.25"], det["mAP@0.5"]
    result["predictions"], result["objects"], result["pairs"] = n_pred, n_gt, len(pairs)
    result["unknown_scenes"] = unknown_scenes(pred, gt)
    return result


def _has_labels(pred: dict[str, list[BoxPrediction]]) -> bool:
    return all(p.label is not None for ps in pred.values() for p in ps) and any(ps for ps in pred.values())
