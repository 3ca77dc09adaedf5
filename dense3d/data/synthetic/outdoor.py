"""Outdoor scenes in the nuScenes / TOD3Cap formats (see docs/synthetic.md for the layout).

A road along the ego car's heading, 3-15 objects of the ten nuScenes classes with
class-typical sizes, headings, motion and a colour; a 32-beam spinning LiDAR ray-cast
against the boxes and a noisy ground; six cameras with nuScenes calibration rendering the
boxes as shaded coloured solids (colour reaches the cameras only, not the LiDAR).
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dense3d.data.synthetic import grammar
from dense3d.data.synthetic.calib import CAMERA_NAMES, LIDAR2EGO, LIDAR_HEIGHT, camera_calibration
from dense3d.data.synthetic.common import PALETTE, SynthConfig, make_token, scene_rng
from dense3d.data.synthetic.geometry import PinholeCamera, points_in_boxes_np, ray_box_intersect, rows_times

__all__ = ["NUSCENES_CLASSES", "OutdoorScene", "sample_outdoor_scene", "simulate_lidar", "render_cameras", "nuscenes_cameras", "make_outdoor_scene", "write_infos"]

NUSCENES_CLASSES = (
    "car", "truck", "trailer", "bus", "construction_vehicle",
    "bicycle", "motorcycle", "pedestrian", "traffic_cone", "barrier",
)
# class: (length, width, height) means (nuScenes-like), sampling weight, colours, LiDAR reflectivity
_CLASS_SPEC = {
    "car": ((4.6, 1.95, 1.70), 0.30, ("white", "black", "gray", "red", "blue", "green", "yellow", "brown"), 0.45),
    "truck": ((6.9, 2.5, 2.8), 0.08, ("white", "red", "blue", "gray", "green", "orange"), 0.45),
    "trailer": ((11.0, 2.9, 3.8), 0.03, ("white", "gray", "red", "blue"), 0.40),
    "bus": ((11.0, 2.95, 3.4), 0.05, ("white", "red", "yellow", "blue", "green"), 0.45),
    "construction_vehicle": ((6.5, 2.8, 3.2), 0.03, ("yellow", "orange"), 0.40),
    "bicycle": ((1.7, 0.6, 1.3), 0.06, ("black", "red", "blue", "green", "white", "purple"), 0.30),
    "motorcycle": ((2.1, 0.8, 1.5), 0.05, ("black", "red", "blue", "white", "gray"), 0.35),
    "pedestrian": ((0.75, 0.7, 1.75), 0.20, ("red", "blue", "black", "white", "green", "yellow", "purple", "brown", "gray", "orange"), 0.25),
    "traffic_cone": ((0.45, 0.45, 1.0), 0.10, ("orange",), 0.85),
    "barrier": ((2.5, 0.55, 1.0), 0.10, ("white", "red", "yellow", "orange", "gray"), 0.70),
}
_VEHICLES = ("car", "truck", "trailer", "bus", "construction_vehicle")
ANNOTATION_MARGIN = (0.10, 0.10, 0.05)  # annotated box = solid + this (dx, dy, dz), bottom on the ground
MAX_RANGE = 70.0
MIN_RANGE = 1.0


@dataclass
class OutdoorScene:
    """One generated keyframe (everything in the LiDAR frame unless named ``ego``)."""

    classes: list[str]
    colours: list[str]
    boxes: np.ndarray  # (K, 7) annotated boxes, gravity centre
    solids: np.ndarray  # (K, 7) what the sensors see (annotation minus its margin)
    velocity: np.ndarray  # (K, 2) vx, vy in the LiDAR frame
    ego_xy: np.ndarray  # (K, 2) centres in the ego frame (x forward, y left)
    speed: np.ndarray  # (K,)
    on_road: np.ndarray  # (K,) bool


def _place(cls: str, rng: np.random.Generator):
    """Ego-frame (x, y, yaw, speed, on_road) of an object of class ``cls``."""
    x = float(rng.uniform(-45, 55))
    if cls in _VEHICLES or cls == "motorcycle":
        if rng.random() < 0.65:  # in a lane; right-hand traffic: y < 0 goes forward
            lane = float(rng.choice([-5.25, -1.75, 1.75, 5.25]))
            yaw = (0.0 if lane < 0 else math.pi) + float(rng.normal(0, 0.05))
            speed = float(rng.uniform(2, 12)) if rng.random() < 0.6 else 0.0
            return x, lane + float(rng.normal(0, 0.25)), yaw, speed, True
        side = float(rng.choice([-1.0, 1.0]))  # parked at the kerb
        yaw = (0.0 if side < 0 else math.pi) + float(rng.normal(0, 0.08))
        return x, side * float(rng.uniform(7.3, 8.2)), yaw, 0.0, True
    if cls == "bicycle":
        side = float(rng.choice([-1.0, 1.0]))
        moving = rng.random() < 0.5
        yaw = (0.0 if side < 0 else math.pi) + float(rng.normal(0, 0.1))
        return x, side * float(rng.uniform(6.8, 10.5)), yaw, float(rng.uniform(2, 5)) if moving else 0.0, bool(moving)
    if cls == "pedestrian":
        side = float(rng.choice([-1.0, 1.0]))
        walking = rng.random() < 0.5
        yaw = float(rng.uniform(-math.pi, math.pi))
        return x, side * float(rng.uniform(9.0, 12.5)), yaw, float(rng.uniform(1.0, 1.6)) if walking else 0.0, False
    # traffic cones and barriers along the lane or road edges
    side = float(rng.choice([-1.0, 1.0]))
    y = side * float(rng.choice([3.5, 7.0, 8.8])) + float(rng.normal(0, 0.15))
    yaw = float(rng.normal(0, 0.05)) if cls == "barrier" else float(rng.uniform(-math.pi, math.pi))
    return x, y, yaw, 0.0, True


def sample_outdoor_scene(rng: np.random.Generator, cfg: SynthConfig) -> OutdoorScene:
    names = list(_CLASS_SPEC)
    weights = np.array([_CLASS_SPEC[c][1] for c in names])
    weights = weights / weights.sum()
    n_target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    classes, colours, rows, ego_xy, speeds, roads = [], [], [], [], [], []
    discs = [(1.5, 0.0, 3.2)]  # the ego car itself: (x, y, radius)
    for _ in range(n_target * 30):
        if len(classes) == n_target:
            break
        cls = names[int(rng.choice(len(names), p=weights))]
        x, y, yaw, speed, road = _place(cls, rng)
        (l, w, h) = _CLASS_SPEC[cls][0]
        l, w, h = (v * float(rng.uniform(0.9, 1.1)) for v in (l, w, h))
        r = 0.5 * math.hypot(l, w) + 0.3
        if any(math.hypot(x - cx, y - cy) < r + cr for cx, cy, cr in discs):
            continue
        discs.append((x, y, r))
        classes.append(cls)
        palette = _CLASS_SPEC[cls][2]
        colours.append(palette[int(rng.integers(len(palette)))])
        rows.append((x, y, yaw, l, w, h))
        ego_xy.append((x, y))
        speeds.append(speed)
        roads.append(road)
    k = len(rows)
    ego = np.array(rows, float).reshape(k, 6)
    # ego -> lidar: p_lidar = R^T (p_ego - t); lidar yaw = ego yaw + pi/2 (lidar y is forward)
    rot, trans = LIDAR2EGO[:3, :3], LIDAR2EGO[:3, 3]
    ground = np.zeros((k, 3))
    ground[:, 0:2] = ego[:, 0:2]
    centre = rows_times(ground - trans, rot)  # (K, 3) bottom centres in the lidar frame
    yaw = ego[:, 2] + math.pi / 2
    yaw = (yaw + math.pi) % (2 * math.pi) - math.pi
    solids = np.zeros((k, 7))
    solids[:, 0:2] = centre[:, 0:2]
    solids[:, 3:6] = ego[:, 3:6]
    solids[:, 2] = -LIDAR_HEIGHT + ego[:, 5] / 2
    solids[:, 6] = yaw
    boxes = solids.copy()
    boxes[:, 3:6] += np.asarray(ANNOTATION_MARGIN)
    boxes[:, 2] = -LIDAR_HEIGHT + boxes[:, 5] / 2
    sp = np.asarray(speeds, float)
    velocity = np.stack([sp * np.cos(yaw), sp * np.sin(yaw)], 1) if k else np.zeros((0, 2))
    return OutdoorScene(classes, colours, boxes, solids, velocity, np.asarray(ego_xy, float).reshape(k, 2), sp, np.asarray(roads, bool))


def _ground_height(x: np.ndarray, y: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """A few centimetres of smooth relief (road camber and bumps)."""
    return 0.03 * np.sin(0.21 * x + phase[0]) * np.cos(0.17 * y + phase[1]) + 0.015 * np.sin(0.9 * x + 0.7 * y + phase[2])


def simulate_lidar(scene: OutdoorScene, rng: np.random.Generator, beams: int, steps: int) -> np.ndarray:
    """Ray-cast a spinning LiDAR at the LiDAR origin. Returns (N, 5) float32
    ``x, y, z, intensity (0-255, integral), ring (0..beams-1)``, ordered by azimuth then ring."""
    elev = np.deg2rad(np.linspace(-30.67, 10.67, beams))  # HDL-32E-like fan
    az = np.arange(steps) * (2 * math.pi / steps) + float(rng.uniform(0, 2 * math.pi / steps))
    ce, se = np.cos(elev), np.sin(elev)
    # (steps, beams, 3) -> (steps * beams, 3)
    dirs = np.stack(
        [np.cos(az)[:, None] * ce[None, :], np.sin(az)[:, None] * ce[None, :], np.broadcast_to(se[None, :], (steps, beams))], -1
    ).reshape(-1, 3)
    ring = np.broadcast_to(np.arange(beams)[None, :], (steps, beams)).reshape(-1)
    n = len(dirs)
    t_box = np.full(n, np.inf)
    hit_id = np.full(n, -1)
    cos_inc = np.ones(n)
    if len(scene.solids):
        t, normal = ray_box_intersect(np.zeros(3), dirs, scene.solids)  # (R, K), (R, K, 3)
        hit_id = t.argmin(1)
        t_box = t[np.arange(n), hit_id]
        nrm = normal[np.arange(n), hit_id]
        cos_inc = np.abs((nrm * dirs).sum(1))
        hit_id = np.where(np.isfinite(t_box), hit_id, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[:, 2] < 0, -LIDAR_HEIGHT / dirs[:, 2], np.inf)
    use_box = t_box < t_ground
    rng_m = np.where(use_box, t_box, t_ground)
    keep = np.isfinite(rng_m) & (rng_m < MAX_RANGE) & (rng_m > MIN_RANGE)
    keep &= rng.random(n) > 0.06  # dropout
    noise = np.clip(rng.normal(0, 0.015, n), -0.04, 0.04)
    rng_m = np.where(keep, rng_m, 0.0)
    pts = dirs * (rng_m + noise)[:, None]
    phase = rng.uniform(0, 2 * math.pi, 3)
    g = ~use_box
    pts[g, 2] = -LIDAR_HEIGHT + _ground_height(pts[g, 0], pts[g, 1], phase)
    refl = np.array([_CLASS_SPEC[c][3] for c in scene.classes] + [0.0])
    road = 0.06 + 0.03 * (np.sin(1.7 * pts[:, 0]) > 0.95)  # faint lane-marking-like stripes
    r_obj = np.where(use_box, refl[hit_id], road)
    cosg = np.where(use_box, cos_inc, np.abs(dirs[:, 2]))
    inten = 255.0 * r_obj * (0.35 + 0.65 * cosg) * (1.0 - 0.4 * rng_m.clip(0, MAX_RANGE) / MAX_RANGE)
    inten = np.clip(np.rint(inten + rng.normal(0, 1.5, n)), 0, 255)
    out = np.concatenate([pts, inten[:, None], ring[:, None].astype(float)], 1)[keep]
    return out.astype(np.float32)


_CAMERAS: dict[tuple[int, int], dict[str, PinholeCamera]] = {}


def nuscenes_cameras(width: int, height: int) -> dict[str, PinholeCamera]:
    """The six cameras (cached per image size: rays and background are computed once)."""
    if (width, height) not in _CAMERAS:
        calib = camera_calibration(width, height)
        _CAMERAS[(width, height)] = {
            cam: PinholeCamera(calib[cam]["cam2img"], calib[cam]["lidar2cam"], width, height, -LIDAR_HEIGHT)
            for cam in CAMERA_NAMES
        }
    return _CAMERAS[(width, height)]


def render_cameras(scene: OutdoorScene, width: int, height: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per camera (image (H, W, 3) uint8, box id map (H, W))."""
    rgb = np.array([PALETTE[c] for c in scene.colours], float).reshape(-1, 3)
    return {cam: c.render(scene.solids, rgb) for cam, c in nuscenes_cameras(width, height).items()}


def _mat(m: np.ndarray) -> list:
    return [[float(v) for v in row] for row in m]


def make_outdoor_scene(cfg: SynthConfig, index: int, out: Path, split: str, kind: str = "outdoor") -> tuple[dict, dict, dict]:
    """Generate scene ``index`` and write its LiDAR sweep and six images under ``out``.

    ``kind`` seeds the scene and its tokens (``"joint"``: the joint set's scenes differ from
    the outdoor set's of the same seed).

    Returns (info sample dict, caption entries keyed by annotation token, our annotation
    record of the scene for stats and oracles).
    """
    rng = scene_rng(cfg.seed, kind, index)
    width, height = cfg.image_size
    token = make_token(kind, cfg.seed, index)
    scene = sample_outdoor_scene(rng, cfg)
    points = simulate_lidar(scene, rng, cfg.lidar_beams, cfg.lidar_azimuth_steps)
    counts = points_in_boxes_np(points[:, 0:3].astype(np.float64), scene.boxes).sum(0) if len(scene.boxes) else np.zeros(0, int)
    calib = camera_calibration(width, height)
    timestamp = 1.6e9 + 20.0 * index  # keyframes 20 s apart: distinct, deterministic
    lidar_rel = f"samples/LIDAR_TOP/{token}.pcd.bin"
    (out / lidar_rel).parent.mkdir(parents=True, exist_ok=True)
    points.tofile(out / lidar_rel)
    images = {}
    for cam, (img, _ids) in render_cameras(scene, width, height).items():
        rel = f"samples/{cam}/{token}.jpg"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out / rel, quality=92)
        images[cam] = {
            "img_path": rel,
            "cam2img": _mat(calib[cam]["cam2img"]),
            "cam2ego": _mat(calib[cam]["cam2ego"]),
            "sample_data_token": make_token(kind, cfg.seed, index, cam),
            "timestamp": timestamp,
            "lidar2cam": _mat(calib[cam]["lidar2cam"]),
        }
    # ego pose in a made-up world: a yaw and an offset per scene
    gyaw = float(rng.uniform(-math.pi, math.pi))
    ego2global = np.eye(4)
    ego2global[:2, :2] = [[math.cos(gyaw), -math.sin(gyaw)], [math.sin(gyaw), math.cos(gyaw)]]
    ego2global[:2, 3] = rng.uniform(0, 2000, 2)
    keys = list(zip(scene.colours, scene.classes))
    instances, captions, objects = [], {}, []
    for i, cls in enumerate(scene.classes):
        ann = make_token(kind, cfg.seed, index, "ann", i)
        rel = grammar.choose_relation(i, scene.ego_xy, keys, rng, indoor=False,
                                     max_dist=grammar.OUTDOOR_MAX_DIST, next_to=grammar.OUTDOOR_NEXT_TO)
        caps = grammar.outdoor_captions(i, keys, scene.ego_xy, float(scene.speed[i]), bool(scene.on_road[i]), rel, rng)
        fixed = grammar.outdoor_captions(i, keys, scene.ego_xy, float(scene.speed[i]), bool(scene.on_road[i]), rel,
                                         grammar.FirstParaphrase())  # the fixed-phrasing oracles; draws nothing from rng
        label = NUSCENES_CLASSES.index(cls)
        instances.append(
            {
                "bbox_label": label,
                "bbox_3d": [float(v) for v in scene.boxes[i]],
                "bbox_3d_isvalid": bool(counts[i] > 0),
                "bbox_label_3d": label,
                "num_lidar_pts": int(counts[i]),
                "num_radar_pts": 0,
                "velocity": [float(v) for v in scene.velocity[i]],
                "ann_token": ann,
            }
        )
        captions[ann] = {
            "sample_token": token,
            "final_caption": caps["final_caption"],
            **{f: caps[f] for f in ("attribute_caption", "depth_caption", "localization_caption", "motion_caption", "map_caption",
                                    "relation_caption")},
        }
        objects.append(
            {
                "ann_token": ann,
                "index": i,
                "label": cls,
                "colour": scene.colours[i],
                "box": [float(v) for v in scene.boxes[i]],
                "ego_xy": [float(v) for v in scene.ego_xy[i]],
                "direction": caps["direction"],
                "distance_bin": caps["distance_bin"],
                "relation": rel["type"],
                "relation_targets": rel["targets"],
                "captions": [caps["final_caption"]],
                "context_free_caption": caps["context_free"],
                "fixed_caption": fixed["final_caption"],
                "fixed_context_free_caption": fixed["context_free"],
                "num_lidar_pts": int(counts[i]),
            }
        )
    info = {
        "sample_idx": index,
        "token": token,
        "timestamp": timestamp,
        "ego2global": _mat(ego2global),
        "images": images,
        "lidar_points": {"num_pts_feats": 5, "lidar_path": lidar_rel, "lidar2ego": _mat(LIDAR2EGO)},
        "instances": instances,
    }
    record = {"scene_id": token, "split": split, "num_points": int(len(points)), "objects": objects}
    return info, captions, record


def write_infos(path: Path, data_list: list[dict]) -> None:
    metainfo = {
        "categories": {c: i for i, c in enumerate(NUSCENES_CLASSES)},
        "dataset": "nuscenes",
        "version": "dense3d-synthetic",
        "info_version": "1.1",
    }
    with open(path, "wb") as f:
        pickle.dump({"metainfo": metainfo, "data_list": data_list}, f, protocol=4)
