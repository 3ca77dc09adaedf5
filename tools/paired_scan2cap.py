"""Is run B's caption score better than run A's, or noise? Object by object, on the same GT.

Both folders are written by ``dense3d eval --checkpoint`` on the same split and boxes
(``predictions_boxes.json``, ``ground_truth_boxes.json``). Each GT object's share of
``{metric}-R@{iou}`` (its matched caption's score, 0 when unmatched or under the IoU) is taken
in both runs; prints both recalls, B - A with the standard error of the per-object differences,
and how many objects each run does better. The protocol is the one the folders were scored with
(``--protocol auto``: TOD3Cap's corrected one where ``metrics.json`` has it, else Scan2Cap's):

* ``scan2cap`` (:func:`dense3d.eval.scan2cap.paired_difference`): axis-aligned boxes, captions
  tokenised and wrapped in "sos ... eos", every object with a description. On ground-truth boxes
  (one prediction per scored object) recall = precision = F1, so B - A is the difference of the
  F1 that ``dense3d eval`` prints.
* ``tod3cap`` (:func:`dense3d.eval.tod3cap.paired_difference`): the corrected protocol, the
  benchmark's box filter (class ranges, boxes without points), rotated 3D IoU, TOD3Cap's cleaning
  (only standalone "," and "." dropped: "away," is a word of its own). The recall is the
  ``CIDEr-R@0.25`` ``dense3d eval`` prints, and two runs on the same boxes have F1 = recall times
  the same factor, so B - A is the F1's difference divided by it.

    python tools/paired_scan2cap.py outputs/RUN_A/eval_gt40 outputs/RUN_B/eval_gt40 [--iou 0.25] [--metric CIDEr] [--protocol auto]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dense3d.errors import PredictionFormatError, exit_status
from dense3d.eval.formats import parse_box_predictions, parse_object_gt, read_json
from dense3d.eval import tod3cap
from dense3d.eval.scan2cap import METRICS, paired_difference
from dense3d.eval.scanrefer import is_scored
from dense3d.utils.argtypes import unit_fraction


def _read(folder: Path, name: str):
    if not folder.is_dir():
        raise PredictionFormatError(folder, "<folder>", "an evaluation folder written by dense3d eval --checkpoint",
                                    got="not a folder")
    path = folder / name
    return path, read_json(path)  # a missing or malformed file: one-line PredictionFormatError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("eval_a", type=Path, help="run A's evaluation folder")
    p.add_argument("eval_b", type=Path, help="run B's evaluation folder (the same split and boxes)")
    p.add_argument("--iou", type=unit_fraction, default=0.25)
    p.add_argument("--metric", choices=METRICS, default="CIDEr")
    p.add_argument("--protocol", choices=("auto", "scan2cap", "tod3cap"), default="auto",
                   help="auto (default): tod3cap where the folders' metrics.json have TOD3Cap's corrected scores, "
                        "else scan2cap (folders scored with different protocols are refused)")
    p.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    a = p.parse_args(argv)
    if a.out is not None:
        from dense3d.utils.io import check_output_path

        check_output_path(a.out, "tools/paired_scan2cap.py")  # before the scoring
    gt_path, gt_a = _read(a.eval_a, "ground_truth_boxes.json")
    gt_b_path, gt_b = _read(a.eval_b, "ground_truth_boxes.json")
    if gt_a != gt_b:
        raise PredictionFormatError(gt_b_path, "<file>", f"the ground truth of {gt_path} (the same split and scenes)",
                                    got="different objects")
    gt = parse_object_gt(gt_path, gt_a)
    pred_files = [_read(a.eval_a, "predictions_boxes.json"), _read(a.eval_b, "predictions_boxes.json")]
    preds = [parse_box_predictions(path, data, need_score=True) for path, data in pred_files]
    protocol = a.protocol
    if protocol == "auto":
        found = []
        for folder in (a.eval_a, a.eval_b):
            metrics_path, metrics = _read(folder, "metrics.json")
            boxes = metrics.get("boxes") if isinstance(metrics, dict) else None
            if not isinstance(boxes, dict):
                raise PredictionFormatError(metrics_path, "boxes", "the box scores dense3d eval writes (or give --protocol)",
                                            got="none")
            found.append((metrics_path, "tod3cap" if "tod3cap_corrected" in boxes else "scan2cap"))
        if found[0][1] != found[1][1]:
            raise PredictionFormatError(found[1][0], "boxes", f"scores of the same protocol as {found[0][0]} "
                                        f"({found[0][1]}; or give --protocol)", got=found[1][1])
        protocol = found[0][1]
    if protocol == "tod3cap":
        scored = tod3cap.filter_boxes({}, gt, str(gt_path))[1]
        if sum(bool(o.references) for objs in scored.values() for o in objs) < 2:
            raise PredictionFormatError(gt_path, "caption", "at least 2 boxes with a caption in the benchmark's ranges "
                                        "(a standard error)")
        r = tod3cap.paired_difference(preds[0], preds[1], gt, k=a.iou, metric=a.metric,
                                      sources=(str(pred_files[0][0]), str(pred_files[1][0])))
    else:
        if sum(is_scored(o) for objs in gt.values() for o in objs) < 2:
            raise PredictionFormatError(gt_path, "descriptions", "at least 2 objects with descriptions (a standard error)")
        r = paired_difference(preds[0], preds[1], gt, k=a.iou, metric=a.metric)
    name = f"{protocol} {a.metric}-R@{a.iou:g}"
    spread = f"SE {r['SE']:.1f}, {r['B-A'] / r['SE']:+.1f} SE" if r["SE"] > 0 else "SE 0: the runs score every object the same"
    print(f"{r['objects']} objects, {name}: A {r['A']:.1f}  B {r['B']:.1f}  B - A {r['B-A']:+.1f} ({spread})")
    print(f"B better for {r['B better']} objects, A better for {r['A better']}")
    if a.out is not None:
        from dense3d.utils.io import atomic_write_json

        atomic_write_json(a.out, {"metric": name, "eval_a": str(a.eval_a), "eval_b": str(a.eval_b), **r})
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/paired_scan2cap.py"))
