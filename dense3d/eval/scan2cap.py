"""Scan2Cap benchmark metrics: one-to-one matching, caption precision / recall / F1, DCmAP, mAP.

Per scene, predictions and the scored GT objects (named, with descriptions) are matched one to
one by the Hungarian algorithm on the negative generalised 3D IoU (``scipy.optimize.
linear_sum_assignment``, axis-aligned boxes). A matched pair *passes* at k when its IoU is
``>= k``. Every matched pair's caption (``"sos " + caption + " eos"``) is scored against the
object's references (as in :mod:`dense3d.eval.scanrefer`) with one call of each scorer over
*every* scored GT object (references untruncated: the benchmark joins ScanRefer's whole
``token`` list, unlike Vote2Cap-DETR's ``token[:30]``; ``max_tokens`` truncates if asked), the
unmatched ones with the placeholder ``"sos eos"``, as the
benchmark's ``eval.py`` scores its whole corpus: so CIDEr's IDF comes from the references of
all scored objects, not only the matched ones; then, for each caption metric m::

    precision@k = sum(m * pass) / #predictions      recall@k = sum(m * pass) / #GT objects
    F1@k = 2 P R / (P + R)

DCmAP: mean over IoU thresholds {0.1, 0.2, 0.3, 0.4, 0.5} x METEOR thresholds {0.15, 0.3,
0.45, 0.6, 0.75} of the VOC AP (all points) where a prediction, ranked by score over all
scenes, is a true positive when it is matched, its IoU >= the IoU threshold and its METEOR >=
the METEOR threshold; #GT objects is the positive count. (The benchmark's ``eval_densecap.py``
differs: greedy VoteNet matching, NLTK's METEOR, strict ``>``; docs/eval.md says how.) Detection mAP@0.25/0.5 comes from
:func:`dense3d.eval.detection.evaluate_voc` on the same boxes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from dense3d.eval.caption_metrics import CaptionScorer
from dense3d.eval.detection import evaluate_voc, voc_ap
from dense3d.eval.formats import BoxPrediction, ObjectGT, check_integer_ids, unknown_scenes
from dense3d.eval.geometry import giou_aa, iou_aa
from dense3d.eval.scanrefer import PLACEHOLDER, is_scored, references
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = ["hungarian_pairs", "f1_from_pairs", "dcmap", "evaluate", "per_object_scores", "paired_difference", "paired_stats",
           "metric_scorer", "object_shares",
           "DCMAP_IOUS", "DCMAP_METEORS", "METRICS"]

DCMAP_IOUS = (0.1, 0.2, 0.3, 0.4, 0.5)
DCMAP_METEORS = (0.15, 0.3, 0.45, 0.6, 0.75)
METRICS = ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L")  # the caption metrics scored per pair


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


@dataclass
class _Matching:
    pairs: list[tuple[str, list[str]]] = field(default_factory=list)  # (caption, references) per matched pair
    ious: list[float] = field(default_factory=list)                    # per pair
    pair_objects: list[int] = field(default_factory=list)              # per pair: its index in ``objects``
    pred_scores: list[float] = field(default_factory=list)             # per prediction, scenes in order
    pair_of_pred: list[int] = field(default_factory=list)              # per prediction: its pair, or -1
    objects: list[tuple[str, str]] = field(default_factory=list)       # (scene, object_id) per scored GT object
    object_refs: list[list[str]] = field(default_factory=list)         # references per scored GT object
    scored_gt: dict[str, list[ObjectGT]] = field(default_factory=dict)


def _match(pred: dict[str, list[BoxPrediction]], gt: dict[str, list[ObjectGT]], max_tokens: int | None) -> _Matching:
    """One-to-one matching of every scene (scenes in sorted order), the pairs' captions with
    their objects' references."""
    check_integer_ids(gt, "scan2cap")
    m = _Matching()
    for scene in sorted(gt):
        objs = [o for o in gt[scene] if is_scored(o)]
        m.scored_gt[scene] = objs
        first = len(m.objects)
        m.objects += [(scene, o.object_id) for o in objs]
        m.object_refs += [references(o, max_tokens) for o in objs]
        preds = pred.get(scene, [])
        base = len(m.pred_scores)
        m.pred_scores += [p.score for p in preds]
        m.pair_of_pred += [-1] * len(preds)
        if not preds or not objs:
            continue
        for pi, gi, iou in hungarian_pairs(np.stack([p.box.aa for p in preds]), np.stack([o.box.aa for o in objs])):
            m.pair_of_pred[base + pi] = len(m.pairs)
            m.pairs.append(("sos " + preds[pi].caption + " eos", references(objs[gi], max_tokens)))
            m.ious.append(iou)
            m.pair_objects.append(first + gi)
    return m


def _pair_scores(m: _Matching, scorer: CaptionScorer, progress: ProgressBar | None = None) -> dict[str, list[float]]:
    """Per-pair scores of the matched pairs, computed as the benchmark does: one call over every
    scored GT object (the unmatched ones captioned ``"sos eos"``), so CIDEr's IDF comes from all
    the objects' references. BLEU, METEOR and ROUGE-L per item do not depend on the set."""
    caps = [PLACEHOLDER] * len(m.objects)
    for (cap, _), o in zip(m.pairs, m.pair_objects):
        caps[o] = cap
    _, per = scorer.score_pairs(list(zip(caps, m.object_refs)), progress=progress)
    return {k: [v[o] for o in m.pair_objects] for k, v in per.items()}


def per_object_scores(pred: dict[str, list[BoxPrediction]], gt: dict[str, list[ObjectGT]], k: float = 0.25,
                      metric: str = "CIDEr", max_tokens: int | None = None, scorer: CaptionScorer | None = None,
                      ) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Each scored GT object's share of ``{metric}-R@{k}``: its matched caption's score when the
    pair's IoU is ``>= k``, else 0, so the mean over objects is the recall (/100). Returns the
    objects ((scene, object_id), scenes sorted) and their scores. Two runs' scores on the same
    GT pair up object by object (:func:`paired_difference`)."""
    if metric not in METRICS:
        raise ValueError(f"per_object_scores: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    m = _match(pred, gt, max_tokens)
    if not m.pairs:
        return m.objects, np.zeros(len(m.objects))
    with metric_scorer(scorer, metric) as own_or_given:
        per = _pair_scores(m, own_or_given)
    return m.objects, object_shares(len(m.objects), m.pair_objects, m.ious, per, metric, k)


@contextlib.contextmanager
def metric_scorer(scorer: CaptionScorer | None, metric: str):
    """``scorer``, or one made for ``metric`` alone (BLEU-4 with BLEU's other orders) and closed
    after (its METEOR process)."""
    if scorer is not None:
        yield scorer
        return
    own = CaptionScorer(metrics=("BLEU",) if metric == "BLEU-4" else (metric,))
    try:
        yield own
    finally:
        own.close()


def object_shares(n_objects: int, pair_objects: Sequence[int], pair_ious: Sequence[float], per_pair: dict,
                  metric: str, k: float) -> np.ndarray:
    """(n_objects,) each object's matched pair's ``per_pair[metric]`` score where the pair's IoU is
    ``>= k``, else 0 (unmatched, or under k): its share of the recall."""
    if metric not in per_pair:
        raise ValueError(f"per_object_scores: the scorer given does not compute {metric}")
    scores = np.zeros(n_objects)  # (n_objects,)
    passed = np.asarray(pair_ious) >= k
    scores[np.asarray(pair_objects, dtype=np.int64)[passed]] = np.asarray(per_pair[metric])[passed]
    return scores


def paired_difference(pred_a: dict[str, list[BoxPrediction]], pred_b: dict[str, list[BoxPrediction]],
                      gt: dict[str, list[ObjectGT]], k: float = 0.25, metric: str = "CIDEr", max_tokens: int | None = None,
                      scorer: CaptionScorer | None = None) -> dict[str, float]:
    """Run B against run A on the same GT objects: ``{metric}-R@{k}`` of each (x100), their
    difference B - A and its standard error from the per-object differences (x100; paired, so
    what both runs find hard cancels). On ground-truth boxes R = P = F1. Each run's pairs are
    scored on their own, as :func:`evaluate` does (CIDEr's IDF from all scored objects' references).
    Needs >= 2 scored objects (a standard error)."""
    n_objects = sum(is_scored(o) for objs in gt.values() for o in objs)
    if n_objects < 2:
        raise ValueError(f"paired_difference: needs at least 2 scored GT objects (with descriptions), got {n_objects}")
    with metric_scorer(scorer, metric) as both:  # one scorer (one METEOR process) for both runs
        _, a = per_object_scores(pred_a, gt, k, metric, max_tokens, both)
        _, b = per_object_scores(pred_b, gt, k, metric, max_tokens, both)
    return paired_stats(a, b)


def paired_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Two runs' per-object shares of one score, (n_objects,) each in the same object order:
    ``{"objects", "A", "B", "B-A", "SE", "B better", "A better"}``, the means and the mean
    difference with its standard error from the per-object differences (x100)."""
    d = b - a  # (n_objects,)
    se = float(d.std(ddof=1) / np.sqrt(len(d)))
    return {"objects": len(d), "A": 100 * float(a.mean()), "B": 100 * float(b.mean()),
            "B-A": 100 * float(d.mean()), "SE": 100 * se, "B better": int((d > 0).sum()), "A better": int((d < 0).sum())}


def evaluate(
    pred: dict[str, list[BoxPrediction]],
    gt: dict[str, list[ObjectGT]],
    ious: Sequence[float] = (0.25, 0.5),
    max_tokens: int | None = None,
    scorer: CaptionScorer | None = None,
    progress: ProgressBar | None = None,
) -> dict:
    """``{"CIDEr-F1@0.5", "CIDEr-P@0.5", "CIDEr-R@0.5", ..., "DCmAP", "mAP@0.25", "mAP@0.5"}`` (x100).
    ``progress``: stages (matching, scorers, DCmAP, detection mAP), see :mod:`dense3d.utils.progress`."""
    bar = ensure_progress(progress)
    bar.add_total(1)
    bar.update("matching scenes (Hungarian)")
    match = _match(pred, gt, max_tokens)
    pairs, pair_iou, pred_scores, pair_of_pred = match.pairs, match.ious, match.pred_scores, match.pair_of_pred
    n_gt, scored_gt = len(match.objects), match.scored_gt
    bar.advance()
    n_pred = len(pred_scores)
    pair_iou_a = np.array(pair_iou)
    result: dict = {}
    own = scorer is None
    scorer = scorer or CaptionScorer()
    try:
        per = _pair_scores(match, scorer, progress=bar) if pairs else {m: [] for m in METRICS}
    finally:
        if own:
            scorer.close()
    for k in ious:
        for m in METRICS:
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
