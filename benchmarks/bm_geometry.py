"""Geometry and voxelization ops: dense3d._C (ext) vs the pure-torch references, in one run.

Cases (CPU; and CUDA too when a GPU is present):

* rotated BEV IoU and 3D IoU, 500 x 500 boxes (a nuScenes-like scene: 60 m around the car);
* rotated NMS of 1000 boxes (clustered, as a detector's proposals are), threshold 0.2;
* voxelization of the real nuScenes sweep (~35k points, hard 0.075 m x 0.2 m and dynamic);
* points_in_boxes of the sweep against its 69 annotated boxes.

Each case runs both backends, checks they agree, keeps the best of ``BM_REPEATS`` (default 3)
timings, prints a table and writes ``bm_geometry.json`` beside this file.
Run: ``.venv/bin/python benchmarks/bm_geometry.py`` (``BM_OUT=path.json`` writes the JSON there;
``BM_THREADS=1`` pins torch and OpenMP to one
thread: on a machine loaded by other jobs, parallel regions of a few ms then stop waiting on
descheduled threads, and the ratios become repeatable).
"""
from __future__ import annotations

import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from dense3d import ops
from dense3d.utils.env import samples_dir
from dense3d.utils.io import atomic_write_json

REPEATS = int(os.environ.get("BM_REPEATS", "3"))
if os.environ.get("BM_THREADS"):  # e.g. BM_THREADS=1 on a machine shared with other jobs
    torch.set_num_threads(int(os.environ["BM_THREADS"]))


def scene_boxes(n: int, seed: int, clustered: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if clustered:
        centres = (torch.rand(n // 10, 2, generator=g) * 2 - 1) * 50
        xy = centres[torch.randint(0, n // 10, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 0.7
    else:
        xy = (torch.rand(n, 2, generator=g) * 2 - 1) * 60
    z = torch.randn(n, 1, generator=g) * 0.5
    size = torch.rand(n, 3, generator=g) * torch.tensor([4.0, 1.5, 1.5]) + torch.tensor([0.5, 0.5, 1.0])
    yaw = (torch.rand(n, 1, generator=g) * 2 - 1) * math.pi
    return torch.cat([xy, z, size, yaw], 1)


def best_time(fn, device) -> float:
    fn()  # warm-up (and CUDA context / kernel load)
    best = float("inf")
    for _ in range(REPEATS):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def agree(a, b) -> bool:
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        if x.is_floating_point():
            if not torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-6):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def cases(device: str):
    a, b = scene_boxes(500, 0).to(device), scene_boxes(500, 1).to(device)
    props = scene_boxes(1000, 2, clustered=True).to(device)
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(3)).to(device)
    out = [
        ("boxes_iou_bev 500x500", lambda be: ops.boxes_iou_bev(a, b, backend=be)),
        ("boxes_iou_3d 500x500", lambda be: ops.boxes_iou_3d(a, b, backend=be)),
        ("nms_bev 1000 boxes", lambda be: ops.nms_bev(props, scores, 0.2, backend=be)),
    ]
    root = samples_dir()
    if root is not None and list(root.glob("nuscenes/*LIDAR_TOP*.pcd.bin")):
        pts = torch.from_numpy(np.fromfile(next(root.glob("nuscenes/*LIDAR_TOP*.pcd.bin")), dtype=np.float32).reshape(-1, 5)).to(device)
        with open(next(root.glob("nuscenes/*.pkl")), "rb") as f:
            inst = pickle.load(f)["data_list"][0]["instances"]
        gt = torch.tensor([i["bbox_3d"] for i in inst], dtype=torch.float32).to(device)
        vs, pr = [0.075, 0.075, 0.2], [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
        n = pts.shape[0]
        out += [
            (f"voxelize hard {n} pts", lambda be: ops.voxelize(pts, vs, pr, "hard", 10, 120000, backend=be)),
            (f"voxelize dynamic {n} pts", lambda be: ops.voxelize(pts, vs, pr, "dynamic", backend=be)),
            (f"points_in_boxes {n} x {gt.shape[0]}", lambda be: ops.points_in_boxes(pts, gt, backend=be)),
        ]
    else:
        print("real samples not found: voxelize / points_in_boxes cases skipped")
    return out


def main() -> None:
    out = Path(os.environ.get("BM_OUT") or Path(__file__).with_name("bm_geometry.json"))
    if not ops.ext_available():
        raise SystemExit(f"bm_geometry needs dense3d._C: {ops.backend_info()}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ops.ext_has_cuda() else [])
    rows = []
    for device in devices:
        for name, fn in cases(device):
            ok = agree(fn("ext"), fn("torch"))
            t_ext, t_ref = best_time(lambda: fn("ext"), device), best_time(lambda: fn("torch"), device)
            rows.append({"device": device, "case": name, "ext_ms": 1e3 * t_ext, "torch_ms": 1e3 * t_ref,
                         "ratio_ext_over_torch": t_ext / t_ref, "agree": ok})
    print(f"{'device':6} {'case':34} {'ext ms':>10} {'torch ms':>10} {'ext/torch':>10} agree")
    for r in rows:
        print(f"{r['device']:6} {r['case']:34} {r['ext_ms']:10.2f} {r['torch_ms']:10.2f} {r['ratio_ext_over_torch']:10.4f} {r['agree']}")
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": REPEATS,
            "gpu": torch.cuda.get_device_name() if "cuda" in devices else None}
    atomic_write_json(out, {"meta": meta, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
