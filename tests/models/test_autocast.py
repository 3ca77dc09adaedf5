"""Under 16-bit autocast (what `trainer=gpu`'s bf16-mixed runs), geometry stays float32.

Checked on the CPU with bfloat16 autocast, which casts the same layers as on a GPU: boxes,
spans, positions and scores are metres, seconds and confidences, which 16 bits would round
(43.37 m -> 43.25 m), and the ops that take them (NMS, RoI pooling) need float32.
"""
from __future__ import annotations

import pytest
import torch

from dense3d.models.context.bica import context_from_bev
from dense3d.structures import Boxes3D
from tests.models.av_clips import av_batch
from tests.models.real_samples import collate, nuscenes_sample
from tests.models.test_box_proposals import outdoor_detector
from tests.models.test_event_proposals import _detector as event_detector

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def test_box_detector_under_autocast_keeps_boxes_and_regions_in_float32(samples):
    batch = collate([nuscenes_sample(samples, image_size=(64, 176))])
    det = outdoor_detector(camera=False).eval()
    with torch.no_grad(), torch.autocast(**BF16):
        out = det(batch)
    assert out.bev.dtype == torch.bfloat16  # the layers did run in 16 bits
    boxes = out.detections[0].boxes
    n = int(out.regions.mask.sum())
    assert boxes.dtype == torch.float32 and n > 0
    r = out.regions
    assert r.geometry.dtype == r.scores.dtype == torch.float32
    assert torch.equal(r.geometry[0, :n], boxes[:n, :7]) and torch.equal(r.scores[0, :n], out.detections[0].scores[:n])


def test_event_detector_under_autocast_runs_and_keeps_spans_in_float32():
    batch = av_batch([(0.5, 0.4, 1.2, 0), (2.0, 1.0, 1.8, 1)])
    det = event_detector(tiny=True).eval()
    with torch.no_grad():
        ref = det(batch).regions
        with torch.autocast(**BF16):
            r = det(batch).regions  # the video encoder wrote bfloat16 into float32 here
    assert r.geometry.dtype == torch.float32
    assert torch.equal(r.mask, ref.mask)
    torch.testing.assert_close(r.geometry, ref.geometry, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("two_stage", [False, True])
def test_event_head_outputs_spans_and_scores_in_float32(two_stage):
    """Spans, class logits, quality and frame offsets come out of float32 heads under autocast
    (a bfloat16 Linear + sigmoid keeps 3 significant digits: 0.7 s on a 3-minute video)."""
    from dense3d.models.proposals.events.event_head import EventHead, _inverse_sigmoid

    torch.manual_seed(0)
    head = EventHead(16, num_classes=2, num_queries=4, num_layers=1, num_heads=2, dropout=0.0, two_stage=two_stage,
                     quality=True).eval()
    memory, times = torch.randn(1, 12, 16), torch.linspace(0, 180, 12)[None]
    with torch.no_grad(), torch.autocast(**BF16):
        pred = head(memory, times, torch.ones(1, 12, dtype=torch.bool))
        assert head.span_head(pred.queries).dtype == torch.bfloat16  # what the head's Linear gives under autocast
    assert pred.spans.dtype == pred.logits.dtype == pred.quality.dtype == torch.float32
    with torch.no_grad():
        offsets = head.span_head(pred.queries.float())  # the same queries, a float32 head
    expected = (_inverse_sigmoid(pred.reference) + offsets).sigmoid() if two_stage else offsets.sigmoid()
    torch.testing.assert_close(pred.spans, expected, rtol=1e-5, atol=1e-6)
    if two_stage:
        assert pred.frame_offsets.dtype == pred.frame_logits.dtype == torch.float32


def test_bev_context_positions_stay_float32_and_mask_the_boxes():
    bev = torch.randn(1, 8, 16, 16).to(torch.bfloat16)  # 16 cells of 6.4 m: centres -48, -41.6, ...
    box = Boxes3D(torch.tensor([[9.6, 3.2, 0.0, 4.0, 4.0, 1.0, 0.0]]))  # around the centre (9.6, 3.2) only
    ctx = context_from_bev(bev, (-51.2, 51.2), (-51.2, 51.2), 1, boxes=[box])
    assert ctx.positions.dtype == torch.float32
    assert ctx.positions[0, 1, 0] == torch.tensor(-41.6)  # bfloat16 would give -41.5
    inside = (ctx.positions[0, :, :2] - torch.tensor([9.6, 3.2])).abs().amax(-1) < 2.0  # (Q,)
    assert int(inside.sum()) == 1 and not ctx.mask[0, inside].any() and ctx.mask[0, ~inside].all()


def test_box_projections_into_the_cameras_stay_float32(samples):
    """The RoIs of the image-region encoder: a 16-bit product would move them by 2-4 pixels."""
    from dense3d.models.proposals.boxes.image_features import project_boxes

    s = nuscenes_sample(samples)
    batch = collate([s])
    boxes = s.boxes.boxes.tensor[None, :, :7].float()
    H, W = batch.images.shape[-2:]
    ref, ref_area = project_boxes(boxes, batch.lidar2img, (H, W))
    with torch.autocast(**BF16):
        rects, area = project_boxes(boxes, batch.lidar2img, (H, W))
    assert rects.dtype == torch.float32 and torch.equal(rects, ref) and torch.equal(area, ref_area)
    corners = s.boxes.boxes.corners()
    with torch.autocast(**BF16):
        assert torch.equal(s.boxes.boxes.corners(), corners)  # Boxes3D.corners too (a matrix product)
