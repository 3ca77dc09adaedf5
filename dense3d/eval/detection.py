"""Detection mAP: VOC-style AP at 3D IoU (indoor) and nuScenes centre-distance AP (outdoor).

* :func:`evaluate_voc` -- VoteNet / 3DETR ``eval_det``: per class, predictions of all scenes
  sorted by score; a prediction is a true positive when its best-IoU GT of the same class and
  scene has IoU **> t** and is not taken yet (a second hit on a taken GT is a false positive);
  AP is the area under the monotone precision envelope (all points, VOC 2010+). mAP is the mean
  over classes with at least one GT box; a class with GT but no prediction has AP 0;
  predictions of classes without GT are ignored.
* :func:`evaluate_nuscenes` -- nuScenes ``accumulate`` + ``calc_ap``: per class, greedy by
  score (ties: later index first, as nuScenes sorts), match the closest free GT of the same
  sample by BEV centre distance, a match when ``distance < d``; precision interpolated at 101
  recall points (0 past the last recall), AP = mean of ``max(prec - 0.1, 0)`` over recalls
  > 0.1, divided by 0.9. mAP: mean over classes and distances {0.5, 1, 2, 4} m. Boxes are
  scored as given: nuScenes' ``filter_eval_boxes`` (class ranges, GT without points, bicycle
  racks) is not applied (:func:`dense3d.eval.tod3cap.filter_boxes` does the first two).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dense3d.eval.formats import BoxPrediction, ObjectGT, unknown_scenes
from dense3d.eval.geometry import centre_distance_xy, iou_aa, iou_rotated
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = ["voc_ap", "evaluate_voc", "evaluate_nuscenes", "NUSCENES_DISTANCES"]

NUSCENES_DISTANCES = (0.5, 1.0, 2.0, 4.0)


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the precision envelope at every recall change (VOC 2010+ / VoteNet)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _label(x: str | None) -> str:
    return x if x is not None else "object"


def evaluate_voc(
    pred: dict[str, list[BoxPrediction]],
    gt: dict[str, list[ObjectGT]],
    ious: Sequence[float] = (0.25, 0.5),
    rotated: bool = False,
    class_agnostic: bool = False,
    progress: ProgressBar | None = None,
) -> dict:
    """``{"mAP@0.25": .., "AR@0.25": .., "AP@0.25/<class>": .., ..., "unknown_scenes": [...]}`` (x100).
    ``progress``: one stage per IoU threshold, see :mod:`dense3d.utils.progress`."""
    classes = sorted({("object" if class_agnostic else o.name) for objs in gt.values() for o in objs})
    result: dict = {}
    bar = ensure_progress(progress)
    bar.add_total(len(ious))
    for t in ious:
        bar.update(f"AP@{t:g}")
        aps, recs = [], []
        for c in classes:
            dets = []  # (score, scene, pred index)
            gts: dict[str, list[int]] = {}
            for scene, objs in gt.items():
                gts[scene] = [i for i, o in enumerate(objs) if class_agnostic or o.name == c]
            npos = sum(len(v) for v in gts.values())
            for scene, preds in pred.items():
                if scene not in gt:
                    continue
                for i, p in enumerate(preds):
                    if class_agnostic or _label(p.label) == c:
                        dets.append((p.score, scene, i))
            order = sorted(range(len(dets)), key=lambda j: -dets[j][0])  # stable: file order on ties
            tp = np.zeros(len(dets))
            taken = {s: np.zeros(len(v), bool) for s, v in gts.items()}
            cache: dict[str, np.ndarray] = {}
            for rank, j in enumerate(order):
                _, scene, i = dets[j]
                g_idx = gts[scene]
                if not g_idx:
                    continue
                if scene not in cache:
                    objs = [gt[scene][g] for g in g_idx]
                    P = [p for p in pred[scene]]
                    if rotated:
                        cache[scene] = iou_rotated(np.stack([p.box.params for p in P]), np.stack([o.box.params for o in objs]))
                    else:
                        cache[scene] = iou_aa(np.stack([p.box.aa for p in P]), np.stack([o.box.aa for o in objs]))
                row = cache[scene][i]
                best = int(row.argmax())
                if row[best] > t and not taken[scene][best]:
                    tp[rank] = 1.0
                    taken[scene][best] = True
            ctp = np.cumsum(tp)
            cfp = np.cumsum(1.0 - tp)
            rec = ctp / max(npos, 1)
            prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            ap = voc_ap(rec, prec) if len(dets) else 0.0
            result[f"AP@{t:g}/{c}"] = 100.0 * ap
            aps.append(ap)
            recs.append(float(rec[-1]) if len(dets) else 0.0)
        result[f"mAP@{t:g}"] = 100.0 * float(np.mean(aps)) if aps else 0.0
        result[f"AR@{t:g}"] = 100.0 * float(np.mean(recs)) if recs else 0.0
        bar.advance()
    result["unknown_scenes"] = unknown_scenes(pred, gt)
    return result


def _nuscenes_ap(prec_at: np.ndarray, min_recall: float = 0.1, min_precision: float = 0.1) -> float:
    prec = prec_at[int(round(100 * min_recall)) + 1:] - min_precision
    prec[prec < 0] = 0
    return float(np.mean(prec)) / (1.0 - min_precision)


def evaluate_nuscenes(
    pred: dict[str, list[BoxPrediction]],
    gt: dict[str, list[ObjectGT]],
    distances: Sequence[float] = NUSCENES_DISTANCES,
    classes: Sequence[str] | None = None,
    progress: ProgressBar | None = None,
) -> dict:
    """nuScenes centre-distance AP: ``{"mAP": .., "AP@2m/car": .., "mAP@2m": ..}`` (x100).
    ``progress``: one stage per class, see :mod:`dense3d.utils.progress`."""
    classes = sorted(classes or {o.name for objs in gt.values() for o in objs})
    result: dict = {}
    per_dist: dict[float, list[float]] = {d: [] for d in distances}
    bar = ensure_progress(progress)
    bar.add_total(len(classes))
    for c in classes:
        bar.update(f"AP {c}")
        dets = [(p.score, s, i) for s, ps in pred.items() if s in gt for i, p in enumerate(ps) if _label(p.label) == c]
        # nuScenes: sorted((v, i))[::-1] -> score descending, later index first on ties
        order = sorted(range(len(dets)), key=lambda j: (dets[j][0], j), reverse=True)
        g_idx = {s: [i for i, o in enumerate(objs) if o.name == c] for s, objs in gt.items()}
        npos = sum(len(v) for v in g_idx.values())
        dist_cache: dict[str, np.ndarray] = {}
        for d in distances:
            if npos == 0 or not dets:
                ap = 0.0
            else:
                taken = {s: np.zeros(len(v), bool) for s, v in g_idx.items()}
                tp = []
                for j in order:
                    _, s, i = dets[j]
                    if not g_idx[s]:
                        tp.append(0.0)
                        continue
                    if s not in dist_cache:
                        dist_cache[s] = centre_distance_xy(
                            np.stack([p.box.params for p in pred[s]]), np.stack([gt[s][g].box.params for g in g_idx[s]])
                        )
                    row = np.where(taken[s], np.inf, dist_cache[s][i])
                    g = int(row.argmin())
                    if row[g] < d:
                        taken[s][g] = True
                        tp.append(1.0)
                    else:
                        tp.append(0.0)
                tp_a = np.array(tp)
                ctp, cfp = np.cumsum(tp_a), np.cumsum(1.0 - tp_a)
                prec = ctp / (ctp + cfp)
                rec = ctp / npos
                prec_at = np.interp(np.linspace(0, 1, 101), rec, prec, right=0)
                ap = _nuscenes_ap(prec_at)
            result[f"AP@{d:g}m/{c}"] = 100.0 * ap
            per_dist[d].append(ap)
        bar.advance()
    for d in distances:
        result[f"mAP@{d:g}m"] = 100.0 * float(np.mean(per_dist[d])) if per_dist[d] else 0.0
    result["mAP"] = float(np.mean([result[f"mAP@{d:g}m"] for d in distances])) if distances else 0.0
    result["unknown_scenes"] = unknown_scenes(pred, gt)
    return result
