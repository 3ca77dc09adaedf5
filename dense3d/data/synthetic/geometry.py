"""Ray casting against oriented boxes and a ground plane: the synthetic LiDAR and cameras.

Hand-written with numpy because it is tiny (a slab test per ray and box) and must stay
fast and deterministic; Open3D's ``RaycastingScene`` would do the same for triangle meshes
but costs a mesh build per scene and gives no per-box face normal for free.

Boxes are ``(x, y, z, dx, dy, dz, yaw)`` gravity-centred (dense3d's convention).
"""
from __future__ import annotations

import numpy as np

__all__ = ["ray_box_intersect", "points_in_boxes_np", "PinholeCamera", "box_corners_np", "rows_times", "LIGHT_DIR"]

LIGHT_DIR = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])
SHADE_MIN = 0.70  # shading factor of a face turned away from the light; 1.0 facing it


def rows_times(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(N, 3) @ (3, k) written out element-wise: BLAS may split a large product across
    threads and round differently from run to run, and generated files must be byte-identical."""
    return a[:, 0:1] * m[0][None, :] + a[:, 1:2] * m[1][None, :] + a[:, 2:3] * m[2][None, :]


def box_corners_np(boxes: np.ndarray) -> np.ndarray:
    """(B, 7) -> (B, 8, 3) corners (same order as ``Boxes3D.corners``)."""
    signs = np.array(
        [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float
    )
    local = 0.5 * signs[None] * boxes[:, None, 3:6]  # (B, 8, 3)
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    x = local[..., 0] * c[:, None] - local[..., 1] * s[:, None]
    y = local[..., 0] * s[:, None] + local[..., 1] * c[:, None]
    return np.stack([x, y, local[..., 2]], -1) + boxes[:, None, 0:3]


def points_in_boxes_np(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(P, 3+) points, (B, 7) boxes -> (P, B) bool (faces included)."""
    rel = points[:, None, 0:3] - boxes[None, :, 0:3]  # (P, B, 3)
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    lx = rel[..., 0] * c + rel[..., 1] * s
    ly = -rel[..., 0] * s + rel[..., 1] * c
    h = boxes[:, 3:6] / 2
    return (np.abs(lx) <= h[:, 0]) & (np.abs(ly) <= h[:, 1]) & (np.abs(rel[..., 2]) <= h[:, 2])


def ray_box_intersect(origins: np.ndarray, dirs: np.ndarray, boxes: np.ndarray):
    """Slab test of R rays against B oriented boxes.

    Args:
        origins: (R, 3) or (3,) ray origins (outside every box).
        dirs: (R, 3) directions (any length; ``t`` is in units of their length).
        boxes: (B, 7).

    Returns:
        t: (R, B) ray parameter of the entry point, ``inf`` where the ray misses.
        normal: (R, B, 3) outward unit normal of the entry face, in the world frame.
    """
    o = np.broadcast_to(origins, dirs.shape)
    rel = o[:, None, :] - boxes[None, :, 0:3]  # (R, B, 3)
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])  # (B,)
    # world -> box frame: rotate by -yaw
    ox = rel[..., 0] * c + rel[..., 1] * s
    oy = -rel[..., 0] * s + rel[..., 1] * c
    oz = rel[..., 2]
    dx = dirs[:, None, 0] * c + dirs[:, None, 1] * s
    dy = -dirs[:, None, 0] * s + dirs[:, None, 1] * c
    dz = np.broadcast_to(dirs[:, None, 2], dx.shape)
    lo = np.stack([ox, oy, oz], -1)  # (R, B, 3)
    ld = np.stack([dx, dy, dz], -1)  # (R, B, 3)
    ld = np.where(np.abs(ld) < 1e-12, 1e-12, ld)
    half = boxes[None, :, 3:6] / 2  # (1, B, 3)
    t1 = (-half - lo) / ld
    t2 = (half - lo) / ld
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    axis = tmin.argmax(-1)  # (R, B) the slab entered last = the face hit
    t_near = np.take_along_axis(tmin, axis[..., None], -1)[..., 0]
    t_far = tmax.min(-1)
    hit = (t_near <= t_far) & (t_near > 0)
    t = np.where(hit, t_near, np.inf)
    # outward normal in the box frame: -sign(d) along the entered axis
    sign = -np.sign(np.take_along_axis(ld, axis[..., None], -1)[..., 0])
    nl = np.zeros(ld.shape)
    np.put_along_axis(nl, axis[..., None], sign[..., None], -1)
    # box frame -> world: rotate by +yaw
    nx = nl[..., 0] * c - nl[..., 1] * s
    ny = nl[..., 0] * s + nl[..., 1] * c
    return t, np.stack([nx, ny, nl[..., 2]], -1)


def _ground_colour(x: np.ndarray, y: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Asphalt: a grey with faint stripes so the ground is not flat-coloured. (P,) -> (P, 3)."""
    tex = 0.06 * np.sin(0.9 * x) * np.sin(1.3 * y) + 0.04 * np.sin(3.1 * x + 2.0 * y)
    return np.clip(base[None, :] * (1.0 + tex[:, None]), 0, 255)


class PinholeCamera:
    """A calibrated camera that renders boxes as Lambert-shaded solids with a z-buffer.

    The pixel rays and the background (ground below the horizon, sky above) depend on the
    calibration only, so they are computed once here and reused for every scene.

    Args:
        cam2img: (3, 3) pinhole intrinsics; lidar2cam: (4, 4) world (LiDAR) -> camera.
        width, height: image size in pixels (pixel ``(u, v)`` covers ``[u, u+1) x [v, v+1)``).
        ground_z: height of the ground plane in the world frame, or None for no ground.
    """

    def __init__(self, cam2img, lidar2cam, width: int, height: int, ground_z: float | None,
                 ground_rgb=(92.0, 92.0, 98.0), sky_rgb=(170.0, 200.0, 235.0)):
        self.cam2img = np.asarray(cam2img, float)
        self.rot, self.trans = np.asarray(lidar2cam, float)[:3, :3], np.asarray(lidar2cam, float)[:3, 3]
        self.width, self.height = int(width), int(height)
        self.centre = -self.rot.T @ self.trans  # camera centre in the world frame
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)  # (H, W) pixel centres
        pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)  # (H*W, 3)
        # camera-frame directions with z_cam = 1 (so the ray parameter is the depth), in the world
        self.dirs = rows_times(pix, np.linalg.inv(self.cam2img).T @ self.rot)  # (H*W, 3)
        self.bg_depth = np.full(width * height, np.inf)
        bg = np.asarray(sky_rgb, float)[None, :] * (0.85 + 0.15 * (v.reshape(-1) / height))[:, None]
        if ground_z is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                tg = (ground_z - self.centre[2]) / self.dirs[:, 2]
            g = np.isfinite(tg) & (tg > 0)
            gp = self.centre[None, :] + tg[g, None] * self.dirs[g]
            bg[g] = _ground_colour(gp[:, 0], gp[:, 1], np.asarray(ground_rgb, float))
            self.bg_depth[g] = tg[g]
        self.background = bg

    def render(self, boxes: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """boxes (B, 7) in the world frame, colours (B, 3) RGB 0-255 ->
        image (H, W, 3) uint8 and ids (H, W) int16 (index of the box seen, -1 none)."""
        width, height = self.width, self.height
        depth = self.bg_depth.copy()
        ids = np.full(width * height, -1, np.int16)
        img = self.background.copy()
        # each box only against the pixels of its projected bounding rectangle
        corners = box_corners_np(np.asarray(boxes, float).reshape(-1, 7))  # (B, 8, 3)
        for b in range(len(corners)):
            cc = corners[b] @ self.rot.T + self.trans  # (8, 3) camera frame
            if (cc[:, 2] <= 0.05).all():
                continue
            if (cc[:, 2] > 0.05).all():
                uv = (cc @ self.cam2img.T)[:, :2] / cc[:, 2:3]
                u0, v0 = np.floor(uv.min(0)).astype(int)
                u1, v1 = np.ceil(uv.max(0)).astype(int)
                u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, width), min(v1, height)
            else:  # straddles the image plane: test every pixel
                u0, v0, u1, v1 = 0, 0, width, height
            if u0 >= u1 or v0 >= v1:
                continue
            idx = (np.arange(v0, v1)[:, None] * width + np.arange(u0, u1)[None, :]).reshape(-1)
            t, n = ray_box_intersect(self.centre, self.dirs[idx], boxes[b : b + 1])
            t, n = t[:, 0], n[:, 0]
            closer = t < depth[idx]
            sel = idx[closer]
            depth[sel] = t[closer]
            ids[sel] = b
            shade = SHADE_MIN + (1 - SHADE_MIN) * np.clip(rows_times(n[closer], LIGHT_DIR[:, None])[:, 0], 0, 1)
            img[sel] = np.asarray(colours[b], float)[None, :] * shade[:, None]
        image = np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(height, width, 3)
        return image, ids.reshape(height, width)
