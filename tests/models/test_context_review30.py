"""Review of BiCA and the Relation Q-Former: padding, batches of scenes with different region and
context counts, few regions, relation frames, degenerate boxes, time windows, gradients, autocast."""
from __future__ import annotations

import math

import pytest
import torch

from dense3d.models.captioner.qformer import (
    RelationQFormer,
    nearest_neighbours,
    relation_geometry,
    relation_ranks,
)
from dense3d.models.context.bica import BiCADecoder, SceneContext, context_from_bev, context_from_time
from dense3d.structures.sample import RegionFeatures

D = 16


def _scene_regions(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 7|2) geometry and (n, D) features of one scene."""
    g = torch.Generator().manual_seed(seed)
    if kind == "box":
        geo = torch.cat([torch.randn(n, 3, generator=g) * 5, torch.rand(n, 3, generator=g) + 0.5,
                         torch.rand(n, 1, generator=g) * 6 - 3], 1)  # (n, 7)
    else:
        t0 = torch.rand(n, generator=g) * 8
        geo = torch.stack([t0, t0 + torch.rand(n, generator=g) * 2 + 0.1], 1)  # (n, 2)
    return geo, torch.randn(n, D, generator=g)


def _regions(kind: str, scenes: list[tuple[int, int]], pad_to: int = 0) -> RegionFeatures:
    """One RegionFeatures for scenes given as (region count, seed), padded with zeros."""
    B, R = len(scenes), max([n for n, _ in scenes] + [pad_to])
    G = torch.zeros(B, R, 7 if kind == "box" else 2)
    F = torch.zeros(B, R, D)
    M = torch.zeros(B, R, dtype=torch.bool)
    for b, (n, seed) in enumerate(scenes):
        G[b, :n], F[b, :n] = _scene_regions(kind, n, seed)
        M[b, :n] = True
    return RegionFeatures(kind, F, G, M.float(), torch.zeros(B, R, dtype=torch.long), M)


def _contexts(scenes: list[tuple[int, int]]) -> SceneContext:
    B, Q = len(scenes), max(n for n, _ in scenes)
    F, P, M = torch.zeros(B, Q, D), torch.zeros(B, Q, 3), torch.zeros(B, Q, dtype=torch.bool)
    for b, (n, seed) in enumerate(scenes):
        g = torch.Generator().manual_seed(seed + 100)
        F[b, :n], P[b, :n] = torch.randn(n, D, generator=g), torch.randn(n, 3, generator=g) * 5
        M[b, :n] = True
    return SceneContext(F, P, M)


def _models(**qformer_kw):
    torch.manual_seed(0)
    bica = BiCADecoder(32, 4, 2, D, D, space_radius=5.0, zero_init_residuals=False).eval()
    kw = dict(relation_ranks=True, relation_between=True, neighbour_queries=2, target_order=1)
    kw.update(qformer_kw)
    qformer = RelationQFormer(32, 4, 2, num_queries=3, num_neighbours=3, region_dim=32, out_dim=24, **kw).eval()
    return bica, qformer


def _encode(bica, qformer, regions, contexts):
    out = bica(regions, contexts)
    summaries = out.summaries if contexts else [None] * len(regions)
    return out, [qformer(r, f, s) for r, f, s in zip(regions, out.objects, summaries)]


@torch.no_grad()
def test_scenes_batched_with_others_give_what_they_give_alone():
    """Boxes and events decoded jointly; scenes with 5 / 2 / 1 boxes, 1 / 3 / 0 events and 6 / 3 / 0
    context queries: each scene's objects, summaries, contexts and visual tokens are its own."""
    bica, qformer = _models()
    boxes, events, contexts = [(5, 1), (2, 2), (1, 3)], [(1, 4), (3, 5), (0, 6)], [(6, 1), (3, 2), (0, 3)]
    out, tokens = _encode(bica, qformer, [_regions("box", boxes), _regions("event", events)], [_contexts(contexts)])
    for b in range(3):
        # a kind without regions runs as one padding region (as RegionCaptioner runs it)
        one, one_tokens = _encode(bica, qformer, [_regions("box", [boxes[b]]), _regions("event", [events[b]], pad_to=1)],
                                  [_contexts([contexts[b]])])
        for kind, (n, _) in enumerate((boxes[b], events[b])):
            torch.testing.assert_close(out.objects[kind][b, :n], one.objects[kind][0, :n])
            torch.testing.assert_close(out.summaries[kind][b, :n], one.summaries[kind][0, :n])
            torch.testing.assert_close(tokens[kind][b, :n], one_tokens[kind][0, :n])
            assert float(tokens[kind][b, n:].abs().sum()) == 0.0  # padded regions: zeros
        q = contexts[b][0]
        torch.testing.assert_close(out.contexts[b, :q], one.contexts[0, :q])
        assert one.contexts.shape == (1, q, 32)
    assert float(out.summaries[0][2].abs().sum()) == 0.0  # the scene without contexts has no summaries


@torch.no_grad()
def test_a_batch_without_any_context_query_runs_as_one_whose_contexts_are_all_masked():
    """Q = 0 (no query sampled anywhere) used to fail in the attention's reshape; it now runs as a
    batch whose context queries are all padding."""
    bica, _ = _models()
    regions = [_regions("box", [(3, 1)])]
    empty = SceneContext(torch.zeros(1, 0, D), torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.bool))
    masked = SceneContext(torch.randn(1, 2, D), torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool))
    a, b = bica(regions, [empty]), bica(regions, [masked])
    torch.testing.assert_close(a.objects[0], b.objects[0])
    assert a.contexts.shape == (1, 0, 32) and float(a.summaries[0].abs().sum()) == 0.0


@torch.no_grad()
def test_neighbours_at_equal_distances_do_not_depend_on_padding():
    """A 3 x 3 grid of boxes (many neighbours at equal distances): alone or padded to 40 regions
    (past cdist's 25-row switch to its rounding matrix-product mode), each box gets the same
    neighbours, in index order among equals, and the same rank features."""
    xy = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij"), -1).reshape(9, 2) * 1.7
    geo = torch.cat([xy + 10.3, torch.zeros(9, 1), torch.ones(9, 3), torch.zeros(9, 1)], 1)  # (9, 7)

    def regions(R):
        G, M = torch.zeros(1, R, 7), torch.zeros(1, R, dtype=torch.bool)
        G[0, :9], M[0, :9] = geo, True
        labels = torch.zeros(1, R, dtype=torch.long)
        labels[0, :9] = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0])
        return RegionFeatures("box", torch.zeros(1, R, D), G, M.float(), labels, M)

    alone, padded = regions(9), regions(40)
    idx, valid = nearest_neighbours(alone, 4)
    idx40, valid40 = nearest_neighbours(padded, 4)
    assert torch.equal(idx, idx40[:, :9]) and torch.equal(valid, valid40[:, :9])
    assert idx[0, 4].tolist() == [1, 3, 5, 7]  # the centre's four nearest, lowest index first
    torch.testing.assert_close(relation_ranks(alone, idx, valid), relation_ranks(padded, idx40, valid40)[:, :9],
                               rtol=0, atol=0)


def test_geometry_gradients_are_finite_at_padded_regions_and_at_the_sensor():
    """Padded regions are all zeros: a box centred at (0, 0) made atan2's gradient 0 / 0 = NaN in the
    geometry embedding (through ``geometry * mask`` it would reach whatever produced the boxes)."""
    bica, qformer = _models()
    regions = _regions("box", [(5, 1), (1, 2)])
    regions.geometry[0, 0, 0:2] = 0.0  # a real box at the sensor
    regions.geometry.requires_grad_(True)
    out, tokens = _encode(bica, qformer, [regions], [_contexts([(4, 1), (2, 2)])])
    (tokens[0].sum() + out.summaries[0].sum()).backward()
    assert torch.isfinite(regions.geometry.grad).all()


def test_time_windows_cover_the_last_frames():
    """Frames every 0.2 s up to 9.9 s, 1 s windows every 0.5 s: the last window used to end at 9.5 s,
    so the events at the end of a clip had no context of their own time."""
    times = (torch.arange(50.0) * 0.2 + 0.1).view(1, 50)
    feats = torch.arange(50.0).view(1, 50, 1)
    ctx = context_from_time(feats, times, torch.ones(1, 50, dtype=torch.bool), window=1.0, stride=0.5)
    starts = ctx.positions[0, :, 0] - 0.5
    covered = ((times[0, :, None] >= starts) & (times[0, :, None] < starts + 1.0)).any(1)  # (T,)
    assert covered.all() and ctx.mask.all()
    assert ctx.positions[0, -1, 0].item() == pytest.approx(9.5)  # window [9, 10)
    assert ctx.features[0, -1, 0].item() == pytest.approx(float(feats[0, 45:].mean()))  # frames 9.1 .. 9.9 s
    # a frame exactly at a window's end falls in the next window (windows are half-open)
    exact = context_from_time(feats[:, :5], torch.arange(5.0).view(1, 5) * 0.5, torch.ones(1, 5, dtype=torch.bool),
                              window=1.0, stride=1.0)  # frames 0 .. 2 s
    assert exact.positions[0, :, 0].tolist() == [0.5, 1.5, 2.5] and exact.features[0, -1, 0].item() == 4.0


def test_bev_cells_sit_where_they_were_pooled_when_the_map_is_not_a_whole_number_of_cells():
    """A 10 x 7 map of 1 m pixels pooled by 3: avg_pool2d keeps 9 x 6 pixels in 3 x 2 cells, whose
    centres are 1.5, 4.5, 7.5 m (y) and 1.5, 4.5 m (x) from the map's edge; they used to be spread
    over the whole 10 x 7 m. Each cell's feature is the mean of the pixels it sits on."""
    y = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 1, 10, 7) + 0.5  # each pixel's own y centre
    x = torch.arange(7.0).view(1, 1, 1, 7).expand(1, 1, 10, 7) + 0.5
    ctx = context_from_bev(torch.cat([x, y], 1), (0.0, 7.0), (0.0, 10.0), cell=3)
    assert ctx.positions[0, :, 1].tolist() == [1.5, 1.5, 4.5, 4.5, 7.5, 7.5]
    assert ctx.positions[0, :, 0].tolist() == [1.5, 4.5] * 3
    torch.testing.assert_close(ctx.features, ctx.positions[..., :2])
    whole = context_from_bev(torch.cat([x, y], 1)[..., :9, :6], (0.0, 6.0), (0.0, 9.0), cell=3)
    torch.testing.assert_close(whole.positions, ctx.positions, rtol=0, atol=0)


def test_relation_geometry_is_in_the_regions_own_frame():
    """Rotating and moving the whole scene (yaws turning with it, also by whole turns) leaves the
    first 9 box relation features alone; the sensor-frame offset (the last 2) turns with the scene
    as it should. Events: Δtime is the neighbour's centre minus the region's (positive: later)."""
    regions = _regions("box", [(6, 3)])
    idx, _ = nearest_neighbours(regions, 3)
    ref = relation_geometry(regions, idx)
    th = 0.7
    rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    G = regions.geometry.clone()
    G[..., 0:2] = G[..., 0:2] @ rot.T + torch.tensor([3.0, -2.0])  # (1, R, 2)
    G[..., 2] += 1.0
    G[..., 6] += th + 2 * math.pi
    moved = RegionFeatures("box", regions.features, G, regions.scores, regions.labels, regions.mask)
    assert torch.equal(nearest_neighbours(moved, 3)[0], idx)
    out = relation_geometry(moved, idx)
    torch.testing.assert_close(out[..., :9], ref[..., :9], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., 9:], ref[..., 9:] @ rot.T, atol=1e-5, rtol=0)
    events = RegionFeatures("event", torch.zeros(1, 2, D), torch.tensor([[[1.0, 2.0], [4.0, 5.0]]]), torch.ones(1, 2),
                            torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    dt = relation_geometry(events, nearest_neighbours(events, 1)[0], time_scale=1.0)[..., 0]
    assert dt[0, :, 0].tolist() == [3.0, -3.0]


@torch.no_grad()
def test_fewer_regions_than_neighbours_and_degenerate_boxes_give_finite_tokens():
    bica, qformer = _models()
    for n in (1, 2):  # k = 3 neighbours
        regions = _regions("box", [(n, 7)])
        _, tokens = _encode(bica, qformer, [regions], [_contexts([(2, 1)])])
        assert tokens[0].shape == (1, n, 3, 24) and torch.isfinite(tokens[0]).all()
        idx, valid = nearest_neighbours(regions, 3)
        assert valid.sum().item() == n * (n - 1)
    regions = _regions("box", [(4, 1)])
    regions.geometry[0, :, 3:6] = 0.0  # zero-sized boxes
    regions.geometry[0, 1, 0:3] = regions.geometry[0, 0, 0:3]  # two at the same place
    _, tokens = _encode(bica, qformer, [regions], [_contexts([(3, 1)])])
    assert torch.isfinite(tokens[0]).all()
    events = RegionFeatures("event", torch.randn(1, 3, D), torch.tensor([[[1.0, 1.0], [1.0, 1.0], [2.0, 1.5]]]),
                            torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
    _, tokens = _encode(bica, qformer, [events], [_contexts([(3, 1)])])  # zero and negative lengths
    assert torch.isfinite(tokens[0]).all()


@torch.no_grad()
def test_bfloat16_autocast_runs_and_stays_close_to_float32():
    bica, qformer = _models()
    regions = [_regions("box", [(5, 1), (2, 2)]), _regions("event", [(1, 4), (3, 5)])]
    contexts = [_contexts([(6, 1), (3, 2)])]
    _, ref = _encode(bica, qformer, regions, contexts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, low = _encode(bica, qformer, regions, contexts)
    for a, b in zip(ref, low):
        assert torch.isfinite(b).all()
        assert (a - b.float()).abs().max() < 0.1 * a.abs().max()


def test_time_windows_of_16_bit_features_are_placed_in_float32():
    """Under autocast the fused sequence may come in bfloat16: the window starts were computed in the
    features' dtype, so 0.15 s strides rounded to 1/16 s near 10 s (centres 9.4375, 9.5625, 9.75) and
    the windows took other frames. Positions and windows are now those of float32 features."""
    T = 40
    times = (torch.arange(T) * 0.25 + 0.125).view(1, T)
    feats = torch.randn(1, T, D, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, T, dtype=torch.bool)
    ref = context_from_time(feats, times, mask, window=0.3, stride=0.15)
    low = context_from_time(feats.bfloat16(), times, mask, window=0.3, stride=0.15)
    assert low.positions.dtype == torch.float32 and torch.equal(low.positions, ref.positions)
    assert torch.equal(low.mask, ref.mask)
    torch.testing.assert_close(low.features.float(), ref.features, atol=0.02, rtol=0.02)


@torch.no_grad()
def test_a_batch_without_regions_gives_no_tokens_with_every_relation_feature():
    """R = 0 (RegionCaptioner pads it to one region, but the Q-Former is public): relation_ranks
    failed in a minimum over no rivals; every option now gives (B, 0, K, out_dim) tokens."""
    for kw in ({}, dict(relation_ranks=True), dict(relation_between=True)):
        torch.manual_seed(0)
        qformer = RelationQFormer(32, 4, 1, num_queries=3, num_neighbours=3, region_dim=D, out_dim=24, **kw).eval()
        regions = _regions("box", [(0, 1), (0, 2)])
        assert qformer(regions, regions.features).shape == (2, 0, 3, 24)
