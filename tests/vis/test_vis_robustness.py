"""Pictures of awkward input: no renderer, boxes partly behind the camera, blank captions, empty scenes."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dense3d.structures import Boxes3D

RED = np.array([1.0, 0.0, 0.0])


def test_render_without_a_vulkan_device_is_one_line_error_not_an_abort(tmp_path):
    # Filament aborts the process (SIGABRT, status 134, a C++ panic) when it finds no Vulkan
    # device; render_scene must say so in one line instead (or render, where Open3D finds another
    # backend on this machine).
    script = textwrap.dedent("""
        import sys, numpy as np
        from dense3d.errors import DependencyError
        from dense3d.vis import render_scene
        try:
            render_scene(np.random.rand(50, 3) * 10, width=32, height=24)
        except DependencyError as e:
            print(f"DependencyError: {e}", file=sys.stderr)
            sys.exit(2)
    """)
    env = dict(os.environ, VK_ICD_FILENAMES=str(tmp_path / "no_such_icd.json"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 2), f"status {proc.returncode}: {proc.stderr[-500:]}"
    if proc.returncode == 2:
        line = [ln for ln in proc.stderr.splitlines() if ln.startswith("DependencyError")]
        assert len(line) == 1 and "Open3D offscreen renderer" in line[0] and "vulkan" in line[0].lower()


def _red(img):
    return (img[..., 0] > 200) & (img[..., 1] < 70) & (img[..., 2] < 70)


def test_box_partly_behind_the_camera_is_drawn_clipped():
    from dense3d.vis import draw_boxes_on_image, project_points

    # camera frame = LiDAR frame (z forward), f = 50 px, principal point at the image centre
    lidar2img = np.array([[50.0, 0, 200, 0], [0, 50, 200, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    # spans depth -1.5 .. 2.5 m: its four far corners (depth 2.5) are in view, the rest is behind
    box = Boxes3D.from_scannet([[0.0, 0.0, 0.5, 2.0, 2.0, 4.0]])
    out = draw_boxes_on_image(np.zeros((400, 400, 3), np.uint8), box, lidar2img, RED[None], ["a box"])
    red = _red(out)
    assert red.sum() > 200, "a box partly behind the camera vanished"
    far = box.corners()[0].double().numpy()
    far = far[far[:, 2] > 2.0]  # (4, 3) depth 2.5
    uv, _ = project_points(far, lidar2img)
    for u, v in np.round(uv).astype(int):
        assert red[v - 2 : v + 3, u - 2 : u + 3].any()
    # the side edges end where they cross depth 0.5 (x, y = +-1 -> 200 +- 100 px), not beyond
    cut, _ = project_points(np.array([[1.0, 1.0, 0.5], [-1.0, -1.0, 0.5]]), lidar2img)
    for u, v in np.round(cut).astype(int):
        assert red[v - 3 : v + 4, u - 3 : u + 4].any()
    assert not red[:, :95].any() and not red[:, 306:].any()
    # wholly behind: nothing drawn
    behind = Boxes3D.from_scannet([[0.0, 0.0, -3.0, 2.0, 2.0, 2.0]])
    assert not _red(draw_boxes_on_image(np.zeros((400, 400, 3), np.uint8), behind, lidar2img, RED[None])).any()


def test_blank_captions_are_skipped_not_a_crash():
    from dense3d.vis.labels import draw_labels

    img = np.zeros((60, 60, 3), np.uint8)
    out = draw_labels(img, np.array([[10, 40], [20, 40], [30, 40]]), ["  ", "\n", ""], np.tile(RED, (3, 1)))
    assert (out == img).all()


def test_default_view_of_an_empty_scene():
    from dense3d.vis import default_view

    view = default_view(np.zeros((0, 3), np.float32))
    assert np.isfinite(view.eye).all() and np.isfinite(view.center).all()
