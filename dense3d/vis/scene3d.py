"""Open3D rendering of a 3D scene: points, boxes and caption labels.

``render_scene`` draws offscreen (Filament; on a machine without a GPU Mesa's lavapipe Vulkan
device works, with Debian's ``libusb-1.0-0 libgl1 libegl1 mesa-vulkan-drivers libvulkan1``)
and returns the image together with the camera that made it, so callers can project 3D
positions onto it (caption labels, tests). ``show_scene`` opens an interactive window where a
display exists.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dense3d.errors import DependencyError
from dense3d.structures import BOX_EDGES, Boxes3D
from dense3d.vis.colors import height_colors
from dense3d.vis.labels import draw_labels
from dense3d.utils.io import atomic_write

__all__ = ["BoxLayer", "SceneView", "RenderedScene", "render_scene", "show_scene", "default_view", "save_png"]


@dataclass
class BoxLayer:
    """Boxes drawn in one style.

    Attributes:
        boxes: the boxes.
        colors: (N, 3) RGB in [0, 1], one per box (class colours, or one colour for all).
        labels: N strings drawn next to the boxes (captions, class names), or empty.
        line_width: pixels.
    """

    boxes: Boxes3D
    colors: np.ndarray
    labels: Sequence[str] = ()
    line_width: float = 2.0


@dataclass
class SceneView:
    """A perspective camera: eye, look-at centre and up vector in the scene frame (metres)."""

    eye: tuple[float, float, float]
    center: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 60.0


@dataclass
class RenderedScene:
    """An image and the camera matrices (OpenGL convention) that produced it."""

    image: np.ndarray  # (H, W, 3) uint8
    view_matrix: np.ndarray  # (4, 4) world -> camera
    projection_matrix: np.ndarray  # (4, 4) camera -> clip

    def project(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3) scene points -> (M, 2) pixel coordinates (u right, v down) and (M,) bool in front
        of the camera."""
        H, W = self.image.shape[:2]
        homo = np.concatenate([xyz, np.ones((len(xyz), 1))], 1)  # (M, 4)
        clip = homo @ (self.projection_matrix @ self.view_matrix).T  # (M, 4)
        in_front = clip[:, 3] > 1e-6
        ndc = clip[:, :3] / np.where(in_front, clip[:, 3], 1.0)[:, None]  # (M, 3)
        u = (ndc[:, 0] + 1) / 2 * W
        v = (1 - ndc[:, 1]) / 2 * H
        return np.stack([u, v], 1), in_front


def default_view(points: np.ndarray, outdoor: bool | None = None) -> SceneView:
    """A chase view from above and behind (outdoor, LiDAR at the origin) or an oblique view of the
    whole room (indoor); ``outdoor`` is guessed from the extent when None. No points: a view of
    the 20 m around the origin."""
    xyz = points[:, :3]
    if len(xyz) == 0:  # an empty scan (or all points filtered away): percentiles of nothing fail
        xyz = np.array([[-10.0, -10.0, 0.0], [10.0, 10.0, 0.0]])
    lo, hi = np.percentile(xyz, 2, axis=0), np.percentile(xyz, 98, axis=0)
    extent = float(np.max(hi[:2] - lo[:2]))
    if outdoor is None:
        outdoor = extent > 25.0
    if outdoor:
        r = min(extent / 2, 40.0)
        return SceneView(eye=(-0.9 * r, -0.9 * r, 1.1 * r), center=(0.15 * r, 0.15 * r, 0.0))
    c = (lo + hi) / 2
    return SceneView(eye=(c[0] - 0.8 * extent, c[1] - 1.0 * extent, c[2] + 1.2 * extent), center=tuple(c))


def _box_lineset(o3d, boxes: Boxes3D, colors: np.ndarray):
    corners = boxes.corners().detach().cpu().double().numpy().reshape(-1, 3)  # (N, 8, 3) -> (N*8, 3)
    edges = np.asarray(BOX_EDGES)[None] + 8 * np.arange(len(boxes))[:, None, None]  # (N, 12, 2)
    ls = o3d.geometry.LineSet(o3d.utility.Vector3dVector(corners), o3d.utility.Vector2iVector(edges.reshape(-1, 2)))
    ls.colors = o3d.utility.Vector3dVector(np.repeat(np.asarray(colors, dtype=np.float64), 12, axis=0))
    return ls


def _point_cloud(o3d, points: np.ndarray, colors: np.ndarray | None):
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[:, :3].astype(np.float64)))
    if colors is None:
        colors = height_colors(points[:, 2])
    pc.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64))
    return pc


_RENDERER_OK: bool = False

_PROBE = (
    "import numpy as np, open3d as o3d\n"
    "r = o3d.visualization.rendering.OffscreenRenderer(8, 8)\n"
    "np.asarray(r.render_to_image())\n"
)


def check_offscreen_renderer() -> None:
    """Make sure Open3D's offscreen renderer starts, once per process.

    Without a usable Vulkan / EGL device Filament does not raise: it aborts the whole process
    (``utils::PostconditionPanic``, status 134), so a failed render could not be caught. The
    renderer is therefore first started in a child process.

    Raises:
        DependencyError: open3d is missing or its renderer does not start (one line, with the
            renderer's last message).
    """
    global _RENDERER_OK
    if _RENDERER_OK:
        return
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
        ok, lines = proc.returncode == 0, (proc.stderr or proc.stdout).strip().splitlines()
    except subprocess.TimeoutExpired:
        ok, lines = False, ["no image after 300 s"]
    if not ok:
        last = next((ln for ln in reversed(lines) if ln.strip() and not ln.startswith("in ")), "no message")
        raise DependencyError(
            "Open3D offscreen renderer", "Vulkan/EGL device",
            "a renderer that starts (Debian: libusb-1.0-0 libgl1 libegl1 mesa-vulkan-drivers libvulkan1)",
            got=last.strip())
    _RENDERER_OK = True


def render_scene(
    points: np.ndarray,
    point_colors: np.ndarray | None = None,
    layers: Sequence[BoxLayer] = (),
    view: SceneView | None = None,
    width: int = 1280,
    height: int = 960,
    point_size: float = 2.0,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    draw_text: bool = True,
) -> RenderedScene:
    """Render points and boxes offscreen.

    Args:
        points: (N, 3+) scene points.
        point_colors: (N, 3) RGB in [0, 1]; None colours by height.
        layers: box layers (e.g. ground truth in green, predictions in class colours).
        view: the camera; ``default_view(points)`` when None.
        draw_text: draw each layer's labels at the top centre of its boxes (after rendering,
            with PIL: Filament's offscreen renderer has no text).

    Raises:
        DependencyError: the offscreen renderer does not start (see ``check_offscreen_renderer``).
    """
    check_offscreen_renderer()
    import open3d as o3d

    view = view or default_view(points)
    renderer = o3d.visualization.rendering.OffscreenRenderer(width, height)
    try:
        scene = renderer.scene
        scene.set_background([*background, 1.0])
        # no tone mapping / anti-aliasing: colours in the PNG are exactly the colours asked for
        scene.view.set_post_processing(False)
        mat = o3d.visualization.rendering.MaterialRecord()
        mat.shader = "defaultUnlit"
        mat.point_size = float(point_size)
        scene.add_geometry("points", _point_cloud(o3d, points, point_colors), mat)
        for i, layer in enumerate(layers):
            if len(layer.boxes) == 0:
                continue
            line_mat = o3d.visualization.rendering.MaterialRecord()
            line_mat.shader = "unlitLine"
            line_mat.line_width = float(layer.line_width)
            scene.add_geometry(f"boxes{i}", _box_lineset(o3d, layer.boxes, layer.colors), line_mat)
        renderer.setup_camera(view.fov_deg, list(view.center), list(view.eye), list(view.up))
        image = np.asarray(renderer.render_to_image()).copy()
        cam = scene.camera
        rendered = RenderedScene(image, np.asarray(cam.get_view_matrix()), np.asarray(cam.get_projection_matrix()))
    finally:
        del renderer
    if draw_text:
        for layer in layers:
            if len(layer.labels) and len(layer.boxes):
                tops = layer.boxes.center.detach().cpu().double().numpy().copy()  # (N, 3)
                tops[:, 2] += layer.boxes.dims[:, 2].detach().cpu().double().numpy() / 2
                uv, ok = rendered.project(tops)
                rendered.image = draw_labels(rendered.image, uv[ok], [t for t, k in zip(layer.labels, ok) if k], layer.colors[ok])
    return rendered


def show_scene(points: np.ndarray, point_colors: np.ndarray | None = None, layers: Sequence[BoxLayer] = ()) -> bool:
    """Open an interactive Open3D window when a display exists; returns False (and does nothing)
    without one."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False
    import open3d as o3d

    geoms = [_point_cloud(o3d, points, point_colors)]
    geoms += [_box_lineset(o3d, layer.boxes, layer.colors) for layer in layers if len(layer.boxes)]
    o3d.visualization.draw_geometries(geoms, window_name="dense3d")
    return True


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 image as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_write(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")
    return path
