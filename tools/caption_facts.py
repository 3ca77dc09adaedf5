"""Which facts does a model get right? Its captions of synthetic scenes, read back fact by fact.

Each caption of an evaluation folder written by ``dense3d eval --checkpoint`` (its
``predictions_boxes.json``) is parsed with the synthetic grammar
(:func:`dense3d.data.synthetic.facts.parse_outdoor_caption`, or ``parse_indoor_caption`` for an
indoor set) and compared with the facts of the object it describes (matched one-to-one by BEV
centre distance, Hungarian, within ``--max-dist`` metres): outdoors colour, class, motion, ego
direction, distance bin, relation type and relation target(s); indoors colour, class, place in
the room, relation type and target(s). Prints, per fact, how often the caption states it and how
often it is right (of all matched objects), then how often the target is right per true relation
type (indoors "next to" names the nearest object, "closest to" a neighbour chosen by comparing
the other objects of the class), then which part of the named targets is right (class, colour,
present in the scene; :func:`target_parts`), then which of the object's neighbours the named
target is (nearest, second, ...; :func:`named_target_ranks`), and writes all four as JSON.

    python tools/caption_facts.py data/synthetic/big/outdoor outputs/RUN/eval_gt40 [--split val]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from dense3d.data.synthetic.facts import (
    FACT_FIELDS,
    PARSE_CAPTION,
    objects_by_scene,
    read_captioned_objects,
)
from dense3d.errors import exit_status
from dense3d.utils.argtypes import positive_float
from dense3d.utils.io import atomic_write_json, check_output_path


def fact_table(pairs: list[tuple[dict, dict]], kind: str = "outdoor") -> dict:
    """Per fact: ``stated`` and ``correct`` fractions of the pairs; ``all`` = every fact right."""
    stated, correct = defaultdict(int), defaultdict(int)
    all_right = 0
    for o, p in pairs:
        want = dataclasses.asdict(o["facts"])
        want["targets"] = tuple(tuple(t) for t in want["targets"])
        got = PARSE_CAPTION[kind](p["caption"])
        ok = True
        for f in FACT_FIELDS[kind]:
            stated[f] += got[f] is not None
            correct[f] += got[f] == want[f]
            ok &= got[f] == want[f]
        all_right += ok
    n = max(len(pairs), 1)
    table = {f: {"stated": 100 * stated[f] / n, "correct": 100 * correct[f] / n} for f in FACT_FIELDS[kind]}
    table["all"] = {"stated": None, "correct": 100 * all_right / n}
    return table


def targets_by_relation(pairs: list[tuple[dict, dict]], kind: str = "outdoor") -> dict:
    """Per true relation type: ``objects`` of that type and the % whose caption names the right target(s)."""
    n, right = defaultdict(int), defaultdict(int)
    for o, p in pairs:
        rel = o["facts"].relation
        n[rel] += 1
        right[rel] += PARSE_CAPTION[kind](p["caption"])["targets"] == tuple(tuple(t) for t in o["facts"].targets)
    return {rel: {"objects": n[rel], "correct": 100 * right[rel] / n[rel]} for rel in sorted(n)}


def target_parts(pairs: list[tuple[dict, dict]], objects: list[dict], kind: str = "outdoor") -> dict:
    """Which part of a relation target a caption gets right, over the objects that have a target
    and whose caption names one: ``objects``, and the % whose named targets have the true
    targets' classes (``cls``) and colours (``colour``, both compared as sorted lists), whose
    every named class is some object's of the scene (``cls_in_scene``), and whose every named
    (colour, class) pair is some object's of the scene (``pair_in_scene``). A caption that names
    a class of the scene in another object's colour has read the neighbours' classes but not
    bound their colours. ``chance_cls``, ``chance_colour``, ``chance_pair``: the expected %
    right of a caption that names one other object of the scene at random, over the same
    objects' one-target relations (``chance_objects`` of them)."""
    members = objects_by_scene(objects)
    in_scene = {scene: {(o["facts"].colour, o["facts"].cls) for o in objs} for scene, objs in members.items()}
    n, right = 0, defaultdict(int)
    chance, n_chance = defaultdict(float), 0
    for o, p in pairs:
        want = [tuple(t) for t in o["facts"].targets]
        got = PARSE_CAPTION[kind](p["caption"])["targets"]
        if not want or not got:
            continue
        got = [tuple(t) for t in got]
        n += 1
        scene = in_scene[o["scene"]]
        right["cls"] += sorted(t[1] for t in got) == sorted(t[1] for t in want)
        right["colour"] += sorted(t[0] for t in got) == sorted(t[0] for t in want)
        right["cls_in_scene"] += all(t[1] in {c for _, c in scene} for t in got)
        right["pair_in_scene"] += all(t in scene for t in got)
        others = [x["facts"] for x in members[o["scene"]] if x is not o]
        if len(want) == 1 and others:
            n_chance += 1
            chance["chance_cls"] += np.mean([x.cls == want[0][1] for x in others])
            chance["chance_colour"] += np.mean([x.colour == want[0][0] for x in others])
            chance["chance_pair"] += np.mean([(x.colour, x.cls) == want[0] for x in others])
    out = {"objects": n, **{k: 100 * right[k] / max(n, 1) for k in ("cls", "colour", "cls_in_scene", "pair_in_scene")}}
    out["chance_objects"] = n_chance
    out.update({k: float(100 * chance[k] / max(n_chance, 1)) for k in ("chance_cls", "chance_colour", "chance_pair")})
    return out


RANKS = ("nearest", "second", "third", "further")


def _rank_of(pair: tuple, nearest_first: list[tuple]) -> str:
    """Where the (colour, class) ``pair`` first comes in ``nearest_first`` (the other objects'
    pairs, nearest first): a name of :data:`RANKS`, or ``not_in_scene``."""
    if pair not in nearest_first:
        return "not_in_scene"
    return RANKS[min(nearest_first.index(pair), len(RANKS) - 1)]


def named_target_ranks(pairs: list[tuple[dict, dict]], objects: list[dict], kind: str = "outdoor") -> dict:
    """Which neighbour a caption names, over the objects with one relation target (``objects``
    of them): ``named`` gives the % whose caption names one target that is the object's nearest
    other object (3D centre distance), its second, third or a further one (the nearest object
    with the named colour and class), a (colour, class) the scene does not hold
    (``not_in_scene``: parts of two objects), or names no target or two (``not_one``); ``truth``
    gives the same ranks for the annotated target. Indoors "next to" names the nearest object:
    a run that binds reads the nearest neighbour, one that does not names objects at random."""
    members = objects_by_scene(objects)
    named, truth = defaultdict(int), defaultdict(int)
    n = 0
    for o, p in pairs:
        if len(o["facts"].targets) != 1:
            continue
        n += 1
        centre = np.asarray(o["box"][:3], float)
        others = [x for x in members[o["scene"]] if x is not o]
        d = [float(np.linalg.norm(np.asarray(x["box"][:3], float) - centre)) for x in others]
        nearest_first = [(others[i]["facts"].colour, others[i]["facts"].cls) for i in np.argsort(d, kind="stable")]
        truth[_rank_of(tuple(o["facts"].targets[0]), nearest_first)] += 1
        got = PARSE_CAPTION[kind](p["caption"])["targets"]
        named[_rank_of(tuple(got[0]), nearest_first) if got and len(got) == 1 else "not_one"] += 1

    def pct(counts: dict, keys: tuple) -> dict:
        return {k: 100 * counts[k] / max(n, 1) for k in keys}

    return {"objects": n, "named": pct(named, RANKS + ("not_in_scene", "not_one")),
            "truth": pct(truth, RANKS + ("not_in_scene",))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="the generated synthetic outdoor or indoor set the run was evaluated on")
    p.add_argument("eval_dir", type=Path, help="folder with predictions_boxes.json (dense3d eval --checkpoint)")
    p.add_argument("--split", default="val")
    p.add_argument("--max-dist", type=positive_float, default=None,
                   help="metres between a prediction's and an object's centre (default: 2 outdoors, 0.5 indoors)")
    p.add_argument("--out", type=Path, default=None, help="JSON table (default: EVAL_DIR/caption_facts.json)")
    a = p.parse_args(argv)
    out = check_output_path(a.out or a.eval_dir / "caption_facts.json", "tools/caption_facts.py")  # before any work
    kind, objects, _, pairs = read_captioned_objects(a.root, a.eval_dir, a.split, a.max_dist)
    table = fact_table(pairs, kind)
    print(f"{len(pairs)} captioned objects matched")
    print(f"{'fact':<10} {'stated %':>9} {'correct %':>10}")
    for f, row in table.items():
        s = "" if row["stated"] is None else f"{row['stated']:.1f}"
        print(f"{f:<10} {s:>9} {row['correct']:>10.1f}")
    by_rel = targets_by_relation(pairs, kind)
    print(f"{'relation':<12} {'objects':>8} {'target right %':>15}")
    for rel, row in by_rel.items():
        print(f"{rel:<12} {row['objects']:>8} {row['correct']:>15.1f}")
    parts = target_parts(pairs, objects, kind)
    print(f"named targets of {parts['objects']} objects: class {parts['cls']:.1f} %, colour {parts['colour']:.1f} %, "
          f"class in the scene {parts['cls_in_scene']:.1f} %, (colour, class) in the scene {parts['pair_in_scene']:.1f} %")
    print(f"one other object of the scene at random ({parts['chance_objects']} one-target objects): class "
          f"{parts['chance_cls']:.1f} %, colour {parts['chance_colour']:.1f} %, both {parts['chance_pair']:.1f} %")
    ranks = named_target_ranks(pairs, objects, kind)
    for what in ("named", "truth"):
        print(f"{what} target of {ranks['objects']} one-target objects: "
              + ", ".join(f"{k.replace('_', ' ')} {v:.1f} %" for k, v in ranks[what].items()))
    atomic_write_json(out,
                      {"objects": len(pairs), "facts": table, "targets_by_relation": by_rel,
                       "target_parts": parts, "named_target_ranks": ranks})
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/caption_facts.py"))
