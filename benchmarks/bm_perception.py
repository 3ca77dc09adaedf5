"""Per-stage time and peak memory of a perception forward pass at nuScenes scale, on CPU.

Input: the real nuScenes keyframe's LiDAR sweep (34,688 points, topped up to 35,000 with
jittered copies) and its six 900 x 1600 cameras resized to the configured 256 x 704, through
``configs/model/proposals/boxes_nuscenes.yaml`` (random init, eval mode, batch 1). Also the
BEV-pool op alone (ext vs torch reference, forward + backward) on the LSS input of that config,
and the audio-visual event detector (``events_av.yaml``) on a 10 s 4-mic clip with 16 frames.

Peak memory of a stage = the highest resident set size sampled (every 1 ms) during the stage
minus the RSS when it started (the script re-executes itself with glibc's mmap threshold
fixed at 64 KiB so freed tensors leave the RSS at once). Times are medians of ``--repeat`` runs after one warm-up.

    python benchmarks/bm_perception.py [--repeat 3] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from dense3d.ops import bev_pool  # noqa: E402
from dense3d.utils.env import samples_dir  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Samples the RSS every millisecond in a thread while active."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __enter__(self):
        self.start = rss()
        self.peak = self.start
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss())


class Stages:
    def __init__(self):
        self.times: dict[str, list[float]] = {}
        self.mem: dict[str, int] = {}

    @contextmanager
    def __call__(self, name: str):
        with PeakRSS() as p:
            t = time.perf_counter()
            yield
            dt = time.perf_counter() - t
        self.times.setdefault(name, []).append(dt)
        self.mem[name] = max(self.mem.get(name, 0), p.peak - p.start)


def compose_model(option: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"+model/proposals={option}"])
    return instantiate(cfg.model.proposals)


def nuscenes_batch(n_points: int, image_size=(256, 704)):
    sys.path.insert(0, str(ROOT))
    from tests.models.real_samples import collate, nuscenes_sample

    s = samples_dir()
    if s is None:
        raise SystemExit("real samples not found (../shared/samples or DENSE3D_SAMPLES)")
    full = nuscenes_sample(s, image_size=(900, 1600))  # the original images, intrinsics as given
    batch = collate([full])
    pts = batch.points
    if pts.shape[0] < n_points:
        g = torch.Generator().manual_seed(0)
        extra = pts[torch.randint(0, pts.shape[0], (n_points - pts.shape[0],), generator=g)].clone()
        extra[:, 1:4] += 0.05 * torch.randn(extra.shape[0], 3, generator=g)
        pts = torch.cat([pts, extra])
    batch.points = pts[:n_points]
    return batch, image_size


def run_boxes(det, batch, image_size, st: Stages):
    enc_l, enc_c = det.lidar_encoder, det.camera_encoder
    B = 1
    with st("camera: resize 6 x 900x1600 -> configured"):
        imgs = F.interpolate(batch.images.flatten(0, 1), size=image_size, mode="bilinear", align_corners=False)
        imgs = imgs.view(B, 6, 3, *image_size)  # (B * V, 3, H, W) -> (B, V, 3, H, W)
        scale = torch.diag(torch.tensor([image_size[1] / 1600, image_size[0] / 900, 1.0, 1.0]))
        lidar2img = scale @ batch.lidar2img
    with st("lidar: voxelize + VFE"):
        from dense3d.models.encoders.lidar.voxel_encoder import split_batch_points

        feats, coords = enc_l.voxel_encoder(split_batch_points(batch.points, B))
    with st("lidar: sparse 3D backbone"):
        x = enc_l.sparse_encoder(feats, coords, B)
    with st("lidar: BEV backbone + neck"):
        bev_l = enc_l.bev_backbone(x)
    with st("camera: ResNet-18 + neck"):
        f = enc_c.image_features(imgs)
    with st("camera: LSS lift + bev_pool"):
        bev_c = enc_c.view_transform(f, lidar2img, image_size)
    with st("fusion"):
        bev = det.fuser({"lidar": bev_l, "camera": bev_c})
    with st("box head"):
        pred = det.box_head(bev)
    with st("decode + rotated NMS"):
        dets = det.box_head.decode(pred)
    with st("region features"):
        regions = det.regions(bev, dets)
    return feats.shape[0], regions


def bench_bev_pool(det, image_size, repeat):
    vt = det.camera_encoder.view_transform
    fH, fW = image_size[0] // 16, image_size[1] // 16
    N = 6 * vt.num_depth_bins * fH * fW
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(N, vt.out_channels, generator=g)
    H, W = vt.grid_size
    coords = torch.stack([torch.zeros(N, dtype=torch.long), torch.randint(-20, H + 20, (N,), generator=g), torch.randint(-20, W + 20, (N,), generator=g)], 1)
    out = {}
    for backend in ("ext", "torch"):
        fw, bw = [], []
        for i in range(repeat + 1):
            f = feats.clone().requires_grad_(True)
            t = time.perf_counter()
            y = bev_pool(f, coords, 1, (H, W), backend=backend)
            t1 = time.perf_counter()
            y.sum().backward()
            t2 = time.perf_counter()
            if i:
                fw.append(t1 - t)
                bw.append(t2 - t1)
        out[backend] = (statistics.median(fw), statistics.median(bw))
    return N, vt.out_channels, out


def run_events(det, st: Stages):
    sys.path.insert(0, str(ROOT))
    from tests.models.av_clips import av_batch

    batch = av_batch([(1.0, 2.0, 5.0, 0)], duration=10.0, size=224, frames=16)
    with st("events: audio encoder (10 s, 4 mics)"):
        a = det.audio_encoder(batch)
    with st("events: video encoder (16 frames 224^2)"):
        v = det.video_encoder(batch, a.times, a.mask)
    with st("events: temporal fuser + event head"):
        fused = det.temporal_fuser(a.features, v.features, a.times, a.mask)
        pred = det.event_head(fused, a.times, a.mask)
        det.event_head.regions(pred, fused, a.times, torch.tensor([10.0]))


def main():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc: serve every allocation >= 64 KiB with its own mmap and give it back on free,
        # so the RSS follows the live tensors and a stage's RSS peak is its real peak
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points", type=int, default=35000)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    det = compose_model("boxes_nuscenes").eval()
    ev = compose_model("events_av").eval()
    batch, image_size = nuscenes_batch(args.points)
    st = Stages()
    with torch.no_grad():
        for i in range(args.repeat + 1):
            s = Stages() if i == 0 else st  # the first run warms up
            with s("TOTAL boxes forward"):
                n_vox, regions = run_boxes(det, batch, image_size, s)
            with s("TOTAL events forward"):
                run_events(ev, s)
    rows = [(k, 1000 * statistics.median(v), st.mem[k] / 2**20) for k, v in st.times.items()]
    print(f"\nperception forward on CPU ({args.threads} threads), {args.points} points -> {n_vox} voxels, 6 cameras {image_size}, median of {args.repeat}")
    print(f"{'stage':48s} {'ms':>10s} {'peak MiB':>10s}")
    for k, ms, mb in rows:
        print(f"{k:48s} {ms:10.1f} {mb:10.1f}")
    N, C, bp = bench_bev_pool(det, image_size, args.repeat)
    print(f"\nbev_pool alone: {N} frustum points x {C} channels -> {det.camera_encoder.view_transform.grid_size} grid")
    print(f"{'backend':10s} {'forward ms':>12s} {'backward ms':>12s}")
    for b, (fw, bw) in bp.items():
        print(f"{b:10s} {1000 * fw:12.1f} {1000 * bw:12.1f}")
    ratio = (bp["torch"][0] + bp["torch"][1]) / (bp["ext"][0] + bp["ext"][1])
    print(f"ext speed-up over torch (fwd + bwd): {ratio:.2f}x")
    result = {
        "threads": args.threads,
        "points": args.points,
        "voxels": n_vox,
        "image_size": list(image_size),
        "regions": int(regions.mask.sum()),
        "stages": {k: {"ms": ms, "peak_mib": mb} for k, ms, mb in rows},
        "bev_pool": {"points": N, "channels": C, **{b: {"forward_ms": 1000 * fw, "backward_ms": 1000 * bw} for b, (fw, bw) in bp.items()}, "speedup_fwd_bwd": ratio},
    }
    print(json.dumps(result))
    if args.json:
        from dense3d.utils.io import atomic_write

        with atomic_write(args.json) as f:
            f.write(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
