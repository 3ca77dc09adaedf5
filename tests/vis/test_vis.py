"""Pictures of real scenes: not blank, and the boxes are drawn where they project."""
import pickle

import numpy as np
import pytest
import torch

from dense3d.structures import BOX_EDGES, Boxes3D, Events
from dense3d.vis import (
    BoxLayer,
    draw_boxes_on_image,
    plot_bev,
    plot_timeline,
    project_points,
    render_scene,
    save_png,
)

RED = np.array([1.0, 0.0, 0.0])


def _is_red(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] > 200) & (pixels[..., 1] < 70) & (pixels[..., 2] < 70)


def _edge_samples(uv_corners: np.ndarray, n: int = 12) -> np.ndarray:
    """(8, 2) projected corners -> (12 * n, 2) pixels along the projected edges."""
    t = np.linspace(0.1, 0.9, n)[:, None]
    return np.concatenate([uv_corners[a] * (1 - t) + uv_corners[b] * t for a, b in BOX_EDGES], 0)


def _red_near(image: np.ndarray, uv: np.ndarray, radius: int = 2) -> np.ndarray:
    H, W = image.shape[:2]
    red = _is_red(image)
    out = np.zeros(len(uv), bool)
    for k, (u, v) in enumerate(np.round(uv).astype(int)):
        win = red[max(v - radius, 0) : v + radius + 1, max(u - radius, 0) : u + radius + 1]
        out[k] = win.any()
    return out


def _check_render(rendered, boxes: Boxes3D, min_boxes: int):
    img = rendered.image
    H, W = img.shape[:2]
    assert img.std() > 10, "blank image"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20, "too few colours: nothing rendered"
    corners = boxes.corners().double().numpy()  # (N, 8, 3)
    hits, total, n_boxes = 0, 0, 0
    near_edges = np.zeros((H, W), bool)
    for c in corners:
        uv, ok = rendered.project(c)
        if not ok.all() or (uv < 0).any() or (uv[:, 0] >= W).any() or (uv[:, 1] >= H).any():
            continue  # only boxes wholly in view
        if np.ptp(uv[:, 0]) < 4 and np.ptp(uv[:, 1]) < 4:
            continue  # too small to have visible edges
        n_boxes += 1
        samples = _edge_samples(uv)
        hits += int(_red_near(img, samples).sum())
        total += len(samples)
        for u, v in np.round(_edge_samples(uv, 60)).astype(int):
            near_edges[max(v - 6, 0) : v + 7, max(u - 6, 0) : u + 7] = True
    assert n_boxes >= min_boxes, f"only {n_boxes} boxes in view"
    assert hits / total > 0.7, f"box colour found at {hits}/{total} projected edge pixels"
    stray = _is_red(img) & ~near_edges
    assert stray.sum() < 0.002 * H * W, f"{stray.sum()} red pixels away from every projected box"


def _nuscenes(samples):
    info = pickle.load(open(samples / "nuscenes" / "n015-2018-07-24-11-22-45+0800.pkl", "rb"))["data_list"][0]
    pts = np.fromfile(samples / "nuscenes" / info["lidar_points"]["lidar_path"], dtype=np.float32).reshape(-1, 5)
    boxes = Boxes3D.from_mmdet3d(np.array([i["bbox_3d"] for i in info["instances"]]), origin=(0.5, 0.5, 0.5))
    return info, pts, boxes


@pytest.mark.slow
def test_render_real_nuscenes_with_boxes(samples, tmp_path):
    info, pts, boxes = _nuscenes(samples)
    colors = np.tile(RED, (len(boxes), 1))
    r = render_scene(pts, None, [BoxLayer(boxes, colors, line_width=2)], width=960, height=720, draw_text=False)
    _check_render(r, boxes, min_boxes=10)
    path = save_png(r.image, tmp_path / "nuscenes.png")
    assert path.stat().st_size > 10_000
    # with captions: the labels add pixels but leave the boxes where they were
    labeled = render_scene(pts, None, [BoxLayer(boxes[:5], colors[:5], [f"object {i}" for i in range(5)])], width=960, height=720)
    assert (labeled.image != render_scene(pts, None, [BoxLayer(boxes[:5], colors[:5])], width=960, height=720, draw_text=False).image).any()


@pytest.mark.slow
def test_render_real_scannet_with_boxes(samples, tmp_path):
    pts = np.fromfile(samples / "scannet" / "scene0000_00.bin", dtype=np.float32).reshape(-1, 6)
    assert len(pts) == 40684
    # The sample ships no annotation, so the boxes come from the scan itself: the room's
    # extent, and the extent of the furniture-height points (0.2-1.5 m) in each quadrant.
    xyz = pts[:, :3]
    lo, hi = xyz.min(0), xyz.max(0)
    aa = [np.concatenate([(lo + hi) / 2, hi - lo])]
    mid = (lo + hi) / 2
    body = xyz[(xyz[:, 2] > 0.2) & (xyz[:, 2] < 1.5)]
    for qx in (0, 1):
        for qy in (0, 1):
            sel = body[((body[:, 0] > mid[0]) == qx) & ((body[:, 1] > mid[1]) == qy)]
            q_lo, q_hi = np.percentile(sel, 5, axis=0), np.percentile(sel, 95, axis=0)
            aa.append(np.concatenate([(q_lo + q_hi) / 2, q_hi - q_lo]))
    boxes = Boxes3D.from_scannet(np.stack(aa))
    r = render_scene(pts, pts[:, 3:6] / 255.0, [BoxLayer(boxes, np.tile(RED, (len(boxes), 1)))], width=960, height=720, draw_text=False)
    _check_render(r, boxes, min_boxes=3)
    save_png(r.image, tmp_path / "scannet.png")


def test_camera_image_with_projected_boxes(samples, tmp_path):
    from PIL import Image

    info, _, boxes = _nuscenes(samples)
    cam = info["images"]["CAM_FRONT"]
    image = np.asarray(Image.open(samples / "nuscenes" / cam["img_path"]).convert("RGB"))
    cam2img = np.eye(4)
    cam2img[:3, :3] = np.asarray(cam["cam2img"])
    lidar2img = cam2img @ np.asarray(cam["lidar2cam"])
    colors = np.tile(RED, (len(boxes), 1))
    out = draw_boxes_on_image(image, boxes, lidar2img, colors, line_width=3)
    H, W = out.shape[:2]
    corners = boxes.corners().double().numpy()
    hits = total = 0
    for c in corners:
        uv, depth = project_points(c, lidar2img)
        if (depth < 0.5).any() or (uv < 0).any() or (uv[:, 0] >= W).any() or (uv[:, 1] >= H).any():
            continue
        s = _edge_samples(uv)
        hits += int(_red_near(out, s, radius=1).sum())
        total += len(s)
    assert total > 0 and hits / total > 0.95
    save_png(out, tmp_path / "cam_front.png")


def test_bev_and_timeline_plots(tmp_path):
    from PIL import Image

    pts = np.random.default_rng(0).uniform(-20, 20, size=(2000, 3))
    boxes = Boxes3D([[0, 0, 0, 4, 2, 1.5, 0.3], [5, -3, 0, 2, 1, 1, 1.2]])
    p = plot_bev(pts, [(boxes, np.tile(RED, (2, 1)), ["a red car", "a bike"])], tmp_path / "bev.png", extent=25)
    img = np.asarray(Image.open(p).convert("RGB"))
    assert img.std() > 10 and _is_red(img).sum() > 50
    sr = 16000
    t = np.arange(sr * 4) / sr
    wav = np.stack([np.sin(2 * np.pi * 880 * t) * ((t > 1) & (t < 2))] * 4).astype(np.float32)
    p = plot_timeline(wav, sr, (Events([[1.0, 2.0]]), ["a beep"]), (Events([[1.1, 2.1]]), ["a beep"]), tmp_path / "tl.png")
    img = np.asarray(Image.open(p).convert("RGB"))
    assert img.std() > 10 and img.shape[1] > 500
