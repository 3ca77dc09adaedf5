"""The perception models on a GPU: the same outputs as on the CPU, and a training step runs there.

Box detector: the real nuScenes keyframe through LiDAR (voxelize -> sparse 3D conv -> BEV) and
six cameras (ResNet -> LSS -> bev_pool), fused, CenterPoint head, NMS, region features. Event
detector: a synthetic 4-microphone clip with video. Captioner: BiCA + Relation Q-Former +
LLaMA-Adapter on a tiny random Llama (greedy captions, a training step, bfloat16 autocast). TF32
is switched off so float32 convolutions and products compare at float32 rounding.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.models.av_clips import av_batch
from tests.models.test_captioner import oracle_scene, tiny_captioner
from tests.models.real_samples import collate, nuscenes_sample
from tests.models.test_box_proposals import outdoor_detector
from tests.models.test_event_proposals import _detector as event_detector

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _close(cpu: torch.Tensor, gpu: torch.Tensor, name: str, tol: float = 1e-4):
    assert gpu.is_cuda, name
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def _on_cpu_then_cuda(det, batch):
    """(CPU output, GPU output, the detector moved to the GPU, the batch there)."""
    with torch.no_grad():
        ref = det(batch)
    det, gbatch = det.cuda(), batch.to("cuda")
    with torch.no_grad():
        out = det(gbatch)
    return ref, out, det, gbatch


def test_box_detector_on_cuda_equals_cpu_and_trains(samples):
    batch = collate([nuscenes_sample(samples)])
    ref, out, det, gbatch = _on_cpu_then_cuda(outdoor_detector().eval(), batch)
    for name in ("lidar", "camera"):
        _close(ref.sensor_maps[name], out.sensor_maps[name], name)
    _close(ref.bev, out.bev, "bev")
    for k, (a, b) in enumerate(zip(ref.predictions.heatmaps, out.predictions.heatmaps)):
        _close(a, b, f"heatmap {k}")
    # decode + NMS + region features ran on the GPU; the CPU's top boxes are among the GPU's
    # (matched by position: scores that differ by rounding may order two boxes differently)
    n = min(10, len(ref.detections[0].boxes))
    assert n > 0 and out.regions.features.is_cuda and out.regions.mask.is_cuda
    gap = (ref.detections[0].boxes[:n, None, :7] - out.detections[0].boxes[None, :, :7].cpu()).abs().amax(-1)  # (n, N_gpu)
    assert (gap.amin(1) < 1e-3).all(), gap.amin(1)

    det.train()
    opt = torch.optim.AdamW(det.parameters(), lr=1e-3)
    losses = det.loss(det(gbatch, decode=False), gbatch)
    assert all(v.is_cuda and torch.isfinite(v) for v in losses.values()), losses
    opt.zero_grad()
    losses["total"].backward()
    grads = [p.grad for p in det.parameters() if p.requires_grad]
    assert all(g is None or (g.is_cuda and torch.isfinite(g).all()) for g in grads)
    assert sum(g is not None for g in grads) > 0.8 * len(grads)
    opt.step()


def test_event_detector_on_cuda_equals_cpu_and_trains():
    batch = av_batch([(0.5, 0.4, 1.2, 0), (2.0, 1.0, 1.8, 1)])
    ref, out, det, gbatch = _on_cpu_then_cuda(event_detector().eval(), batch)
    _close(ref.fused, out.fused, "fused audio-video features")
    _close(ref.regions.geometry, out.regions.geometry, "event spans", tol=1e-3)
    assert torch.equal(ref.regions.mask, out.regions.mask.cpu())

    det.train()
    losses = det.loss(det(gbatch), gbatch)
    assert all(v.is_cuda and torch.isfinite(v) for v in losses.values()), losses
    losses["total"].backward()
    grads = [p.grad for p in det.parameters() if p.requires_grad]
    assert all(g is None or (g.is_cuda and torch.isfinite(g).all()) for g in grads)


def _to(obj, device):
    """A copy of a dataclass (RegionFeatures, SceneContext) with its tensors on ``device``."""
    moved = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, torch.Tensor):
            moved[f.name] = v.to(device)
        elif isinstance(v, dict):
            moved[f.name] = {k: t.to(device) if isinstance(t, torch.Tensor) else t for k, t in v.items()}
    return dataclasses.replace(obj, **moved)


def test_captioner_on_cuda_generates_the_cpu_captions_and_trains():
    regions, ctx, caps = oracle_scene()
    model = tiny_captioner(llm_autocast=False).eval()
    with torch.no_grad():
        model.adapter.gates.normal_(0, 1.0)  # let the visual tokens matter
    ref = [[c.text for c in s] for s in model.generate(regions, ctx)]
    model = model.cuda()
    g_regions, g_ctx = _to(regions, "cuda"), _to(ctx, "cuda")
    got = [[c.text for c in s] for s in model.generate(g_regions, g_ctx)]
    assert got == ref and len({t for s in got for t in s}) > 1

    lm = model._lm()
    frozen = {k: v.clone() for k, v in lm.state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        out = model(g_regions, g_ctx, caps)
        opt.zero_grad()
        out["loss_caption"].backward()
        opt.step()
    assert out["loss_caption"].is_cuda and torch.isfinite(out["loss_caption"])
    assert all(torch.equal(v, frozen[k]) for k, v in lm.state_dict().items())


def test_captioner_autocasts_to_bfloat16_on_a_gpu_by_default():
    regions, ctx, caps = oracle_scene()
    model = tiny_captioner(llm_autocast=None).cuda()  # None: bfloat16 where the device has it
    seen = []
    hook = model._lm().model.layers[-1].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = model(_to(regions, "cuda"), _to(ctx, "cuda"), caps)
    out["loss_caption"].backward()
    hook.remove()
    assert seen == [torch.bfloat16] and torch.isfinite(out["loss_caption"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
