"""The caption grammar of the synthetic benchmark.

Every caption of an object names its colour and class, where it is, and **a relation to
another object** (its colour and class included), so that no caption can be written from
the region's own features alone: "the red car behind the white bus", "the chair between the
table and the window". Events say what sounds, how often, from which object and side.
Several paraphrase templates exist per fact; which one is used follows from the scene's
random generator.

A *context-free* caption is the same template with the relation left out: the best a
captioner can do from the region alone (the context-free oracle writes these).

Both oracles know the generator's random wording (which of three outdoor templates, which
distance phrase), which no sensor shows. The *fixed-phrasing* oracles write the same facts
always with the first paraphrase (:class:`FirstParaphrase`): what a captioner that knows the
scene perfectly, but not the annotator's coin flips, can write.

Relation types (the ``stats`` histogram): ``next_to``, ``in_front_of``, ``behind``,
``left_of``, ``right_of``, ``between``, ``closest_to`` (a superlative that tells apart
objects of one class), ``none`` (no other object near enough).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "OUTDOOR_MAX_DIST",
    "INDOOR_MAX_DIST",
    "INDOOR_NEXT_TO",
    "OUTDOOR_NEXT_TO",
    "RELATION_TYPES",
    "class_words",
    "noun_phrase",
    "direction_word",
    "distance_bin",
    "choose_relation",
    "relation_phrase",
    "outdoor_captions",
    "indoor_descriptions",
    "event_caption",
    "count_word",
    "favd_paragraph",
    "article",
    "ego_where",
    "FirstParaphrase",
]

class FirstParaphrase:
    """Takes the place of the scene's random generator when a caption is written, and always
    picks the first paraphrase (``integers`` returns its lower bound). Only the wording draws
    of :func:`relation_phrase`, :func:`outdoor_captions` and :func:`indoor_descriptions` use it;
    the relation itself is the one the scene's generator chose."""

    def integers(self, low: int, high: int | None = None) -> int:
        return 0 if high is None else low


RELATION_TYPES = ("next_to", "in_front_of", "behind", "left_of", "right_of", "between", "closest_to", "none")
# outdoor scenes (street and audio-visual): objects further apart than this are not related,
# and "next to" one another below OUTDOOR_NEXT_TO (metres; choose_relation's max_dist, next_to)
OUTDOOR_MAX_DIST, OUTDOOR_NEXT_TO = 20.0, 4.0
INDOOR_MAX_DIST, INDOOR_NEXT_TO = 3.0, 1.5  # metres
_DIRECTIONS = ("front", "front left", "left", "back left", "back", "back right", "right", "front right")


def class_words(name: str) -> str:
    """Class name as words: ``traffic_cone`` -> ``traffic cone``, ``garbagebin`` -> ``trash can``."""
    return {"garbagebin": "trash can"}.get(name, name.replace("_", " "))


def noun_phrase(colour: str, cls: str) -> str:
    """``"red car"``; people wear their colour: ``"pedestrian in red"``."""
    if cls == "pedestrian":
        return f"pedestrian in {colour}"
    return f"{colour} {class_words(cls)}"


def direction_word(x: float, y: float) -> str:
    """One of eight sectors of the direction ``(x forward, y left)``: "front left", "back", ..."""
    a = math.degrees(math.atan2(y, x)) % 360.0
    return _DIRECTIONS[int(((a + 22.5) % 360.0) // 45.0)]


def distance_bin(d: float) -> str:
    """``"near"`` (< 10 m), ``"medium"`` (10-25 m) or ``"far"`` (> 25 m)."""
    return "near" if d < 10 else ("medium" if d <= 25 else "far")


_DIST_PHRASE = {
    "near": ("close to the ego car", "nearby", "a few meters away"),
    "medium": ("at a medium distance", "some distance away", "not far away"),
    "far": ("far away", "in the distance", "far from the ego car"),
}


def count_word(n: int) -> str:
    return {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times"}.get(n, f"{n} times")


def _segment_distance(p, a, b):
    ab = b - a
    t = float(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-9))
    return t, float(np.linalg.norm(p - (a + t * ab)))


def choose_relation(
    i: int,
    xy: np.ndarray,
    keys: list[tuple[str, str]],
    rng: np.random.Generator,
    indoor: bool,
    max_dist: float,
    next_to: float,
) -> dict:
    """Pick the relation object(s) of object ``i``.

    Args:
        xy: (N, 2) positions seen from above; for outdoor scenes in the ego frame (x forward,
            y left), so "in front of" means further ahead along the road.
        keys: N ``(colour, class)`` pairs.
        indoor: indoor scenes use next_to / between / closest_to (a room has no front);
            outdoor ones next_to / in_front_of / behind / left_of / right_of / between.
        max_dist: objects further away are not related; next_to: "next to" below this distance.

    Returns:
        ``{"type": one of RELATION_TYPES, "targets": [j] or [j, k] (empty for none)}``.
    """
    n = len(xy)
    d = np.linalg.norm(xy - xy[i], axis=1)
    d[i] = np.inf
    order = [int(j) for j in np.argsort(d, kind="stable") if d[j] <= max_dist]
    if not order:
        return {"type": "none", "targets": []}
    # a twin (same colour and class) makes a distinguishing relation necessary
    twins = [j for j in range(n) if j != i and keys[j] == keys[i]]
    if indoor and any(keys[j][1] == keys[i][1] for j in range(n) if j != i):
        # same class elsewhere: "the chair closest to the door", if i is the closest of its class
        same = [j for j in range(n) if keys[j][1] == keys[i][1]]
        cands = []
        for t in order[:6]:
            if keys[t][1] == keys[i][1]:
                continue
            dt = [float(np.linalg.norm(xy[j] - xy[t])) for j in same]
            if same[int(np.argmin(dt))] == i and sorted(dt)[1] - min(dt) > 0.3:
                cands.append(t)
        if cands and rng.random() < 0.6:
            return {"type": "closest_to", "targets": [cands[0]]}
    # "between": i near the middle of the segment joining two other objects
    near = order[:5]
    pairs = []
    for a_i in range(len(near)):
        for b_i in range(a_i + 1, len(near)):
            a, b = near[a_i], near[b_i]
            if np.linalg.norm(xy[a] - xy[b]) > 2.5 * max_dist / 2:
                continue
            t, dist = _segment_distance(xy[i], xy[a], xy[b])
            if 0.25 <= t <= 0.75 and dist <= 0.3 * np.linalg.norm(xy[a] - xy[b]):
                pairs.append((a, b))
    if pairs and rng.random() < (0.6 if not twins else 0.8):
        return {"type": "between", "targets": list(pairs[0])}
    j = order[0]
    if twins and keys[j] == keys[i] and len(order) > 1:
        j = order[1]  # relate to something that is not a copy of itself
    if d[j] <= next_to:
        return {"type": "next_to", "targets": [j]}
    if indoor:
        return {"type": "next_to", "targets": [j]}
    dx, dy = xy[i] - xy[j]
    if abs(dx) >= abs(dy):
        return {"type": "in_front_of" if dx > 0 else "behind", "targets": [j]}
    return {"type": "left_of" if dy > 0 else "right_of", "targets": [j]}


def _the(keys, j) -> str:
    return "the " + noun_phrase(*keys[j])


def relation_phrase(rel: dict, keys: list[tuple[str, str]], rng: np.random.Generator) -> str:
    """``"behind the white bus"``, ``"between the red car and the gray barrier"``, ..."""
    t, tg = rel["type"], rel["targets"]
    if t == "none":
        return ""
    if t == "between":
        return f"between {_the(keys, tg[0])} and {_the(keys, tg[1])}"
    if t == "closest_to":
        return f"closest to {_the(keys, tg[0])}"
    word = {
        "next_to": ("next to", "beside", "near"),
        "in_front_of": ("in front of", "ahead of"),
        "behind": ("behind",),
        "left_of": ("to the left of", "left of"),
        "right_of": ("to the right of", "right of"),
    }[t]
    return f"{word[int(rng.integers(len(word)))]} {_the(keys, tg[0])}"


def _motion(cls: str, speed: float) -> str:
    if cls in ("traffic_cone", "barrier"):
        return "placed"
    if cls == "pedestrian":
        return "walking" if speed > 0.3 else "standing"
    if cls in ("bicycle", "motorcycle"):
        return "riding" if speed > 0.3 else "parked"
    return "moving" if speed > 0.3 else "parked"


def article(noun: str) -> str:
    """``"an orange cone"``, ``"a red car"``."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def ego_where(direction: str) -> str:
    """Where a direction lies seen from the ego car: ``"on the front left of the ego car"``."""
    return {
        "front": "in front of the ego car",
        "back": "behind the ego car",
        "left": "to the left of the ego car",
        "right": "to the right of the ego car",
    }.get(direction, f"on the {direction} of the ego car")


def outdoor_captions(
    i: int, keys, ego_xy: np.ndarray, speed: float, on_road: bool, rel: dict, rng: np.random.Generator
) -> dict:
    """Captions of outdoor object ``i``.

    Returns a dict with ``final_caption`` (the full caption with the relation),
    ``context_free`` (same template, no relation), and TOD3Cap's per-aspect annotation fields,
    nested as its released annotations hold them (``attribute_caption: {attribute_caption,
    category}``, ``depth_caption: {depth_caption, depth}``, ``localization_caption``,
    ``motion_caption``, ``map_caption``, and ``relation_caption`` as a string), from which
    ``TOD3CapDataset(caption_source="template")`` composes TOD3Cap's own references.
    """
    colour, cls = keys[i]
    noun = article(noun_phrase(colour, cls))
    x, y = float(ego_xy[i][0]), float(ego_xy[i][1])
    direction, dbin = direction_word(x, y), distance_bin(math.hypot(x, y))
    dist = _DIST_PHRASE[dbin][int(rng.integers(3))]
    where = ego_where(direction)
    motion = _motion(cls, speed)
    relp = relation_phrase(rel, keys, rng)
    place = "on the road" if on_road else "on the sidewalk"
    template = int(rng.integers(3))
    if template == 0:
        free = f"{noun} {motion} {where}, {dist}"
        full = f"{free}, {relp}." if relp else free + "."
        free += "."
    elif template == 1:
        free = f"there is {noun} {dist} {where}"
        full = f"{free}, {relp}." if relp else free + "."
        free += "."
    else:
        free = f"{noun} is {motion} {where}, {dist}."
        full = f"{relp}, {free}" if relp else free
    return {
        "final_caption": full,
        "context_free": free,
        "attribute_caption": {"attribute_caption": noun_phrase(colour, cls), "category": cls},
        "depth_caption": {"depth_caption": dist, "depth": round(math.hypot(x, y), 2)},
        "localization_caption": {"localization_caption": where},
        "motion_caption": {"motion_caption": motion},
        "map_caption": {"map_caption": place},
        "relation_caption": relp,
        "direction": direction,
        "distance_bin": dbin,
    }


_ROOM_PLACE = {
    "corner": ("in the corner of the room", "in a corner"),
    "wall": ("against the wall", "by the wall"),
    "middle": ("in the middle of the room", "in the center of the room"),
}


def indoor_descriptions(i: int, keys, place: str, rel: dict, rng: np.random.Generator, n: int) -> tuple[list[str], str]:
    """``n`` ScanRefer-style descriptions of indoor object ``i`` (different templates) and its
    context-free description. ``place``: ``"corner"``, ``"wall"`` or ``"middle"``."""
    colour, cls = keys[i]
    name = class_words(cls)
    out = []
    start = int(rng.integers(4))
    for k in range(n):
        where = _ROOM_PLACE[place][int(rng.integers(2))]
        relp = relation_phrase(rel, keys, rng)
        t = (start + k) % 4
        if rel["type"] == "closest_to":
            rel_sentence = f"it is the {name} {relp}."
        else:
            rel_sentence = f"it is {relp}." if relp else ""
        if t == 0:
            s = f"this is a {colour} {name}. {rel_sentence} it is {where}."
        elif t == 1:
            s = f"the {name} is {colour} and stands {where}. {rel_sentence}"
        elif t == 2:
            s = f"a {colour} {name} {where}. {rel_sentence}"
        else:
            s = f"there is a {colour} {name}. {rel_sentence} the {name} is {where}."
        out.append(" ".join(s.split()))
    free = f"this is a {colour} {name}. it is {_ROOM_PLACE[place][0]}."
    return out, free


_EVENT_WORDS = {
    # label: (subject, verb 3rd person with "count", verb without count)
    "horn": ("a horn", "honks", "honks"),
    "engine": ("an engine", "hums", "hums"),
    "siren": ("a siren", "wails", "wails"),
    "bell": ("a bicycle bell", "rings", "rings"),
    "speech": ("a person", "speaks", "talks"),
    "footsteps": ("footsteps", "sound", "sound"),
    "door_slam": ("a door", "slams", "slams"),
}
COUNTED_EVENTS = ("horn", "bell", "door_slam", "speech")


def event_caption(
    label: str, count: int, loud: bool, source: tuple[str, str] | None, direction: str, rng: np.random.Generator,
    seen: bool = True,
) -> tuple[str, str]:
    """Caption of an audible event and its context-free version (no source object).

    ``source`` is the emitting object's ``(colour, class)`` or None when no object of the scene
    emits it; ``seen`` False when the camera never shows the source (then its colour is not
    said: "from a car behind"); ``count`` is said for horns, bells, door slams and speech.
    """
    subj, verb, _ = _EVENT_WORDS[label]
    adverb = ""
    if loud:
        if label in ("speech", "footsteps"):
            adverb = " loudly"
        else:
            subj = "a loud " + subj.split(" ", 1)[1]
    how = f" {count_word(count)}" if label in COUNTED_EVENTS else ""
    side = {"front": "ahead", "back": "behind"}.get(direction, f"on the {direction}")
    free = f"{subj} {verb}{adverb}{how} {side}."
    if source is None:
        return f"{subj} {verb}{adverb}{how} from somewhere {side}.", free
    noun = "the " + noun_phrase(*source) if seen else article(class_words(source[1]))
    t = int(rng.integers(3))
    if t == 0:
        full = f"{subj} {verb}{adverb}{how} from {noun} {side}."
    elif t == 1:
        full = f"{side}, {subj} {verb}{adverb}{how} from {noun}."
    else:
        full = f"{noun} {side} is the source: {subj} {verb}{adverb}{how}."
    return full, free


def favd_paragraph(summary: str, visual: list[str], audio: list[str]) -> str:
    """FAVDBench's paragraph: the summary, then visual sentences, then audio sentences."""
    sents = [summary] + visual + audio
    return " ".join(s[0].upper() + s[1:] if s else s for s in sents)

motion_word = _motion
