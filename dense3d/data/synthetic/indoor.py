"""Indoor rooms in the ScanRefer / ScanNet formats (see docs/synthetic.md for the layout).

A rectangular room (floor and four walls) with furniture of the common ScanRefer classes,
axis-aligned like ScanNet's aligned boxes; coloured points with normals are sampled on the
visible surfaces; every object gets several descriptions from the grammar, each naming
another object ("the chair between the table and the window").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dense3d.data.synthetic import grammar
from dense3d.data.synthetic.common import PALETTE, SynthConfig, scene_rng

__all__ = ["INDOOR_CLASSES", "NYU40_IDS", "IndoorScene", "sample_indoor_scene", "sample_surface_points", "make_indoor_scene"]

# class: (size along the wall or x, size across, height), z of the bottom, where it goes,
# colours, sampling weight
_SPEC = {
    "chair": ((0.5, 0.5, 0.9), 0.0, "near", ("brown", "black", "blue", "red", "gray", "green"), 0.26),
    "table": ((1.4, 0.9, 0.75), 0.0, "middle", ("brown", "white", "black", "gray"), 0.09),
    "desk": ((1.2, 0.6, 0.75), 0.0, "wall", ("brown", "white", "black"), 0.07),
    "bed": ((2.0, 1.6, 0.55), 0.0, "wall", ("white", "blue", "gray", "purple"), 0.04),
    "sofa": ((2.0, 0.9, 0.85), 0.0, "wall", ("gray", "blue", "brown", "green", "red"), 0.05),
    "cabinet": ((0.9, 0.5, 1.0), 0.0, "wall", ("brown", "white", "gray"), 0.08),
    "bookshelf": ((1.0, 0.35, 1.9), 0.0, "wall", ("brown", "white", "black"), 0.06),
    "door": ((0.9, 0.08, 2.05), 0.0, "wall", ("brown", "white"), 0.07),
    "window": ((1.2, 0.08, 1.2), 0.9, "wall", ("white", "blue"), 0.06),
    "toilet": ((0.45, 0.7, 0.75), 0.0, "wall", ("white",), 0.02),
    "refrigerator": ((0.7, 0.7, 1.8), 0.0, "wall", ("white", "gray", "black"), 0.02),
    "sink": ((0.6, 0.5, 0.9), 0.0, "wall", ("white", "gray"), 0.02),
    "picture": ((0.8, 0.04, 0.6), 1.3, "wall", ("red", "blue", "green", "yellow", "orange", "purple"), 0.05),
    "garbagebin": ((0.35, 0.35, 0.5), 0.0, "free", ("black", "gray", "blue", "green"), 0.05),
    "curtain": ((1.5, 0.1, 2.2), 0.2, "wall", ("red", "blue", "yellow", "white", "purple"), 0.03),
    "counter": ((1.8, 0.6, 0.9), 0.0, "wall", ("white", "gray", "brown"), 0.03),
}
INDOOR_CLASSES = tuple(_SPEC)
# ScanNet's nyu40 ids (the 18 detection classes; wall = 1 and floor = 2 are written for the room)
NYU40_IDS = {
    "cabinet": 3, "bed": 4, "chair": 5, "sofa": 6, "table": 7, "door": 8, "window": 9, "bookshelf": 10,
    "picture": 11, "counter": 12, "desk": 14, "curtain": 16, "refrigerator": 24, "toilet": 33, "sink": 34,
    "garbagebin": 39,
}
WALL_ID, FLOOR_ID = 1, 2
POINT_DENSITY = 180.0  # points per square metre of surface
_FLOOR_RGB, _WALL_RGB = (150, 135, 115), (205, 200, 190)


@dataclass
class IndoorScene:
    room: tuple[float, float, float]  # (width x, depth y, height)
    classes: list[str]
    colours: list[str]
    boxes: np.ndarray  # (K, 6) axis-aligned [cx, cy, cz, dx, dy, dz]
    places: list[str]  # "corner" / "wall" / "middle"


def _overlaps(box, others, margin=0.05) -> bool:
    for o in others:
        if all(abs(box[a] - o[a]) < (box[a + 3] + o[a + 3]) / 2 + margin for a in range(3)):
            return True
    return False


def _wall_box(size, z0, wall: int, pos: float, room) -> list[float]:
    """Axis-aligned box against wall ``wall`` (0: y=0, 1: x=W, 2: y=D, 3: x=0) at ``pos`` along it."""
    W, D, _ = room
    a, b, h = size
    eps = 0.01
    if wall in (0, 2):
        cy = b / 2 + eps if wall == 0 else D - b / 2 - eps
        return [pos, cy, z0 + h / 2, a, b, h]
    cx = W - b / 2 - eps if wall == 1 else b / 2 + eps
    return [cx, pos, z0 + h / 2, b, a, h]


def sample_indoor_scene(rng: np.random.Generator, cfg: SynthConfig) -> IndoorScene:
    W, D, H = float(rng.uniform(4.0, 8.0)), float(rng.uniform(4.0, 8.0)), float(rng.uniform(2.6, 3.0))
    room = (W, D, H)
    names = list(_SPEC)
    p = np.array([_SPEC[c][4] for c in names])
    p = p / p.sum()
    n_target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    classes, colours, boxes = [], [], []
    # most rooms have a table (chairs gather around it) and a door
    wanted = ["door"] + (["table"] if rng.random() < 0.8 else [])
    for _ in range(n_target * 40):
        if len(classes) >= n_target:
            break
        cls = wanted.pop(0) if wanted else names[int(rng.choice(len(names), p=p))]
        size, z0, where, palette, _ = _SPEC[cls]
        size = tuple(v * float(rng.uniform(0.9, 1.1)) for v in size)
        if where == "wall":
            wall = int(rng.integers(4))
            length = W if wall in (0, 2) else D
            if length < size[0] + 0.2:
                continue
            box = _wall_box(size, z0, wall, float(rng.uniform(size[0] / 2 + 0.1, length - size[0] / 2 - 0.1)), room)
        elif where == "near" and boxes and rng.random() < 0.85:
            # a chair at a side of a table or desk
            hosts = [b for b, c in zip(boxes, classes) if c in ("table", "desk")]
            if not hosts:
                continue
            hb = hosts[int(rng.integers(len(hosts)))]
            side = int(rng.integers(4))
            off = float(rng.uniform(-0.3, 0.3))
            gap = 0.15 + size[1] / 2
            cx, cy = hb[0], hb[1]
            if side == 0:
                cx, cy = hb[0] + off * hb[3], hb[1] - hb[4] / 2 - gap
            elif side == 1:
                cx, cy = hb[0] + off * hb[3], hb[1] + hb[4] / 2 + gap
            elif side == 2:
                cx, cy = hb[0] - hb[3] / 2 - gap, hb[1] + off * hb[4]
            else:
                cx, cy = hb[0] + hb[3] / 2 + gap, hb[1] + off * hb[4]
            box = [cx, cy, size[2] / 2, size[0], size[1], size[2]]
        else:
            margin = 1.0 if where == "middle" else 0.3
            if W < 2 * margin + size[0] or D < 2 * margin + size[1]:
                continue
            cx = float(rng.uniform(margin + size[0] / 2, W - margin - size[0] / 2))
            cy = float(rng.uniform(margin + size[1] / 2, D - margin - size[1] / 2))
            box = [cx, cy, z0 + size[2] / 2, size[0], size[1], size[2]]
        lo_ok = box[0] - box[3] / 2 >= 0 and box[1] - box[4] / 2 >= 0
        hi_ok = box[0] + box[3] / 2 <= W and box[1] + box[4] / 2 <= D and box[2] + box[5] / 2 <= H
        if not (lo_ok and hi_ok) or _overlaps(box, boxes):
            continue
        boxes.append(box)
        classes.append(cls)
        colours.append(palette[int(rng.integers(len(palette)))])
    arr = np.asarray(boxes, float).reshape(-1, 6)
    places = []
    for b in arr:
        gaps = [b[0] - b[3] / 2, W - b[0] - b[3] / 2, b[1] - b[4] / 2, D - b[1] - b[4] / 2]
        near = sum(g < 0.6 for g in gaps)
        places.append("corner" if near >= 2 else ("wall" if near == 1 else "middle"))
    return IndoorScene(room, classes, colours, arr, places)


def _face_points(rng, centre, size, normal_axis, sign, rgb, density):
    """Points on one axis-aligned rectangle: (n, 9) xyz rgb normal."""
    axes = [a for a in range(3) if a != normal_axis]
    area = size[axes[0]] * size[axes[1]]
    n = int(rng.poisson(area * density))
    pts = np.empty((n, 9))
    for k, a in enumerate(axes):
        pts[:, a] = centre[a] + (rng.random(n) - 0.5) * size[a]
    pts[:, normal_axis] = centre[normal_axis] + sign * size[normal_axis] / 2
    pts[:, 3:6] = np.clip(np.asarray(rgb, float)[None, :] + rng.normal(0, 6, (n, 3)), 0, 255)
    pts[:, 6:9] = 0
    pts[:, 6 + normal_axis] = sign
    return pts


def sample_surface_points(scene: IndoorScene, rng: np.random.Generator, density: float = POINT_DENSITY):
    """Coloured points on the floor, walls and the objects' faces (not their bottoms).

    Returns (vert (N, 9) float32 ``x y z r g b nx ny nz``, instance ids (N,) int32 with -1
    for floor / walls handled by the caller's id map, nyu40 labels (N,) int32)."""
    W, D, H = scene.room
    chunks, inst, sem = [], [], []

    def add(p, i, s):
        chunks.append(p)
        inst.append(np.full(len(p), i, np.int32))
        sem.append(np.full(len(p), s, np.int32))

    k = len(scene.boxes)
    add(_face_points(rng, (W / 2, D / 2, 0.0), (W, D, 0.0), 2, 1.0, _FLOOR_RGB, density), k, FLOOR_ID)
    walls = [((W / 2, 0.0, H / 2), (W, 0.0, H), 1, 1.0), ((W, D / 2, H / 2), (0.0, D, H), 0, -1.0),
             ((W / 2, D, H / 2), (W, 0.0, H), 1, -1.0), ((0.0, D / 2, H / 2), (0.0, D, H), 0, 1.0)]
    for w, (c, s, ax, sg) in enumerate(walls):
        add(_face_points(rng, c, s, ax, sg, _WALL_RGB, density * 0.6), k + 1 + w, WALL_ID)
    for i, (b, cls, col) in enumerate(zip(scene.boxes, scene.classes, scene.colours)):
        rgb = PALETTE[col]
        faces = [_face_points(rng, b[0:3], b[3:6], ax, sg, rgb, density) for ax in range(3) for sg in (-1.0, 1.0) if not (ax == 2 and sg < 0)]
        add(np.concatenate(faces, 0), i, NYU40_IDS[cls])
    vert = np.concatenate(chunks, 0).astype(np.float32)
    return vert, np.concatenate(inst), np.concatenate(sem)


def _tokens(text: str) -> list[str]:
    return text.replace(".", " .").replace(",", " ,").split()


def make_indoor_scene(cfg: SynthConfig, index: int, scans_dir: Path, split: str) -> tuple[list[dict], dict]:
    """Generate room ``index``; write its ``_aligned_vert/_aligned_bbox/_ins_label/_sem_label``
    npy files to ``scans_dir``. Returns (ScanRefer entries, our annotation record)."""
    rng = scene_rng(cfg.seed, "indoor", index)
    scene_id = f"scene{index:04d}_00"
    scene = sample_indoor_scene(rng, cfg)
    vert, inst, sem = sample_surface_points(scene, rng)
    k = len(scene.boxes)
    W, D, H = scene.room
    # (K + 5, 8) [cx, cy, cz, dx, dy, dz, nyu40, object_id]: the objects, then floor and walls
    room_boxes = [[W / 2, D / 2, 0.0, W, D, 0.02, FLOOR_ID], [W / 2, 0.0, H / 2, W, 0.02, H, WALL_ID],
                  [W, D / 2, H / 2, 0.02, D, H, WALL_ID], [W / 2, D, H / 2, W, 0.02, H, WALL_ID], [0.0, D / 2, H / 2, 0.02, D, H, WALL_ID]]
    bbox = np.zeros((k + 5, 8), np.float64)
    bbox[:k, 0:6] = scene.boxes
    bbox[:k, 6] = [NYU40_IDS[c] for c in scene.classes]
    bbox[k:, 0:7] = room_boxes
    bbox[:, 7] = np.arange(k + 5)
    np.save(scans_dir / f"{scene_id}_aligned_vert.npy", vert)
    np.save(scans_dir / f"{scene_id}_aligned_bbox.npy", bbox)
    np.save(scans_dir / f"{scene_id}_ins_label.npy", inst)
    np.save(scans_dir / f"{scene_id}_sem_label.npy", sem)
    keys = list(zip(scene.colours, scene.classes))
    xy = scene.boxes[:, 0:2]
    entries, objects = [], []
    for i, cls in enumerate(scene.classes):
        rel = grammar.choose_relation(i, xy, keys, rng, indoor=True, max_dist=grammar.INDOOR_MAX_DIST,
                                      next_to=grammar.INDOOR_NEXT_TO)
        descs, free = grammar.indoor_descriptions(i, keys, scene.places[i], rel, rng, n=3)
        # the fixed-phrasing oracle: first template, first wording (draws nothing from rng); its
        # context-free twin is ``free``, which has one wording already
        fixed = grammar.indoor_descriptions(i, keys, scene.places[i], rel, grammar.FirstParaphrase(), n=1)[0][0]
        for a, d in enumerate(descs):
            entries.append(
                {"scene_id": scene_id, "object_id": str(i), "object_name": grammar.class_words(cls),
                 "ann_id": str(a), "description": d, "token": _tokens(d)}
            )
        box7 = [float(v) for v in scene.boxes[i]] + [0.0]
        objects.append(
            {"object_id": str(i), "index": i, "label": cls, "colour": scene.colours[i], "box": box7,
             "place": scene.places[i], "relation": rel["type"], "relation_targets": rel["targets"],
             "captions": descs, "context_free_caption": free,
             "fixed_caption": fixed, "fixed_context_free_caption": free,
             "num_points": int((inst == i).sum())}
        )
    record = {"scene_id": scene_id, "split": split, "room": [W, D, H], "num_points": int(len(vert)), "objects": objects}
    return entries, record
