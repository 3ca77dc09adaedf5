"""The facts a synthetic outdoor caption states, read from the generated annotations: what a
perfect perception system would hand the captioner.

An object's facts are its colour and class, its motion word, the ego-frame direction sector and
distance bin, the relation type and the colour and class of its relation target(s). Together
they determine the fixed-phrasing oracle's caption word for word (:func:`fixed_caption`,
tested), so a captioner fed :func:`fact_vector` instead of sensor features shows the ceiling of
the language side alone (``tools/captioner_ceiling.py``).

Indoor objects have fewer facts (:class:`IndoorFacts`): colour and class, the place in the room
and the relation type and target(s); :func:`parse_indoor_caption` reads them back from any of
the four description templates, and :func:`fixed_indoor_caption` writes the indoor fixed oracle's.

The last section matches a model's captioned boxes to the objects (:func:`match_predictions`)
for the tools that read its captions back fact by fact (``tools/caption_facts.py``,
``tools/fact_costs.py``).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from dense3d.data.readers import load_json, load_pickle, require
from dense3d.data.synthetic.annotations import load_synthetic_annotations
from dense3d.data.synthetic.common import PALETTE
from dense3d.data.synthetic.grammar import (
    _DIRECTIONS,
    _DIST_PHRASE,
    _ROOM_PLACE,
    RELATION_TYPES,
    FirstParaphrase,
    article,
    class_words,
    ego_where,
    indoor_descriptions,
    motion_word,
    noun_phrase,
    relation_phrase,
)
from dense3d.data.synthetic.indoor import INDOOR_CLASSES
from dense3d.data.synthetic.outdoor import NUSCENES_CLASSES
from dense3d.errors import AnnotationError, PredictionFormatError

__all__ = ["OutdoorFacts", "FACT_DIM", "fact_vector", "fixed_caption", "load_outdoor_facts", "parse_outdoor_caption",
           "IndoorFacts", "fixed_indoor_caption", "load_indoor_facts", "parse_indoor_caption", "set_kind",
           "FACT_FIELDS", "LOAD_FACTS", "PARSE_CAPTION", "FIXED_CAPTION", "MATCH_DIST", "objects_by_scene",
           "match_predictions", "read_captioned_objects"]

COLOURS = tuple(PALETTE)
MOTIONS = ("placed", "walking", "standing", "riding", "parked", "moving")
DISTANCES = ("near", "medium", "far")
MAX_TARGETS = 2  # "between the A and the B"
# one-hot blocks: colour, class, motion, direction, distance, relation, then per target colour + class
_BLOCKS = (len(COLOURS), len(NUSCENES_CLASSES), len(MOTIONS), len(_DIRECTIONS), len(DISTANCES), len(RELATION_TYPES))
_TARGET = len(COLOURS) + len(NUSCENES_CLASSES)
FACT_DIM = sum(_BLOCKS) + MAX_TARGETS * _TARGET


@dataclass(frozen=True)
class OutdoorFacts:
    colour: str
    cls: str
    motion: str | None  # None: not stated (a caption read back, fixed_caption)
    direction: str
    distance: str
    relation: str
    targets: tuple[tuple[str, str], ...]  # (colour, class) of each relation target


def _facts(obj: dict, scene_objects: list[dict], speed: float) -> OutdoorFacts:
    targets = tuple((scene_objects[j]["colour"], scene_objects[j]["label"]) for j in obj["relation_targets"])
    return OutdoorFacts(obj["colour"], obj["label"], motion_word(obj["label"], speed), obj["direction"],
                        obj["distance_bin"], obj["relation"], targets)


def fact_vector(f: OutdoorFacts) -> torch.Tensor:
    """(FACT_DIM,) float: one-hot per block; target blocks stay zero where there is no target."""
    idx = (COLOURS.index(f.colour), NUSCENES_CLASSES.index(f.cls), MOTIONS.index(f.motion),
           _DIRECTIONS.index(f.direction), DISTANCES.index(f.distance), RELATION_TYPES.index(f.relation))
    v = torch.zeros(FACT_DIM)
    offset = 0
    for size, i in zip(_BLOCKS, idx):
        v[offset + i] = 1.0
        offset += size
    for colour, cls in f.targets[:MAX_TARGETS]:
        v[offset + COLOURS.index(colour)] = 1.0
        v[offset + len(COLOURS) + NUSCENES_CLASSES.index(cls)] = 1.0
        offset += _TARGET
    return v


def fixed_caption(f: OutdoorFacts) -> str:
    """The fixed-phrasing oracle's caption (first template, first paraphrases) from the facts alone;
    without a motion word where ``f.motion`` is None (a caption that does not say it, as the
    annotator's second template does not)."""
    keys = [(f.colour, f.cls), *f.targets]
    relp = relation_phrase({"type": f.relation, "targets": list(range(1, len(keys)))}, keys, FirstParaphrase())
    motion = f" {f.motion}" if f.motion is not None else ""
    free = f"{article(noun_phrase(f.colour, f.cls))}{motion} {ego_where(f.direction)}, {_DIST_PHRASE[f.distance][0]}"
    return f"{free}, {relp}." if relp else free + "."


def fixed_indoor_caption(f: IndoorFacts) -> str:
    """The indoor fixed-phrasing oracle's description (first template, first wording, as the
    generator writes ``fixed_caption``) from the facts alone."""
    keys = [(f.colour, f.cls), *f.targets]
    rel = {"type": f.relation, "targets": list(range(1, len(keys)))}
    return indoor_descriptions(0, keys, f.place, rel, FirstParaphrase(), n=1)[0][0]


def load_outdoor_facts(root: str | Path, split: str, xy_range: tuple[float, float, float, float] | None = None) -> list[dict]:
    """Objects of ``split`` of a generated outdoor set, each ``{"scene", "facts", "box", "caption",
    "fixed"}`` (``caption``: the annotator's; ``fixed``: the fixed-phrasing oracle's).

    Args:
        xy_range: ``(x_min, y_min, x_max, y_max)`` in the LiDAR frame; objects whose centre lies
            outside are left out (as a data config's object-range filter does).
    """
    root = Path(root)
    info_file = root / f"nuscenes_infos_{split}.pkl"
    ann = load_synthetic_annotations(root, "outdoor")
    infos = require(load_pickle(info_file), "data_list", info_file, "")
    speed = {i["ann_token"]: math.hypot(*i["velocity"]) for info in infos for i in info["instances"]}
    out = []
    for scene in ann["scenes"]:
        if scene["split"] != split:
            continue
        for o in scene["objects"]:
            x, y = o["box"][0], o["box"][1]
            if xy_range is not None and not (xy_range[0] <= x <= xy_range[2] and xy_range[1] <= y <= xy_range[3]):
                continue
            out.append({"scene": scene["scene_id"], "facts": _facts(o, scene["objects"], speed[o["ann_token"]]),
                        "box": o["box"], "caption": o["captions"][0], "fixed": o["fixed_caption"]})
    return out


# ---------------------------------------------------------------------- reading facts back from text
_CLASS_WORDS = {c.replace("_", " "): c for c in NUSCENES_CLASSES}
_NOUN = (r"(?:pedestrian in (?P<{p}pcol>{col})|(?P<{p}col>{col}) (?P<{p}cls>{cls}))")
_COL = "|".join(COLOURS)
_CLS = "|".join(sorted(_CLASS_WORDS, key=len, reverse=True))
_WHERE = {
    "in front of the ego car": "front", "behind the ego car": "back",
    "to the left of the ego car": "left", "to the right of the ego car": "right",
    **{f"on the {d} of the ego car": d for d in ("front left", "back left", "back right", "front right")},
}
_DIST = {phrase: b for b, phrases in _DIST_PHRASE.items() for phrase in phrases}
_REL_WORDS = {
    "next to": "next_to", "beside": "next_to", "near": "next_to", "in front of": "in_front_of", "ahead of": "in_front_of",
    "behind": "behind", "to the left of": "left_of", "left of": "left_of", "to the right of": "right_of",
    "right of": "right_of",
}


def _noun(p: str) -> str:
    return _NOUN.format(p=p, col=_COL, cls=_CLS)


def _key(m: re.Match, p: str) -> tuple[str, str]:
    if m.group(f"{p}pcol"):
        return m.group(f"{p}pcol"), "pedestrian"
    return m.group(f"{p}col"), _CLASS_WORDS[m.group(f"{p}cls")]


def _normalise(text: str) -> str:
    """Lower case, punctuation as words of its own, single spaces."""
    return " ".join(text.lower().replace(",", " , ").replace(".", " . ").split())


def parse_outdoor_caption(text: str) -> dict:
    """The facts a caption of the synthetic outdoor grammar states (any template or paraphrase):
    ``{"colour", "cls", "motion", "direction", "distance", "relation", "targets"}``, None where
    the caption does not say (or says it in words outside the grammar). Used to score a model's
    captions fact by fact (``tools/caption_facts.py``)."""
    t = _normalise(text)
    out: dict = dict.fromkeys(("colour", "cls", "motion", "direction", "distance", "relation", "targets"))
    own = re.search(r"\b(?:a|an) " + _noun("o"), t)
    if own:
        out["colour"], out["cls"] = _key(own, "o")
    motion = re.search(r"\b(" + "|".join(MOTIONS) + r")\b", t)
    out["motion"] = motion.group(1) if motion else None
    for phrase, d in _WHERE.items():
        if phrase in t:
            out["direction"] = d
            break
    for phrase in sorted(_DIST, key=len, reverse=True):
        if re.search(r"\b" + phrase + r"\b", t):
            out["distance"] = _DIST[phrase]
            break
    between = re.search(r"\bbetween the " + _noun("a") + " and the " + _noun("b"), t)
    if between:
        out["relation"], out["targets"] = "between", (_key(between, "a"), _key(between, "b"))
    else:
        words = "|".join(sorted(_REL_WORDS, key=len, reverse=True))
        rel = re.search(r"(?:^|(?<=[ ,]))(" + words + r") the " + _noun("t"), t)
        if rel:
            out["relation"], out["targets"] = _REL_WORDS[rel.group(1)], (_key(rel, "t"),)
        elif own:
            out["relation"], out["targets"] = "none", ()
    return out


# ---------------------------------------------------------------------- indoor
def set_kind(root: str | Path) -> str:
    """The kind a generated set's ``meta.json`` records: ``"indoor"``, else ``"outdoor"``."""
    meta = Path(root) / "meta.json"
    if not meta.is_file():
        return "outdoor"
    record = load_json(meta)
    if not isinstance(record, dict):
        raise AnnotationError(meta, "<file>", "a JSON object (the set's kind, classes and sizes)",
                              got=type(record).__name__)
    return "indoor" if record.get("kind") == "indoor" else "outdoor"


@dataclass(frozen=True)
class IndoorFacts:
    colour: str
    cls: str
    place: str  # "corner" / "wall" / "middle"
    relation: str  # next_to / between / closest_to / none
    targets: tuple[tuple[str, str], ...]  # (colour, class) of each relation target


def load_indoor_facts(root: str | Path, split: str) -> list[dict]:
    """Objects of ``split`` of a generated indoor set, each ``{"scene", "facts", "box", "caption",
    "captions", "fixed"}`` (``caption``: the first of the annotator's three ``captions``;
    ``fixed``: the fixed-phrasing oracle's, None in sets generated before it existed)."""
    ann = load_synthetic_annotations(root, "indoor")
    out = []
    for scene in ann["scenes"]:
        if scene["split"] != split:
            continue
        objs = scene["objects"]
        for o in objs:
            targets = tuple((objs[j]["colour"], objs[j]["label"]) for j in o["relation_targets"])
            facts = IndoorFacts(o["colour"], o["label"], o["place"], o["relation"], targets)
            out.append({"scene": scene["scene_id"], "facts": facts, "box": o["box"], "caption": o["captions"][0],
                        "captions": o["captions"], "fixed": o.get("fixed_caption")})
    return out


# class words as written (class_words: "trash can") and the raw names ("garbagebin")
_IN_CLASS_WORDS = {**{c: c for c in INDOOR_CLASSES}, **{class_words(c): c for c in INDOOR_CLASSES}}
_IN_CLS = "|".join(sorted(_IN_CLASS_WORDS, key=len, reverse=True))
_PLACE = {phrase: place for place, phrases in _ROOM_PLACE.items() for phrase in phrases}
_IN_REL_WORDS = {"next to": "next_to", "beside": "next_to", "near": "next_to", "closest to": "closest_to"}


def _in_noun(p: str) -> str:
    return rf"(?P<{p}col>{_COL}) (?P<{p}cls>{_IN_CLS})\b"


def _in_key(m: re.Match, p: str) -> tuple[str, str]:
    return m.group(f"{p}col"), _IN_CLASS_WORDS[m.group(f"{p}cls")]


def parse_indoor_caption(text: str) -> dict:
    """The facts a description of the synthetic indoor grammar states (any of the four templates,
    any paraphrase): ``{"colour", "cls", "place", "relation", "targets"}``, None where the
    description does not say (or says it in words outside the grammar)."""
    t = _normalise(text)
    out: dict = dict.fromkeys(("colour", "cls", "place", "relation", "targets"))
    # "this is a red chair" / "a red chair in a corner" / "the chair is red and stands ..."
    own = re.search(r"\b(?:a|an) " + _in_noun("o"), t) or re.search(
        rf"\bthe (?P<ocls>{_IN_CLS}) is (?P<ocol>{_COL})\b", t)
    if own:
        out["colour"], out["cls"] = _in_key(own, "o")
    else:  # the class alone: "the chair is in a corner", "it is the chair closest to ..."
        cls = re.search(rf"\bthe ({_IN_CLS}) (?:is|closest to)\b", t)
        out["cls"] = _IN_CLASS_WORDS[cls.group(1)] if cls else None
    for phrase in sorted(_PLACE, key=len, reverse=True):
        if phrase in t:
            out["place"] = _PLACE[phrase]
            break
    between = re.search(r"\bbetween the " + _in_noun("a") + " and the " + _in_noun("b"), t)
    words = "|".join(sorted(_IN_REL_WORDS, key=len, reverse=True))
    rel = re.search(rf"\b({words}) the " + _in_noun("t"), t)
    if between:
        out["relation"], out["targets"] = "between", (_in_key(between, "a"), _in_key(between, "b"))
    elif rel:
        out["relation"], out["targets"] = _IN_REL_WORDS[rel.group(1)], (_in_key(rel, "t"),)
    elif own:
        out["relation"], out["targets"] = "none", ()
    return out


# ---------------------------------------------------------------------- a model's captions against the facts
FACT_FIELDS = {"outdoor": ("colour", "cls", "motion", "direction", "distance", "relation", "targets"),
               "indoor": ("colour", "cls", "place", "relation", "targets")}
LOAD_FACTS = {"outdoor": load_outdoor_facts, "indoor": load_indoor_facts}
PARSE_CAPTION = {"outdoor": parse_outdoor_caption, "indoor": parse_indoor_caption}
FIXED_CAPTION = {"outdoor": fixed_caption, "indoor": fixed_indoor_caption}
MATCH_DIST = {"outdoor": 2.0, "indoor": 0.5}  # metres; half the median distance to the nearest other object indoors


def objects_by_scene(objects: list[dict]) -> dict[str, list[dict]]:
    """``{scene: its objects}``."""
    out = defaultdict(list)
    for o in objects:
        out[o["scene"]].append(o)
    return out


def match_predictions(pred: dict, objects: list[dict], max_dist: float) -> list[tuple[dict, dict]]:
    """(object, prediction) pairs, one-to-one per scene by BEV centre distance (scipy's Hungarian),
    at most ``max_dist`` metres apart. ``pred``: ``{scene: [{"box", "caption", ...}]}``."""
    scenes = objects_by_scene(objects)
    pairs = []
    for scene, preds in pred.items():
        objs = scenes.get(scene, [])
        if not objs or not preds:
            continue
        a = np.array([o["box"][:2] for o in objs], float)
        b = np.array([p["box"][:2] for p in preds], float)
        d = np.linalg.norm(a[:, None] - b[None], axis=-1)  # (objects, predictions)
        rows, cols = linear_sum_assignment(d)
        pairs += [(objs[r], preds[c]) for r, c in zip(rows, cols) if d[r, c] <= max_dist]
    return pairs


def read_captioned_objects(root: str | Path, eval_dir: str | Path, split: str = "val",
                           max_dist: float | None = None) -> tuple[str, list[dict], dict, list[tuple[dict, dict]]]:
    """The captions of an evaluation folder (``EVAL_DIR/predictions_boxes.json`` of ``dense3d eval
    --checkpoint``) matched to the objects of ``split`` of the synthetic set at ``root``
    (:func:`match_predictions`, ``max_dist`` metres; default :data:`MATCH_DIST` of the set's kind):
    ``(kind, objects, predictions, (object, prediction) pairs)``. A missing or malformed file, or predictions
    of another split, is a one-line PredictionFormatError."""
    path = Path(eval_dir) / "predictions_boxes.json"
    if not path.is_file():
        raise PredictionFormatError(path, "file", "predictions written by dense3d eval --checkpoint")
    pred = load_json(path, error=PredictionFormatError)
    if not isinstance(pred, dict) or any(not isinstance(v, list) or any(not isinstance(r, dict) or "caption" not in r
                                                                        or "box" not in r for r in v)
                                         for v in pred.values()):
        raise PredictionFormatError(path, "records", "{scene: [{box, caption, ...}]}")
    kind = set_kind(root)
    objects = LOAD_FACTS[kind](root, split)
    if pred and not set(pred) & {o["scene"] for o in objects}:
        raise PredictionFormatError(path, "scenes", f"scenes of the '{split}' split of {root} (--split)",
                                    got=sorted(pred)[:2])
    return kind, objects, pred, match_predictions(pred, objects, MATCH_DIST[kind] if max_dist is None else max_dist)
