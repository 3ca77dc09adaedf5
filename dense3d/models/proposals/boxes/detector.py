"""3D box proposals: sensors -> BEV map(s) -> fusion -> CenterPoint head -> boxes -> region features.

Wires already-built parts (any of the LiDAR / camera encoders, the fuser, the head, the
region sampler and the loss); it builds nothing itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dense3d.errors import AnnotationError, ConfigError
from dense3d.models.proposals.boxes.center_head import CenterHead, CenterPredictions, Detections
from dense3d.models.proposals.boxes.region_features import BEVRegionSampler
from dense3d.structures import RegionFeatures

__all__ = ["BoxDetector", "BoxDetectorOutput", "head_labels", "pad_detections"]


@dataclass
class BoxDetectorOutput:
    """``bev`` (B, C, H, W) fused map; ``sensor_maps`` the per-sensor BEV maps (None when absent);
    ``predictions`` raw head outputs; ``detections`` per-sample decoded boxes; ``regions`` the
    box proposals with features (``RegionFeatures(kind="box")``)."""

    bev: torch.Tensor
    sensor_maps: dict[str, torch.Tensor | None]
    predictions: CenterPredictions
    detections: list[Detections]
    regions: RegionFeatures | None


def head_labels(boxes, class_names) -> torch.Tensor:
    """(K,) long: the labels of ``boxes`` (``BoxAnnotations``) as indices into a detector's
    ``class_names``, matched by name; -1 for a class the detector lacks (ignored by its losses)."""
    lut = torch.tensor([class_names.index(n) if n in class_names else -1 for n in boxes.class_names], dtype=torch.long)
    return lut[boxes.labels.long().cpu()]


def pad_detections(detections: list[Detections], max_regions: int, box_dim: int) -> tuple[torch.Tensor, ...]:
    """Per-sample detections -> padded (B, R, box_dim) boxes, (B, R) scores, labels, mask."""
    B = len(detections)
    R = max(1, min(max_regions, max((d.boxes.shape[0] for d in detections), default=0)))
    dev = detections[0].boxes.device
    boxes = torch.zeros(B, R, box_dim, device=dev)
    boxes[..., 3:6] = 1.0  # padded regions: unit boxes (log-size finite), masked out
    scores = torch.zeros(B, R, device=dev)
    labels = torch.full((B, R), -1, dtype=torch.long, device=dev)
    mask = torch.zeros(B, R, dtype=torch.bool, device=dev)
    for b, d in enumerate(detections):
        n = min(R, d.boxes.shape[0])
        boxes[b, :n] = d.boxes[:n, :box_dim]
        scores[b, :n] = d.scores[:n]
        labels[b, :n] = d.labels[:n]
        mask[b, :n] = True
    return boxes, scores, labels, mask


class BoxDetector(nn.Module):
    """Args:
        box_head: ``CenterHead`` on the fused map.
        region_sampler: ``BEVRegionSampler`` on the fused map.
        lidar_encoder, camera_encoder: ``forward(batch) -> (B, C, H, W)``; at least one.
        fuser: ``ConvFuser``; may be None with exactly one encoder.
        loss: ``CenterPointLoss`` (needed for ``loss``).
        max_regions: proposals kept per sample.

    ``forward(batch) -> BoxDetectorOutput``; ``loss(output, batch) -> {"heatmap", "regression",
    "total"}`` with targets from ``batch.samples[b].boxes`` (classes matched to
    ``box_head.class_names`` by name; classes the head lacks are ignored).
    """

    def __init__(
        self,
        box_head: CenterHead,
        region_sampler: BEVRegionSampler,
        lidar_encoder: nn.Module | None = None,
        camera_encoder: nn.Module | None = None,
        fuser: nn.Module | None = None,
        loss: nn.Module | None = None,
        max_regions: int = 64,
    ):
        super().__init__()
        if lidar_encoder is None and camera_encoder is None:
            raise ConfigError("BoxDetector", "lidar_encoder/camera_encoder", "at least one encoder")
        if fuser is None and lidar_encoder is not None and camera_encoder is not None:
            raise ConfigError("BoxDetector", "fuser", "a fuser when both encoders are given")
        self.lidar_encoder = lidar_encoder
        self.camera_encoder = camera_encoder
        self.fuser = fuser
        self.box_head = box_head
        self.region_sampler = region_sampler
        self.loss_fn = loss
        if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 1:
            raise ConfigError("BoxDetector", "max_regions", "an integer >= 1", got=max_regions)  # -5 kept 1 region
        self.max_regions = max_regions
        self._check_channels()
        self._check_grid()
        weights = getattr(loss, "code_weights", None)
        if weights is not None and len(weights) != box_head.code_size:
            raise ConfigError("BoxDetector", "loss.code_weights", f"one weight per box code channel: {box_head.code_size} "
                              f"({', '.join(box_head.code_names)})", got=list(weights))

    # What DenseCaptioner reads of any box detector (this one, or the mmdet3d bridge,
    # ``MMDet3DBoxDetector``): the classes in label order, the BEV range, the box columns.
    @property
    def class_names(self) -> list[str]:
        return self.box_head.class_names

    @property
    def point_range(self) -> tuple[float, ...]:
        return self.box_head.point_range

    @property
    def box_dim(self) -> int:
        return self.box_head.box_dim

    @property
    def axis_aligned(self) -> bool:
        return self.box_head.axis_aligned

    @property
    def bev_channels(self) -> int | None:
        """Channels of the fused BEV map the head and the region sampler read (None: an encoder
        that does not say)."""
        if self.fuser is not None:
            return getattr(self.fuser, "out_channels", None)
        return getattr(self.lidar_encoder if self.lidar_encoder is not None else self.camera_encoder, "out_channels", None)

    def bev_channels_source(self, prefix: str = "") -> str:
        """Where the BEV map's channels are set, for messages (``prefix``: this detector's key)."""
        if self.fuser is not None:
            return f"{prefix}fuser.out_channels"
        if self.lidar_encoder is not None:
            return f"the sum of {prefix}lidar_encoder.bev_backbone.upsample_channels"
        return f"{prefix}camera_encoder.view_transform.out_channels"

    def _check_channels(self) -> None:
        """Channels passed between the parts agree (what is known before a forward pass)."""
        fuser_in = getattr(self.fuser, "in_channels", None)
        if isinstance(fuser_in, dict):
            for name, encoder in (("lidar", self.lidar_encoder), ("camera", self.camera_encoder)):
                have = getattr(encoder, "out_channels", None)
                if have is None:
                    continue
                if name not in fuser_in:
                    raise ConfigError("BoxDetector", "fuser.in_channels", f"an entry for the {name} encoder",
                                      got=sorted(fuser_in))
                if fuser_in[name] != have:
                    raise ConfigError("BoxDetector", f"fuser.in_channels.{name}",
                                      f"the {name} encoder's {have} BEV channels", got=fuser_in[name])
        C = self.bev_channels
        if C is None:
            return
        for field, have in (("box_head.in_channels", getattr(self.box_head, "in_channels", None)),
                            ("region_sampler.in_channels", getattr(self.region_sampler, "in_channels", None))):
            if have is not None and have != C:
                raise ConfigError("BoxDetector", field, f"the BEV map's {C} channels ({self.bev_channels_source()})", got=have)

    def _check_grid(self) -> None:
        """Every encoder's BEV grid (x/y range and cell) is the head's."""
        head = self.box_head
        grids = []
        if self.lidar_encoder is not None and hasattr(self.lidar_encoder, "cell_size"):
            grids.append(("lidar_encoder", self.lidar_encoder.voxel_encoder.point_range, self.lidar_encoder.cell_size))
        view = getattr(self.camera_encoder, "view_transform", None)
        if view is not None and hasattr(view, "cell_size"):
            grids.append(("camera_encoder.view_transform", view.point_range, view.cell_size))
        want = [float(v) for i, v in enumerate(head.point_range) if i in (0, 1, 3, 4)]
        for name, point_range, cell in grids:
            have = [float(v) for i, v in enumerate(point_range) if i in (0, 1, 3, 4)]
            if abs(cell - head.cell_size) > 1e-6 or any(abs(a - b) > 1e-6 for a, b in zip(have, want)):
                raise ConfigError("BoxDetector", f"{name} point_range/cell_size",
                                  f"the box head's grid: x/y range {want}, {head.cell_size} m cells",
                                  got=f"x/y range {have}, {cell:g} m cells")
        # the region sampler maps metres to the map's [-1, 1] with its own range: another range
        # samples every box's features at the wrong cells
        sampler_range = getattr(self.region_sampler, "point_range", None)
        if sampler_range is not None:
            have = [float(v) for i, v in enumerate(sampler_range) if i in (0, 1, 3, 4)]
            if len(have) != 4 or any(abs(a - b) > 1e-6 for a, b in zip(have, want)):
                raise ConfigError("BoxDetector", "region_sampler.point_range", f"the box head's x/y range {want}",
                                  got=f"x/y range {have}")

    def sensor_maps(self, batch) -> dict[str, torch.Tensor | None]:
        """Per-sensor BEV maps; a sensor missing from the batch gives None."""
        maps: dict[str, torch.Tensor | None] = {"lidar": None, "camera": None}
        if self.lidar_encoder is not None and batch.points is not None:
            maps["lidar"] = self.lidar_encoder(batch)
        if self.camera_encoder is not None and batch.images is not None:
            maps["camera"] = self.camera_encoder(batch)
        if all(v is None for v in maps.values()):
            raise ConfigError("Batch", "points/images", "the sensors of this detector", got="neither")
        return maps

    @staticmethod
    def sensor_presence(batch) -> dict[str, torch.Tensor]:
        """(B,) bool per sensor: which samples of the batch carry it (cameras: ``camera_mask``;
        LiDAR: at least one point), so the fuser's dropout never leaves a sample without data."""
        present: dict[str, torch.Tensor] = {}
        if getattr(batch, "camera_mask", None) is not None:
            present["camera"] = batch.camera_mask.bool()
        if batch.points is not None and batch.points.dim() == 2:
            b = batch.points[:, 0].long().clamp(0, len(batch) - 1)
            present["lidar"] = torch.bincount(b, minlength=len(batch)) > 0
        return present

    def fuse(self, maps: dict[str, torch.Tensor | None], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if self.fuser is not None:
            return self.fuser(maps, present)
        return next(v for v in maps.values() if v is not None)

    def regions(self, bev: torch.Tensor, detections: list[Detections]) -> RegionFeatures:
        boxes, scores, labels, mask = pad_detections(detections, self.max_regions, self.box_head.box_dim)
        return self.region_sampler(bev, boxes, scores, labels, mask)

    def forward(self, batch, decode: bool = True) -> BoxDetectorOutput:
        """``decode=False`` skips decoding, NMS and region features (``detections`` = [] and
        ``regions`` = None): all the loss needs, for training steps that do not caption."""
        maps = self.sensor_maps(batch)
        bev = self.fuse(maps, self.sensor_presence(batch))
        predictions = self.box_head(bev)
        if not decode:
            return BoxDetectorOutput(bev, maps, predictions, [], None)
        detections = self.box_head.decode(predictions)
        return BoxDetectorOutput(bev, maps, predictions, detections, self.regions(bev, detections))

    def loss(self, output: BoxDetectorOutput, batch) -> dict[str, torch.Tensor]:
        if self.loss_fn is None:
            raise ConfigError("BoxDetector", "loss", "a loss module to compute losses")
        boxes, labels = [], []
        for i, s in enumerate(batch.samples):
            if s.boxes is None:
                raise AnnotationError(s.sample_id, f"samples[{i}].boxes", "box annotations to train the box head")
            boxes.append(s.boxes.boxes.tensor.to(output.bev.device))
            labels.append(head_labels(s.boxes, self.class_names).to(output.bev.device))
        targets = self.box_head.targets(boxes, labels)
        return self.loss_fn(output.predictions, targets)
