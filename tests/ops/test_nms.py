"""Rotated NMS against a straightforward Python loop over shapely polygons."""
import math

import pytest
import torch
from shapely.geometry import Polygon

from dense3d.errors import OpInputError
from dense3d.ops import batched_nms_bev, nms_bev
from dense3d.ops._backend import ext
from dense3d.structures import Boxes3D

HAS_EXT = hasattr(ext(), "nms_bev")
BACKENDS = ["torch"] + (["ext"] if HAS_EXT else [])


def clustered_boxes(n, seed):
    """Boxes in a few clusters so that NMS suppresses a lot; scores with ties."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, n // 8), 2, generator=g, dtype=torch.float64) * 6
    pick = torch.randint(0, centres.shape[0], (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.6
    boxes = torch.cat(
        [
            xy,
            torch.randn(n, 1, generator=g, dtype=torch.float64),
            torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 + 1,
            (torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1) * math.pi,
        ],
        1,
    )
    scores = torch.randint(0, 20, (n,), generator=g).double() / 20  # many ties
    labels = torch.randint(0, 3, (n,), generator=g)
    return boxes, scores, labels


def python_nms(boxes, scores, thr, labels=None):
    """Sort by score (ties: lower index first), keep a box unless a kept one overlaps it > thr."""
    polys = [Polygon(c.tolist()) for c in Boxes3D(boxes).bev_corners()]
    order = sorted(range(len(polys)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        ok = True
        for k in keep:
            if labels is not None and labels[i] != labels[k]:
                continue
            inter = polys[i].intersection(polys[k]).area
            union = polys[i].area + polys[k].area - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("thr", [0.0, 0.1, 0.5])
def test_nms_matches_python_loop(backend, thr):
    boxes, scores, labels = clustered_boxes(150, 0)
    keep = nms_bev(boxes, scores, thr, backend=backend)
    assert keep.dtype == torch.long
    expected = python_nms(boxes, scores, thr)
    assert keep.tolist() == expected and 5 < len(expected) < 150
    keep = batched_nms_bev(boxes, scores, labels, thr, backend=backend)
    expected_cls = python_nms(boxes, scores, thr, labels.tolist())
    assert keep.tolist() == expected_cls and len(expected_cls) > len(expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pre_and_post_max(backend):
    boxes, scores, labels = clustered_boxes(80, 1)
    order = sorted(range(80), key=lambda i: (-float(scores[i]), i))[:30]
    sub = python_nms(boxes[order], scores[order], 0.2)
    expected = [order[i] for i in sub]
    assert nms_bev(boxes, scores, 0.2, pre_max=30, backend=backend).tolist() == expected
    assert nms_bev(boxes, scores, 0.2, pre_max=30, post_max=3, backend=backend).tolist() == expected[:3]
    assert nms_bev(boxes.float(), scores.float(), 0.2, pre_max=30, backend=backend).tolist() == expected


@pytest.mark.skipif(not HAS_EXT, reason="dense3d._C (with nms_bev) not built")
def test_ext_equals_torch_on_500_boxes():
    boxes, scores, labels = clustered_boxes(500, 2)
    for thr in (0.05, 0.5):
        assert torch.equal(nms_bev(boxes, scores, thr, backend="ext"), nms_bev(boxes, scores, thr, backend="torch"))
        assert torch.equal(
            batched_nms_bev(boxes, scores, labels, thr, backend="ext"), batched_nms_bev(boxes, scores, labels, thr, backend="torch")
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    empty = torch.zeros(0, 7)
    assert nms_bev(empty, torch.zeros(0), 0.5, backend=backend).shape == (0,)
    assert batched_nms_bev(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5, backend=backend).shape == (0,)
    # identical boxes, equal scores: the lowest index survives
    same = torch.tensor([[0.0, 0, 0, 2, 2, 2, 0.1]] * 4)
    assert nms_bev(same, torch.ones(4), 0.5, backend=backend).tolist() == [0]
    assert nms_bev(same, torch.tensor([0.1, 0.3, 0.3, 0.2]), 0.5, backend=backend).tolist() == [1]
    # threshold 1: nothing can exceed it, all kept in score order
    assert nms_bev(same, torch.tensor([0.1, 0.3, 0.3, 0.2]), 1.0, backend=backend).tolist() == [1, 2, 3, 0]


def test_bad_input_raises_one_line_errors():
    boxes, scores, labels = clustered_boxes(10, 0)
    cases = [
        (lambda: nms_bev(boxes, scores[:5], 0.5), "scores", "(10,)"),
        (lambda: nms_bev(boxes, torch.full((10,), float("nan"), dtype=torch.float64), 0.5), "scores", "finite"),
        (lambda: nms_bev(boxes, scores, 1.5), "iou_threshold", "[0, 1]"),
        (lambda: nms_bev(boxes, scores, 0.5, post_max=0), "post_max", "positive int"),
        (lambda: batched_nms_bev(boxes, scores, labels.double(), 0.5), "labels", "integer"),
        (lambda: nms_bev(boxes[:, :5], scores, 0.5), "boxes", "(N, 7+)"),
    ]
    for fn, field, text in cases:
        with pytest.raises(OpInputError) as e:
            fn()
        msg = str(e.value)
        assert field in msg and text in msg and "\n" not in msg, msg


@pytest.mark.cuda
def test_scores_or_labels_on_another_device_are_one_line_errors():
    """CUDA scores with CPU boxes failed in boxes[order] (indices on another device), CPU labels
    with CUDA boxes in labels[order]: RuntimeErrors from deep inside."""
    boxes, scores, labels = clustered_boxes(10, 0)
    cases = [
        (lambda: nms_bev(boxes, scores.cuda(), 0.5), "scores"),
        (lambda: nms_bev(boxes.cuda(), scores, 0.5), "scores"),
        (lambda: batched_nms_bev(boxes.cuda(), scores.cuda(), labels, 0.5), "labels"),
    ]
    for fn, field in cases:
        with pytest.raises(OpInputError, match=field):
            fn()


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_cuda_equals_cpu(backend):
    boxes, scores, labels = clustered_boxes(1500, 3)  # > 64: several mask tiles
    for thr in (0.05, 0.5):
        expected = nms_bev(boxes, scores, thr, backend="torch")
        got = nms_bev(boxes.cuda(), scores.cuda(), thr, backend=backend)
        assert got.is_cuda and torch.equal(got.cpu(), expected)
        expected = batched_nms_bev(boxes, scores, labels, thr, backend="torch")
        got = batched_nms_bev(boxes.cuda(), scores.cuda(), labels.cuda(), thr, backend=backend)
        assert torch.equal(got.cpu(), expected)
