"""Evaluating a trained run on a split of its own data (``dense3d eval --checkpoint RUN``).

Loads the run (``dense3d.api.load``), describes every sample of the split, writes
``predictions.json`` and ``ground_truth.json`` in the evaluation tools' formats (docs/eval.md),
and scores them with the protocols that fit what the model outputs:

* boxes: detection AP (nuScenes centre distance for rotated outdoor boxes, VOC 3D IoU for the
  axis-aligned indoor head) and, when the model writes captions, TOD3Cap (outdoor) or Scan2Cap
  (indoor) caption metrics;
* events: proposal precision / recall at tIoU 0.3, 0.5, 0.7 (the dense-events protocol), the
  direction error of the proposals matched one-to-one to ground truth (Hungarian on tIoU,
  tIoU >= 0.5) and, with captions, the dense-events caption metrics. With ``regions="gt"``
  every ground-truth event is captioned on its own span ("captioning with ground-truth
  proposals"): the same files and caption metrics, without the proposal precision / recall and
  class accuracy, which would be 100 by construction.

The metrics land in ``metrics.json`` beside the predictions; with the run's training log, the
training curves in ``curves.png``.
"""
from __future__ import annotations

import math
import numbers
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dense3d.errors import ConfigError
from dense3d.structures import DenseCaption, Sample
from dense3d.utils.io import atomic_write_json, check_output_path

__all__ = ["box_records", "event_records", "direction_errors", "box_metrics", "evaluate_run"]


def box_records(samples: Sequence[Sample], captions: Sequence[list[DenseCaption]]) -> tuple[dict, dict]:
    """Predicted boxes and ground-truth objects in the evaluation tools' 3D formats."""
    pred, gt = {}, {}
    for s, caps in zip(samples, captions):
        pred[s.sample_id] = [{"box": list(c.region), "caption": c.text, "score": c.score, "label": c.label}
                             for c in caps if c.kind == "box"]
        boxes = s.boxes
        if boxes is None:
            continue
        counts = boxes.num_points.tolist() if boxes.num_points is not None else [1] * len(boxes)
        radar = s.meta.get("num_radar_pts")  # TOD3Cap: nuScenes' num_pts is LiDAR + radar points, as tod3cap-gt writes
        if boxes.num_points is not None and isinstance(radar, torch.Tensor) and radar.shape == (len(boxes),):
            counts = [c + int(r) if c >= 0 else c for c, r in zip(counts, radar.tolist())]
        gt[s.sample_id] = [
            {
                "label": boxes.class_names[int(k)],
                "box": boxes.boxes.tensor[i, :7].tolist(),
                "descriptions": list(boxes.captions[i]) if i < len(boxes.captions) else [],  # [0]: TOD3Cap's one reference
                "num_pts": int(counts[i]) if counts[i] >= 0 else None,  # -1: the info file had no count
            }
            for i, k in enumerate(boxes.labels.tolist())
            if 0 <= int(k) < len(boxes.class_names)
        ]
    return pred, gt


def event_records(samples: Sequence[Sample], captions: Sequence[list[DenseCaption]]) -> tuple[dict, dict]:
    """Predicted events (ActivityNet results + label and azimuth) and the ground truth
    (``{clip: {"timestamps", "sentences", "labels", "azimuth"}}``)."""
    pred, gt = {}, {}
    for s, caps in zip(samples, captions):
        ev = s.events
        names = list(ev.class_names) if ev is not None else []
        rows = []
        for c in caps:
            if c.kind != "event":
                continue
            label = names[int(c.label)] if c.label.isdigit() and int(c.label) < len(names) else c.label
            rows.append({"timestamp": list(c.region), "sentence": c.text, "score": c.score, "label": label,
                         **({"azimuth": c.extra["azimuth"]} if "azimuth" in c.extra else {})})
        pred[s.sample_id] = rows
        if ev is None:
            continue
        spans = ev.events.tensor.tolist()
        gt[s.sample_id] = {
            "timestamps": spans,
            "sentences": [ev.captions[i][0] if i < len(ev.captions) and ev.captions[i] else "" for i in range(len(spans))],
            "labels": [names[k] if 0 <= k < len(names) else None for k in ev.labels.tolist()],  # -1: unlabelled
            "azimuth": ev.azimuth.tolist() if ev.azimuth is not None else None,
        }
    return pred, gt


def direction_errors(pred: dict, gt: dict, min_tiou: float = 0.5) -> tuple[list[float], int, int]:
    """Absolute azimuth errors (degrees, wrapped to [0, 180]) of predicted events matched one to
    one to ground-truth events (Hungarian on tIoU, pairs with tIoU >= ``min_tiou``); also the
    number of matched pairs whose class is right and the number of ground-truth events."""
    from scipy.optimize import linear_sum_assignment

    from dense3d.eval.events import tiou

    errors, right, total = [], 0, 0
    for vid, g in gt.items():
        spans = g["timestamps"]
        total += len(spans)
        p = [e for e in pred.get(vid, []) if "azimuth" in e]
        if not spans or not p or g.get("azimuth") is None:
            continue
        iou = np.array([[tiou(e["timestamp"], s) for s in spans] for e in p])  # (P, G)
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols):
            if iou[r, c] < min_tiou:
                continue
            d = math.degrees(abs(p[r]["azimuth"] - g["azimuth"][c])) % 360.0
            errors.append(min(d, 360.0 - d))
            right += int(p[r].get("label") == g["labels"][c])
    return errors, right, total


def _event_metrics(pred: dict, gt: dict, captions: bool, gt_regions: bool = False) -> dict:
    """The dense-events metrics of ``pred`` against ``gt`` (module docstring); ``gt_regions``: the
    predictions are the ground-truth spans themselves, whose proposal precision / recall and class
    accuracy are 100 by construction and are left out."""
    from dense3d.eval import events
    from dense3d.utils.progress import progress_bar

    gts = [{v: {"timestamps": g["timestamps"], "sentences": g["sentences"]} for v, g in gt.items()}]
    out: dict = {}
    if not gt_regions:
        for t in (0.3, 0.5, 0.7):
            p, r = events.proposal_precision_recall(pred, gts, t)
            out[f"Precision@{t:g}"], out[f"Recall@{t:g}"] = 100.0 * p, 100.0 * r
    errs, right, total = direction_errors(pred, gt)
    out["matched@0.5"] = len(errs)
    out["gt_events"] = total
    out["direction_error_median_deg"] = float(np.median(errs)) if errs else float("nan")
    out["direction_error_mean_deg"] = float(np.mean(errs)) if errs else float("nan")
    if not gt_regions:
        out["class_accuracy_matched"] = 100.0 * right / len(errs) if errs else float("nan")
    if captions:
        with progress_bar("dense events captions", unit="stages") as bar:
            out["captions"] = events.evaluate(pred, gts, progress=bar)
        if gt_regions:  # densevid_eval's proposal precision / recall ride along with its captions: 100 here too
            out["captions"] = {k: v for k, v in out["captions"].items() if not k.startswith(("Precision", "Recall"))}
    return out


def box_metrics(pred: dict, gt: dict, axis_aligned: bool, captions: bool, label: str = "") -> dict:
    """Detection AP (VOC for axis-aligned boxes, else nuScenes centre distance) and, with
    ``captions``, Scan2Cap (axis-aligned) or TOD3Cap corrected + compatible; one progress bar
    each, titled with ``label`` (e.g. "GT boxes")."""
    from dense3d.eval import detection, scan2cap, tod3cap
    from dense3d.eval.caption_metrics import CaptionScorer
    from dense3d.eval.formats import parse_box_predictions, parse_object_gt
    from dense3d.utils.progress import progress_bar

    suffix = f" ({label})" if label else ""
    p = parse_box_predictions("predictions.json", pred, need_caption=captions, need_score=True)
    g = parse_object_gt("ground_truth.json", gt)
    out = {}
    if captions:
        with CaptionScorer() as scorer:
            if axis_aligned:
                with progress_bar(f"Scan2Cap{suffix}", unit="stages") as bar:
                    out["scan2cap"] = scan2cap.evaluate(p, g, scorer=scorer, progress=bar)
            else:
                for mode in ("corrected", "compatible"):
                    with progress_bar(f"TOD3Cap {mode}{suffix}", unit="stages") as bar:
                        out[f"tod3cap_{mode}"] = tod3cap.evaluate(p, g, mode=mode, scorer=scorer, progress=bar)
    with progress_bar(f"detection AP{suffix}", unit="stages") as bar:
        out["detection"] = detection.evaluate_voc(p, g, progress=bar) if axis_aligned else detection.evaluate_nuscenes(p, g, progress=bar)
    return out


def evaluate_run(run: str | Path, split: str = "val", regions: str = "proposals", out_dir: str | Path | None = None,
                 limit: int | None = None, batch_size: int = 2, overrides: Sequence[str] = ()) -> dict:
    """Describe the split with the run's model and score it (see the module docstring); writes
    predictions, ground truth, metrics (and curves) under ``out_dir`` (default ``RUN/eval_<split>``).
    ``limit``: only the first ``limit`` samples (an integer >= 1; None, or a limit above the
    split's size: every sample, the latter said on stderr; ``metrics.json`` records both
    ``limit`` and the ``samples`` evaluated).
    ``overrides``: ``key=value`` changes of the run's config (see ``dense3d.api.load``)."""
    import dense3d.api as api
    from dense3d.utils.progress import progress_bar

    run = Path(run)
    if limit is not None:
        # numpy's integers (a count taken from an array) are integers too; a bool is an int to
        # Python but no count (limit=True would evaluate one sample)
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
            raise ConfigError("evaluate_run", "limit", "an integer >= 1 (or None: every sample)", got=repr(limit))
        limit = int(limit)  # metrics.json is JSON: a plain int
    run_dir = api.find_run(run)[0].parent  # the folder of config.yaml, also for a checkpoint folder
    out_dir = Path(out_dir) if out_dir is not None else run_dir / f"eval_{split}"
    check_output_path(out_dir, "dense3d eval --checkpoint", folder=True)  # before any captioning
    loaded = api.load(run, regions=regions, overrides=overrides)
    data = loaded.dataset(split)
    n = len(data) if limit is None else min(limit, len(data))
    if limit is not None and limit > len(data):
        # not an error ("at most limit samples"), but said, so nobody reads the scores as a subset's
        print(f"dense3d eval: limit={limit} is more than the {len(data)} samples of split '{split}': evaluating all of them",
              file=sys.stderr)
    samples = [data[i] for i in range(n)]
    with progress_bar(f"describing {split} ({regions})", total=n, unit="samples") as bar:
        captions = loaded.caption_many(samples, batch_size=batch_size, progress=bar)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    has_text = any(c.text for caps in captions for c in caps)
    metrics: dict = {"run": str(run), "checkpoint": str(loaded.checkpoint), "step": loaded.step, "split": split,
                     "regions": regions, "limit": limit, "samples": n, "overrides": list(overrides)}
    preds: dict = {}
    truth: dict = {}
    if getattr(model, "box_detector", None) is not None:
        preds["boxes"], truth["boxes"] = box_records(samples, captions)
        metrics["boxes"] = box_metrics(preds["boxes"], truth["boxes"], bool(model.box_detector.axis_aligned), has_text)
    if getattr(model, "event_detector", None) is not None:
        preds["events"], truth["events"] = event_records(samples, captions)
        metrics["events"] = _event_metrics(preds["events"], truth["events"], has_text, gt_regions=regions == "gt")
    if "events" in preds:  # ActivityNet's prediction format, which `dense3d eval events --pred` reads
        preds["events"] = {"results": preds["events"]}
    for kind in preds:
        atomic_write_json(out_dir / f"predictions_{kind}.json", preds[kind])
        atomic_write_json(out_dir / f"ground_truth_{kind}.json", truth[kind])
    for kind in {"boxes", "events"} - set(preds):  # an earlier evaluation of another run into this folder: not this run's files
        for stale in (out_dir / f"predictions_{kind}.json", out_dir / f"ground_truth_{kind}.json"):
            stale.unlink(missing_ok=True)
    csvs = sorted(run_dir.rglob("metrics.csv"))
    if csvs:
        from dense3d.engine.report import plot_curves, read_metrics_csv

        metrics["curves"] = str(plot_curves(read_metrics_csv(csvs[-1]), out_dir / "curves.png", run_dir.name))
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics
