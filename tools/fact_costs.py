"""What a model's wrong facts cost in CIDEr, fact by fact, and what its wording costs.

Each caption of an evaluation folder written by ``dense3d eval --checkpoint`` on a synthetic set
is read back fact by fact (as ``tools/caption_facts.py`` reads it) and its object's fixed-phrasing
oracle caption is written again with some of those facts in place of the true ones:

* ``oracle``: every fact true (the fixed oracle itself, on the evaluation's boxes);
* one row per fact (outdoors colour, class, motion, direction, distance, relation, targets;
  indoors colour, class, place, relation, targets): that fact as the caption states it, the rest
  true. ``relation`` takes the caption's relation type with its targets, ``targets`` only the
  caption's targets, where it names as many as the true relation has;
* ``all facts``: every fact as the caption states it, in the fixed phrasing;
* ``model``: the captions as the model wrote them.

Each row is scored with the evaluation's own protocol (TOD3Cap corrected outdoors, Scan2Cap for
indoor sets) on the evaluation's ground truth. A fact's *cost* is the oracle's CIDEr minus its
row's; ``model`` minus ``all facts`` is what the model's wording gains (or loses, below zero)
against the fixed phrasing with the same facts. A fact the caption does not state stays out of
the phrase where the grammar allows it (the outdoor motion word, as the annotator's second
template leaves it out) and keeps its true value otherwise (counted under ``unstated``, so its
cost is a lower bound). Predictions matched to no object (one-to-one by centre distance within
``--max-dist``: false detections, second boxes on an object) keep their caption in every row, so
on detected boxes the ``oracle`` row is not ``tools/score_oracle.py --on-predictions``.

    python tools/fact_costs.py data/synthetic/big/outdoor outputs/RUN/eval_gt40 [--split val]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dense3d.data.synthetic.facts import FACT_FIELDS, FIXED_CAPTION, PARSE_CAPTION, read_captioned_objects
from dense3d.errors import PredictionFormatError, exit_status
from dense3d.eval.formats import parse_box_predictions, parse_object_gt, read_json
from dense3d.utils.argtypes import positive_float
from dense3d.utils.io import atomic_write_json, check_output_path

OMITTABLE = {"outdoor": {"motion"}, "indoor": set()}  # facts the fixed phrasing can leave unsaid


def stated_facts(true, said: dict, use: set[str], kind: str, unstated: dict[str, int] | None = None):
    """``true`` (an OutdoorFacts / IndoorFacts) with the facts named in ``use`` as the caption
    states them (``said``: its parse). An unstated fact is left out where ``OMITTABLE`` allows,
    else kept true and counted in ``unstated``."""
    new = {}
    for f in use - {"targets"}:
        if said[f] is not None:
            new[f] = said[f]
        elif f in OMITTABLE[kind]:
            new[f] = None
        elif unstated is not None:
            unstated[f] += 1
    if "relation" in new:  # a relation type goes with the targets the caption names for it
        new["targets"] = tuple(said["targets"])
    elif "targets" in use and said["targets"] is not None and len(said["targets"]) == len(true.targets):
        new["targets"] = tuple(said["targets"])
    return dataclasses.replace(true, **new)


def variants(pairs: list[tuple[dict, dict]], kind: str) -> tuple[dict[str, dict[int, str]], dict[str, int]]:
    """``{row: {id(prediction): caption}}`` for the oracle, each fact and all facts, and the
    unstated counts of the all-facts row. Keyed by the prediction rows' ``id``: the rows live in
    the caller's predictions for as long as the captions are used, so no two share one."""
    fields = FACT_FIELDS[kind]
    rows = {"oracle": set(), **{f: {f} for f in fields}, "all facts": set(fields)}
    unstated = dict.fromkeys(fields, 0)
    out = {name: {} for name in rows}
    for obj, pred in pairs:
        said = PARSE_CAPTION[kind](pred["caption"])
        for name, use in rows.items():
            facts = stated_facts(obj["facts"], said, use, kind, unstated if name == "all facts" else None)
            out[name][id(pred)] = FIXED_CAPTION[kind](facts)
    return out, {f: n for f, n in unstated.items() if n}


def score(pred: dict, gt, kind: str, scorer) -> float:
    """CIDEr F1 at IoU 0.25 of ``pred`` (``{scene: [rows]}``) under the set's protocol."""
    from dense3d.eval import scan2cap, tod3cap

    p = parse_box_predictions("predictions", pred, need_caption=True, need_score=True)
    if kind == "indoor":
        return scan2cap.evaluate(p, gt, scorer=scorer)["CIDEr-F1@0.25"]
    return tod3cap.evaluate(p, gt, mode="corrected", scorer=scorer)["CIDEr-F1@0.25"]


def main(argv: list[str] | None = None) -> int:
    from dense3d.eval.caption_metrics import CaptionScorer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="the generated synthetic outdoor or indoor set the run was evaluated on")
    p.add_argument("eval_dir", type=Path, help="folder with predictions_boxes.json and ground_truth_boxes.json (dense3d eval)")
    p.add_argument("--split", default="val")
    p.add_argument("--max-dist", type=positive_float, default=None,
                   help="metres between a prediction's and an object's centre (default: 2 outdoors, 0.5 indoors)")
    p.add_argument("--out", type=Path, default=None, help="JSON table (default: EVAL_DIR/fact_costs.json)")
    a = p.parse_args(argv)
    out = check_output_path(a.out or a.eval_dir / "fact_costs.json", "tools/fact_costs.py")  # before any work
    kind, _, pred, pairs = read_captioned_objects(a.root, a.eval_dir, a.split, a.max_dist)
    parse_box_predictions(a.eval_dir / "predictions_boxes.json", pred, need_caption=True, need_score=True)  # as scored
    gt_path = a.eval_dir / "ground_truth_boxes.json"
    if not gt_path.is_file():
        raise PredictionFormatError(gt_path, "file", "ground truth written by dense3d eval --checkpoint")
    gt = parse_object_gt(gt_path, read_json(gt_path))
    captions, unstated = variants(pairs, kind)
    n_pred = sum(len(rows) for rows in pred.values())
    print(f"{len(pairs)} of {n_pred} predictions matched to objects; unstated facts kept true: {unstated or 'none'}")
    table = {}
    with CaptionScorer() as scorer:
        for name, by_pred in [*captions.items(), ("model", {})]:
            rewritten = {s: [{**r, "caption": by_pred.get(id(r), r["caption"])} for r in rows] for s, rows in pred.items()}
            table[name] = score(rewritten, gt, kind, scorer)
    oracle = table["oracle"]
    print(f"{'row':<12} {'CIDEr':>8} {'cost':>8}")
    for name, cider in table.items():
        print(f"{name:<12} {cider:>8.1f} {oracle - cider:>8.1f}")
    print(f"wording: the model's own against all its facts in the fixed phrasing: {table['model'] - table['all facts']:+.1f}")
    atomic_write_json(out, {"protocol": "Scan2Cap" if kind == "indoor" else "TOD3Cap corrected", "metric": "CIDEr-F1@0.25",
                            "matched": len(pairs), "predictions": n_pred, "unstated": unstated, "cider": table,
                            "cost": {k: oracle - v for k, v in table.items()},
                            "wording": table["model"] - table["all facts"]})
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/fact_costs.py"))
