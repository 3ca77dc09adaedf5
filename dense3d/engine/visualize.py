"""``dense3d vis``: pictures of a scene with its ground-truth and predicted boxes and captions.

    dense3d vis --info infos.pkl [--data-root DIR] [--index 0] [--pred predictions.json] --out scene.png
    dense3d vis --points scan.bin --dims 6 [--pred predictions.json --scene ID] --out scan.png
    dense3d vis --points scans/scene0000_00_aligned_vert.npy [--pred predictions.json] --out scan.png

``--info`` reads an mmdet3d v1.1 info file (nuScenes / TOD3Cap, the synthetic outdoor set);
``--points`` a raw float32 point file (ScanNet ``.bin``: 6 values per point, colours used) or
ScanRefer's ``{scene}_aligned_vert.npy`` (the synthetic indoor set's scans; ``--dims`` unused).
Predictions are the evaluation tools' 3D format (docs/eval.md). Writes an Open3D render
(offscreen, or an interactive window too with ``--show`` where a display exists), a BEV plot
beside it (``*_bev.png``) and, for infos with cameras, the front camera with projected boxes
(``*_cam.png``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dense3d.errors import PredictionFormatError
from dense3d.utils.io import check_output_path

__all__ = ["main"]


def _predictions(path: str | None, scene: str) -> tuple[list, list[str], list[str]]:
    """Boxes (7 numbers each), captions and labels of ``scene`` in a predictions file, read with
    the evaluation tools' parser (same format, same one-line errors)."""
    from dense3d.eval.formats import parse_box_predictions, read_json

    if path is None:
        return [], [], []
    preds = parse_box_predictions(path, read_json(path), need_caption=False, for_what=" (dense3d vis draws 3D boxes)")
    if scene not in preds:
        raise PredictionFormatError(path, scene, "predictions for this scene id", got=f"{len(preds)} other scenes")
    recs = preds[scene]
    return [r.box.params.tolist() for r in recs], [r.caption for r in recs], [r.label or "" for r in recs]


def main(argv: list[str] | None = None) -> int:
    from dense3d.data.readers import read_npy, read_points_bin
    from dense3d.structures import Boxes3D
    from dense3d.vis import GT_COLOR, BoxLayer, draw_boxes_on_image, label_colors, plot_bev, render_scene, save_png, show_scene

    # the docstring's first line, as plain text: ``...`` is markup for Sphinx, not for a terminal
    ap = argparse.ArgumentParser(prog="dense3d vis", description=__doc__.splitlines()[0].replace("``", ""))
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--info", help="mmdet3d v1.1 info pkl (nuScenes / TOD3Cap format)")
    src.add_argument("--points", help="raw float32 point file, or a ScanRefer {scene}_aligned_vert.npy (scene id: its stem's scene)")
    ap.add_argument("--data-root", default=None, help="folder the info's file names are relative to (default: the info's folder)")
    ap.add_argument("--index", type=int, default=0, help="sample of the info file")
    ap.add_argument("--dims", type=int, default=6, help="values per point of --points (ScanNet .bin: 6)")
    ap.add_argument("--pred", default=None, help="predictions JSON (docs/eval.md 3D format)")
    ap.add_argument("--scene", default=None, help="scene id in --pred (default: the sample's token / the file's stem)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--show", action="store_true", help="also open an interactive window when a display exists")
    args = ap.parse_args(argv)

    out = check_output_path(args.out, "dense3d vis")
    cams = None
    if args.info:
        from dense3d.data.datasets import TOD3CapDataset

        root = args.data_root or str(Path(args.info).parent)
        ds = TOD3CapDataset(args.info, data_root=root, sensors=("lidar", "camera"), sweeps=0, data_prefix=None)
        sample = ds[args.index]
        pts = sample.points.points.numpy()
        gt = Boxes3D._wrap(sample.boxes.boxes.tensor[:, :7])
        scene = args.scene or sample.sample_id
        colors = None
        cams = sample.cameras
        known_classes = tuple(sample.boxes.class_names)
    elif args.points.endswith(".npy"):  # ScanRefer's {scene}_aligned_vert.npy (N, 9) x, y, z, r, g, b, normal: what the indoor set reads
        pts = read_npy(args.points, "points", ncols=3).astype(np.float32)
        gt = Boxes3D(torch.zeros(0, 7))
        scene = args.scene or Path(args.points).stem.removesuffix("_aligned_vert")  # the scene id dense3d predict writes
        colors = pts[:, 3:6] / 255.0 if pts.shape[1] >= 6 else None
        known_classes = ()
    else:
        pts = read_points_bin(args.points, args.dims).numpy()
        gt = Boxes3D(torch.zeros(0, 7))
        scene = args.scene or Path(args.points).stem
        colors = pts[:, 3:6] / 255.0 if args.dims >= 6 else None
        known_classes = ()

    boxes, captions, labels = _predictions(args.pred, scene)
    pred = Boxes3D(boxes, source=f"{args.pred}:{scene}") if boxes else Boxes3D(torch.zeros(0, 7))
    pred_colors = label_colors(labels, known_classes)
    layers = [BoxLayer(gt, np.tile(np.array(GT_COLOR), (len(gt), 1)), line_width=1.5), BoxLayer(pred, pred_colors, captions, line_width=2.5)]
    rendered = render_scene(pts, colors, layers)
    save_png(rendered.image, out)
    print(f"wrote {out}")
    bev = plot_bev(pts, [(gt, layers[0].colors, []), (pred, pred_colors, captions)], out.with_name(out.stem + "_bev.png"), title=scene)
    print(f"wrote {bev}")
    if cams is not None and len(cams.images):
        img = (cams.images[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)  # (3, H, W) -> (H, W, 3)
        both = Boxes3D.cat([gt, pred])
        cols = np.concatenate([layers[0].colors, pred_colors], 0)
        cam_png = save_png(draw_boxes_on_image(img, both, cams.lidar2img[0].numpy(), cols, [""] * len(gt) + captions),
                           out.with_name(out.stem + "_cam.png"))
        print(f"wrote {cam_png}")
    if args.show:
        show_scene(pts, colors, layers)
    return 0
