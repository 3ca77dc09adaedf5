"""Relation Q-Former: neighbours, relation geometry, sensitivity to neighbours only."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.captioner.qformer import RelationQFormer, nearest_neighbours, pair_geometry, relation_geometry
from dense3d.structures.sample import RegionFeatures

D = 16


def _boxes(centres, yaw=None, mask=None, tokens=None):
    R = len(centres)
    c = torch.tensor(centres, dtype=torch.float32)
    yaw = torch.zeros(R, 1) if yaw is None else torch.tensor(yaw, dtype=torch.float32).view(R, 1)
    geo = torch.cat([c, torch.tensor([[2.0, 1.0, 1.5]]).expand(R, 3) * torch.arange(1, R + 1).view(R, 1), yaw], 1)
    m = torch.ones(1, R, dtype=torch.bool) if mask is None else torch.tensor([mask])
    feats = torch.randn(1, R, D, generator=torch.Generator().manual_seed(0))
    return RegionFeatures("box", feats, geo.unsqueeze(0), torch.ones(1, R), torch.zeros(1, R, dtype=torch.long), m, tokens)


def _qformer(k=2, token_dim=None):
    torch.manual_seed(0)
    return RelationQFormer(d_model=32, n_heads=4, n_layers=2, num_queries=3, num_neighbours=k, region_dim=D,
                           out_dim=24, token_dim=token_dim).eval()


def test_nearest_neighbours_skip_self_and_padding():
    r = _boxes([[0, 0, 0], [1, 0, 0], [5, 0, 0], [2, 0, 0]], mask=[True, True, True, False])
    idx, valid = nearest_neighbours(r, 3)
    assert idx[0, 0, :2].tolist() == [1, 2] and valid[0, 0].tolist() == [True, True, False]  # 3 is padding
    assert 0 not in idx[0, 0][valid[0, 0]].tolist()


def test_low_scored_proposals_are_nobodys_neighbour():
    r = _boxes([[0, 0, 0], [1, 0, 0], [5, 0, 0], [2.5, 0, 0]])
    r = RegionFeatures("box", r.features, r.geometry, torch.tensor([[0.9, 0.1, 0.8, 0.6]]), r.labels, r.mask)
    idx, valid = nearest_neighbours(r, 3, min_score=0.5)
    assert idx[0, 0][valid[0, 0]].tolist() == [3, 2]  # 1 is nearer but scored 0.1
    assert idx[0, 1][valid[0, 1]].tolist() == [0, 3, 2]  # it still has neighbours of its own
    assert nearest_neighbours(r, 3)[0][0, 0].tolist() == [1, 3, 2]
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=2, region_dim=D,
                         out_dim=24, neighbour_min_score=0.5).eval()
    f2 = r.features.clone()
    f2[0, 1] += 1.0  # the low-scored proposal changes: only its own tokens follow
    with torch.no_grad():
        changed = (qf(r, f2) - qf(r, r.features)).abs().amax((-1, -2))[0] > 1e-6
    assert changed.tolist() == [False, True, False, False]


def test_relation_geometry_in_the_region_frame_and_the_sensor_frame():
    centres = [[0.0, 0.0, 0.0], [3.0, 1.0, 0.5], [-2.0, 4.0, 0.0]]
    r = _boxes(centres, yaw=[0.3, -0.5, 1.0])
    idx, _ = nearest_neighbours(r, 2)
    geo = relation_geometry(r, idx)
    assert geo.shape == (1, 3, 2, 11)
    # the last two: the neighbour's offset in the sensor frame (metres / space_scale)
    c = torch.tensor(centres)
    torch.testing.assert_close(geo[0, :, :, 9:11], (c[idx[0]] - c[:, None])[..., 0:2] / 10.0)
    # rotating and translating the whole scene leaves the region-frame geometry unchanged
    a = 0.7
    rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    moved = r.geometry.clone()
    moved[..., 0:3] = moved[..., 0:3] @ rot.T + torch.tensor([10.0, -3.0, 1.0])
    moved[..., 6] += a
    r2 = RegionFeatures("box", r.features, moved, r.scores, r.labels, r.mask)
    moved_geo = relation_geometry(r2, idx)
    torch.testing.assert_close(moved_geo[..., :9], geo[..., :9], atol=1e-5, rtol=0)
    # ... and rotates the sensor-frame offset with it
    torch.testing.assert_close(moved_geo[..., 9:11], geo[..., 9:11] @ rot[:2, :2].T, atol=1e-5, rtol=0)


def test_output_changes_when_a_neighbour_moves_not_when_a_stranger_moves():
    qf = _qformer(k=1)
    r = _boxes([[0, 0, 0], [2, 0, 0], [30, 0, 0]])  # region 0's one neighbour is region 1
    with torch.no_grad():
        base = qf(r, r.features)
        assert base.shape == (1, 3, 3, 24)
        moved = r.geometry.clone()
        moved[0, 1, 0:2] = torch.tensor([0.0, 3.0])  # the neighbour moves (still the nearest)
        out = qf(RegionFeatures("box", r.features, moved, r.scores, r.labels, r.mask), r.features)
        assert not torch.allclose(out[0, 0], base[0, 0])
        far = r.geometry.clone()
        far[0, 2, 0] = 40.0  # a region that is not among region 0's k=1 neighbours
        out2 = qf(RegionFeatures("box", r.features, far, r.scores, r.labels, r.mask), r.features)
        torch.testing.assert_close(out2[0, 0], base[0, 0], rtol=0, atol=0)
        # and relation tokens are computed from the neighbour's features too
        f2 = r.features.clone()
        f2[0, 1] += 1.0
        assert not torch.allclose(qf(r, f2)[0, 0], base[0, 0])


def test_context_tokens_and_padding():
    qf = _qformer(k=2, token_dim=8)
    tokens = torch.randn(1, 3, 5, 8)
    r = _boxes([[0, 0, 0], [2, 0, 0], [4, 0, 0]], mask=[True, True, False], tokens=tokens)
    ctx = torch.randn(1, 3, D)
    with torch.no_grad():
        out = qf(r, r.features, ctx)
        assert float(out[0, 2].abs().sum()) == 0.0  # padded region: zeros
        ctx2 = ctx.clone()
        ctx2[0, 0] += 1.0
        assert not torch.allclose(qf(r, r.features, ctx2)[0, 0], out[0, 0])  # reads its context summary
        torch.testing.assert_close(qf(r, r.features, ctx2)[0, 1], out[0, 1])  # not the others'
        t2 = tokens.clone()
        t2[0, 0, 0] += 1.0
        r2 = RegionFeatures("box", r.features, r.geometry, r.scores, r.labels, r.mask, t2)
        assert not torch.allclose(qf(r2, r.features, ctx)[0, 0], out[0, 0])  # reads its own tokens


def test_events_use_time_relations():
    qf = _qformer(k=2)
    geo = torch.tensor([[[0.0, 1.0], [1.5, 2.0], [8.0, 9.0]]])
    ev = RegionFeatures("event", torch.randn(1, 3, D), geo, torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.long),
                        torch.ones(1, 3, dtype=torch.bool))
    idx, valid = nearest_neighbours(ev, 1)
    assert idx[0, :, 0].tolist() == [1, 0, 1] and valid.all()
    rel = relation_geometry(ev, idx)
    assert rel.shape == (1, 3, 1, 6)
    torch.testing.assert_close(rel[0, 0, 0, 0], torch.tensor((1.75 - 0.5) / 2.0))  # centre offset / time_scale
    with torch.no_grad():
        assert qf(ev, ev.features).shape == (1, 3, 3, 24)


def test_own_geometry_and_raw_features_reach_the_tokens():
    """Without neighbours, moving a region still changes its tokens (its own geometry is read),
    and the pre-BiCA ``raw`` features are a memory token only when ``raw_dim`` is set."""
    torch.manual_seed(0)
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=0, region_dim=D,
                         out_dim=24, raw_dim=8).eval()
    r = _boxes([[10.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    raw = torch.randn(1, 2, 8)
    with torch.no_grad():
        base = qf(r, r.features, raw=raw)
        moved = r.geometry.clone()
        moved[0, 0, 0:2] = torch.tensor([-10.0, 0.0])  # same range, other side of the sensor
        far = RegionFeatures("box", r.features, moved, r.scores, r.labels, r.mask)
        out = qf(far, r.features, raw=raw)
        assert not torch.allclose(out[0, 0], base[0, 0]) and torch.allclose(out[0, 1], base[0, 1])
        raw2 = raw.clone()
        raw2[0, 1] += 1.0
        out = qf(r, r.features, raw=raw2)
        assert torch.allclose(out[0, 0], base[0, 0]) and not torch.allclose(out[0, 1], base[0, 1])
        torch.testing.assert_close(qf(r, r.features), qf(r, r.features, raw=None))
    plain = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=0, region_dim=D, out_dim=24).eval()
    assert plain.raw_in is None
    with torch.no_grad():
        torch.testing.assert_close(plain(r, r.features, raw=raw), plain(r, r.features))


def test_raw_features_stay_with_their_own_region():
    """A region's pre-BiCA feature is its own memory token only: neighbours' relation tokens read
    their (BiCA) features, not the raw ones."""
    torch.manual_seed(0)
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=1, region_dim=D,
                         out_dim=24, raw_dim=8).eval()
    r = _boxes([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [-30.0, 0.0, 0.0]])  # 0 and 1 are each other's neighbour, 0 is 2's
    raw = torch.randn(1, 3, 8)
    with torch.no_grad():
        base = qf(r, r.features, raw=raw)
        raw2 = raw.clone()
        raw2[0, 1] += 1.0  # region 1's raw feature: only its own tokens change
        out = qf(r, r.features, raw=raw2)
        feats = r.features.clone()
        feats[0, 1] += 1.0  # region 1's (BiCA) feature: its tokens and region 0's relation token change
        out_f = qf(r, feats, raw=raw)
    changed = (out - base).abs().amax((-1, -2))[0] > 1e-6
    assert changed.tolist() == [False, True, False]
    changed = (out_f - base).abs().amax((-1, -2))[0] > 1e-6
    assert changed.tolist() == [True, True, False]


def test_pair_geometry_places_the_box_on_each_segment():
    # region 0 at the origin; neighbours at (-2, 0), (2, 1), (0, 6) (nearest first: 1, 2, 3)
    r = _boxes([[0.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 6.0, 0.0]])
    idx, _ = nearest_neighbours(r, 3)
    assert idx[0, 0].tolist() == [1, 2, 3]
    pairs = torch.combinations(torch.arange(3), 2)  # (0, 1), (0, 2), (1, 2)
    geo = pair_geometry(r, idx, pairs)
    assert geo.shape == (1, 4, 3, 5)
    # pair (1, 2): segment (-2, 0) -> (2, 1); the origin projects at t = (2*4 + 0*1) / 17
    ab = math.sqrt(17.0)
    t, off = 8.0 / 17.0, abs(-4.0 * 0.0 + 1.0 * 2.0 - 0.0) / ab / ab  # |cross| / |ab|, over |ab|
    torch.testing.assert_close(geo[0, 0, 0], torch.tensor([t, off, ab / 10, 0.2, math.sqrt(5.0) / 10]))
    # moving and turning the whole scene changes none of it
    a = 1.1
    rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    moved = r.geometry.clone()
    moved[..., 0:3] = moved[..., 0:3] @ rot.T + torch.tensor([-7.0, 3.0, 0.5])
    r2 = RegionFeatures("box", r.features, moved, r.scores, r.labels, r.mask)
    torch.testing.assert_close(pair_geometry(r2, idx, pairs), geo, atol=1e-5, rtol=0)


def test_pair_tokens_start_constant_and_skip_missing_neighbours():
    torch.manual_seed(0)
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3, region_dim=D,
                         out_dim=24, pair_neighbours=3).eval()
    r = _boxes([[0.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [2.0, 1.0, 0.0], [9.0, 9.0, 0.0]], mask=[True, True, True, False])
    idx, valid = nearest_neighbours(r, 3)
    with torch.no_grad():
        tok, ok = qf.pair_tokens(r, r.features, idx, valid)
    assert tok.shape == (1, 4, 3, 32)
    torch.testing.assert_close(tok, qf.pair_type.expand_as(tok))  # zero-initialised outputs
    assert ok[0, 0].tolist() == [True, False, False]  # region 3 is padding: only the pair (1, 2) is real
    with pytest.raises(ConfigError, match="pair_neighbours"):
        RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=2, region_dim=D,
                        out_dim=24, pair_neighbours=3)


def _between_scenes(n: int, seed: int) -> tuple[RegionFeatures, torch.Tensor]:
    """n scenes of 6 boxes on a 24 m square; label: box 0 lies between two of its 4 nearest
    neighbours (t in [0.25, 0.75] along the segment, off the line by at most 0.3 of its length,
    the synthetic annotator's rule)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 6, 2, generator=g) * 24.0 - 12.0  # (n, 6, 2)
    d = (xy[:, 1:] - xy[:, :1]).norm(dim=-1)  # (n, 5) distances from box 0
    near = 1 + d.argsort(-1)[:, :4]  # (n, 4)
    label = torch.zeros(n)
    for s in range(n):
        p = xy[s, 0]
        for i in range(4):
            for j in range(i + 1, 4):
                a, b = xy[s, near[s, i]], xy[s, near[s, j]]
                ab = b - a
                t = float(((p - a) * ab).sum() / (ab * ab).sum())
                off = float((p - (a + t * ab)).norm() / ab.norm())
                label[s] = max(float(label[s]), float(0.25 <= t <= 0.75 and off <= 0.3))
    geo = torch.cat([xy, torch.zeros(n, 6, 1), torch.ones(n, 6, 3), torch.zeros(n, 6, 1)], -1)  # (n, 6, 7)
    feats = torch.zeros(n, 6, D)  # nothing but geometry to go by
    ones = torch.ones(n, 6)
    return RegionFeatures("box", feats, geo, ones, ones.long(), ones.bool()), label


def test_pair_tokens_let_a_small_qformer_learn_between():
    """Trained alike on the same scenes, a Q-Former reading pair tokens tells "box 0 lies between
    two neighbours" apart on new scenes; one reading single relation tokens does worse."""
    train, y = _between_scenes(512, 0)
    test, y_test = _between_scenes(512, 1)
    acc = {}
    for m in (0, 4):
        torch.manual_seed(0)
        qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=1, num_neighbours=4, region_dim=D,
                             out_dim=1, pair_neighbours=m)
        opt = torch.optim.Adam(qf.parameters(), lr=3e-3)
        for step in range(150):
            sel = torch.arange(step * 64, step * 64 + 64) % 512
            batch = RegionFeatures("box", train.features[sel], train.geometry[sel], train.scores[sel],
                                   train.labels[sel], train.mask[sel])
            logit = qf(batch, batch.features)[:, 0, 0, 0]  # (64,) box 0's one token
            loss = nn.functional.binary_cross_entropy_with_logits(logit, y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc[m] = float(((qf(test, test.features)[:, 0, 0, 0] > 0).float() == y_test).float().mean())
    base = float(torch.maximum(y_test.mean(), 1 - y_test.mean()))
    assert acc[4] >= 0.85 and acc[4] >= acc[0] + 0.05, (acc, base)
