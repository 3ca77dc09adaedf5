"""ScanRefer dense captioning, m@kIoU, as Vote2Cap-DETR computes it (what ScanRefer papers report).

For each scene, the axis-aligned 3D IoU (``inter / (union + 1e-8)``, Vote2Cap-DETR's
``box3d_iou_batch_tensor``) between every prediction and every GT object of the scene -- all
of them, also objects without ScanRefer descriptions, which can "take" a prediction;

1. each prediction takes its best-IoU GT object (first one on ties);
2. it counts at threshold k only if that IoU is **strictly greater** than k;
3. each GT object gets the caption of its counting prediction with the highest IoU (the first
   such prediction, in the file's order, on ties: the anchor updates only on ``>``);
4. GT objects without one get the placeholder ``"sos eos"``;
5. references: every description of the object as ``"sos " + " ".join(token[:30]) + " eos"``;
   predictions are wrapped ``"sos " + caption + " eos"``; no other tokenisation;
6. keys ``scene|object_id|object_name``; objects named ``unknown`` or without descriptions
   are not scored; scores are over the scored GT objects (recall-style), x100.

The NMS and "no object" class filtering that Vote2Cap-DETR applies inside its model are the
model's business: the predictions given here are taken as final.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dense3d.eval.caption_metrics import CaptionScorer
from dense3d.eval.formats import BoxPrediction, ObjectGT, check_integer_ids, unknown_scenes
from dense3d.eval.geometry import iou_aa
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = ["PLACEHOLDER", "object_key", "references", "match", "evaluate"]

PLACEHOLDER = "sos eos"
VOTE2CAP_IOU_EPS = 1e-8


def object_key(scene: str, obj: ObjectGT) -> str:
    return f"{scene}|{obj.object_id}|{obj.name}"


def is_scored(obj: ObjectGT) -> bool:
    return obj.name != "unknown" and len(obj.tokens) > 0


def references(obj: ObjectGT, max_tokens: int | None = 30) -> list[str]:
    return ["sos " + " ".join(t[:max_tokens]) + " eos" for t in obj.tokens]


def match(preds: Sequence[BoxPrediction], objs: Sequence[ObjectGT], thresholds: Sequence[float]) -> dict[float, dict[int, tuple[int, float]]]:
    """One scene: ``{k: {gt_index: (pred_index, iou)}}`` for the GT objects a prediction covers at k."""
    out: dict[float, dict[int, tuple[int, float]]] = {k: {} for k in thresholds}
    if not preds or not objs:
        return out
    p_aa = np.stack([p.box.aa for p in preds])  # (P, 6)
    g_aa = np.stack([o.box.aa for o in objs])  # (G, 6)
    ious = iou_aa(p_aa, g_aa, eps=VOTE2CAP_IOU_EPS)  # (P, G)
    best_g = ious.argmax(1)  # first maximum on ties, like torch.max on CPU
    best_iou = ious[np.arange(len(preds)), best_g]
    for k in thresholds:
        idx = np.flatnonzero(best_iou > k)
        if idx.size == 0:
            continue
        order = idx[np.lexsort((idx, -best_iou[idx]))]  # by IoU descending, then file order
        gs, first = np.unique(best_g[order], return_index=True)
        for g, f in zip(gs.tolist(), first.tolist()):
            p = int(order[f])
            out[k][g] = (p, float(best_iou[p]))
    return out


def evaluate(
    pred: dict[str, list[BoxPrediction]],
    gt: dict[str, list[ObjectGT]],
    ious: Sequence[float] = (0.25, 0.5),
    max_tokens: int = 30,
    scorer: CaptionScorer | None = None,
    progress: ProgressBar | None = None,
) -> dict:
    """m@kIoU metrics: ``{"CIDEr@0.5": .., "BLEU-4@0.5": .., "METEOR@0.5": .., "ROUGE-L@0.5": ..,
    "matched@0.5": 1543, "objects": 2068, ...}`` (scores x100) plus ``unknown_scenes``.
    ``progress``: stages (matching, then the scorers), see :mod:`dense3d.utils.progress`."""
    ious = tuple(float(k) for k in ious)
    check_integer_ids(gt, "scanrefer")
    bar = ensure_progress(progress)
    bar.add_total(1)
    bar.update("matching scenes")
    keys, refs = [], []
    cover: dict[float, dict[str, str]] = {k: {} for k in ious}
    for scene in sorted(gt):
        objs = gt[scene]
        m = match(pred.get(scene, []), objs, ious)
        for gi, obj in enumerate(objs):
            if not is_scored(obj):
                continue
            key = object_key(scene, obj)
            keys.append(key)
            refs.append(references(obj, max_tokens))
            for k in ious:
                if gi in m[k]:
                    cover[k][key] = "sos " + pred[scene][m[k][gi][0]].caption + " eos"
    bar.advance()
    order = sorted(range(len(keys)), key=lambda i: keys[i])  # the anchor scores sorted keys
    keys, refs = [keys[i] for i in order], [refs[i] for i in order]
    result: dict = {}
    own = scorer is None
    scorer = scorer or CaptionScorer()
    try:
        # every threshold's pairs scored in one go: METEOR (Java) overlaps the Python scorers
        sets = [[(cover[k].get(key, PLACEHOLDER), r) for key, r in zip(keys, refs)] for k in ious]
        for k, (corpus, _) in zip(ious, scorer.score_many(sets, progress=bar, names=[f"@{t:g}" for t in ious])):
            for name in ("CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L"):
                if name in corpus:
                    result[f"{name}@{k:g}"] = 100.0 * corpus[name]
            result[f"matched@{k:g}"] = len(cover[k])  # printed "matched / objects"
    finally:
        if own:
            scorer.close()
    result["objects"] = len(keys)
    result["unknown_scenes"] = unknown_scenes(pred, gt)
    return result
