"""Relation Q-Former: K learnable queries per region read the region, its context and its
neighbours, and become the K visual tokens handed to the LLaMA-Adapter.

For each region the memory the queries cross-attend to is

* the region's own (BiCA-updated) feature plus an embedding of its own geometry (BiCA's
  ``GeometryEmbedding``: position, size, heading, range and bearing from the sensor),
* its feature as perception gave it, before BiCA mixed in the other regions (when given:
  a linear probe names the colour of 89 % of boxes from the perception features, 65 % from
  one BiCA layer's output),
* its BiCA context summary (when given),
* its own tokens ``RegionFeatures.tokens`` (B, R, P, C) (when present: points or BEV cells
  sampled inside the box, frames inside the span),
* one **relation token** per neighbour among its ``k`` nearest regions of the same kind
  (centre distance for boxes, centre time for events): an MLP of the pairwise geometry plus
  a projection of the neighbour's feature. (With BiCA on, relation tokens that also or
  instead read the neighbour's pre-BiCA feature left the right relation phrases at the
  prior's 22-28 % in three runs, against 38-57 % without: docs/results.md.)

With ``relation_ranks`` each relation token also reads where the pair stands among the other
regions (see :func:`relation_ranks`): the neighbour's place in the nearest-first list, whether it
shares the region's class, and whether the region is the nearest of its class to that neighbour.
Referring expressions ("the chair closest to the table", ScanRefer) pick their target by such
comparisons across regions, which a token of one pair's geometry does not hold.

With ``neighbour_queries = n`` the first n queries each start from one neighbour's relation token
(the nearest first), as every query starts from the region's own feature: the visual token the LLM
reads for that slot then holds which neighbour it is about, its class and colour, instead of a mix
the cross-attention must learn to pick from. Indoors, without it, the relation tokens held the
target's colour (linear probe 93 %) and the Q-Former's output did not (22 %, chance); with n = 8 the
output held it (71 %) and the named target was right for 46 % of the objects instead of 4 %
(docs/results.md, "neighbour queries"; tools/probe_tokens.py).

With ``target_order = P`` (needs ``neighbour_queries >= P``) a small head scores each neighbour as
the caption's p-th target (or none), trained on which neighbour's class the caption names
(:func:`dense3d.models.losses.mention.target_labels`), and the neighbour queries take the chosen
targets first, then the rest nearest first: the LLM reads the target from the first slot in every
caption instead of from the slot of whichever neighbour it is. While training, the caption's own
targets take the first slots (teacher forcing); when generating, the head's. Runs that name the
target right had learned "read the nearest neighbour's slot" only, where a fifth of the annotated
targets are further away (docs/results.md, "which neighbour the captions name").

Pairwise geometry (see :func:`relation_geometry`): boxes — the neighbour's offset in the
region's own frame (rotated by -yaw), distance, sin/cos of the relative yaw, log size ratios,
and the offset in the sensor frame (captions say "in front of" / "left of" as seen from the ego
car, whichever way the region faces);
events — centre offset, |offset|, offsets of both ends, log length ratio, temporal IoU.

The queries run through ``torch.nn.TransformerDecoder`` layers (self-attention among the
queries, cross-attention to the memory, FFN), then a linear map to the LLM's hidden size.
TOD3Cap's Relation Q-Former was never released; this is written from its description.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.checks import check_heads, check_int
from dense3d.models.context.bica import GeometryEmbedding
from dense3d.structures.sample import RegionFeatures

__all__ = ["RelationQFormer", "choose_targets", "target_first_order", "relation_geometry", "relation_ranks", "relation_between", "nearest_neighbours",
           "RELATION_DIMS", "RANK_DIMS", "BETWEEN_DIMS", "LAYOUT_DIMS"]

RELATION_DIMS = {"box": 11, "event": 6}
RANK_DIMS = 5
BETWEEN_DIMS = 6
LAYOUT_DIMS = 8


def nearest_neighbours(regions: RegionFeatures, k: int, min_score: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest other real regions of each region, among those scored ``min_score`` or
    more (a proposal below it is more likely a false detection than a neighbour).

    Returns:
        index: (B, R, k) long neighbour indices (0 where invalid),
        valid: (B, R, k) bool, False where a region has fewer than k real neighbours.
    """
    g, mask = regions.geometry, regions.mask.bool()
    B, R = mask.shape
    if regions.kind == "box":
        c = g[..., 0:3]  # (B, R, 3)
    else:
        c = torch.cat([0.5 * (g[..., 0:1] + g[..., 1:2])], -1)  # (B, R, 1) centre times
    # exact distances (cdist's matrix-product mode, taken past 25 regions, rounds them) and a stable
    # sort: regions at equal distances keep their index order, however many padded regions follow
    d = torch.cdist(c, c, compute_mode="donot_use_mm_for_euclid_dist")  # (B, R, R)
    sure = mask & (regions.scores >= min_score)  # (B, R) regions that may be a neighbour
    bad = ~(mask[:, :, None] & sure[:, None, :]) | torch.eye(R, dtype=torch.bool, device=d.device)[None]
    d = d.masked_fill(bad, float("inf"))
    kk = min(k, max(R - 1, 0))
    if kk == 0:
        z = torch.zeros(B, R, k, dtype=torch.long, device=d.device)
        return z, z.bool()
    dist, idx = d.sort(dim=-1, stable=True)  # (B, R, R), nearest first
    dist, idx = dist[..., :kk], idx[..., :kk]  # (B, R, kk)
    valid = torch.isfinite(dist)
    idx = idx.masked_fill(~valid, 0)
    if kk < k:  # pad to k
        pad = k - kk
        idx = torch.cat([idx, idx.new_zeros(B, R, pad)], -1)
        valid = torch.cat([valid, valid.new_zeros(B, R, pad)], -1)
    return idx, valid


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, R, C), idx (B, R, k) -> (B, R, k, C)."""
    B, R, k = idx.shape
    flat = idx.reshape(B, R * k, 1).expand(-1, -1, x.shape[-1])  # (B, R*k, C)
    return x.gather(1, flat).reshape(B, R, k, x.shape[-1])  # (B, R*k, C) -> (B, R, k, C)


def relation_geometry(regions: RegionFeatures, idx: torch.Tensor, space_scale: float = 10.0,
                      time_scale: float = 2.0) -> torch.Tensor:
    """Pairwise geometry of each region and its neighbours: (B, R, k, RELATION_DIMS[kind])."""
    g = regions.geometry
    n = _gather(g, idx)  # (B, R, k, 7|2)
    s = g.unsqueeze(2)  # (B, R, 1, 7|2)
    if regions.kind == "box":
        delta = n[..., 0:3] - s[..., 0:3]  # (B, R, k, 3)
        c, si = torch.cos(s[..., 6]), torch.sin(s[..., 6])  # (B, R, 1)
        local_x = delta[..., 0] * c + delta[..., 1] * si  # into the region's frame (rotate by -yaw)
        local_y = -delta[..., 0] * si + delta[..., 1] * c
        local = torch.stack([local_x, local_y, delta[..., 2]], -1) / space_scale  # (B, R, k, 3)
        dist = delta.norm(dim=-1, keepdim=True) / space_scale  # (B, R, k, 1)
        ryaw = n[..., 6:7] - s[..., 6:7]
        ratio = torch.log(n[..., 3:6].clamp(min=1e-3) / s[..., 3:6].clamp(min=1e-3))  # (B, R, k, 3)
        # the first 9 are invariant to moving the whole scene; the sensor-frame offset is what
        # ego-centric relation words ("ahead of", "left of") depend on
        sensor = delta[..., 0:2] / space_scale  # (B, R, k, 2)
        return torch.cat([local, dist, torch.sin(ryaw), torch.cos(ryaw), ratio, sensor], -1)  # (B, R, k, 11)
    sc, nc = s.mean(-1, keepdim=True), n.mean(-1, keepdim=True)  # centres (B, R, k, 1)
    sl, nl = (s[..., 1:2] - s[..., 0:1]), (n[..., 1:2] - n[..., 0:1])  # lengths
    inter = (torch.minimum(s[..., 1:2], n[..., 1:2]) - torch.maximum(s[..., 0:1], n[..., 0:1])).clamp(min=0)
    tiou = inter / (sl + nl - inter).clamp(min=1e-6)
    dt = (nc - sc) / time_scale
    ends = (n - s) / time_scale  # (B, R, k, 2): offsets of t0 and t1
    ratio = torch.log(nl.clamp(min=1e-3) / sl.clamp(min=1e-3))
    return torch.cat([dt, dt.abs(), ends, ratio, tiou], -1)  # (B, R, k, 6)


def relation_ranks(regions: RegionFeatures, idx: torch.Tensor, valid: torch.Tensor, min_score: float = 0.0,
                   margin_scale: float = 1.0) -> torch.Tensor:
    """How each (region i, neighbour t) pair ranks among the other regions: (B, R, k, RANK_DIMS).

    Per pair, in this order:

    * ``position``: t's place in i's nearest-first neighbour list, / k (0: the nearest);
    * ``same_class``: 1 where t has i's label;
    * ``nearest_of_class``: 1 where no other region of i's class is nearer to t than i is
      ("the chair closest to the table" is right for i about t);
    * ``margin``: how much nearer to t i is than the nearest other region of its class
      (negative: another is nearer), / ``margin_scale``, clipped to [-1, 1]; 1 with none;
    * ``class_shared``: 1 where another region has i's label (a referring expression needs a
      comparison only then).

    Distances are between box centres seen from above (x, y), as the room's annotators compare
    them, or between event centre times. Competitors are the real regions scored ``min_score``
    or more, as in :func:`nearest_neighbours`; a label below 0 (unknown) shares no class.
    Zeros where ``valid`` is False.
    """
    g, mask = regions.geometry, regions.mask.bool()
    B, R, k = idx.shape
    if R == 0:  # no region in any scene: nothing to rank (the minimum over no rivals below would fail)
        return g.new_zeros(B, 0, k, RANK_DIMS)
    c = g[..., 0:2] if regions.kind == "box" else 0.5 * (g[..., 0:1] + g[..., 1:2])  # (B, R, 2|1) centres
    dist = torch.cdist(c, c, compute_mode="donot_use_mm_for_euclid_dist")  # (B, R, R): dist[b, t, j], exact
    flat = idx.reshape(B, R * k, 1).expand(-1, -1, R)  # (B, R*k, R)
    to_t = dist.gather(1, flat).reshape(B, R, k, R)  # (B, R*k, R) -> (B, R, k, R): |t - j| for every j
    lab = regions.labels
    sure = mask & (regions.scores >= min_score) & (lab >= 0)  # (B, R) regions that compete
    eye = torch.eye(R, dtype=torch.bool, device=g.device)[None]  # (1, R, R)
    rivals = (lab[:, :, None] == lab[:, None, :]) & sure[:, None, :] & ~eye & (lab[:, :, None] >= 0)  # (B, i, j)
    arange_k = torch.arange(R, device=g.device)
    not_t = arange_k.view(1, 1, 1, R) != idx.unsqueeze(-1)  # (B, R, k, R): j is not t itself
    rival_d = to_t.masked_fill(~(rivals.unsqueeze(2) & not_t), float("inf"))  # (B, R, k, R)
    own_d = to_t.gather(-1, arange_k.view(1, R, 1, 1).expand(B, R, k, 1)).squeeze(-1)  # (B, R, k): |t - i|
    nearest_rival = rival_d.amin(-1)  # (B, R, k), inf without rivals
    margin = ((nearest_rival - own_d) / margin_scale).clamp(-1.0, 1.0)  # inf - d -> 1
    position = torch.arange(k, device=g.device, dtype=g.dtype).view(1, 1, k).expand(B, R, k) / max(k, 1)
    same_class = (_gather(lab.unsqueeze(-1), idx).squeeze(-1) == lab.unsqueeze(-1)) & (lab.unsqueeze(-1) >= 0)
    nearest_of_class = nearest_rival > own_d
    class_shared = rivals.any(-1, keepdim=True).expand(B, R, k)
    out = torch.stack([position, same_class.to(g.dtype), nearest_of_class.to(g.dtype), margin.to(g.dtype),
                       class_shared.to(g.dtype)], -1)  # (B, R, k, RANK_DIMS)
    return out * valid.unsqueeze(-1).to(g.dtype)


def relation_between(regions: RegionFeatures, idx: torch.Tensor, valid: torch.Tensor,
                     space_scale: float = 10.0, time_scale: float = 2.0) -> torch.Tensor:
    """For each (region i, neighbour t): the other neighbour u that puts i nearest the middle of
    the segment from t to u, (B, R, k, BETWEEN_DIMS).

    "The chair between the table and the door" relates three regions. A relation token holds one
    pair, and the Q-Former's attention would have to compare every two of them to find the pair
    that frames the region; indoors, with pairwise tokens only, 5 % of such targets were named
    right (docs/results.md). Per pair (i, t), over the other valid neighbours u of i:

    * ``along``: where i projects onto the segment t -> u (0 at t, 1 at u), clipped to [-1, 2];
    * ``off``: i's distance from the line t-u over the segment's length, clipped to [0, 2];
    * ``midway``: ``2 |along - 0.5| + off`` clipped to [0, 2] (0: exactly in the middle), the
      score u is chosen by (lowest);
    * ``partner``: u's place in i's nearest-first list, / k;
    * ``partner_offset``: (u's place - t's place) / k (negative: u is nearer to i than t);
    * ``span``: the segment's length / ``space_scale`` (seconds / ``time_scale`` for events).

    Centres are box centres seen from above (x, y) or event centre times. A pair with no other
    valid neighbour gets midway 2 and zeros elsewhere; zeros where ``valid`` is False.
    """
    g = regions.geometry
    B, R, k = idx.shape
    if regions.kind == "box":
        c, scale = g[..., 0:2], space_scale  # (B, R, 2)
    else:
        c, scale = 0.5 * (g[..., 0:1] + g[..., 1:2]), time_scale  # (B, R, 1)
    cn = _gather(c, idx)  # (B, R, k, d): neighbour centres
    seg = cn.unsqueeze(2) - cn.unsqueeze(3)  # (B, R, k_t, k_u, d): u - t
    rel = (c.unsqueeze(2) - cn).unsqueeze(3)  # (B, R, k_t, 1, d): i - t
    length2 = (seg * seg).sum(-1).clamp(min=1e-6)  # (B, R, k_t, k_u)
    along = (rel * seg).sum(-1) / length2  # (B, R, k_t, k_u)
    foot = rel - along.unsqueeze(-1) * seg  # (B, R, k_t, k_u, d): i's offset from the line
    off = (foot.norm(dim=-1) / length2.sqrt()).clamp(max=2.0)
    along = along.clamp(-1.0, 2.0)
    midway = (2 * (along - 0.5).abs() + off).clamp(max=2.0)
    eye = torch.eye(k, dtype=torch.bool, device=g.device)
    ok = valid.unsqueeze(2) & valid.unsqueeze(3) & ~eye  # (B, R, k_t, k_u): t and u both real, u != t
    score = midway.masked_fill(~ok, float("inf"))
    best = score.argmin(-1, keepdim=True)  # (B, R, k_t, 1)
    found = ok.gather(-1, best).squeeze(-1)  # (B, R, k_t)

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x.gather(-1, best).squeeze(-1)  # (B, R, k_t, k_u) -> (B, R, k_t)

    pos = torch.arange(k, device=g.device, dtype=g.dtype)
    partner = best.squeeze(-1).to(g.dtype)  # (B, R, k_t)
    out = torch.stack([pick(along), pick(off), pick(midway), partner / k, (partner - pos.view(1, 1, k)) / k,
                       pick(length2).sqrt() / scale], -1)  # (B, R, k, BETWEEN_DIMS)
    none = out.new_tensor([0.0, 0.0, 2.0, 0.0, 0.0, 0.0])  # no partner: midway 2, zeros elsewhere
    out = torch.where(found.unsqueeze(-1), out, none)
    return out * valid.unsqueeze(-1).to(g.dtype)


def choose_targets(logits: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
    """The head's choice of each region's targets, in order: the p-th target is the best-scoring
    slot the earlier targets did not take ("none", slot k, can be chosen any number of times).

    Args:
        logits: (B, R, k + 1, P) the target head's scores, slot k meaning none.
        given: optional (B, R, P) slots fixed beforehand (labels, teacher forcing); a negative
            value leaves that target to the head, which then picks none of the given slots.
    Returns:
        (B, R, P) long: each target's slot in [0, k].
    """
    k, P = logits.shape[2] - 1, logits.shape[3]
    taken = torch.zeros_like(logits[..., 0], dtype=torch.bool)  # (B, R, k + 1)
    if given is not None:  # labelled neighbours are nobody else's, whichever target comes first
        real = (given >= 0) & (given < k)  # (B, R, P)
        taken = (F.one_hot(given.clamp(0, k), k + 1).bool() & real.unsqueeze(-1)).any(-2)  # (B, R, P, k+1) -> (B, R, k+1)
    chosen = []
    for p in range(P):
        c = logits[..., p].masked_fill(taken, float("-inf")).argmax(-1)  # (B, R)
        if given is not None:
            c = torch.where(given[..., p] >= 0, given[..., p].clamp(max=k), c)
        taken = taken | (F.one_hot(c, k + 1).bool() & (c < k).unsqueeze(-1))  # none stays free
        chosen.append(c)
    return torch.stack(chosen, -1)  # (B, R, P)


def target_first_order(chosen: torch.Tensor, k: int) -> torch.Tensor:
    """The order the neighbour slots are read in: the chosen targets first, then the rest nearest first.

    Args:
        chosen: (B, R, P) the p-th target's slot in [0, k), or k (or any value outside) for none;
            a slot chosen twice keeps its first place.
    Returns:
        (B, R, k) long: a permutation of 0..k-1 per region.
    """
    B, R, P = chosen.shape
    pos = torch.arange(k, device=chosen.device).expand(B, R, k)  # (B, R, k)
    key = pos.to(torch.float32)
    for p in range(P):
        hit = (pos == chosen[..., p:p + 1]) & (key >= 0)  # (B, R, k): this slot, not pinned yet
        key = torch.where(hit, float(p - P), key)
    return key.sort(dim=-1, stable=True).indices  # (B, R, k); keys are distinct, stable for clarity


def layout_features(gaps: torch.Tensor, scale: float = 1.0, clip: float = 3.0) -> torch.Tensor:
    """(B, R, 4) gaps from each box's footprint to the room's four walls (metres; see
    :func:`dense3d.models.context.room_layout.wall_gaps`) -> (B, R, LAYOUT_DIMS): the gaps and the
    same gaps sorted (nearest wall first, so "in the corner" reads as the two smallest being small
    whichever walls they are), each / ``scale`` after clipping to [0, clip]."""
    g = gaps.clamp(0.0, clip) / scale
    return torch.cat([g, g.sort(-1).values], -1)  # (B, R, 8)


class RelationQFormer(nn.Module):
    """K queries per region over its own feature, context summary, tokens and relations.

    Args:
        d_model: width of the queries and memory.
        n_heads: attention heads.
        n_layers: ``TransformerDecoder`` layers.
        num_queries: K, the number of visual tokens per region (= the adapter's prompt length).
        num_neighbours: k nearest regions turned into relation tokens (0: no relations).
        region_dim: width of the incoming region features (BiCA's d_model, or the perception
            features when BiCA is off).
        out_dim: the LLM's hidden size.
        token_dim: width of ``RegionFeatures.tokens`` (None: tokens are not used).
        raw_dim: width of the perception features given as ``raw`` (the features before BiCA;
            None: not used).
        ffn_dim: feed-forward width (0: 4 * d_model).
        use_context: read the BiCA context summary when given.
        space_scale, time_scale: normalisers of the relation geometry.
        neighbour_min_score: proposals scored below this are nobody's neighbour (they are still
            captioned themselves). Ground-truth regions score 1; on detections, 90 % of the
            boxes below 0.3 of the outdoor detector are false and would crowd out the real
            neighbours (docs/results.md).
        relation_ranks: add :func:`relation_ranks` (rank, class and nearest-of-class features) to
            each relation token, through an MLP of its own (False: geometry and neighbour only).
        rank_margin_scale: metres (or seconds) that the rank margin is divided by.
        neighbour_queries: the first this many queries each start from the relation token of one
            neighbour, nearest first (0: every query starts from the region alone); at most
            ``min(num_queries, num_neighbours)``.
        relation_between: add :func:`relation_between` (which other neighbour frames the region
            with this one) to each relation token, through an MLP of its own.
        room_layout: add an embedding of :func:`layout_features` (the box's gaps to the room's
            walls, ``RegionFeatures.extra["wall_gaps"]``) to the region's own feature (boxes only;
            events have no walls). Its last layer starts at zero, so the tokens start as without it.
        target_order: P > 0: a head scores each neighbour (or none) as the caption's p-th
            target, p < P, and the neighbour queries read the chosen targets first
            (:func:`target_first_order`); at most ``neighbour_queries``.
        target_detach: the target head reads the tokens without passing its gradient back into
            them (they then learn from the captions alone).
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, num_queries: int, num_neighbours: int,
                 region_dim: int, out_dim: int, token_dim: int | None = None, ffn_dim: int = 0,
                 dropout: float = 0.0, use_context: bool = True, space_scale: float = 10.0, time_scale: float = 2.0,
                 raw_dim: int | None = None, neighbour_min_score: float = 0.0, relation_ranks: bool = False,
                 rank_margin_scale: float = 1.0, neighbour_queries: int = 0, relation_between: bool = False,
                 room_layout: bool = False, target_order: int = 0,
                 target_detach: bool = False):
        super().__init__()
        check_heads("RelationQFormer", "d_model", d_model, "n_heads", n_heads)
        for name, value, minimum in (("n_layers", n_layers, 0), ("num_queries", num_queries, 1),
                                     ("num_neighbours", num_neighbours, 0), ("region_dim", region_dim, 1),
                                     ("out_dim", out_dim, 1), ("ffn_dim", ffn_dim, 0)):
            check_int("RelationQFormer", name, value, minimum)
        for name, value in (("token_dim", token_dim), ("raw_dim", raw_dim)):
            if value is not None:
                check_int("RelationQFormer", name, value, 0)  # 0 or None: not used
        if not 0 <= neighbour_queries <= min(num_queries, num_neighbours):
            raise ConfigError("RelationQFormer", "neighbour_queries",
                              f"0 to min(num_queries, num_neighbours) = {min(num_queries, num_neighbours)}",
                              got=neighbour_queries)
        if not 0 <= target_order <= neighbour_queries:
            raise ConfigError("RelationQFormer", "target_order", f"0 to neighbour_queries = {neighbour_queries}",
                              got=target_order)
        self.neighbour_queries, self.target_order, self.target_detach = neighbour_queries, target_order, target_detach
        self.num_queries, self.num_neighbours = num_queries, num_neighbours
        self.use_context = use_context
        self.neighbour_min_score = neighbour_min_score
        self.space_scale, self.time_scale = space_scale, time_scale
        self.queries = nn.Parameter(torch.randn(num_queries, d_model) * 0.02)  # (K, D)
        self.region_in = nn.Linear(region_dim, d_model)
        self.context_in = nn.Linear(region_dim, d_model)
        self.token_in = nn.Linear(token_dim, d_model) if token_dim else None
        self.raw_in = nn.Linear(raw_dim, d_model) if raw_dim else None
        self.geometry_in = GeometryEmbedding(d_model)  # the region's own geometry (absolute scales: 50 m, 10 s)
        self.neighbour_in = nn.Linear(region_dim, d_model)
        self.relation_in = nn.ModuleDict({
            kind: nn.Sequential(nn.Linear(dims, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
            for kind, dims in RELATION_DIMS.items()
        })
        self.rank_margin_scale = rank_margin_scale
        self.rank_in = (nn.Sequential(nn.Linear(RANK_DIMS, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
                        if relation_ranks else None)
        self.between_in = (nn.Sequential(nn.Linear(BETWEEN_DIMS, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
                           if relation_between else None)
        self.layout_in = (nn.Sequential(nn.Linear(LAYOUT_DIMS, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
                          if room_layout else None)
        if self.layout_in is not None:
            # zero output at initialisation (as the adapter's gates): switched on in a trained model
            # (init_from a run without it), the layout changes nothing until it has learned something
            nn.init.zeros_(self.layout_in[2].weight)
            nn.init.zeros_(self.layout_in[2].bias)
        # target head: per neighbour, P scores from its relation token and the region's own token;
        # per region, P "no p-th target" scores from the own token
        self.target_head = (nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, target_order))
                            if target_order else None)
        self.target_none = nn.Linear(d_model, target_order) if target_order else None
        self.type_embed = nn.Embedding(5, d_model)  # own / context / token / relation / raw
        layer = nn.TransformerDecoderLayer(d_model, n_heads, ffn_dim or 4 * d_model, dropout,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layers, norm=nn.LayerNorm(d_model))
        self.out = nn.Linear(d_model, out_dim)

    def neighbours(self, regions: RegionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R, k) indices of each region's neighbours, nearest first, and their validity."""
        return nearest_neighbours(regions, self.num_neighbours, self.neighbour_min_score)

    def relation_tokens(self, regions: RegionFeatures, features: torch.Tensor):
        """(B, R, k, D) relation tokens and their (B, R, k) validity: the pairwise geometry, the
        neighbour's (BiCA) feature and, with ``relation_ranks``, the pair's ranks."""
        idx, valid = self.neighbours(regions)
        geo = relation_geometry(regions, idx, self.space_scale, self.time_scale)  # (B, R, k, G)
        nbr = _gather(features, idx)  # (B, R, k, C)
        tok = self.relation_in[regions.kind](geo) + self.neighbour_in(nbr)  # (B, R, k, D)
        if self.rank_in is not None:
            ranks = relation_ranks(regions, idx, valid, self.neighbour_min_score, self.rank_margin_scale)
            tok = tok + self.rank_in(ranks.to(tok.dtype))  # (B, R, k, D)
        if self.between_in is not None:
            between = relation_between(regions, idx, valid, self.space_scale, self.time_scale)
            tok = tok + self.between_in(between.to(tok.dtype))  # (B, R, k, D)
        return tok + self.type_embed.weight[3], valid

    def forward(self, regions: RegionFeatures, features: torch.Tensor,
                context: torch.Tensor | None = None, raw: torch.Tensor | None = None,
                target_slots: torch.Tensor | None = None, with_targets: bool = False):
        """
        Args:
            regions: the proposals (geometry, mask, tokens are read).
            features: (B, R, region_dim) region features (BiCA objects, or raw features).
            context: (B, R, region_dim) BiCA context summaries, or None.
            raw: (B, R, raw_dim) the perception features before BiCA, or None (read only when
                the Q-Former was built with ``raw_dim``).
            target_slots: (B, R, P) the caption's targets (``target_order``; slots of
                :meth:`neighbours`, k for none, negative for unknown: the head's choice), or None
                (the head chooses every target).
            with_targets: also return the target head's (B, R, k + 1, P) logits (slot k: none;
                -1e4 at missing neighbours), None without ``target_order``.
        Returns:
            (B, R, K, out_dim) visual tokens; zeros at padded regions.
        """
        B, R, _ = features.shape
        if regions.kind not in RELATION_DIMS:
            raise ConfigError("RelationQFormer", "regions.kind", "'box' or 'event'", got=regions.kind)
        mask = regions.mask.bool()
        own = self.region_in(features) + self.geometry_in(regions.kind, regions.geometry)  # (B, R, D)
        if self.layout_in is not None and regions.kind == "box":
            gaps = regions.extra.get("wall_gaps")
            if gaps is None:
                raise ConfigError("RelationQFormer", "room_layout",
                                  "box regions with extra['wall_gaps'] (DenseCaptioner fills it from the batch's points)",
                                  got="regions without wall_gaps")
            own = own + self.layout_in(layout_features(gaps).to(own.dtype))  # (B, R, D)
        parts = [(own + self.type_embed.weight[0]).unsqueeze(2)]  # (B, R, 1, D)
        valid = [mask.new_ones(B, R, 1)]
        if raw is not None and self.raw_in is not None:
            parts.append((self.raw_in(raw) + self.type_embed.weight[4]).unsqueeze(2))
            valid.append(mask.new_ones(B, R, 1))
        if context is not None and self.use_context:
            parts.append((self.context_in(context) + self.type_embed.weight[1]).unsqueeze(2))
            valid.append(mask.new_ones(B, R, 1))
        if regions.tokens is not None and self.token_in is not None:
            P = regions.tokens.shape[2]
            parts.append(self.token_in(regions.tokens) + self.type_embed.weight[2])  # (B, R, P, D)
            valid.append(mask.new_ones(B, R, P))
        rel = rel_valid = None
        if self.num_neighbours > 0:
            rel, rel_valid = self.relation_tokens(regions, features)  # (B, R, k, D), (B, R, k)
            parts.append(rel)
            valid.append(rel_valid)
        memory = torch.cat(parts, 2)  # (B, R, M, D)
        mem_valid = torch.cat(valid, 2)  # (B, R, M)

        logits = None
        if self.target_order and rel is not None:
            k = rel.shape[2]
            head_rel, head_own = (rel.detach(), own.detach()) if self.target_detach else (rel, own)
            scores = self.target_head(head_rel + head_own.unsqueeze(2)).float()  # (B, R, k, P)
            scores = scores.masked_fill(~rel_valid.unsqueeze(-1), -1e4)
            logits = torch.cat([scores, self.target_none(head_own).float().unsqueeze(2)], 2)  # (B, R, k + 1, P)
            chosen = choose_targets(logits, target_slots)  # (B, R, P), k: none; the head never repeats a slot
            order = target_first_order(chosen, k)  # (B, R, k)
            rel = rel.gather(2, order.unsqueeze(-1).expand_as(rel))  # (B, R, k, D) in reading order
            rel_valid = rel_valid.gather(2, order)  # (B, R, k)

        out = features.new_zeros(B, R, self.num_queries, self.out.out_features)
        sel = mask.nonzero(as_tuple=True)  # real regions only
        if sel[0].numel() == 0:
            return (out, logits) if with_targets else out
        mem = memory[sel]  # (N, M, D)
        tgt = self.queries.unsqueeze(0) + own[sel].unsqueeze(1)  # (N, K, D)
        n = self.neighbour_queries
        if n > 0:  # query j < n also starts from the j-th neighbour's relation token (nearest first, or targets first)
            seed = rel[sel][:, :n] * rel_valid[sel][:, :n, None].to(rel.dtype)  # (N, n, D), zeros where none
            tgt = torch.cat([tgt[:, :n] + seed, tgt[:, n:]], 1)  # (N, K, D)
        dec = self.decoder(tgt, mem, memory_key_padding_mask=~mem_valid[sel])  # (N, K, D)
        out[sel] = self.out(dec).to(out.dtype)  # (N, K, out_dim)
        return (out, logits) if with_targets else out
