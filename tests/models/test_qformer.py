"""Relation Q-Former: neighbours, relation geometry, sensitivity to neighbours only."""
from __future__ import annotations

import math

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.captioner.qformer import (
    RelationQFormer,
    layout_features,
    nearest_neighbours,
    relation_between,
    relation_geometry,
    relation_ranks,
    choose_targets, target_first_order,
)
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


def _room(centres, labels, scores=None):
    """Boxes at (x, y, 0) with the given labels (a ScanRefer-like room seen from above)."""
    r = _boxes([[x, y, 0.0] for x, y in centres])
    sc = torch.ones(1, len(centres)) if scores is None else torch.tensor([scores])
    return RegionFeatures("box", r.features, r.geometry, sc, torch.tensor([labels]), r.mask)


def test_relation_ranks_say_which_neighbour_makes_the_region_the_nearest_of_its_class():
    # two chairs (label 0) at x=0 and x=4; a table (1) at x=1, a door (2) at x=5.5, a lamp (3) far off
    r = _room([(0, 0), (4, 0), (1, 0.5), (5.5, 0), (0, 9)], [0, 0, 1, 2, 3])
    idx, valid = nearest_neighbours(r, 3)
    ranks = relation_ranks(r, idx, valid)
    assert ranks.shape == (1, 5, 3, 5)
    by_t = {int(t): ranks[0, 0, n] for n, t in enumerate(idx[0, 0])}  # chair 0 about each neighbour
    assert idx[0, 0].tolist() == [2, 1, 3]  # table, the other chair, door: nearest first
    torch.testing.assert_close(ranks[0, 0, :, 0], torch.tensor([0.0, 1 / 3, 2 / 3]))  # position
    assert by_t[1][1] == 1 and by_t[2][1] == 0  # same class: the other chair only
    assert by_t[2][2] == 1 and by_t[3][2] == 0  # the chair closest to the table, not to the door
    # margin: chair 1 is 3.04 m from the table, chair 0 1.12 m -> 1.92 m nearer, clipped to 1;
    # chair 1 is 1.5 m from the door, chair 0 5.5 m -> -4 m, clipped to -1 (margin_scale 1 m)
    assert by_t[2][3] == 1 and by_t[3][3] == -1
    assert abs(relation_ranks(r, idx, valid, margin_scale=10.0)[0, 0, 2, 3].item() + 0.4) < 1e-6  # (1.5 - 5.5) / 10
    assert ranks[0, 0, :, 4].tolist() == [1, 1, 1] and ranks[0, 2, :, 4].tolist() == [0, 0, 0]  # class shared
    # the table has no rival of its class: nearest of its class to everything, margin 1
    assert ranks[0, 2, :, 2].tolist() == [1, 1, 1] and ranks[0, 2, :, 3].tolist() == [1, 1, 1]
    # chair 1 is the chair closest to the door
    assert ranks[0, 1, idx[0, 1].tolist().index(3), 2] == 1


def test_relation_ranks_ignore_padding_low_scores_and_unknown_labels():
    r = _room([(0, 0), (4, 0), (1, 0.5), (0.8, 0.4)], [0, 0, 1, 0], scores=[1.0, 1.0, 1.0, 0.2])
    idx, valid = nearest_neighbours(r, 3, min_score=0.5)
    ranks = relation_ranks(r, idx, valid, min_score=0.5)
    n = idx[0, 0].tolist().index(2)
    assert ranks[0, 0, n, 2] == 1  # the low-scored chair nearer to the table is no rival
    assert ranks[0, 0, ~valid[0, 0]].abs().sum() == 0  # padded neighbour slots are zeros
    r2 = RegionFeatures("box", r.features, r.geometry, r.scores, torch.tensor([[-1, 0, 1, -1]]), r.mask)
    ranks2 = relation_ranks(r2, idx, valid, min_score=0.5)
    assert ranks2[0, 0, :, 1].sum() == 0 and ranks2[0, 0, :, 4].sum() == 0  # unknown label: no class


def test_relation_ranks_reach_the_tokens_only_when_switched_on():
    r = _room([(0, 0), (4, 0), (1, 0.5), (5.5, 0)], [0, 0, 1, 2])
    torch.manual_seed(0)
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3, region_dim=D,
                         out_dim=24, relation_ranks=True).eval()
    r_other = RegionFeatures("box", r.features, r.geometry, r.scores, torch.tensor([[0, 3, 1, 2]]), r.mask)
    with torch.no_grad():  # chair 1 relabelled: chair 0 now has no rival; the geometry is the same
        assert (qf(r, r.features) - qf(r_other, r.features)).abs().amax() > 1e-4
    torch.manual_seed(0)
    plain = _qformer(k=3)
    with torch.no_grad():
        torch.testing.assert_close(plain(r, r.features), plain(r_other, r.features))
    assert plain.rank_in is None and sum(p.numel() for p in qf.rank_in.parameters()) > 0


def test_neighbour_queries_start_from_the_nearest_neighbours_relation_tokens():
    # region 0's neighbours, nearest first: 1 (2 m), 2 (5 m); region 3 is padding
    r = _boxes([[0, 0, 0], [2, 0, 0], [5, 0, 0], [9, 0, 0]], mask=[True, True, True, False])
    torch.manual_seed(0)
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3, region_dim=D,
                         out_dim=24, neighbour_queries=2).eval()
    seen = {}
    qf.decoder.register_forward_pre_hook(lambda mod, args: seen.update(tgt=args[0].detach().clone()))
    with torch.no_grad():
        qf(r, r.features)
        rel, valid = qf.relation_tokens(r, r.features)  # (1, 4, 3, D), (1, 4, 3)
        own = qf.region_in(r.features) + qf.geometry_in("box", r.geometry)  # (1, 4, D)
    start = seen["tgt"] - qf.queries.detach() - own[0, :3, None]  # (3 real regions, 3 queries, D)
    torch.testing.assert_close(start[:, :2], rel[0, :3, :2])  # queries 0 and 1: the two nearest
    torch.testing.assert_close(start[:, 2], torch.zeros_like(start[:, 2]))  # query 2: the region alone
    assert valid[0, 0, :2].all()
    # a region with one real neighbour: the second neighbour query starts from the region alone
    r1 = _boxes([[0, 0, 0], [2, 0, 0], [5, 0, 0]], mask=[True, True, False])
    with torch.no_grad():
        qf(r1, r1.features)
        own1 = qf.region_in(r1.features) + qf.geometry_in("box", r1.geometry)
    start1 = seen["tgt"] - qf.queries.detach() - own1[0, :2, None]
    torch.testing.assert_close(start1[:, 1], torch.zeros_like(start1[:, 1]))
    assert start1[:, 0].abs().amax() > 0
    # the neighbour's feature is in its query's start, not only in the memory
    with torch.no_grad():
        f2 = r.features.clone()
        f2[0, 1] += 1.0
        qf(r, f2)
    assert (seen["tgt"][0, 0] - (qf.queries.detach()[0] + own[0, 0] + rel[0, 0, 0])).abs().amax() > 1e-3
    with pytest.raises(ConfigError, match="neighbour_queries"):
        RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=2, region_dim=D,
                        out_dim=24, neighbour_queries=3)


def test_relation_between_names_the_neighbour_that_frames_the_region():
    # region 0 at the origin; 1 at (-2, 0.1) and 2 at (2, 0) frame it; 3 at (0, 3) and 4 at (0, -5) too,
    # off-centre; neighbours of 0 nearest first: 2, 1, 3, 4
    r = _room([(0, 0), (-2, 0.1), (2, 0), (0, 3), (0, -5)], [0, 1, 2, 3, 4])
    idx, valid = nearest_neighbours(r, 4)
    assert idx[0, 0].tolist() == [2, 1, 3, 4]
    bt = relation_between(r, idx, valid)  # (1, 5, 4, 6): along, off, midway, partner, partner_offset, span
    assert bt.shape == (1, 5, 4, 6)
    along, off, midway, partner, offset, span = bt[0, 0, 0].tolist()  # about neighbour 2: partner 1
    assert partner == 1 / 4 and offset == 1 / 4
    assert abs(along - 0.5) < 1e-3 and abs(off - 0.05 / 4.0012) < 1e-3 and midway < 0.02
    assert abs(span - math.hypot(4, 0.1) / 10) < 1e-5
    assert bt[0, 0, 1, 3] == 0 and bt[0, 0, 1, 4] == -1 / 4  # about 1: partner 2, the nearer one
    # about 3: 4 is straight across but not in the middle (along 3/8); 2 is off the line
    along, off, midway, partner, _, _ = bt[0, 0, 2].tolist()
    assert partner == 3 / 4 and abs(along - 0.375) < 1e-6 and off < 1e-6 and abs(midway - 0.25) < 1e-6


def test_relation_between_without_a_partner_and_for_events():
    r = _room([(0, 0), (1, 0), (5, 0)], [0, 1, 2])
    r = RegionFeatures("box", r.features, r.geometry, r.scores, r.labels, torch.tensor([[True, True, False]]))
    idx, valid = nearest_neighbours(r, 2)  # one real neighbour each
    bt = relation_between(r, idx, valid)
    assert bt[0, 0, 0].tolist() == [0, 0, 2, 0, 0, 0]  # no other neighbour: midway 2, zeros elsewhere
    assert bt[0, 0, 1].abs().sum() == 0 and bt[0, 2].abs().sum() == 0  # padding: zeros
    ev = RegionFeatures("event", torch.zeros(1, 3, D), torch.tensor([[[1.0, 2.0], [0.0, 1.0], [2.0, 3.0]]]),
                        torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
    idx, valid = nearest_neighbours(ev, 2)
    bt = relation_between(ev, idx, valid)
    assert bt[0, 0, :, 2].tolist() == [0, 0]  # the middle event lies exactly between the others
    assert bt[0, 0, 0, 5] == 1.0  # span: 2 s / time_scale 2


def test_between_and_room_layout_reach_the_tokens_only_when_switched_on():
    r = _room([(0, 0), (-2, 0.1), (2, 0), (0, 3)], [0, 1, 2, 3])
    gaps = torch.tensor([[[0.1, 3.0, 0.2, 3.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.1, 1.0, 1.0], [1.0, 1.0, 0.1, 2.0]]])
    r = RegionFeatures("box", r.features, r.geometry, r.scores, r.labels, r.mask, extra={"wall_gaps": gaps})
    moved = RegionFeatures("box", r.features, r.geometry, r.scores, r.labels, r.mask, extra={"wall_gaps": gaps + 1})
    torch.manual_seed(0)
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3, region_dim=D,
                         out_dim=24, relation_between=True, room_layout=True).eval()
    plain = _qformer(k=3)
    with torch.no_grad():
        torch.testing.assert_close(qf(r, r.features), qf(moved, r.features))  # zero at initialisation
        torch.nn.init.normal_(qf.layout_in[2].weight, std=0.1)  # as after training
        assert (qf(r, r.features) - qf(moved, r.features)).abs().amax() > 1e-4  # the walls moved
        torch.testing.assert_close(plain(r, r.features), plain(moved, r.features))
        rel, _ = qf.relation_tokens(r, r.features)
        qf.between_in = None
        assert (rel - qf.relation_tokens(r, r.features)[0]).abs().amax() > 1e-4
    # layout features: the gaps clipped to [0, 3] m, then sorted
    assert layout_features(torch.tensor([[[0.5, -1.0, 4.0, 0.2]]]))[0, 0].tolist() == pytest.approx(
        [0.5, 0.0, 3.0, 0.2, 0.0, 0.2, 0.5, 3.0])
    bare = RegionFeatures("box", r.features, r.geometry, r.scores, r.labels, r.mask)
    with pytest.raises(ConfigError, match="wall_gaps"):
        qf(bare, r.features)



def test_room_layout_switched_on_in_a_trained_qformer_changes_nothing_until_it_learns():
    """A warm start (init_from a run without the layout) begins from the same tokens: the
    layout's last layer starts at zero; one optimiser step on the tokens makes it count."""
    r = _room([(0, 0), (-2, 0.1), (2, 0), (0, 3)], [0, 1, 2, 3])
    gaps = torch.tensor([[[0.1, 3.0, 0.2, 3.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.1, 1.0, 1.0], [1.0, 1.0, 0.1, 2.0]]])
    r = RegionFeatures("box", r.features, r.geometry, r.scores, r.labels, r.mask, extra={"wall_gaps": gaps})
    torch.manual_seed(0)
    trained = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3,
                              region_dim=D, out_dim=24).eval()
    torch.manual_seed(1)
    walled = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3,
                             region_dim=D, out_dim=24, room_layout=True).eval()
    missing, unexpected = walled.load_state_dict(trained.state_dict(), strict=False)
    assert sorted({k.split(".")[0] for k in missing}) == ["layout_in"] and not unexpected
    with torch.no_grad():
        torch.testing.assert_close(walled(r, r.features), trained(r, r.features), rtol=0, atol=0)
    opt = torch.optim.SGD(walled.layout_in.parameters(), lr=0.1)
    walled(r, r.features).square().sum().backward()
    assert walled.layout_in[0].weight.grad.abs().sum() == 0  # behind the zero layer: no gradient yet
    assert walled.layout_in[2].weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        assert (walled(r, r.features) - trained(r, r.features)).abs().amax() > 1e-5

def test_target_first_order_puts_the_chosen_targets_first_then_the_rest_nearest_first():
    chosen = torch.tensor([[[2, 0], [4, 1], [3, 3], [4, 4], [1, 4]]])  # k = 4; 4: none
    order = target_first_order(chosen, 4)
    assert order[0].tolist() == [[2, 0, 1, 3], [1, 0, 2, 3], [3, 0, 1, 2], [0, 1, 2, 3], [1, 0, 2, 3]]


def test_choose_targets_never_gives_one_slot_to_two_targets():
    # k = 3 neighbours + none (slot 3); P = 2 targets; logits (1, 3 regions, 4, 2)
    logits = torch.tensor([[[[5.0, 4.0], [1.0, 3.0], [0.0, 0.0], [-1.0, -1.0]],   # both prefer slot 0
                            [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [9.0, 9.0]],     # none, twice
                            [[0.0, 9.0], [2.0, 0.0], [0.0, 0.0], [0.0, 1.0]]]])   # 1, then 0
    assert choose_targets(logits)[0].tolist() == [[0, 1], [3, 3], [1, 0]]
    assert logits.argmax(2)[0, 0].tolist() == [0, 0]  # what an argmax per target would repeat
    # given slots are kept (teacher forcing) and taken from the head; negative: the head chooses
    given = torch.tensor([[[1, -100], [-100, 2], [-100, 1]]])
    assert choose_targets(logits, given)[0].tolist() == [[1, 0], [3, 2], [0, 1]]  # row 2: slot 1 is labelled 2nd


def test_target_order_seeds_the_first_queries_with_the_chosen_targets():
    # region 0's neighbours, nearest first: 1 (2 m), 2 (5 m), 3 (9 m)
    r = _boxes([[0, 0, 0], [2, 0, 0], [5, 0, 0], [9, 0, 0]])
    torch.manual_seed(0)
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3, region_dim=D,
                         out_dim=24, neighbour_queries=2, target_order=2).eval()
    seen = {}
    qf.decoder.register_forward_pre_hook(lambda mod, args: seen.update(tgt=args[0].detach().clone()))
    slots = torch.tensor([[[2, 0], [3, 3], [1, 3], [3, 3]]])  # region 0: the 3rd, then the 1st; 2: the 2nd; k=3: none
    with torch.no_grad():
        out, logits = qf(r, r.features, target_slots=slots, with_targets=True)
        rel, _ = qf.relation_tokens(r, r.features)  # (1, 4, 3, D), nearest first
        own = qf.region_in(r.features) + qf.geometry_in("box", r.geometry)  # (1, 4, D)
    start = seen["tgt"] - qf.queries.detach() - own[0, :, None]  # (4 regions, 3 queries, D)
    torch.testing.assert_close(start[0, :2], rel[0, 0, [2, 0]])
    torch.testing.assert_close(start[1, :2], rel[0, 1, [0, 1]])  # no target: nearest first, as before
    torch.testing.assert_close(start[2, :2], rel[0, 2, [1, 0]])
    assert logits.shape == (1, 4, 4, 2) and out.shape == (1, 4, 3, 24)
    # without labels the head chooses: its argmax, slot k meaning none
    with torch.no_grad():
        qf.target_none.bias.fill_(-100.0)  # a target for every region
        _, logits = qf(r, r.features, with_targets=True)
        order = target_first_order(choose_targets(logits), 3)  # (1, 4, 3)
        start = seen["tgt"] - qf.queries.detach() - own[0, :, None]
        torch.testing.assert_close(start[:, :2], rel[0].gather(1, order[0, :, :2, None].expand(-1, -1, 32)))
        qf.target_none.bias.fill_(100.0)  # "no target" everywhere: nearest first
        qf(r, r.features)
        start = seen["tgt"] - qf.queries.detach() - own[0, :, None]
        torch.testing.assert_close(start[:, :2], rel[0, :, :2])
    # unknown labels (negative) leave the choice to the head; slot k (none) keeps nearest first
    with torch.no_grad():
        qf.target_none.bias.fill_(-100.0)
        qf(r, r.features)
        chosen_start = seen["tgt"] - qf.queries.detach() - own[0, :, None]
        assert (chosen_start[:, :2] - rel[0, :, :2]).abs().amax() > 1e-4  # the head reorders something
        qf(r, r.features, target_slots=torch.full((1, 4, 2), -100))
        torch.testing.assert_close(seen["tgt"] - qf.queries.detach() - own[0, :, None], chosen_start)
        qf(r, r.features, target_slots=torch.full((1, 4, 2), 3))
        torch.testing.assert_close((seen["tgt"] - qf.queries.detach() - own[0, :, None])[:, :2], rel[0, :, :2])
    with pytest.raises(ConfigError, match="target_order"):
        RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3, region_dim=D,
                        out_dim=24, neighbour_queries=1, target_order=2)


@pytest.mark.parametrize("detach", [False, True])
def test_target_head_loss_reaches_the_tokens_unless_detached(detach):
    r = _boxes([[0, 0, 0], [2, 0, 0], [5, 0, 0], [9, 0, 0]])
    torch.manual_seed(0)
    qf = RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=3, num_neighbours=3, region_dim=D,
                         out_dim=24, neighbour_queries=2, target_order=1, target_detach=detach)
    _, logits = qf(r, r.features, with_targets=True)
    torch.nn.functional.cross_entropy(logits[0, :, :, 0], torch.tensor([2, 0, 3, 1])).backward()
    assert qf.target_head[-1].weight.grad.abs().sum() > 0 and qf.target_none.weight.grad.abs().sum() > 0
    into_tokens = [qf.region_in.weight.grad, qf.neighbour_in.weight.grad, qf.relation_in["box"][0].weight.grad]
    if detach:
        assert all(g is None for g in into_tokens)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in into_tokens)
