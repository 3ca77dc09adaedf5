"""The mmdet3d bridge (``MMDet3DBoxDetector``): an mmdet3d CenterPoint / PointPillars as dense3d's
box detector. Its boxes are mmdet3d's own predictions (converted to the gravity centre), its
loss is mmdet3d's own loss, its BEV map feeds the captioner, and bad input is a one-line error."""
from __future__ import annotations

import copy
import functools
import sys

import pytest
import torch

from tests.mmdet3d_guard import need_mmdet3d

pytestmark = pytest.mark.mmdet3d
need_mmdet3d(module_level=True)

from dense3d.data.collate import collate  # noqa: E402
from dense3d.engine.module import DenseCaptionModule  # noqa: E402
from dense3d.errors import CheckpointError, ConfigError, DependencyError, PointCloudError  # noqa: E402
from dense3d.models.captioner.decoder import tiny_llama_decoder  # noqa: E402
from dense3d.models.captioner.llama_adapter import LlamaAdapter  # noqa: E402
from dense3d.models.captioner.qformer import RelationQFormer  # noqa: E402
from dense3d.models.captioner.region_captioner import RegionCaptioner  # noqa: E402
from dense3d.models.context.bica import BiCADecoder  # noqa: E402
from dense3d.models.dense_captioner import DenseCaptioner  # noqa: E402
from dense3d.models.proposals.boxes.mmdet3d_detector import MMDet3DBoxDetector  # noqa: E402
from dense3d.structures import Boxes3D  # noqa: E402
from dense3d.structures.sample import BoxAnnotations, PointCloud, Sample  # noqa: E402

RANGE = [-16.0, -16.0, -5.0, 16.0, 16.0, 3.0]
VOXEL = [0.5, 0.5, 8.0]
CLASSES = ["car", "truck", "pedestrian"]


def centerpoint_config(in_channels: int = 5) -> dict:
    """A small CenterPoint (pillars, two task heads, velocity), laid out as mmdet3d's
    centerpoint_pillar02 nuScenes config: 64 x 64 pillars, a 32 x 32 BEV map of 32 channels."""
    bn = dict(type="BN", eps=1e-3, momentum=0.01)
    return dict(model=dict(
        type="CenterPoint",
        data_preprocessor=dict(type="Det3DDataPreprocessor", voxel=True, voxel_layer=dict(
            max_num_points=20, voxel_size=VOXEL, max_voxels=(8000, 8000), point_cloud_range=RANGE)),
        pts_voxel_encoder=dict(type="PillarFeatureNet", in_channels=in_channels, feat_channels=[16], with_distance=False,
                               voxel_size=VOXEL, norm_cfg=dict(type="BN1d", eps=1e-3, momentum=0.01), legacy=False,
                               point_cloud_range=RANGE),
        pts_middle_encoder=dict(type="PointPillarsScatter", in_channels=16, output_shape=(64, 64)),
        pts_backbone=dict(type="SECOND", in_channels=16, out_channels=[16, 32], layer_nums=[1, 1], layer_strides=[2, 2],
                          norm_cfg=bn, conv_cfg=dict(type="Conv2d", bias=False)),
        pts_neck=dict(type="SECONDFPN", in_channels=[16, 32], out_channels=[16, 16], upsample_strides=[1, 2], norm_cfg=bn,
                      upsample_cfg=dict(type="deconv", bias=False), use_conv_for_no_stride=True),
        pts_bbox_head=dict(
            type="CenterHead", in_channels=32,
            tasks=[dict(num_class=1, class_names=["car"]), dict(num_class=2, class_names=["truck", "pedestrian"])],
            common_heads=dict(reg=(2, 2), height=(1, 2), dim=(3, 2), rot=(2, 2), vel=(2, 2)), share_conv_channel=16,
            bbox_coder=dict(type="CenterPointBBoxCoder", post_center_range=[-20, -20, -10, 20, 20, 10], max_num=100,
                            score_threshold=0.0, out_size_factor=2, voxel_size=VOXEL[:2], code_size=9, pc_range=RANGE[:2]),
            separate_head=dict(type="SeparateHead", init_bias=-2.19, final_kernel=3),
            loss_cls=dict(type="mmdet.GaussianFocalLoss", reduction="mean"),
            loss_bbox=dict(type="mmdet.L1Loss", reduction="mean", loss_weight=0.25),
            norm_bbox=True),
        train_cfg=dict(pts=dict(grid_size=[64, 64, 1], voxel_size=VOXEL, out_size_factor=2, dense_reg=1, gaussian_overlap=0.1,
                                max_objs=50, min_radius=2, code_weights=[1.0] * 8 + [0.2, 0.2], point_cloud_range=RANGE)),
        test_cfg=dict(pts=dict(post_center_limit_range=[-20, -20, -10, 20, 20, 10], max_per_img=60, max_pool_nms=False,
                               min_radius=[4, 12, 10], score_threshold=0.0, pc_range=RANGE[:2], out_size_factor=2,
                               voxel_size=VOXEL[:2], nms_type="rotate", pre_max_size=200, post_max_size=40, nms_thr=0.2)),
    ))


def pointpillars_config() -> dict:
    """A small PointPillars (VoxelNet + Anchor3DHead, KITTI-style 4 point features, 3 classes)."""
    bn = dict(type="BN", eps=1e-3, momentum=0.01)
    return dict(class_names=CLASSES, model=dict(
        type="VoxelNet",
        data_preprocessor=dict(type="Det3DDataPreprocessor", voxel=True, voxel_layer=dict(
            max_num_points=20, voxel_size=VOXEL, max_voxels=(8000, 8000), point_cloud_range=RANGE)),
        voxel_encoder=dict(type="PillarFeatureNet", in_channels=4, feat_channels=[16], with_distance=False,
                           voxel_size=VOXEL, point_cloud_range=RANGE),
        middle_encoder=dict(type="PointPillarsScatter", in_channels=16, output_shape=(64, 64)),
        backbone=dict(type="SECOND", in_channels=16, out_channels=[16, 32], layer_nums=[1, 1], layer_strides=[2, 2], norm_cfg=bn),
        neck=dict(type="SECONDFPN", in_channels=[16, 32], out_channels=[16, 16], upsample_strides=[1, 2], norm_cfg=bn),
        bbox_head=dict(
            type="Anchor3DHead", num_classes=3, in_channels=32, feat_channels=32, use_direction_classifier=True,
            assign_per_class=True,
            anchor_generator=dict(type="AlignedAnchor3DRangeGenerator",
                                  ranges=[[-16, -16, -1.78, 16, 16, -1.78], [-16, -16, -1.0, 16, 16, -1.0], [-16, -16, -0.6, 16, 16, -0.6]],
                                  sizes=[[3.9, 1.6, 1.56], [6.0, 2.5, 3.0], [0.8, 0.6, 1.73]], rotations=[0, 1.57], reshape_out=False),
            diff_rad_by_sin=True, bbox_coder=dict(type="DeltaXYZWLHRBBoxCoder"),
            loss_cls=dict(type="mmdet.FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type="mmdet.SmoothL1Loss", beta=1.0 / 9.0, loss_weight=2.0),
            loss_dir=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=False, loss_weight=0.2)),
        train_cfg=dict(
            assigner=[dict(type="Max3DIoUAssigner", iou_calculator=dict(type="mmdet3d.BboxOverlapsNearest3D"),
                           pos_iou_thr=0.5, neg_iou_thr=0.35, min_pos_iou=0.35, ignore_iof_thr=-1)] * 3,
            allowed_border=0, pos_weight=-1, debug=False),
        test_cfg=dict(use_rotate_nms=True, nms_across_levels=False, nms_thr=0.01, score_thr=0.0, min_bbox_size=0,
                      nms_pre=100, max_num=50),
    ))


def scene(seed: int, features=("x", "y", "z", "intensity", "ring"), n: int = 3000) -> Sample:
    """Random points over the range, denser inside three boxes (a car, a truck, a pedestrian)."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[4.0, 2.0, -1.0, 4.2, 1.8, 1.6, 0.3],
                          [-6.0, 5.0, -0.5, 7.0, 2.6, 3.0, -1.2],
                          [2.0, -7.0, -0.9, 0.7, 0.7, 1.8, 0.0]]) + torch.randn(3, 7, generator=g) * torch.tensor([1, 1, 0, 0, 0, 0, 0.2])
    pts = torch.rand(n, 3, generator=g) * torch.tensor([32.0, 32.0, 3.0]) + torch.tensor([-16.0, -16.0, -2.0])
    inside = [b[:3] + (torch.rand(300, 3, generator=g) - 0.5) * b[3:6] for b in boxes]
    xyz = torch.cat([pts, *inside])
    extra = torch.rand(len(xyz), len(features) - 3, generator=g) * 10
    cloud = PointCloud(torch.cat([xyz, extra], 1), feature_names=tuple(features), source=f"scene{seed}.bin")
    ann = BoxAnnotations(Boxes3D(boxes), torch.tensor([0, 1, 3]), ("car", "truck", "bus", "pedestrian"),
                         captions=[["a red car."], ["a big truck."], ["a walking person."]])
    return Sample(sample_id=f"scene{seed}", points=cloud, boxes=ann)


def mmdet3d_inputs(bridge: MMDet3DBoxDetector, batch):
    """What mmdet3d's own pipeline gets for ``batch``: points in the model's columns, data samples."""
    return bridge._points(batch), bridge._data_samples(batch)


@pytest.fixture(scope="module")
def bridge_and_checkpoint(tmp_path_factory):
    """A CenterPoint built by mmdet3d with seed 1, saved as mmengine saves checkpoints, loaded by
    the bridge (built from the same config, with other initial weights)."""
    from mmdet3d.registry import MODELS
    from mmdet3d.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    torch.manual_seed(1)
    reference = MODELS.build(Config(centerpoint_config()).model).eval()
    path = tmp_path_factory.mktemp("ckpt") / "centerpoint.pth"
    torch.save({"state_dict": reference.state_dict(), "meta": {"dataset_meta": {"classes": CLASSES}}}, path)
    torch.manual_seed(2)
    bridge = MMDet3DBoxDetector(centerpoint_config(), checkpoint=str(path), max_regions=500).eval()
    return bridge, reference, path


def test_boxes_are_mmdet3d_predictions_at_the_gravity_centre(bridge_and_checkpoint):
    bridge, reference, _ = bridge_and_checkpoint
    for name, p in bridge.model.state_dict().items():  # the checkpoint's weights, not the fresh ones
        assert torch.equal(p, reference.state_dict()[name]), name
    assert bridge.class_names == CLASSES and bridge.box_dim == 9 and bridge.bev_channels == 32
    assert bridge.point_range == tuple(RANGE)
    # the mmdet3d weights once in the state dict (under model.), beside the region sampler's
    assert {k.split(".")[0] for k in bridge.state_dict()} == {"model", "region_sampler"}
    batch = collate([scene(0), scene(1)])
    with torch.no_grad():
        out = bridge(batch)
        points, samples = mmdet3d_inputs(bridge, batch)
        data = reference.data_preprocessor({"inputs": {"points": points}, "data_samples": samples}, training=False)
        expected = reference.predict(data["inputs"], data["data_samples"])
        _, pts_feats = reference.extract_feat(data["inputs"], [d.metainfo for d in data["data_samples"]])
    torch.testing.assert_close(out.bev, pts_feats[0])
    assert out.bev.shape == (2, 32, 32, 32)
    for det, ref in zip(out.detections, expected):
        inst = ref.pred_instances_3d
        order = inst.scores_3d.argsort(descending=True)
        t = inst.bboxes_3d.tensor[order]  # (K, 9) bottom centre
        assert det.boxes.shape == t.shape and len(det.boxes) > 10
        torch.testing.assert_close(det.scores, inst.scores_3d[order])
        assert det.labels.tolist() == inst.labels_3d[order].tolist()
        torch.testing.assert_close(det.boxes[:, :2], t[:, :2])
        torch.testing.assert_close(det.boxes[:, 2], t[:, 2] + t[:, 5] / 2)  # gravity centre = bottom + dz / 2
        torch.testing.assert_close(det.boxes[:, 3:], t[:, 3:])
        torch.testing.assert_close(det.boxes[:, 2:3], inst.bboxes_3d.gravity_center[order][:, 2:3])


def test_region_features_come_from_the_mmdet3d_bev_map(bridge_and_checkpoint):
    bridge, _, _ = bridge_and_checkpoint
    batch = collate([scene(0), scene(1)])
    with torch.no_grad():
        out = bridge(batch)
        r = out.regions
        n = [len(d.boxes) for d in out.detections]
        assert r.kind == "box" and r.features.shape == (2, max(n), 256) and r.tokens.shape == (2, max(n), 49, 256)
        assert r.mask.sum(1).tolist() == n
        torch.testing.assert_close(r.geometry[0, : n[0]], out.detections[0].boxes[:, :7])
        assert r.extra["velocity"].shape == (2, max(n), 2)
        # a box's tokens read the map inside it: a change there moves them, one at the mirrored
        # cell (x and y swapped) does not
        box = torch.tensor([[[4.5, -7.5, -1.0, 2.0, 2.0, 1.5, 0.3]]])  # (B=1, R=1, 7)
        args = (box, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))
        bev = out.bev[:1]  # 32 x 32 cells of 1 m from -16 m; the box's centre in cell (y, x) = (8, 20)
        base = bridge.region_sampler(bev, *args).tokens
        near, swapped = bev.clone(), bev.clone()
        near[..., 8, 20] += 5.0
        swapped[..., 20, 8] += 5.0
        assert not torch.allclose(bridge.region_sampler(near, *args).tokens, base)
        torch.testing.assert_close(bridge.region_sampler(swapped, *args).tokens, base)


def test_loss_is_the_mmdet3d_heads_loss_and_trains_it(bridge_and_checkpoint):
    bridge, reference, _ = bridge_and_checkpoint
    batch = collate([scene(0), scene(1)])
    out = bridge(batch, decode=False)
    losses = bridge.loss(out, batch)
    # mmdet3d's own training loss on the same boxes (its bottom-centre convention, its class ids)
    points, samples = mmdet3d_inputs(bridge, batch)
    samples = bridge._data_samples(batch, with_gt=True)
    data = reference.data_preprocessor({"inputs": {"points": points}, "data_samples": samples}, training=False)
    expected = reference.loss(data["inputs"], data["data_samples"])
    names = {k.replace("loss_", "").replace(".", "_"): v for k, v in expected.items() if "loss" in k}
    assert set(losses) == set(names) | {"total"} and "task0_heatmap" in losses
    for k, v in names.items():
        torch.testing.assert_close(losses[k], v)
    # the boxes mmdet3d got: bottom centres, the bus (a class the model lacks) left out, no velocity -> 0
    gt = samples[0].gt_instances_3d
    assert gt.labels_3d.tolist() == [0, 1, 2]
    s = batch.samples[0].boxes.boxes.tensor
    torch.testing.assert_close(gt.bboxes_3d.gravity_center, s[:, :3])
    assert torch.all(gt.bboxes_3d.tensor[:, 7:] == 0)
    heat = out.predictions[0][0]["heatmap"].clone()
    again = bridge.loss(out, batch)  # mmdet3d's loss_by_feat sigmoids the heatmaps in place: not these
    torch.testing.assert_close(again["total"], losses["total"])
    torch.testing.assert_close(out.predictions[0][0]["heatmap"], heat)
    losses["total"].backward()
    assert bridge.model.pts_bbox_head.task_heads[0].heatmap[-1].weight.grad.abs().sum() > 0
    bridge.zero_grad()


def tiny_captioner() -> RegionCaptioner:
    words = ["describe the object. a red big car truck walking person bus"]
    return RegionCaptioner(
        decoder=tiny_llama_decoder(words),
        adapter=LlamaAdapter(64, 4, num_layers=2, prompt_len=4),
        qformer=RelationQFormer(64, 4, 1, num_queries=4, num_neighbours=2, region_dim=64, out_dim=64, token_dim=256),
        bica=BiCADecoder(64, 4, 1, region_dim=256, context_dim=32),
        max_new_tokens=6,
    )


def test_dense_captioner_captions_mmdet3d_boxes_with_the_detector_frozen(bridge_and_checkpoint):
    bridge, _, _ = bridge_and_checkpoint
    bridge = copy.deepcopy(bridge)
    model = DenseCaptioner(tiny_captioner(), box_detector=bridge, class_embedding=True)
    assert model.captioner.class_names["box"] == CLASSES
    # the captioning stage (configs/stage/captioning.yaml) as the training module applies it
    module = DenseCaptionModule(model, functools.partial(torch.optim.AdamW, lr=1e-3), frozen=["box_detector"],
                                trainable=["box_detector.region_sampler"])
    module.train()
    assert not bridge.model.training and bridge.region_sampler.training and model.captioner.training
    before = {k: v.clone() for k, v in bridge.model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = collate([scene(0), scene(1)])
    for _ in range(2):
        losses = model(batch)
        assert set(losses) == {"caption"} and torch.isfinite(losses["caption"])
        opt.zero_grad()
        losses["caption"].backward()
        opt.step()
    for k, v in bridge.model.state_dict().items():
        assert torch.equal(v, before[k]), k  # frozen mmdet3d weights (and BN statistics) unchanged
    assert bridge.region_sampler.token_proj.weight.grad is not None  # its region features train
    model.eval()
    records = model.predict(batch)
    assert len(records) == 2 and len(records[0]) == int(model.box_detector(batch).regions.mask[0].sum())
    assert all(r.label in CLASSES and isinstance(r.text, str) for r in records[0])
    gt = model.predict(batch, regions="gt")
    assert [r.label for r in gt[0]] == ["car", "truck", "pedestrian"]  # the bus: a class the model lacks
    # with the detector trainable, DenseCaptioner adds mmdet3d's loss terms
    for p in bridge.model.parameters():
        p.requires_grad_(True)
    model.train()
    losses = model(batch)
    assert {"det_task0_heatmap", "det_task1_bbox", "caption"} <= set(losses)


def test_pointpillars_anchor_head_bridges_too():
    bridge = MMDet3DBoxDetector(pointpillars_config(), point_features=["x", "y", "z", "intensity"], max_regions=20).eval()
    assert bridge.class_names == CLASSES and bridge.box_dim == 7
    batch = collate([scene(3, ("x", "y", "z", "intensity"))])
    with torch.no_grad():
        out = bridge(batch)
        points, samples = mmdet3d_inputs(bridge, batch)
        data = bridge.model.data_preprocessor({"inputs": {"points": points}, "data_samples": samples}, training=False)
        ref = bridge.model.predict(data["inputs"], data["data_samples"])[0].pred_instances_3d
    order = ref.scores_3d.argsort(descending=True)[:20]
    torch.testing.assert_close(out.detections[0].boxes, ref.bboxes_3d.tensor[order].clone().index_add_(
        1, torch.tensor([2]), ref.bboxes_3d.tensor[order][:, 5:6] / 2))
    assert out.regions.mask.sum() == len(order) == 20
    bridge.train()
    losses = bridge.loss(bridge(batch, decode=False), batch)
    assert {"cls", "bbox", "dir", "total"} == set(losses) and torch.isfinite(losses["total"])


def test_keyframe_without_sweeps_feeds_time_lag_zero(bridge_and_checkpoint):
    bridge, _, _ = bridge_and_checkpoint
    s = scene(0)
    pts = bridge._points(collate([s]))[0]
    assert pts.shape == (len(s.points), 5)
    torch.testing.assert_close(pts[:, :4], s.points.points[:, :4])  # x, y, z, intensity; the ring left out
    assert torch.all(pts[:, 4] == 0)
    swept = Sample("s", PointCloud(torch.cat([s.points.points, torch.full((len(s.points), 1), 0.05)], 1),
                                   feature_names=("x", "y", "z", "intensity", "ring", "time_lag")))
    assert torch.all(bridge._points(collate([swept]))[0][:, 4] == 0.05)


def one_line(e) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_input_is_a_one_line_error(bridge_and_checkpoint, tmp_path, monkeypatch):
    bridge, _, path = bridge_and_checkpoint
    with pytest.raises(ConfigError, match="nothing downloads") as e:
        MMDet3DBoxDetector(centerpoint_config(), checkpoint="https://download.openmmlab.com/x.pth")
    one_line(e)
    with pytest.raises(CheckpointError, match="missing.pth") as e:
        MMDet3DBoxDetector(centerpoint_config(), checkpoint=str(tmp_path / "missing.pth"))
    one_line(e)
    with pytest.raises(CheckpointError, match=r"state_dict.*missing") as e:  # PointPillars weights for a CenterPoint
        other = tmp_path / "other.pth"
        pillars = MMDet3DBoxDetector(pointpillars_config(), point_features=["x", "y", "z", "intensity"])
        torch.save({"state_dict": pillars.model.state_dict()}, other)
        MMDet3DBoxDetector(centerpoint_config(), checkpoint=str(other))
    one_line(e)
    with pytest.raises(ConfigError, match=r"point_features.*5 feature names") as e:
        MMDet3DBoxDetector(centerpoint_config(), point_features=["x", "y", "z", "intensity"])
    one_line(e)
    with pytest.raises(ConfigError, match="config.*missing.py") as e:
        MMDet3DBoxDetector(str(tmp_path / "missing.py"))
    one_line(e)
    with pytest.raises(ConfigError, match=r"class_names.*CenterPoint's classes in its tasks' order \['car', 'truck', 'pedestrian'\]") as e:
        MMDet3DBoxDetector(centerpoint_config(), class_names=["truck", "car", "pedestrian"])  # labels would be swapped
    one_line(e)
    with pytest.raises(ConfigError, match="class_names.*3 names") as e:
        MMDet3DBoxDetector(pointpillars_config(), point_features=["x", "y", "z", "intensity"], class_names=["car"])
    one_line(e)
    with pytest.raises(PointCloudError, match=r"^scene9.bin: field 'points': expected points inside the detector's range") as e:
        far = scene(9)
        far.points.points[:, 0] += 100.0  # the last sample's cloud outside the range: mmdet3d would drop it silently
        bridge(collate([scene(0), far]))
    one_line(e)
    with pytest.raises(PointCloudError, match=r"^scene4.bin: field 'feature_names': expected the detector's point feature 'intensity'") as e:
        bridge(collate([scene(4, ("x", "y", "z", "ring"))]))
    one_line(e)
    monkeypatch.setitem(sys.modules, "mmdet3d.registry", None)  # mmdet3d not installed
    with pytest.raises(DependencyError, match="mmdet3d") as e:
        MMDet3DBoxDetector(centerpoint_config())
    one_line(e)


@pytest.mark.slow
def test_real_keyframe_through_mmdet3d_nuscenes_centerpoint(samples):
    """The real nuScenes keyframe, read by dense3d's TOD3Cap loader, through the CenterPoint config
    shipped in the mmdet3d wheel (its weights are not shipped: fresh ones). The boxes the bridge
    hands mmdet3d hold the points the info file counts: mmdet3d's own points-in-boxes on them
    reproduces ``num_lidar_pts`` (61 of 69 boxes, as dense3d's own check; ../shared/FACTS.md)."""
    from dense3d.data.datasets import TOD3CapDataset

    info = next((samples / "nuscenes").glob("*.pkl"))
    s = TOD3CapDataset(str(info), split="val", sensors=["lidar"])[0]
    torch.manual_seed(0)
    bridge = MMDet3DBoxDetector("mmdet3d::centerpoint/centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d.py").eval()
    assert bridge.class_names[:3] == ["car", "truck", "construction_vehicle"] and len(bridge.class_names) == 10
    assert bridge.point_range == (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0) and bridge.bev_channels == 384
    from mmcv.ops import points_in_boxes_cpu

    gt = bridge._gt_instances(s)
    # mmcv's op on the bottom-centred boxes: (1, N, 3), (1, K, 7) -> (1, N, K)
    inside = points_in_boxes_cpu(s.points.points[None, :, :3].contiguous(), gt.bboxes_3d.tensor[None, :, :7].contiguous())
    counts = inside[0].sum(0)
    assert len(counts) == len(s.boxes) == 69  # every annotated class is one of the model's
    assert int((counts == s.boxes.num_points).sum()) >= 60  # 61 measured; gravity centres read as bottom ones: 14
    batch = collate([s])
    with torch.no_grad():
        out = bridge(batch)
    assert out.bev.shape == (1, 384, 128, 128)
    d = out.detections[0]
    assert len(d.boxes) > 0 and torch.isfinite(d.boxes).all() and d.boxes.shape[1] == 9
    assert out.regions.mask.sum() == min(len(d.boxes), bridge.max_regions)


@pytest.mark.cuda
def test_bridge_on_the_gpu_gives_the_cpus_boxes(bridge_and_checkpoint):
    """Moved with nn.Module.to (as Lightning moves it), the bridge keeps the points on the GPU:
    mmengine's preprocessor would otherwise cast them back to its own (CPU) device."""
    from mmcv.ops import get_compiling_cuda_version

    if get_compiling_cuda_version() == "not available":
        pytest.skip("mmcv was built without its CUDA ops (build it with FORCE_CUDA=1 on a GPU machine)")
    bridge = bridge_and_checkpoint[0]
    batch = collate([scene(0), scene(1)])
    with torch.no_grad():
        cpu = bridge(batch)
        gpu = copy.deepcopy(bridge).to("cuda")(batch.to("cuda"))
    assert gpu.bev.is_cuda
    for a, b in zip(cpu.detections, gpu.detections):
        torch.testing.assert_close(b.boxes[:10].cpu(), a.boxes[:10], atol=1e-3, rtol=1e-3)
