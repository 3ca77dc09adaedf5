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

On an indoor set (ScanRefer-style rooms) the coins are "the X closest to the Y" (60 % where the
object is the nearest of its class to a neighbour) before "between" (60 %, 80 % with a look-alike),
else "next to" the nearest object; the likelier side is "closest to" wherever it qualifies, then
"between". The indoor fixed oracle is written as the generator writes it (first template, first
wording, the object's place).

``--guess-motion`` (outdoor sets) also replaces the motion word, the other fact no sensor shows (one LiDAR sweep
and one camera frame show no speed), with its best guess from what they do show: the commonest
word in the training split for the object's class and lateral place (its distance from the ego
car's lane axis, in 1 m bins; a parked car stands at the kerb, a moving one in a lane). The
result is what a captioner that reads every visible fact right can score.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from dense3d.data.synthetic.annotations import ANNOTATIONS_FILE, load_synthetic_annotations
from dense3d.data.synthetic.facts import fixed_caption, load_outdoor_facts, set_kind
from dense3d.data.synthetic.grammar import (
    INDOOR_MAX_DIST,
    INDOOR_NEXT_TO,
    OUTDOOR_MAX_DIST,
    OUTDOOR_NEXT_TO,
    FirstParaphrase,
    choose_relation,
    indoor_descriptions,
)
from dense3d.errors import AnnotationError, ConfigError, exit_status
from dense3d.utils.io import atomic_write_json, check_output_path

class _Likeliest:
    """Stands in for the annotator's random generator: every ``random() < p`` coin comes up
    with its likelier side (p >= 0.6 wherever choose_relation flips one)."""

    def random(self) -> float:
        return 0.0


def _scenes(root: Path, split: str) -> list[dict]:
    ann_file = root / ANNOTATIONS_FILE
    scenes = load_synthetic_annotations(root, "outdoor")["scenes"]
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene["objects"]):
            if "ego_xy" not in obj:
                raise AnnotationError(ann_file, f"scenes[{i}].objects[{j}].ego_xy", "present (generator version 2)", got="missing")
    return [s for s in scenes if s["split"] == split]


def _place(obj: dict) -> tuple[str, int]:
    """What the sensors show of where an object stands: its class and lateral 1 m bin."""
    return obj["label"], int(abs(obj["ego_xy"][1]))


def motion_guesses(root: Path) -> tuple[dict, dict]:
    """The commonest motion word of the training split per (class, lateral bin), and per class
    (for bins the training split lacks)."""
    objects = load_outdoor_facts(root, "train")
    by_place, by_class = defaultdict(Counter), defaultdict(Counter)
    n = 0
    for scene in _scenes(root, "train"):
        for o in scene["objects"]:
            motion = objects[n]["facts"].motion
            n += 1
            by_place[_place(o)][motion] += 1
            by_class[o["label"]][motion] += 1
    return ({k: c.most_common(1)[0][0] for k, c in by_place.items()},
            {k: c.most_common(1)[0][0] for k, c in by_class.items()})


def likeliest_relations(root: Path, split: str, guess_motion: bool = False) -> tuple[dict, int, int]:
    """({scene: [{box, caption, score, label}]}, objects, objects whose facts changed) for ``split``."""
    objects = load_outdoor_facts(root, split)  # checks the set; same scene and object order as below
    scenes = _scenes(root, split)
    by_place, by_class = motion_guesses(root) if guess_motion else ({}, {})
    out, changed, n = {}, 0, 0
    for scene in scenes:
        objs = scene["objects"]
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
            if guess_motion:
                guess = by_place.get(_place(o)) or by_class.get(o["label"]) or facts.motion
                facts = dataclasses.replace(facts, motion=guess)
            changed += facts != want["facts"]
            rows.append({"box": o["box"], "caption": fixed_caption(facts), "score": 1.0, "label": o["label"]})
        out[scene["scene_id"]] = rows
    return out, n, changed


def likeliest_indoor_relations(root: Path, split: str) -> tuple[dict, int, int]:
    """``likeliest_relations`` for an indoor set: ({scene: [{box, caption, score, label}]}, objects,
    objects whose relation changed)."""
    out, changed, n = {}, 0, 0
    for scene in load_synthetic_annotations(root, "indoor")["scenes"]:
        if scene["split"] != split:
            continue
        objs = scene["objects"]
        xy = np.array([o["box"][:2] for o in objs], float)  # (N, 2) box centres seen from above, as annotated
        keys = [(o["colour"], o["label"]) for o in objs]
        rows = []
        for i, o in enumerate(objs):
            n += 1
            rel = choose_relation(i, xy, keys, _Likeliest(), indoor=True, max_dist=INDOOR_MAX_DIST,
                                  next_to=INDOOR_NEXT_TO)
            changed += (rel["type"], list(rel["targets"])) != (o["relation"], list(o["relation_targets"]))
            caption = indoor_descriptions(i, keys, o["place"], rel, FirstParaphrase(), n=1)[0][0]
            rows.append({"box": o["box"], "caption": caption, "score": 1.0, "label": o["label"]})
        out[scene["scene_id"]] = rows
    return out, n, changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a generated synthetic outdoor or indoor set")
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, required=True, help="oracle predictions to write (3D box format)")
    p.add_argument("--guess-motion", action="store_true",
                   help="also replace the motion word with its best guess from class and lateral place")
    a = p.parse_args(argv)
    check_output_path(a.out, "tools/relation_oracle.py")  # before any work
    kind = set_kind(a.root)
    indoor = kind == "indoor"
    splits = sorted({s["split"] for s in load_synthetic_annotations(a.root, kind)["scenes"]})
    if a.split not in splits:  # else an empty oracle
        raise ConfigError("tools/relation_oracle.py", "--split",
                          f"a split of {a.root / ANNOTATIONS_FILE} ({', '.join(splits) or 'it has no scenes'})", got=a.split)
    if indoor and a.guess_motion:
        raise AnnotationError(a.root / "meta.json", "kind", "an outdoor set for --guess-motion (indoor objects have no motion)",
                              got="indoor")
    if indoor:
        oracle, n, changed = likeliest_indoor_relations(a.root, a.split)
    else:
        oracle, n, changed = likeliest_relations(a.root, a.split, a.guess_motion)
    atomic_write_json(a.out, oracle)
    what = "relations and motion words" if a.guess_motion else "relations"
    print(f"{n} objects, {changed} ({100 * changed / max(n, 1):.1f} %) differ from the annotator's in their {what} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/relation_oracle.py"))
