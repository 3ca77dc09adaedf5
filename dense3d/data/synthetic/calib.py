"""nuScenes-like sensor calibration for the synthetic outdoor scenes.

The six cameras' intrinsics and LiDAR-to-camera extrinsics are those of one real nuScenes
keyframe (scene n015-2018-07-24-11-22-45, mmdet3d v1.1 info file), rounded to 6 decimals
and re-orthonormalised; the intrinsics are scaled from 1600 x 900 to the synthetic image
size. LiDAR-to-ego is the real one with its 1.4 degree tilt removed, so the ground is the
plane ``z = -LIDAR_HEIGHT`` in the LiDAR frame (x right, y forward, z up, as nuScenes'
LIDAR_TOP); the ego frame is x forward, y left, z up, origin on the ground.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CAMERA_NAMES", "LIDAR_HEIGHT", "LIDAR2EGO", "REAL_IMAGE_SIZE", "camera_calibration"]

CAMERA_NAMES = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
REAL_IMAGE_SIZE = (1600, 900)  # (W, H) of nuScenes camera images
LIDAR_HEIGHT = 1.84023

# ego <- lidar: lidar y (forward) -> ego x, lidar x (right) -> ego -y
LIDAR2EGO = np.array(
    [[0.0, 1.0, 0.0, 0.943713], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, LIDAR_HEIGHT], [0.0, 0.0, 0.0, 1.0]]
)

# (fx, cx, cy) at 1600 x 900 (fy = fx)
_INTRINSICS = {
    "CAM_FRONT": (1266.417203, 816.267020, 491.507066),
    "CAM_FRONT_RIGHT": (1260.847445, 807.968245, 495.334427),
    "CAM_FRONT_LEFT": (1272.597947, 826.615493, 479.751654),
    "CAM_BACK": (809.220991, 829.219600, 481.778424),
    "CAM_BACK_LEFT": (1256.741481, 792.112574, 492.775747),
    "CAM_BACK_RIGHT": (1259.513741, 807.252905, 501.195799),
}
# 3 x 4 lidar -> camera (camera frame: x right, y down, z forward)
_LIDAR2CAM = {
    "CAM_FRONT": [[0.99997, 0.003407, 0.006921, 0.016873], [0.006853, 0.01959, -0.999785, -0.329024], [-0.003542, 0.999802, 0.019566, -0.429222]],
    "CAM_FRONT_RIGHT": [[0.55158, -0.833699, -0.026576, 0.017368], [-0.010315, 0.025041, -0.999633, -0.338129], [0.834058, 0.551652, 0.005212, -0.6078]],
    "CAM_FRONT_LEFT": [[0.572995, 0.819259, 0.022155, 0.136727], [0.002772, 0.025095, -0.999681, -0.335024], [-0.819554, 0.572874, 0.012109, -0.510657]],
    "CAM_BACK": [[-0.99994, 0.004745, -0.009903, -0.002995], [0.009939, 0.007752, -0.999921, -0.278743], [-0.004668, -0.999959, -0.007799, -1.007525]],
    "CAM_BACK_LEFT": [[-0.317058, 0.94808, 0.024876, -0.236177], [0.019899, 0.032873, -0.999261, -0.243239], [-0.948197, -0.316329, -0.029288, -0.435816]],
    "CAM_BACK_RIGHT": [[-0.356985, -0.933411, -0.036132, 0.059677], [-0.00525, 0.040685, -0.999158, -0.271826], [0.934095, -0.356495, -0.019424, -0.492889]],
}


def _orthonormal(r: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(r)
    return u @ vt


def camera_calibration(width: int, height: int) -> dict[str, dict[str, np.ndarray]]:
    """Per camera ``{"cam2img": (3, 3), "lidar2cam": (4, 4), "cam2ego": (4, 4)}`` for images of
    ``width x height`` pixels (intrinsics scaled from 1600 x 900 per axis)."""
    sx, sy = width / REAL_IMAGE_SIZE[0], height / REAL_IMAGE_SIZE[1]
    out = {}
    for name in CAMERA_NAMES:
        f, cx, cy = _INTRINSICS[name]
        k = np.array([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])
        m = np.eye(4)
        raw = np.asarray(_LIDAR2CAM[name])
        m[:3, :3] = _orthonormal(raw[:, :3])
        m[:3, 3] = raw[:, 3]
        cam2ego = LIDAR2EGO @ np.linalg.inv(m)
        out[name] = {"cam2img": k, "lidar2cam": m, "cam2ego": cam2ego}
    return out
