"""The fixed-phrasing oracle with each relation chosen as a captioner that sees the scene can best
choose it: what part of the fixed oracle's score no sensor can earn.

The synthetic annotator says "between the A and the B" for 60 % of the objects that lie between
two others (80 % where a same-looking object is in the scene) and relates the rest to their
nearest object (``grammar.choose_relation``): a coin no sensor shows. The likeliest choice is
"between" whenever a pair qualifies. This tool writes the fixed oracle (``oracles/<split>/fixed.json``'s
format and wording, ``facts.fixed_caption``) with that choice in place of the coin, prints how
many relations change, and ``tools/score_oracle.py`` scores it on a model's evaluation scenes:

    python tools/relation_oracle.py data/synthetic/big/outdoor --out /tmp/likeliest.json
    python tools/score_oracle.py /tmp/likeliest.json outputs/RUN/eval_gt40
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from dense3d.data.synthetic.facts import fixed_caption, load_outdoor_facts
from dense3d.data.synthetic.grammar import OUTDOOR_MAX_DIST, OUTDOOR_NEXT_TO, choose_relation
from dense3d.errors import AnnotationError, exit_status
from dense3d.utils.io import atomic_write_json

class _Likeliest:
    """Stands in for the annotator's random generator: every ``random() < p`` coin comes up
    with its likelier side (p >= 0.6 wherever choose_relation flips one)."""

    def random(self) -> float:
        return 0.0


def likeliest_relations(root: Path, split: str) -> tuple[dict, int, int]:
    """({scene: [{box, caption, score, label}]}, objects, relations changed) for ``split``."""
    ann_file = root / "synthetic_annotations.json"
    objects = load_outdoor_facts(root, split)  # checks the set; same scene and object order as below
    scenes = [s for s in json.loads(ann_file.read_text())["scenes"] if s["split"] == split]
    out, changed, n = {}, 0, 0
    for scene in scenes:
        objs = scene["objects"]
        if any("ego_xy" not in o for o in objs):
            raise AnnotationError(ann_file, f"scenes[{scene['scene_id']}].objects[].ego_xy", "present (generator version 2)")
        xy = np.array([o["ego_xy"] for o in objs], float)  # (N, 2) ego frame, as the annotator saw them
        keys = [(o["colour"], o["label"]) for o in objs]
        rows = []
        for i, o in enumerate(objs):
            want = objects[n]
            n += 1
            rel = choose_relation(i, xy, keys, _Likeliest(), indoor=False, max_dist=OUTDOOR_MAX_DIST,
                                  next_to=OUTDOOR_NEXT_TO)
            targets = tuple(keys[j] for j in rel["targets"])
            facts = dataclasses.replace(want["facts"], relation=rel["type"], targets=targets)
            changed += facts != want["facts"]
            rows.append({"box": o["box"], "caption": fixed_caption(facts), "score": 1.0, "label": o["label"]})
        out[scene["scene_id"]] = rows
    return out, n, changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a generated synthetic outdoor set")
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, required=True, help="oracle predictions to write (3D box format)")
    a = p.parse_args(argv)
    oracle, n, changed = likeliest_relations(a.root, a.split)
    atomic_write_json(a.out, oracle)
    print(f"{n} objects, {changed} relations ({100 * changed / max(n, 1):.1f} %) differ from the annotator's -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/relation_oracle.py"))
