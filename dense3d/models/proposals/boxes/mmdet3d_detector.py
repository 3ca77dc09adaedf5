"""Bridge to mmdet3d's LiDAR detectors: an mmdet3d model (CenterPoint, PointPillars, SECOND, ...)
used as dense3d's box detector, so its boxes are captioned like ours.

What it takes from mmdet3d, unchanged: the model built from its own config (a file, or
``mmdet3d::centerpoint/...py`` from the configs shipped in the mmdet3d wheel), its weights
(a local file; nothing downloads), its voxelization (``Det3DDataPreprocessor``), its BEV
feature map (``extract_feat``: the neck's output, the map its head reads), its decoding and
NMS (``head.predict``) and its training losses (``head.loss``).

What dense3d adds: the LiDAR points of a ``Batch`` in the columns the model was trained on,
the boxes converted from mmdet3d's bottom centre to ``Boxes3D``'s gravity centre, and region
features sampled from the mmdet3d BEV map (``BEVRegionSampler``), so the BiCA / Q-Former /
LLaMA-Adapter captioner reads them exactly as it reads our own detector's.

The bridge offers ``BoxDetector``'s interface (``forward(batch, decode)``, ``loss``,
``class_names``, ``point_range``, ``box_dim``, ``axis_aligned``, ``region_sampler``,
``bev_channels``), so ``DenseCaptioner(box_detector=MMDet3DBoxDetector(...))`` works as is.

Scope: mmdet3d detectors whose points branch ends in a BEV map and a dense head: the
``VoxelNet`` family (``extract_feat(inputs)``) and ``MVXTwoStageDetector`` (CenterPoint;
``extract_pts_feat``), LiDAR only. Camera-only and two-stage (RoI) mmdet3d detectors are not
bridged: they have no single BEV map whose cells the region features could come from.

mmdet3d is optional (``requirements/extras-mmdet3d.txt``; ``make test`` installs it); without
it, constructing the bridge is a one-line ``DependencyError``.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from dense3d.errors import AnnotationError, CheckpointError, ConfigError, DependencyError, PointCloudError
from dense3d.models.proposals.boxes.center_head import Detections
from dense3d.models.proposals.boxes.detector import BoxDetectorOutput, head_labels, pad_detections
from dense3d.models.proposals.boxes.region_features import BEVRegionSampler
from dense3d.structures import Boxes3D, RegionFeatures

__all__ = ["MMDet3DBoxDetector", "load_mmdet3d_config"]

SOURCE = "MMDet3DBoxDetector"
_INSTALL = "mmdet3d and mmcv with its ops (requirements/extras-mmdet3d.txt; `make test` installs them)"


def _mmdet3d():
    """Imports what the bridge uses from mmdet3d (registering its modules), or a one-line error."""
    try:
        from mmdet3d.registry import MODELS
        from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
        from mmdet3d.utils import register_all_modules
        from mmengine.structures import InstanceData
    except Exception as e:  # ImportError, or mmcv built without its ops (ModuleNotFoundError mmcv._ext)
        raise DependencyError(SOURCE, "mmdet3d", _INSTALL, got=f"{type(e).__name__}: {e}") from None
    register_all_modules(init_default_scope=True)
    return MODELS, Det3DDataSample, LiDARInstance3DBoxes, InstanceData


def load_mmdet3d_config(config: str | os.PathLike | Mapping) -> Any:
    """An mmengine ``Config`` from a file path, ``"mmdet3d::<dir>/<name>.py"`` (the configs shipped
    inside the mmdet3d wheel) or a mapping (its ``model`` entry is what the bridge builds)."""
    _mmdet3d()
    from mmengine.config import Config

    if isinstance(config, Mapping):
        return Config(dict(config))
    path = str(config)
    try:
        if "::" in path:
            from mmengine.hub import get_config

            return get_config(path)
        if not os.path.isfile(path):
            raise ConfigError(SOURCE, "config", "an mmdet3d config file or mmdet3d::<dir>/<name>.py", got=path)
        return Config.fromfile(path)
    except ConfigError:
        raise
    except Exception as e:  # a syntax error, a missing _base_ file, an unknown package ...
        raise ConfigError(path, "config", "a readable mmdet3d config", got=f"{type(e).__name__}: {e}") from None


def _read_checkpoint(path: str, trust_checkpoint: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of an mmengine ``.pth`` checkpoint (or a bare state dict, or a
    ``.safetensors`` file)."""
    if "://" in path:
        raise ConfigError(SOURCE, "checkpoint", "a local file (nothing downloads at run time)", got=path)
    if not os.path.isfile(path):
        raise CheckpointError(path, "checkpoint", "an existing mmdet3d checkpoint file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path), {}
    try:
        # weights_only: no code runs while reading; official mmdet3d checkpoints may pickle
        # numpy objects in their meta, which only trust_checkpoint (a file you trust) reads.
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, "checkpoint", "a file torch.load reads with weights_only=True "
                              "(or trust_checkpoint: true for a file you trust)", got=str(e).splitlines()[0]) from None
    except Exception as e:
        raise CheckpointError(path, "checkpoint", "a torch checkpoint", got=f"{type(e).__name__}: {e}") from None
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        return dict(ckpt["state_dict"]), dict(ckpt.get("meta") or {})
    if isinstance(ckpt, Mapping) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt), {}
    raise CheckpointError(path, "state_dict", "an mmengine checkpoint (a 'state_dict' entry) or a state dict",
                          got=type(ckpt).__name__)


def _copy_predictions(x):
    """A copy of a head's nested outputs: new dicts, lists and tuples, cloned tensors (clone is
    differentiable: the loss still reaches the head)."""
    if isinstance(x, dict):
        return {k: _copy_predictions(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_copy_predictions(v) for v in x)
    return x.clone() if isinstance(x, torch.Tensor) else x


class MMDet3DBoxDetector(nn.Module):
    """Args:
        config: the mmdet3d config (see ``load_mmdet3d_config``); its ``model`` is built.
        checkpoint: a local mmdet3d checkpoint (``.pth`` as mmengine saves it, a bare state
            dict, or ``.safetensors``); None keeps the freshly initialised weights (to train
            the detector, or in tests).
        point_features: the point columns the model was trained on, by dense3d's feature names,
            in its order: nuScenes models read ``[x, y, z, intensity, time_lag]``, KITTI models
            ``[x, y, z, intensity]``. Their number must be the voxel encoder's ``in_channels``.
        zero_features: features a batch may lack, fed as zeros: ``time_lag`` is 0 for every
            point of a keyframe without sweeps, which is what mmdet3d feeds there.
        class_names: the model's classes in label order; None reads them from the checkpoint's
            ``meta.dataset_meta.classes`` or the config's ``class_names``. CenterPoint numbers its
            labels by its ``tasks``: those names, and any other source must agree with them.
        region_channels, grid_points: the region features (``BEVRegionSampler`` on the mmdet3d
            BEV map: D channels, a g x g grid per box).
        max_regions: proposals kept per sample (highest scores first).
        score_threshold: proposals below it are dropped (on top of the model's own test_cfg).
        trust_checkpoint: read a ``.pth`` with full unpickling (only for a file you trust).

    ``forward(batch, decode=True) -> BoxDetectorOutput``: ``bev`` the BEV map (B, C, H, W) the
    mmdet3d head reads, ``predictions`` the head's raw outputs, ``detections`` the decoded boxes
    (``Boxes3D`` convention: gravity centre), ``regions`` their features.
    ``loss(output, batch)``: the mmdet3d head's losses on the batch's boxes (classes matched to
    ``class_names`` by name; others ignored) and their sum as ``total``.
    """

    axis_aligned = False  # mmdet3d LiDAR boxes are rotated

    def __init__(
        self,
        config: str | os.PathLike | Mapping,
        checkpoint: str | None = None,
        point_features: Sequence[str] = ("x", "y", "z", "intensity", "time_lag"),
        zero_features: Sequence[str] = ("time_lag",),
        class_names: Sequence[str] | None = None,
        region_channels: int = 256,
        grid_points: int = 7,
        max_regions: int = 64,
        score_threshold: float = 0.0,
        trust_checkpoint: bool = False,
    ):
        super().__init__()
        MODELS, self._Det3DDataSample, self._LiDARBoxes, self._InstanceData = _mmdet3d()
        cfg = load_mmdet3d_config(config)
        where = str(config) if not isinstance(config, Mapping) else SOURCE
        if "model" not in cfg:
            raise ConfigError(where, "model", "an mmdet3d model config")
        try:
            self.model = MODELS.build(cfg.model)
        except Exception as e:
            raise ConfigError(where, "model", "a model mmdet3d builds", got=f"{type(e).__name__}: {e}") from None
        self._kind = self._bev_kind(where)
        meta: dict = {}
        if checkpoint is not None:
            state, meta = _read_checkpoint(str(checkpoint), trust_checkpoint)
            state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise CheckpointError(checkpoint, "state_dict", f"the weights of the config's model ({where})",
                                      got=f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                                          f"(e.g. {unexpected[:2]})")
        self.class_names = self._class_names(class_names, meta, cfg, where)

        point_range = ((cfg.model.get("data_preprocessor") or {}).get("voxel_layer") or {}).get("point_cloud_range")
        if point_range is None or len(point_range) != 6:
            raise ConfigError(where, "model.data_preprocessor.voxel_layer.point_cloud_range",
                              "the BEV range (6 numbers): the bridge takes voxelised LiDAR detectors", got=point_range)
        self.point_range = tuple(float(v) for v in point_range)

        self.point_features = tuple(point_features)
        self.zero_features = tuple(zero_features)
        # the point width the voxel encoder reads, as configured (PillarFeatureNet's in_channels
        # attribute counts the offsets it adds; HardSimpleVFE calls it num_features)
        encoder = cfg.model.get("pts_voxel_encoder" if self._kind == "mvx" else "voxel_encoder") or {}
        width = encoder.get("in_channels", encoder.get("num_features"))
        if width is not None and width != len(self.point_features):
            raise ConfigError(SOURCE, "point_features", f"{width} feature names (the voxel encoder's in_channels in {where})",
                              got=list(self.point_features))
        if self.point_features[:3] != ("x", "y", "z"):
            raise ConfigError(SOURCE, "point_features", "x, y, z first", got=list(self.point_features))

        code_size = int(getattr(getattr(self.head, "bbox_coder", None), "code_size", 7))
        self.box_dim = 9 if code_size >= 9 else 7
        channels = self.head.in_channels
        self.bev_channels = int(channels[0] if isinstance(channels, (list, tuple)) else channels)
        self.region_sampler = BEVRegionSampler(self.bev_channels, region_channels, self.point_range, grid_points)
        if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 1:
            raise ConfigError(SOURCE, "max_regions", "an integer >= 1", got=max_regions)
        self.max_regions = max_regions
        self.score_threshold = float(score_threshold)

    # ------------------------------------------------------------------ set-up helpers
    def _bev_kind(self, where: str) -> str:
        """Which mmdet3d detector family this is: ``"mvx"`` (CenterPoint) or ``"voxelnet"``."""
        m = self.model
        if getattr(m, "pts_bbox_head", None) is not None and getattr(m, "pts_voxel_encoder", None) is not None:
            return "mvx"
        if getattr(m, "bbox_head", None) is not None and getattr(m, "voxel_encoder", None) is not None \
                and getattr(m, "middle_encoder", None) is not None:
            return "voxelnet"
        raise ConfigError(where, "model.type", "a voxelised LiDAR detector with a dense BEV head (VoxelNet: PointPillars, "
                          "SECOND; MVXTwoStageDetector: CenterPoint)", got=type(m).__name__)

    def _class_names(self, given, meta: dict, cfg, where: str) -> list[str]:
        tasks = getattr(self.head, "class_names", None) if self._kind == "mvx" else None
        if tasks:
            # CenterPoint numbers its labels by its tasks' class names, whatever else says
            names = [str(c) for task in tasks for c in task]
            for source, other in (("class_names", given), ("checkpoint meta.dataset_meta.classes",
                                  (meta.get("dataset_meta") or {}).get("classes")), ("config class_names", cfg.get("class_names"))):
                if other is not None and [str(c) for c in other] != names:
                    raise ConfigError(where, source, f"CenterPoint's classes in its tasks' order {names}", got=list(other))
            return names
        if given is not None:
            names = [str(c) for c in given]
        elif (meta.get("dataset_meta") or {}).get("classes"):
            names = [str(c) for c in meta["dataset_meta"]["classes"]]
        elif meta.get("CLASSES"):  # checkpoints of mmdet3d < 1.0 (most of its model zoo, converted)
            names = [str(c) for c in meta["CLASSES"]]
        elif cfg.get("class_names"):
            names = [str(c) for c in cfg.class_names]
        else:
            raise ConfigError(where, "class_names", "the model's classes (class_names in the config or the bridge)")
        wanted = getattr(self.head, "num_classes", None)
        total = sum(wanted) if isinstance(wanted, (list, tuple)) else wanted
        if isinstance(total, int) and total != len(names):
            raise ConfigError(SOURCE, "class_names", f"{total} names (the head's classes)", got=names)
        return names

    @property
    def head(self) -> nn.Module:
        """The mmdet3d model's dense BEV head (a property, so its weights are not listed twice)."""
        return self.model.pts_bbox_head if self._kind == "mvx" else self.model.bbox_head

    def bev_channels_source(self, prefix: str = "") -> str:
        return f"the mmdet3d head's in_channels ({prefix}config)"

    # ------------------------------------------------------------------ inputs
    def _points(self, batch) -> list[torch.Tensor]:
        """Per-sample (N_b, F) points in ``point_features`` order."""
        if batch.points is None:
            raise ConfigError("Batch", "points", "LiDAR points (the mmdet3d detector reads them)", got="none")
        out = []
        for b, s in enumerate(batch.samples):
            have = tuple(s.points.feature_names) if s.points is not None else ("x", "y", "z")
            rows = batch.points[batch.points[:, 0] == b, 1:]  # (N_b, 3 + C)
            cols = []
            for name in self.point_features:
                if name in have:
                    cols.append(rows[:, have.index(name)])
                elif name in self.zero_features:
                    cols.append(rows.new_zeros(rows.shape[0]))
                else:
                    raise PointCloudError(s.points.source if s.points is not None else s.sample_id, "feature_names",
                                          f"the detector's point feature {name!r} (point_features)", got=list(have))
            out.append(torch.stack(cols, 1))  # F x (N_b,) -> (N_b, F)
        return out

    def _data_samples(self, batch, with_gt: bool = False) -> list:
        samples = []
        for s in batch.samples:
            d = self._Det3DDataSample(metainfo=dict(box_type_3d=self._LiDARBoxes, sample_idx=s.sample_id))
            if with_gt:
                d.gt_instances_3d = self._gt_instances(s)
            samples.append(d)
        return samples

    def _gt_instances(self, s):
        if s.boxes is None:
            raise AnnotationError(s.sample_id, "boxes", "box annotations to train the mmdet3d head")
        labels = head_labels(s.boxes, self.class_names)
        keep = labels >= 0  # classes the model lacks are left out
        t = s.boxes.boxes[keep.to(s.boxes.boxes.tensor.device)].to_mmdet3d().float().cpu()  # (K, 7|9) bottom centre
        if t.shape[1] < self.box_dim:  # velocity the head regresses: 0 where the data has none
            t = torch.cat([t, t.new_zeros(t.shape[0], self.box_dim - t.shape[1])], 1)
        device = next(self.model.parameters()).device
        inst = self._InstanceData()
        inst.bboxes_3d = self._LiDARBoxes(t[:, : self.box_dim].to(device), box_dim=self.box_dim)
        inst.labels_3d = labels[keep].to(device)
        return inst

    # ------------------------------------------------------------------ forward
    def _features(self, points: list[torch.Tensor], data_samples: list) -> list[torch.Tensor]:
        """mmdet3d's voxelisation and BEV layers: the list of maps its head reads."""
        # mmengine's preprocessor keeps its own device, updated only by its own .to(); Lightning
        # moves this module with nn.Module.to, which leaves it on the CPU: the points would go back
        self.model.data_preprocessor.to(points[0].device)
        data = self.model.data_preprocessor({"inputs": {"points": points}, "data_samples": data_samples}, training=self.training)
        inputs = data["inputs"]
        if self._kind == "mvx":
            metas = [d.metainfo for d in data_samples]
            feats = self.model.extract_pts_feat(inputs["voxels"], points=inputs["points"], img_feats=None, batch_input_metas=metas)
        else:
            feats = self.model.extract_feat(inputs)
        return list(feats)

    def _check_in_range(self, batch, points: list[torch.Tensor]) -> None:
        """mmdet3d counts the batch by its last voxel's sample index: a sample without a point in
        the range would silently drop out of the maps (last) or crash (all). One line instead."""
        lo = points[0].new_tensor(self.point_range[:3])
        hi = points[0].new_tensor(self.point_range[3:])
        for s, p in zip(batch.samples, points):
            if not bool(((p[:, :3] >= lo) & (p[:, :3] < hi)).all(1).any()):
                where = s.points.source if s.points is not None else s.sample_id
                raise PointCloudError(where, "points", f"points inside the detector's range {list(self.point_range)}",
                                      got=f"none of {len(p)}")

    def forward(self, batch, decode: bool = True) -> BoxDetectorOutput:
        points = self._points(batch)
        self._check_in_range(batch, points)
        data_samples = self._data_samples(batch)
        feats = self._features(points, data_samples)
        bev = feats[0]  # (B, C, H, W): the map over point_range the dense head reads (H along y, W along x)
        if bev.shape[1] != self.bev_channels:
            raise ConfigError(SOURCE, "head.in_channels", "the BEV map's channels", got=f"{self.bev_channels} vs {bev.shape[1]}")
        predictions = self.head(feats)
        if not decode:
            return BoxDetectorOutput(bev, {"lidar": bev, "camera": None}, predictions, [], None)
        with torch.no_grad():
            results = self.head.predict_by_feat(*predictions, batch_input_metas=[d.metainfo for d in data_samples]) \
                if self._kind == "voxelnet" else self.head.predict_by_feat(predictions, [d.metainfo for d in data_samples])
        detections = [self._detections(r) for r in results]
        return BoxDetectorOutput(bev, {"lidar": bev, "camera": None}, predictions, detections, self.regions(bev, detections))

    def _detections(self, result) -> Detections:
        """One sample's mmdet3d ``InstanceData`` -> ``Detections`` (gravity centre, by score)."""
        t = result.bboxes_3d.tensor.float()[:, : self.box_dim]  # (K, 7|9) bottom centre
        scores, labels = result.scores_3d.float(), result.labels_3d.long()
        # mmdet3d decodes sizes with an unclamped exp: a diverging step may give inf boxes, which
        # are dropped here rather than failing Boxes3D's checks for the whole batch
        finite = torch.isfinite(t).all(1) & torch.isfinite(scores)
        t, scores, labels = t[finite], scores[finite], labels[finite]
        boxes = Boxes3D.from_mmdet3d(t, source="mmdet3d predictions").tensor  # gravity centre
        keep = scores >= self.score_threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = scores.argsort(descending=True)[: self.max_regions]
        return Detections(boxes[order], scores[order], labels[order])

    def regions(self, bev: torch.Tensor, detections: list[Detections]) -> RegionFeatures:
        boxes, scores, labels, mask = pad_detections(detections, self.max_regions, self.box_dim)
        return self.region_sampler(bev, boxes, scores, labels, mask)

    def loss(self, output: BoxDetectorOutput, batch) -> dict[str, torch.Tensor]:
        """The mmdet3d head's own losses (``loss_by_feat``) on ``output``'s predictions."""
        data_samples = self._data_samples(batch, with_gt=True)
        gts = [d.gt_instances_3d for d in data_samples]
        metas = [d.metainfo for d in data_samples]
        # CenterHead's loss_by_feat sigmoids the heatmaps in place (clip_sigmoid: sigmoid_) and
        # writes into the dicts: a second loss, or decoding after it, would read sigmoided maps
        predictions = _copy_predictions(output.predictions)
        if self._kind == "mvx":
            raw = self.head.loss_by_feat(predictions, gts)
        else:
            raw = self.head.loss_by_feat(*predictions, gts, metas)
        losses: dict[str, torch.Tensor] = {}
        for name, value in raw.items():
            if "loss" not in name:
                continue
            v = sum(value) if isinstance(value, (list, tuple)) else value  # per-level lists (anchor heads)
            losses[name.replace("loss_", "").replace(".", "_")] = v
        losses["total"] = sum(losses.values())
        return losses
