"""Camera images with projected 3D boxes and their captions."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dense3d.structures import BOX_EDGES, Boxes3D
from dense3d.vis.labels import draw_labels

__all__ = ["project_points", "draw_boxes_on_image"]


def project_points(xyz: np.ndarray, lidar2img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) LiDAR-frame points -> (M, 2) pixels and (M,) depth through a (4, 4) ``lidar2img``."""
    homo = np.concatenate([xyz, np.ones((len(xyz), 1))], 1)  # (M, 4)
    cam = homo @ np.asarray(lidar2img, dtype=np.float64).T  # (M, 4): (u*d, v*d, d, 1)
    depth = cam[:, 2]
    uv = cam[:, :2] / np.where(np.abs(depth) < 1e-6, 1e-6, depth)[:, None]
    return uv, depth


def draw_boxes_on_image(
    image: np.ndarray,
    boxes: Boxes3D,
    lidar2img: np.ndarray,
    colors: np.ndarray,
    captions: Sequence[str] = (),
    line_width: int = 3,
    min_depth: float = 0.5,
) -> np.ndarray:
    """Draw the edges of every box onto an (H, W, 3) uint8 image, each edge clipped to the part
    deeper than ``min_depth`` (a box partly behind the camera keeps its visible part; drawing the
    part behind would wrap around); captions go at each box's top centre when that face is in
    front. Returns a new image."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    corners = boxes.corners().detach().cpu().double().numpy()  # (N, 8, 3)
    anchors, texts, text_colors = [], [], []
    for i in range(len(boxes)):
        uv, depth = project_points(corners[i], lidar2img)
        if (depth < min_depth).all():
            continue  # wholly behind or too close to the camera
        fill = tuple(int(255 * c) for c in colors[i])
        for a, b in BOX_EDGES:
            (pa, da), (pb, db) = (corners[i][a], depth[a]), (corners[i][b], depth[b])
            if da < min_depth and db < min_depth:
                continue
            if da < min_depth or db < min_depth:  # depth is affine along the edge: cut it at min_depth
                cut = pa + (min_depth - da) / (db - da) * (pb - pa)
                pa, pb = (cut, pb) if da < min_depth else (pa, cut)
                ends, _ = project_points(np.stack([pa, pb]), lidar2img)  # (2, 2)
            else:
                ends = uv[[a, b]]
            draw.line([tuple(ends[0]), tuple(ends[1])], fill=fill, width=line_width)
        if i < len(captions) and (depth[4:8] >= min_depth).all():
            anchors.append(uv[4:8].mean(0))  # top face centre
            texts.append(captions[i])
            text_colors.append(colors[i])
    out = np.asarray(img)
    if texts:
        out = draw_labels(out, np.asarray(anchors), texts, np.asarray(text_colors))
    return out
