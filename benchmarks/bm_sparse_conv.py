"""Sparse conv speed: dense3d vs spconv 2.3.8 on voxels of the real nuScenes sweep.

Cases: SubMConv3d (3x3x3) and strided SparseConv3d (3x3x3, stride 2, padding 1), C -> C channels
for C in {16, 64, 128}, on the single sweep at 0.1 m (~15k voxels) and on ~100k voxels (the
sweep stacked with jittered copies, like 10-sweep nuScenes input). Measured in one run:

* forward, both libraries, each call on a fresh tensor (so both build their kernel map);
* forward with the kernel map already cached (ours), our GFLOP/s there, and the kernel-map
  build time; GEMM time of the same per-offset products (torch.mm on gathered buffers), so the
  rest (gather + scatter + overhead) is visible;
* forward + backward (ours; spconv's backward raises on a CPU-only machine: reported as such);
* torch.mm GFLOP/s on an (N, C) @ (C, C) product in the same run (the practical ceiling);
* the largest difference between spconv's and our outputs (spconv's CPU forward races with
  more than one thread; see tests/ops/test_sparse_conv_spconv.py).

Times are the minimum over repetitions (other processes share this machine). Prints a table and
writes JSON (default benchmarks/results/bm_sparse_conv.json).

``--device cuda`` (a GPU and dense3d._C built with CUDA) measures the CUDA kernels instead, on the
same inputs and cases: forward on a fresh tensor, the kernel-map build, forward with the map
cached (float32 and float16), the per-offset GEMMs alone, torch.mm GFLOP/s on the GPU, forward +
backward, and, in the same run, our CPU kernels' forward (all threads) for the GPU/CPU ratio and
the largest difference between the GPU and CPU outputs. spconv is not measured there (its CUDA
wheel is not installed where our GPU runs happen). Default output:
benchmarks/results/bm_sparse_conv_cuda.json.

    python benchmarks/bm_sparse_conv.py [--quick] [--threads N] [--device cpu|cuda] [--out PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import platform
import sys
import time

import numpy as np
import torch

from dense3d.ops import SparseConv3d, SparseTensor, SubMConv3d, backend_info, ext_has_cuda, load_spconv_weight
from dense3d.ops.sparse import build_kernel_map, sparse_conv
from dense3d.utils.env import samples_dir
from dense3d.utils.io import atomic_write_json

PC_RANGE = np.array([-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
VOXEL = 0.1


def voxel_indices(points: np.ndarray) -> np.ndarray:
    """Floor-divide + unique voxelization at 0.1 m: (V, 3) int64 (z, y, x) sites in PC_RANGE."""
    lo, hi = PC_RANGE[:3], PC_RANGE[3:]
    pts = points[np.all((points[:, :3] >= lo) & (points[:, :3] < hi), axis=1)]
    zyx = np.floor((pts[:, :3] - lo) / VOXEL).astype(np.int64)[:, ::-1]  # (x, y, z) -> (z, y, x)
    return np.unique(zyx, axis=0)


def load_inputs(target_large: int = 100_000):
    """(name, indices (V, 4) int32, spatial_shape) for the single sweep and ~100k stacked voxels."""
    root = samples_dir()
    paths = sorted(glob.glob(str(root / "nuscenes" / "*LIDAR_TOP*.pcd.bin"))) if root else []
    if not paths:
        sys.exit("bm_sparse_conv: no nuScenes LIDAR_TOP sweep found under the samples folder (../shared/samples)")
    pts = np.fromfile(paths[0], dtype=np.float32).reshape(-1, 5)[:, :3]
    shape = tuple(int(round(v)) for v in ((PC_RANGE[3:] - PC_RANGE[:3]) / VOXEL)[::-1])
    single = voxel_indices(pts)
    # Stack jittered copies (sigma 0.1 m, small yaw and shift per copy) until ~target_large voxels.
    rng = np.random.default_rng(0)
    copies = [pts]
    large = single
    while len(large) < target_large:
        yaw = rng.uniform(-0.02, 0.02)
        rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]], np.float32)
        copies.append(pts @ rot.T + rng.normal(0, 0.1, pts.shape).astype(np.float32) + rng.uniform(-0.3, 0.3, 3).astype(np.float32))
        large = voxel_indices(np.concatenate(copies))
    out = []
    for name, zyx in [(f"sweep ({len(single) // 1000}k)", single), (f"stacked x{len(copies)} ({len(large) // 1000}k)", large)]:
        idx = np.concatenate([np.zeros((len(zyx), 1), np.int64), zyx], axis=1)
        out.append((name, torch.from_numpy(idx).to(torch.int32).contiguous(), shape))
    return out


def best_ms(fn, reps: int, cuda: bool = False) -> float:
    """Minimum wall time of ``fn`` in ms; with ``cuda`` the GPU is synchronised around each call."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()  # warm-up (and, on the GPU, kernel load and allocator growth)
    ts = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3


def run_case(kind: str, c: int, idx: torch.Tensor, shape, reps: int, spconv):
    torch.manual_seed(0)
    if kind == "subm":
        ours = SubMConv3d(c, c, 3, bias=False)
        theirs = spconv.SubMConv3d(c, c, 3, bias=False) if spconv else None
    else:
        ours = SparseConv3d(c, c, 3, stride=2, padding=1, bias=False)
        theirs = spconv.SparseConv3d(c, c, 3, stride=2, padding=1, bias=False) if spconv else None
    if theirs is not None:
        load_spconv_weight(ours, theirs.weight.detach())
    feats = torch.randn(len(idx), c)
    fresh = lambda f=feats: SparseTensor(f, idx, shape, 1, validate=False)  # noqa: E731
    kmap = build_kernel_map(idx, shape, ours.kernel_size, ours.stride, ours.padding, ours.dilation, ours.subm)
    flops = 2.0 * kmap.num_pairs * c * c
    r = {"kind": kind, "channels": c, "voxels": len(idx), "out_voxels": kmap.num_out, "pairs": kmap.num_pairs}

    with torch.no_grad():
        r["ours_forward_ms"] = best_ms(lambda: ours(fresh()), reps)
        r["ours_map_ms"] = best_ms(lambda: build_kernel_map(idx, shape, ours.kernel_size, ours.stride, ours.padding, ours.dilation, ours.subm), reps)
        r["ours_forward_cached_map_ms"] = best_ms(lambda: sparse_conv(feats, ours.weight, None, kmap), reps)
        # The same per-offset GEMMs alone, on buffers of the gathered sizes.
        off = kmap.offsets.tolist()
        bufs = [(torch.randn(off[k + 1] - off[k], c), ours.weight[k]) for k in range(len(off) - 1) if off[k + 1] > off[k]]
        r["ours_gemm_only_ms"] = best_ms(lambda: [torch.mm(a, w) for a, w in bufs], reps)
        big = torch.randn(len(idx), c)
        r["torch_mm_gflops"] = 2.0 * len(idx) * c * c / best_ms(lambda: torch.mm(big, ours.weight[0]), reps) / 1e6
    r["ours_gflops_cached_map"] = flops / r["ours_forward_cached_map_ms"] / 1e6
    r["ours_fraction_of_mm"] = r["ours_gflops_cached_map"] / r["torch_mm_gflops"]

    f = feats.clone().requires_grad_(True)

    def fwd_bwd():
        y = ours(fresh(f))
        y.features.backward(torch.ones_like(y.features))

    r["ours_forward_backward_ms"] = best_ms(fwd_bwd, reps)

    if theirs is not None:
        mk = lambda f=feats: spconv.SparseConvTensor(f, idx, list(shape), 1)  # noqa: E731
        with torch.no_grad():
            r["spconv_forward_ms"] = best_ms(lambda: theirs(mk()), reps)
            y = ours(fresh())
            t = theirs(mk())
        r["ratio_forward"] = r["ours_forward_ms"] / r["spconv_forward_ms"]
        r["ratio_forward_cached_map"] = r["ours_forward_cached_map_ms"] / r["spconv_forward_ms"]
        r["max_abs_diff_vs_spconv"] = _max_diff(y, t)
        try:  # spconv prints a debug dump before it raises: keep the table readable
            ft = feats.clone().requires_grad_(True)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                theirs(mk(ft)).features.sum().backward()
            r["spconv_forward_backward"] = "ok"
        except Exception as e:  # noqa: BLE001 - we report whatever spconv raises
            r["spconv_forward_backward"] = f"fails: {type(e).__name__}: {str(e).splitlines()[0][:40]}"
    return r


def run_case_cuda(kind: str, c: int, idx: torch.Tensor, shape, reps: int):
    """One case on the GPU (our CUDA kernels), with our CPU kernels' forward in the same run."""
    torch.manual_seed(0)
    if kind == "subm":
        ours = SubMConv3d(c, c, 3, bias=False)
    else:
        ours = SparseConv3d(c, c, 3, stride=2, padding=1, bias=False)
    feats = torch.randn(len(idx), c)
    with torch.no_grad():
        y_cpu = ours(SparseTensor(feats, idx, shape, 1, validate=False))
        cpu_ms = best_ms(lambda: ours(SparseTensor(feats, idx, shape, 1, validate=False)), max(2, reps // 2))
    ours = ours.cuda()
    idx_g, feats_g = idx.cuda(), feats.cuda()
    fresh = lambda f=feats_g: SparseTensor(f, idx_g, shape, 1, validate=False)  # noqa: E731
    kmap = build_kernel_map(idx_g, shape, ours.kernel_size, ours.stride, ours.padding, ours.dilation, ours.subm)
    flops = 2.0 * kmap.num_pairs * c * c
    r = {"kind": kind, "channels": c, "voxels": len(idx), "out_voxels": kmap.num_out, "pairs": kmap.num_pairs,
         "cpu_forward_ms": cpu_ms}
    with torch.no_grad():
        r["ours_forward_ms"] = best_ms(lambda: ours(fresh()), reps, cuda=True)
        r["ours_map_ms"] = best_ms(lambda: build_kernel_map(idx_g, shape, ours.kernel_size, ours.stride, ours.padding, ours.dilation, ours.subm), reps, cuda=True)
        r["ours_forward_cached_map_ms"] = best_ms(lambda: sparse_conv(feats_g, ours.weight, None, kmap), reps, cuda=True)
        w16, f16 = ours.weight.half(), feats_g.half()
        r["ours_forward_cached_map_fp16_ms"] = best_ms(lambda: sparse_conv(f16, w16, None, kmap), reps, cuda=True)
        off = kmap.offsets.tolist()
        bufs = [(torch.randn(off[k + 1] - off[k], c, device="cuda"), ours.weight[k]) for k in range(len(off) - 1) if off[k + 1] > off[k]]
        r["ours_gemm_only_ms"] = best_ms(lambda: [torch.mm(a, w) for a, w in bufs], reps, cuda=True)
        big = torch.randn(len(idx), c, device="cuda")
        r["torch_mm_gflops"] = 2.0 * len(idx) * c * c / best_ms(lambda: torch.mm(big, ours.weight[0]), reps, cuda=True) / 1e6
        y_gpu = ours(fresh())
    r["ours_gflops_cached_map"] = flops / r["ours_forward_cached_map_ms"] / 1e6
    r["ours_fraction_of_mm"] = r["ours_gflops_cached_map"] / r["torch_mm_gflops"]
    r["ratio_cpu_over_gpu_forward"] = cpu_ms / r["ours_forward_ms"]
    r["max_abs_diff_gpu_vs_cpu"] = _max_diff(SparseTensor(y_gpu.features.cpu(), y_gpu.indices.cpu(), shape, 1, validate=False), y_cpu)

    f = feats_g.clone().requires_grad_(True)

    def fwd_bwd():
        y = ours(fresh(f))
        y.features.backward(torch.ones_like(y.features))

    r["ours_forward_backward_ms"] = best_ms(fwd_bwd, reps, cuda=True)
    return r


def _max_diff(y, t) -> float:
    def by_site(ind, f):
        key = ((ind[:, 0].long() * 4096 + ind[:, 1]) * 4096 + ind[:, 2]) * 4096 + ind[:, 3]
        o = key.argsort()
        return ind[o], f[o]

    ia, fa = by_site(y.indices, y.features)
    ib, fb = by_site(t.indices, t.features)
    if ia.shape != ib.shape or not torch.equal(ia, ib):
        return float("inf")
    return float((fa - fb).abs().max()) if len(fa) else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="C = 64 only, fewer repetitions")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: our CUDA kernels (spconv not measured)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bm_sparse_conv[_cuda].json)")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if args.out is None:
        name = "bm_sparse_conv_cuda.json" if cuda else "bm_sparse_conv.json"
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name)
    if cuda and not (torch.cuda.is_available() and ext_has_cuda()):
        sys.exit(f"bm_sparse_conv --device cuda: needs a GPU and dense3d._C built with CUDA ({backend_info()})")
    torch.set_num_threads(args.threads)
    spconv = None
    if not cuda:
        try:
            import spconv.pytorch as spconv
        except ImportError:
            print("spconv not installed: dense3d only")
    channels = [64] if args.quick else [16, 64, 128]
    reps = 3 if args.quick else 5
    inputs = load_inputs()
    rows = []
    print(HEADER_CUDA if cuda else HEADER)
    for name, idx, shape in inputs:
        for kind in ["subm", "strided"]:
            for c in channels:
                r = run_case_cuda(kind, c, idx, shape, reps) if cuda else run_case(kind, c, idx, shape, reps, spconv)
                r["input"] = name
                rows.append(r)
                print(_fmt_cuda(r) if cuda else _fmt(r), flush=True)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {args.threads}",
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "load_average_at_end": os.getloadavg(),
        "timing": "minimum over repetitions, milliseconds",
        "spconv": getattr(sys.modules.get("spconv"), "__version__", None),
    }
    atomic_write_json(args.out, {"meta": meta, "cases": rows})
    print(f"\nwrote {args.out}  ({meta['machine']}; load average {meta['load_average_at_end'][0]:.1f})")
    return 0


HEADER = (
    f"{'input':<20} {'conv':<8} {'C':>4} {'spconv fwd':>10} {'ours fwd':>9} {'ratio':>6} {'map':>7} {'cached':>7} "
    f"{'ratio':>6} {'gemm':>7} {'GF/s':>6} {'mm GF/s':>7} {'%mm':>5} {'fwd+bwd':>8}  spconv fwd+bwd"
)


def _fmt(r) -> str:
    sp = r.get("spconv_forward_ms", float("nan"))
    return (
        f"{r['input']:<20} {r['kind']:<8} {r['channels']:>4} {sp:>10.1f} {r['ours_forward_ms']:>9.1f} "
        f"{r.get('ratio_forward', float('nan')):>6.2f} {r['ours_map_ms']:>7.1f} {r['ours_forward_cached_map_ms']:>7.1f} "
        f"{r.get('ratio_forward_cached_map', float('nan')):>6.2f} {r['ours_gemm_only_ms']:>7.1f} {r['ours_gflops_cached_map']:>6.1f} "
        f"{r['torch_mm_gflops']:>7.1f} {100 * r['ours_fraction_of_mm']:>4.0f}% {r['ours_forward_backward_ms']:>8.1f}  "
        f"{r.get('spconv_forward_backward', '-')}"
    )


HEADER_CUDA = (
    f"{'input':<20} {'conv':<8} {'C':>4} {'cpu fwd':>8} {'gpu fwd':>8} {'cpu/gpu':>7} {'map':>6} {'cached':>7} "
    f"{'fp16':>6} {'gemm':>6} {'GF/s':>7} {'mm GF/s':>8} {'%mm':>5} {'fwd+bwd':>8} {'max|gpu-cpu|':>12}"
)


def _fmt_cuda(r) -> str:
    return (
        f"{r['input']:<20} {r['kind']:<8} {r['channels']:>4} {r['cpu_forward_ms']:>8.1f} {r['ours_forward_ms']:>8.2f} "
        f"{r['ratio_cpu_over_gpu_forward']:>7.1f} {r['ours_map_ms']:>6.2f} {r['ours_forward_cached_map_ms']:>7.2f} "
        f"{r['ours_forward_cached_map_fp16_ms']:>6.2f} {r['ours_gemm_only_ms']:>6.2f} {r['ours_gflops_cached_map']:>7.0f} "
        f"{r['torch_mm_gflops']:>8.0f} {100 * r['ours_fraction_of_mm']:>4.0f}% {r['ours_forward_backward_ms']:>8.2f} "
        f"{r['max_abs_diff_gpu_vs_cpu']:>12.2e}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
