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
from dense3d.eval.formats import parse_box_predictions, parse_object_gt, read_json, unknown_scenes
from dense3d.utils.io import atomic_write_json, check_output_path


def _centre_dist2(a, b) -> float:
    """Squared distance between the centres of two boxes ``[x, y, z, ...]``."""
    return sum((float(u) - float(v)) ** 2 for u, v in zip(a[:3], b[:3]))


def _with_box(row: dict, params) -> dict:
    """``row`` with a ``box`` (a ``corners`` record gets its axis-aligned box, as the evaluation reads it)."""
    if "box" in row:
        return row
    return {**{k: v for k, v in row.items() if k != "corners"}, "box": [float(x) for x in params]}


def _on_predictions(oracle: dict, pred_path: Path) -> dict:
    """The evaluation's predicted boxes, each captioned with the oracle caption of the ground-truth
    box nearest to it (centre distance): ``{scene: [{box, caption, score, label}]}``."""
    raw = read_json(pred_path)
    for scene, rows in (raw.items() if isinstance(raw, dict) else ()):
        for i, r in enumerate(rows if isinstance(rows, list) else ()):
            if isinstance(r, dict) and "box" not in r and "corners" not in r:
                raise PredictionFormatError(pred_path, f"{scene}[{i}].box", "[x, y, z, dx, dy, dz, yaw]", got=r)
    parsed = parse_box_predictions(pred_path, raw, need_caption=False)  # the checks dense3d eval makes
    out = {}
    for scene, rows in raw.items():
        truth = oracle.get(scene, [])
        out[scene] = []
        for r, p in zip(rows, parsed[str(scene)]):
            if not truth:  # nothing to describe: the box is a false positive either way
                continue
            near = min(truth, key=lambda t: _centre_dist2(t["box"], p.box.params))
            out[scene].append({**_with_box(r, p.box.params), "caption": near["caption"]})
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
    name = f"oracle_{Path(a.oracle).stem}" + ("_on_predictions" if a.on_predictions else "")
    out = check_output_path(a.out or Path(a.eval_dir) / f"{name}.json", "tools/score_oracle.py")
    gt_path = Path(a.eval_dir) / "ground_truth_boxes.json"
    gt_raw, oracle_raw = read_json(gt_path), read_json(a.oracle)
    # the same parsers (and one-line errors) as dense3d eval: boxes, sizes, captions, scores
    gt = parse_object_gt(gt_path, gt_raw)
    oracle = parse_box_predictions(a.oracle, oracle_raw, need_caption=True, need_score=True)
    unknown = unknown_scenes(oracle, gt)
    if oracle and len(unknown) == len(oracle):
        raise PredictionFormatError(a.oracle, unknown[0], f"scene ids of {gt_path} (the oracle of the evaluated split)",
                                    got=f"{len(unknown)} scenes, none in the ground truth")
    # the oracle describes every generated object; keep those the evaluation's ground truth has
    # (the data config's range filter drops some), matched by box centre
    pred = {}
    for scene, objs in gt.items():
        rows = zip(oracle_raw.get(scene, []), oracle.get(scene, []))
        pred[scene] = [_with_box(r, q.box.params) for r, q in rows
                       if any(_centre_dist2(q.box.params, o.box.params) < 1e-4 for o in objs)]
    if a.on_predictions:
        pred = _on_predictions(pred, Path(a.eval_dir) / "predictions_boxes.json")
    metrics = box_metrics(pred, gt_raw, a.axis_aligned, captions=True)
    metrics["unknown_scenes"] = unknown  # as dense3d eval reports them: listed, not scored
    atomic_write_json(out, metrics)
    for k in ("tod3cap_corrected", "tod3cap_compatible", "scan2cap"):
        if k in metrics:
            print(k, {m: round(v, 2) for m, v in metrics[k].items() if isinstance(v, float) and "@0.25" in m})
    if unknown:
        print(f"warning: {len(unknown)} oracle scenes are not in the ground truth of {a.eval_dir} "
              f"(unknown_scenes in the output; not scored)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/score_oracle.py"))
