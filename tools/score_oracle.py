"""Score a synthetic oracle (``oracles/<split>/*.json`` of a generated set) on exactly the scenes
of an evaluation folder written by ``dense3d eval --checkpoint`` (its ``ground_truth_boxes.json``),
with the same protocols, so a model and the oracle are compared on the same objects.

    python tools/score_oracle.py data/synthetic/big/outdoor/oracles/val/context_free.json outputs/RUN/eval_val

``--on-predictions`` scores the oracle on the evaluation's *predicted* boxes instead
(``predictions_boxes.json`` of ``dense3d eval --regions proposals``): each predicted box keeps
its place, score and label and takes the oracle caption of the ground-truth box whose centre is
nearest to its own, so missed, displaced and duplicate boxes cost the oracle what they cost the
model. It is the reference for a captioner on detected boxes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dense3d.engine.evaluate import box_metrics
from dense3d.errors import PredictionFormatError, exit_status
from dense3d.eval.formats import read_json
from dense3d.utils.io import atomic_write_json


def _centre_dist2(a: list, b: list) -> float:
    """Squared distance between the centres of two boxes ``[x, y, z, ...]``."""
    return sum((u - v) ** 2 for u, v in zip(a[:3], b[:3]))


def _on_predictions(oracle: dict, pred_path: Path) -> dict:
    """The evaluation's predicted boxes, each captioned with the oracle caption of the ground-truth
    box nearest to it (centre distance): ``{scene: [{box, caption, score, label}]}``."""
    predicted = read_json(pred_path)
    if not isinstance(predicted, dict):
        raise PredictionFormatError(pred_path, "(top level)", "{scene: [{box, caption, ...}]}", got=type(predicted).__name__)
    out = {}
    for scene, rows in predicted.items():
        truth = oracle.get(scene, [])
        out[scene] = []
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or len(r.get("box") or []) < 3:
                raise PredictionFormatError(pred_path, f"{scene}[{i}].box", "[x, y, z, dx, dy, dz, yaw]", got=r)
            if not truth:  # nothing to describe: the box is a false positive either way
                continue
            near = min(truth, key=lambda t: _centre_dist2(t["box"], r["box"]))
            out[scene].append({**r, "caption": near["caption"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("oracle", help="oracle predictions (3D box format)")
    p.add_argument("eval_dir", help="folder with ground_truth_boxes.json")
    p.add_argument("--axis-aligned", action="store_true", help="indoor boxes (VOC AP, Scan2Cap)")
    p.add_argument("--out", default=None, help="metrics JSON (default: EVAL_DIR/oracle_<name>.json)")
    p.add_argument("--on-predictions", action="store_true",
                   help="caption the evaluation's predicted boxes (each with its nearest ground-truth box's oracle caption)")
    a = p.parse_args(argv)
    gt_path = Path(a.eval_dir) / "ground_truth_boxes.json"
    gt, oracle = read_json(gt_path), read_json(a.oracle)
    for path, d in ((gt_path, gt), (a.oracle, oracle)):
        if not isinstance(d, dict):
            raise PredictionFormatError(path, "(top level)", "{scene: [{box, caption, ...}]}", got=type(d).__name__)
    # the oracle describes every generated object; keep those the evaluation's ground truth has
    # (the data config's range filter drops some), matched by box centre
    pred = {}
    for scene, objs in gt.items():
        pred[scene] = [r for r in oracle.get(scene, []) if any(_centre_dist2(r["box"], o["box"]) < 1e-4 for o in objs)]
    if a.on_predictions:
        pred = _on_predictions(pred, Path(a.eval_dir) / "predictions_boxes.json")
    metrics = box_metrics(pred, gt, a.axis_aligned, captions=True)
    name = f"oracle_{Path(a.oracle).stem}" + ("_on_predictions" if a.on_predictions else "")
    out = a.out or Path(a.eval_dir) / f"{name}.json"
    atomic_write_json(out, metrics)
    for k in ("tod3cap_corrected", "tod3cap_compatible", "scan2cap"):
        if k in metrics:
            print(k, {m: round(v, 2) for m, v in metrics[k].items() if isinstance(v, float) and "@0.25" in m})
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/score_oracle.py"))
