"""CenterPoint-style box head (Yin et al., CVPR 2021): centre heatmaps per class group and a
box code regressed at each centre; decoding = heatmap peaks -> top-K -> boxes -> NMS.

Box code channels (``code_names``), at the centre cell of a box:
``dx_off, dy_off`` (sub-cell centre offset), ``z`` (gravity centre, metres),
``log_dx, log_dy, log_dz``, then ``sin_yaw, cos_yaw`` (not in axis-aligned mode), then
``vx, vy`` (with velocity). Boxes follow ``dense3d.structures.Boxes3D``: gravity centre, yaw
about +z from +x. Class labels are indices into the flattened ``class_groups``.

Axis-aligned mode (indoor scenes such as ScanNet): no yaw channels, yaw 0, and NMS on
axis-aligned BEV rectangles (``torchvision.ops.batched_nms``); the rotated mode uses
``dense3d.ops.batched_nms_bev``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dense3d.errors import ConfigError
from dense3d.models.encoders.bev_grid import bev_grid_shape

__all__ = ["CenterHead", "CenterPredictions", "CenterTargets", "Detections", "gaussian_radius"]


@dataclass
class CenterPredictions:
    """Raw head outputs, one entry per class group: ``heatmaps[t]`` (B, n_t, H, W) logits and
    ``regression[t]`` (B, code_size, H, W)."""

    heatmaps: list[torch.Tensor]
    regression: list[torch.Tensor]


@dataclass
class CenterTargets:
    """Training targets, one entry per class group: ``heatmaps[t]`` (B, n_t, H, W) Gaussian splats,
    ``indices[t]`` (B, M) flat centre cells, ``regression[t]`` (B, M, code_size), ``masks[t]`` (B, M)."""

    heatmaps: list[torch.Tensor]
    indices: list[torch.Tensor]
    regression: list[torch.Tensor]
    masks: list[torch.Tensor]


@dataclass
class Detections:
    """Decoded boxes of one sample after NMS: ``boxes`` (K, 7 or 9), ``scores`` (K,), ``labels`` (K,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def gaussian_radius(length: float, width: float, min_overlap: float = 0.1) -> float:
    """CornerNet's radius (in cells) within which a shifted box keeps IoU >= ``min_overlap``
    with the true one (the smallest root of the three cases)."""
    h, w = length, width
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * c1, 0.0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(max(b2 * b2 - 16 * c2, 0.0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(max(b3 * b3 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CenterHead(nn.Module):
    """Args:
        in_channels: channels of the BEV map.
        class_groups: class names per group (one heatmap head per group), e.g.
            ``[["car"], ["truck", "bus"], ["pedestrian"]]``.
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` of the BEV map.
        cell_size: metres per BEV cell of the map the head sees.
        head_channels: hidden channels.
        with_velocity: regress ``vx, vy``.
        axis_aligned: indoor mode (no yaw; axis-aligned NMS).
        max_objects: padded number of regression targets per sample and group (CenterPoint:
            500); the boxes after them still get their heatmap peaks.
        min_overlap, min_radius: Gaussian splat radius (CenterPoint: 0.1, 2).
        top_k: peaks kept per group before NMS.
        score_threshold, nms_iou_threshold, max_detections: decoding.
        nms_backend: backend of ``dense3d.ops.batched_nms_bev``.
        class_agnostic_nms: one NMS over all classes instead of one per class. Per-class NMS (the
            detection benchmarks' custom) keeps a second box on an object wherever a peak of
            another class group sits on it; a dense captioner then describes the object twice.
        post_center_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``: decoded boxes whose
            gravity centre lies outside it (bounds included) are dropped before NMS, as
            CenterPoint's ``post_center_range`` (mmdet3d's ``CenterPointBBoxCoder.decode`` and
            ``CenterHead.get_task_detections``; nuScenes: ``[-61.2, -61.2, -10, 61.2, 61.2, 10]``,
            10 m wider than its ``[-51.2, -51.2, -5, 51.2, 51.2, 3]`` map).
            None (default): centres must lie in ``point_range`` in x and y (the BEV map itself).
    """

    def __init__(
        self,
        in_channels: int,
        class_groups: Sequence[Sequence[str]],
        point_range: Sequence[float],
        cell_size: float,
        head_channels: int = 64,
        with_velocity: bool = True,
        axis_aligned: bool = False,
        max_objects: int = 500,
        min_overlap: float = 0.1,
        min_radius: int = 2,
        top_k: int = 100,
        score_threshold: float = 0.1,
        nms_iou_threshold: float = 0.2,
        max_detections: int = 100,
        nms_backend: str = "auto",
        class_agnostic_nms: bool = False,
        post_center_range: Sequence[float] | None = None,
    ):
        super().__init__()
        if not class_groups or any(len(g) == 0 for g in class_groups):
            raise ConfigError("CenterHead", "class_groups", "non-empty lists of class names", got=class_groups)
        self.in_channels = in_channels
        self.class_groups = [list(g) for g in class_groups]
        self.class_names = [c for g in self.class_groups for c in g]
        self.point_range = tuple(float(v) for v in point_range)
        self.cell_size = float(cell_size)
        self.grid_size = bev_grid_shape(self.point_range, self.cell_size, "CenterHead")
        self.with_velocity = with_velocity
        self.axis_aligned = axis_aligned
        self.code_names = ["dx_off", "dy_off", "z", "log_dx", "log_dy", "log_dz"]
        if not axis_aligned:
            self.code_names += ["sin_yaw", "cos_yaw"]
        if with_velocity:
            self.code_names += ["vx", "vy"]
        self.code_size = len(self.code_names)
        self.max_objects = max_objects
        self.min_overlap = min_overlap
        self.min_radius = min_radius
        self.top_k = top_k
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections
        self.nms_backend = nms_backend
        self.class_agnostic_nms = class_agnostic_nms
        self.post_center_range = None
        if post_center_range is not None:
            try:
                r = [float(v) for v in post_center_range]
            except (TypeError, ValueError):
                r = []
            if len(r) != 6 or not all(math.isfinite(v) for v in r) or not all(r[i] < r[i + 3] for i in range(3)):
                raise ConfigError("CenterHead", "post_center_range", "[x_min, y_min, z_min, x_max, y_max, z_max], finite, min < max",
                                  got=post_center_range)
            self.post_center_range = tuple(r)
        self.shared = _conv_block(in_channels, head_channels)
        self.heatmap_heads = nn.ModuleList()
        self.regression_heads = nn.ModuleList()
        for group in self.class_groups:
            hm = nn.Sequential(_conv_block(head_channels, head_channels), nn.Conv2d(head_channels, len(group), 1))
            nn.init.constant_(hm[-1].bias, -2.19)  # prior 0.1 (CenterNet)
            self.heatmap_heads.append(hm)
            self.regression_heads.append(nn.Sequential(_conv_block(head_channels, head_channels), nn.Conv2d(head_channels, self.code_size, 1)))

    @property
    def box_dim(self) -> int:
        return 9 if self.with_velocity else 7

    def forward(self, bev: torch.Tensor) -> CenterPredictions:
        """(B, C, H, W) -> ``CenterPredictions``."""
        if tuple(bev.shape[-2:]) != tuple(self.grid_size):
            # decoding and targets index cells of this grid: another map size gives garbage boxes
            raise ConfigError("CenterHead", "point_range/cell_size", f"a BEV map of {self.grid_size[0]} x {self.grid_size[1]} cells "
                              f"(range {list(self.point_range)}, {self.cell_size} m cells)", got=tuple(bev.shape[-2:]))
        x = self.shared(bev)
        return CenterPredictions([h(x) for h in self.heatmap_heads], [r(x) for r in self.regression_heads])

    # ----- training targets -------------------------------------------------------------
    def targets(self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor]) -> CenterTargets:
        """Targets from per-sample boxes (K_b, 7 or 9) and labels (K_b,) (indices into
        ``class_names``). Boxes whose centre is outside the grid are ignored."""
        H, W = self.grid_size
        x_min, y_min = self.point_range[0], self.point_range[1]
        B = len(gt_boxes)
        dev = gt_boxes[0].device if B else torch.device("cpu")
        out = CenterTargets([], [], [], [])
        offset = 0
        for group in self.class_groups:
            n = len(group)
            heat = torch.zeros(B, n, H, W, device=dev)
            idx = torch.zeros(B, self.max_objects, dtype=torch.long, device=dev)
            reg = torch.zeros(B, self.max_objects, self.code_size, device=dev)
            mask = torch.zeros(B, self.max_objects, dtype=torch.bool, device=dev)
            for b in range(B):
                boxes, labels = gt_boxes[b].float(), gt_labels[b].long()
                m = 0
                for k in range(boxes.shape[0]):
                    local = int(labels[k]) - offset
                    if not 0 <= local < n:
                        continue
                    box = boxes[k]
                    cx = (float(box[0]) - x_min) / self.cell_size
                    cy = (float(box[1]) - y_min) / self.cell_size
                    ix, iy = int(math.floor(cx)), int(math.floor(cy))
                    if not (0 <= ix < W and 0 <= iy < H):
                        continue
                    l, w = float(box[3]) / self.cell_size, float(box[4]) / self.cell_size
                    radius = max(self.min_radius, int(gaussian_radius(l, w, self.min_overlap)))
                    self._draw_gaussian(heat[b, local], ix, iy, radius)
                    if m >= self.max_objects:  # its peak still counts; only its regression is left out
                        continue
                    code = [cx - ix, cy - iy, float(box[2]), *torch.log(box[3:6].clamp(min=1e-3)).tolist()]
                    if not self.axis_aligned:
                        code += [math.sin(float(box[6])), math.cos(float(box[6]))]
                    if self.with_velocity:
                        code += box[7:9].tolist() if box.numel() >= 9 else [0.0, 0.0]
                    idx[b, m] = iy * W + ix
                    reg[b, m] = torch.tensor(code, device=dev)
                    mask[b, m] = True
                    m += 1
            out.heatmaps.append(heat)
            out.indices.append(idx)
            out.regression.append(reg)
            out.masks.append(mask)
            offset += n
        return out

    @staticmethod
    def _draw_gaussian(heat: torch.Tensor, x: int, y: int, radius: int) -> None:
        """Max-splat a Gaussian (sigma = diameter / 6) centred at cell (y, x) into heat (H, W)."""
        H, W = heat.shape
        r = torch.arange(-radius, radius + 1, device=heat.device, dtype=heat.dtype)
        sigma = (2 * radius + 1) / 6
        g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma * sigma))  # (2r+1, 2r+1)
        x0, x1 = max(0, x - radius), min(W, x + radius + 1)
        y0, y1 = max(0, y - radius), min(H, y + radius + 1)
        patch = g[y0 - y + radius : y1 - y + radius, x0 - x + radius : x1 - x + radius]
        heat[y0:y1, x0:x1] = torch.maximum(heat[y0:y1, x0:x1], patch)

    # ----- decoding ---------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, predictions: CenterPredictions) -> list[Detections]:
        """Heatmap peaks (3x3 max-pool) -> top-K per group -> boxes -> score threshold -> NMS."""
        H, W = self.grid_size
        x_min, y_min = self.point_range[0], self.point_range[1]
        B = predictions.heatmaps[0].shape[0]
        per_group = []
        offset = 0
        for logits, regmap in zip(predictions.heatmaps, predictions.regression):
            # boxes in metres and their scores in float32 (or float64), also under 16-bit autocast (NMS needs it)
            dtype = torch.promote_types(logits.dtype, torch.float32)
            logits, regmap = logits.to(dtype), regmap.to(dtype)
            n = logits.shape[1]
            heat = logits.sigmoid()
            peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
            k = min(self.top_k, n * H * W)
            scores, flat = peaks.flatten(1).topk(k, dim=1)  # (B, n * H * W) -> (B, k)
            labels = flat // (H * W) + offset
            cell = flat % (H * W)
            ys, xs = (cell // W).to(heat.dtype), (cell % W).to(heat.dtype)
            # (B, K, H, W) -> (B, H * W, K) -> gather (B, k, K)
            code = regmap.flatten(2).transpose(1, 2).gather(1, cell.unsqueeze(-1).expand(-1, -1, self.code_size))
            cx = (xs + code[..., 0]) * self.cell_size + x_min
            cy = (ys + code[..., 1]) * self.cell_size + y_min
            dims = code[..., 3:6].clamp(max=6.0).exp()
            c = 6
            if self.axis_aligned:
                yaw = torch.zeros_like(cx)
            else:
                yaw = torch.atan2(code[..., 6], code[..., 7])
                c = 8
            parts = [cx[..., None], cy[..., None], code[..., 2:3], dims, yaw[..., None]]
            if self.with_velocity:
                parts.append(code[..., c : c + 2])
            per_group.append((torch.cat(parts, dim=-1), scores, labels))
            offset += n
        boxes = torch.cat([g[0] for g in per_group], dim=1)  # (B, k_total, box_dim)
        scores = torch.cat([g[1] for g in per_group], dim=1)
        labels = torch.cat([g[2] for g in per_group], dim=1)
        return [self._select(boxes[b], scores[b], labels[b]) for b in range(B)]

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> Detections:
        keep = (scores >= self.score_threshold) & self.centres_in_range(boxes)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if boxes.shape[0]:
            keep = self.nms(boxes, scores, labels)[: self.max_detections]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return Detections(boxes, scores, labels)

    def centres_in_range(self, boxes: torch.Tensor) -> torch.Tensor:
        """(K,) True where a box's centre is kept: inside ``post_center_range`` in x, y and z,
        bounds included (CenterPoint's filter; it runs before NMS here, as in mmdet3d's box coder,
        so a box outside cannot suppress one inside), or, without it, inside ``point_range`` in x
        and y, the upper bounds excluded (the behaviour models trained before it was added keep)."""
        if self.post_center_range is None:
            x_min, y_min, _, x_max, y_max, _ = self.point_range
            return (boxes[:, 0] >= x_min) & (boxes[:, 0] < x_max) & (boxes[:, 1] >= y_min) & (boxes[:, 1] < y_max)
        lo = boxes.new_tensor(self.post_center_range[:3])  # (3,)
        hi = boxes.new_tensor(self.post_center_range[3:])  # (3,)
        return ((boxes[:, :3] >= lo) & (boxes[:, :3] <= hi)).all(dim=1)

    def nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Indices kept by NMS in BEV (per class, or over all classes), by decreasing score."""
        if self.class_agnostic_nms:
            labels = torch.zeros_like(labels)
        if self.axis_aligned:
            half = boxes[:, 3:5] / 2
            rects = torch.cat([boxes[:, 0:2] - half, boxes[:, 0:2] + half], dim=1)  # (K, 4) x1 y1 x2 y2
            return torchvision.ops.batched_nms(rects, scores, labels, self.nms_iou_threshold)
        from dense3d.ops import batched_nms_bev

        return batched_nms_bev(boxes[:, :7], scores, labels, self.nms_iou_threshold, backend=self.nms_backend)
