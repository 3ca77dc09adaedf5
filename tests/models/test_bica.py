"""BiCA: locality of the context summaries, masks, joint box/event decoding, context helpers."""
from __future__ import annotations

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.context.bica import (
    BiCADecoder,
    SceneContext,
    context_from_bev,
    context_from_points,
    context_from_time,
    farthest_point_sample,
)
from dense3d.structures.boxes import Boxes3D
from dense3d.structures.sample import RegionFeatures

D = 16


def _boxes(B=1, R=3, seed=0, D_in=D):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [40.0, 0.0, 0.0], [0.0, 40.0, 0.0]])[:R]
    geo = torch.cat([centres, torch.ones(R, 3) * 2, torch.zeros(R, 1)], 1).expand(B, R, 7).clone()
    return RegionFeatures("box", torch.randn(B, R, D_in, generator=g), geo, torch.ones(B, R),
                          torch.zeros(B, R, dtype=torch.long), torch.ones(B, R, dtype=torch.bool))


def _context(B=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor([[[1.0, 1.0, 0.0], [40.0, 2.0, 0.0], [2.0, 41.0, 0.0], [80.0, 80.0, 0.0]]]).expand(B, 4, 3)
    return SceneContext(torch.randn(B, 4, D, generator=g), pos.clone(), torch.ones(B, 4, dtype=torch.bool))


def _decoder(**kw):
    """A decoder as after some training: residual branches initialised the usual way (with
    zero-initialised ones every instance output would ignore the contexts)."""
    torch.manual_seed(0)
    kw.setdefault("zero_init_residuals", False)
    return BiCADecoder(d_model=32, n_heads=4, n_layers=2, region_dim=D, context_dim=D, space_radius=5.0, **kw).eval()


def test_zero_initialised_residuals_start_as_the_identity_and_learn():
    """At initialisation each instance output is its own projected feature, whatever the other
    regions and contexts; one optimiser step later the contexts reach the instances."""
    dec = _decoder(zero_init_residuals=True).train(False)
    regions, ctx = _boxes(), _context()
    own = dec.out_norm(dec.region_in(regions.features))  # (1, 3, 32)
    torch.testing.assert_close(dec([regions], [ctx]).objects[0], own)
    other = _boxes(seed=5)
    other.features[0, 0] = regions.features[0, 0]  # region 0 unchanged, the others differ
    torch.testing.assert_close(dec([other], [ctx]).objects[0][0, 0], own[0, 0])
    with torch.enable_grad():
        opt = torch.optim.SGD(dec.parameters(), lr=0.1)
        target = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(9))
        ((dec([regions], [ctx]).objects[0] - target) ** 2).sum().backward()
        opt.step()
    c2 = _context()
    c2.features += 3.0
    assert not torch.allclose(dec([regions], [c2]).objects[0], dec([regions], [ctx]).objects[0])


@pytest.fixture(autouse=True)
def _no_grad_by_default():
    with torch.no_grad():
        yield


def test_shapes_and_outputs_per_kind():
    dec = _decoder()
    out = dec([_boxes(B=2)], [_context(B=2)])
    assert len(out.objects) == 1 and out.objects[0].shape == (2, 3, 32)
    assert out.summaries[0].shape == (2, 3, 32) and out.contexts.shape == (2, 4, 32)
    no_ctx = dec([_boxes(B=2)], None)
    assert no_ctx.contexts is None and float(no_ctx.summaries[0].abs().sum()) == 0.0


def test_instance_output_depends_on_the_contexts_near_it():
    dec = _decoder()
    ctx = _context()
    ctx.features.requires_grad_(True)
    torch.set_grad_enabled(True)
    out = dec([_boxes()], [ctx])
    w = torch.randn(32, generator=torch.Generator().manual_seed(3))
    (out.summaries[0][0, 0] * w).sum().backward()  # box 0 sits at the origin (a LayerNorm output sums to 0)
    g = ctx.features.grad[0].norm(dim=-1)  # (4,) sensitivity to each context
    assert g[0] > 10 * g[1] and g[0] > 10 * g[3]  # the context 1.4 m away dominates those 40+ m away

    # perturbation: moving the context next to box 1 changes box 1 far more than box 0
    base = dec([_boxes()], [_context()])
    c2 = _context()
    c2.features[0, 1] += 5.0
    moved = dec([_boxes()], [c2])
    d_sum = (moved.summaries[0][0] - base.summaries[0][0]).norm(dim=-1)  # (3,)
    d_obj = (moved.objects[0][0] - base.objects[0][0]).norm(dim=-1)
    assert d_sum[1] > 5 * d_sum[0] and d_sum[1] > 5 * d_sum[2]
    # instance self-attention is global (relations), so others move too, but less
    assert d_obj[1] > 2 * d_obj[0] and d_obj[1] > 2 * d_obj[2]


def test_padded_regions_and_contexts_do_not_affect_real_ones():
    dec = _decoder()
    regions, ctx = _boxes(R=3), _context()
    regions.mask[0, 2] = False
    ctx.mask[0, 3] = False
    out = dec([regions], [ctx])
    regions.features[0, 2] = torch.randn(D) * 100  # garbage in the padded slots
    regions.geometry[0, 2, 0:3] = torch.tensor([0.5, 0.5, 0.0])
    ctx.features[0, 3] = torch.randn(D) * 100
    ctx.positions[0, 3] = torch.tensor([0.2, 0.1, 0.0])
    out2 = dec([regions], [ctx])
    torch.testing.assert_close(out.objects[0][0, :2], out2.objects[0][0, :2], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.summaries[0][0, :2], out2.summaries[0][0, :2], rtol=0, atol=1e-6)
    assert float(out2.objects[0][0, 2].abs().sum()) == 0.0  # padded outputs are zero


def test_a_sample_without_real_contexts_never_reads_the_padded_ones():
    # a softmax over only masked keys spreads its weight evenly over them: the summaries (and
    # through C4O the objects) of a sample whose contexts are all padding read that padding
    dec = _decoder()
    regions, ctx = _boxes(B=2, R=3), _context(B=2)
    ctx.mask[1] = False
    out = dec([regions], [ctx])
    ctx.features[1] = torch.randn(4, D) * 100
    ctx.positions[1] = torch.randn(4, 3) * 10
    out2 = dec([regions], [ctx])
    torch.testing.assert_close(out.objects[0], out2.objects[0], rtol=0, atol=1e-6)
    assert float(out2.summaries[0][1].abs().sum()) == 0.0
    assert torch.isfinite(out2.objects[0]).all()


def test_joint_scene_an_event_attends_to_boxes():
    dec = _decoder()
    boxes = _boxes()
    events = RegionFeatures("event", torch.randn(1, 2, D), torch.tensor([[[0.0, 1.0], [2.0, 4.0]]]), torch.ones(1, 2),
                            torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    time_ctx = SceneContext(torch.randn(1, 3, D), torch.tensor([[[0.5], [2.5], [4.5]]]), torch.ones(1, 3, dtype=torch.bool),
                            "time")
    out = dec([boxes, events], [_context(), time_ctx])
    assert out.objects[0].shape == (1, 3, 32) and out.objects[1].shape == (1, 2, 32)
    assert out.contexts.shape == (1, 7, 32)
    boxes2 = _boxes()
    boxes2.features[0, 0] += 3.0
    out2 = dec([boxes2, events], [_context(), time_ctx])
    assert not torch.allclose(out.objects[1], out2.objects[1])  # events see the boxes


def test_bad_configuration_raises():
    with pytest.raises(ConfigError, match="n_heads"):
        BiCADecoder(d_model=30, n_heads=4, n_layers=1, region_dim=D, context_dim=D)
    with pytest.raises(ConfigError, match="positions"):
        SceneContext(torch.zeros(1, 4, D), torch.zeros(1, 4, 1), torch.ones(1, 4, dtype=torch.bool), "space")


def test_farthest_point_sample_spreads_out():
    xyz = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [10, 0, 0], [10.1, 0, 0], [0, 10, 0]])
    idx = farthest_point_sample(xyz, 3)
    assert idx.tolist() == [0, 3, 4] or sorted(idx.tolist()) in ([0, 3, 4], [0, 2, 4])
    assert len(set(idx.tolist())) == 3


def test_context_from_points_excludes_objects():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(400, 3, generator=g) * 20 - 10  # a 20 m cube
    feats = torch.randn(400, 8, generator=g)
    box = Boxes3D(torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0, 30.0, 0.3]]))
    ctx = context_from_points([pts], [feats], num=16, radius=3.0, boxes=[box])
    assert ctx.features.shape == (1, 16, 8) and ctx.mask.all()
    assert not box.points_in_boxes(ctx.positions[0]).any()  # no context inside the object


def test_context_from_bev_masks_cells_inside_boxes():
    bev = torch.arange(16.0).view(1, 1, 4, 4)
    box = Boxes3D(torch.tensor([[-5.0, -5.0, 0.0, 4.0, 4.0, 2.0, 0.0]]))  # covers the lower-left cell centre
    ctx = context_from_bev(bev, (-10, 10), (-10, 10), cell=2, boxes=[box])
    assert ctx.features.shape == (1, 4, 1) and ctx.positions[0, 0].tolist() == [-5.0, -5.0, 0.0]
    assert ctx.mask[0].tolist() == [False, True, True, True]
    assert ctx.features[0, 0, 0] == (0 + 1 + 4 + 5) / 4  # average pooling of the 2x2 cell


def test_context_from_time_windows():
    feats = torch.arange(10.0).view(1, 10, 1)
    times = torch.arange(10.0).view(1, 10) * 0.5  # 0 .. 4.5 s
    mask = torch.ones(1, 10, dtype=torch.bool)
    ctx = context_from_time(feats, times, mask, window=1.0, stride=1.0)
    # the last frame (4.5 s) has a window of its own, [4, 5) (test_context_review30::test_time_windows_cover_the_last_frames)
    assert ctx.domain == "time" and ctx.positions[0, :, 0].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert ctx.features[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5, 8.5]
