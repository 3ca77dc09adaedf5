"""Review 31 of the 3D box perception path (encoders, fusion, CenterPoint head): each test
shows one defect found against the reference implementations (CenterPoint, mmdet3d, BEVFusion)."""
from __future__ import annotations

import pytest
import torch

from dense3d.data.collate import collate
from dense3d.errors import ConfigError
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.camera.encoder import CameraEncoder
from dense3d.models.encoders.camera.lss import LSSViewTransform
from dense3d.models.encoders.lidar.bev_backbone import BEVBackbone
from dense3d.models.encoders.lidar.encoder import LidarEncoder
from dense3d.models.encoders.lidar.sparse_backbone import SparseEncoder
from dense3d.models.encoders.lidar.voxel_encoder import DynamicVoxelEncoder
from dense3d.models.fusion.conv_fuser import ConvFuser
from dense3d.models.losses.center_loss import CenterPointLoss
from dense3d.models.proposals.boxes.center_head import CenterHead
from dense3d.models.proposals.boxes.detector import BoxDetector
from dense3d.models.proposals.boxes.region_features import BEVRegionSampler
from dense3d.structures import BoxAnnotations, Boxes3D, Sample
from dense3d.structures.sample import CameraImages, PointCloud


def _lidar(voxel, point_range, layer_strides=(1, 2)):
    vox = DynamicVoxelEncoder(4, voxel, point_range, out_channels=8, hidden_channels=8)
    sparse = SparseEncoder(8, vox.sparse_shape, stage_channels=(8, 16), out_channels=8)
    bev = BEVBackbone(sparse.out_channels, layer_channels=(8, 8), layer_nums=(1, 1), layer_strides=layer_strides, upsample_channels=(8, 8))
    return vox, sparse, bev


def test_lidar_voxels_of_two_xy_sizes_are_refused_when_built():
    # voxel_size [0.1, 0.2, .]: the BEV map has half as many rows as the box head's grid, which
    # was only found at the first forward pass, blaming the head's point_range / cell_size
    with pytest.raises(ConfigError, match=r"LidarEncoder: field 'voxel_encoder.voxel_size'.*square"):
        LidarEncoder(*_lidar((0.1, 0.2, 0.25), (0.0, 0.0, 0.0, 4.0, 4.0, 2.0)))


def test_bev_backbone_strides_that_do_not_fit_the_map_are_refused_when_built():
    # 4.4 m of 0.2 m voxels, sparse stride 2: 11 BEV cells; the stride-2 stage gives 6, upsampled
    # 12: torch.cat raised "Sizes of tensors must match" from inside the forward pass
    with pytest.raises(ConfigError, match=r"LidarEncoder: field 'bev_backbone.layer_strides'.*11 cells"):
        LidarEncoder(*_lidar((0.2, 0.2, 0.25), (0.0, 0.0, 0.0, 4.4, 4.4, 2.0)))
    # a map whose size the strides divide still builds and runs
    enc = LidarEncoder(*_lidar((0.2, 0.2, 0.25), (0.0, 0.0, 0.0, 4.8, 4.8, 2.0)))
    pts = torch.cat([torch.zeros(50, 1), torch.rand(50, 3) * torch.tensor([4.8, 4.8, 2.0]), torch.rand(50, 1)], 1)
    batch = collate([Sample("s", points=PointCloud(pts[:, 1:], ("x", "y", "z", "intensity")))])
    assert enc.eval()(batch).shape == (1, 16, 12, 12)


def test_frozen_backbone_stages_keep_their_batch_norm_statistics_in_training():
    # frozen_stages only stopped the gradients: in train mode the frozen stem's and stages'
    # BatchNorm running statistics still followed every batch (mmdet's ResNet keeps them in eval)
    torch.manual_seed(0)
    net = ResNetBackbone(18, (3, 4), frozen_stages=1).train()
    frozen = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("stem.", "stages.0.")) and "running" in k}
    live = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("stages.1.") and "running" in k}
    assert frozen and live
    net(torch.rand(2, 3, 64, 64))
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], v) for k, v in live.items())  # the trained stages still adapt
    assert net.training and net.stages[1].training and not net.stem.training and not net.stages[0].training
    # no new state_dict keys (checkpoints of the backbone load as before)
    assert set(state) == set(ResNetBackbone(18, (3, 4)).state_dict())


def _mixed_batch(n: int) -> tuple:
    """n samples with LiDAR; the even ones also have one tiny camera, the odd ones none."""
    point_range = (0.0, 0.0, 0.0, 4.8, 4.8, 2.0)
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        pts = torch.cat([torch.rand(40, 3, generator=g) * torch.tensor([4.8, 4.8, 2.0]), torch.rand(40, 1, generator=g)], 1)
        cams = None
        if i % 2 == 0:
            lidar2cam = torch.tensor([[0.0, -1.0, 0.0, 2.4], [0.0, 0.0, -1.0, 1.0], [1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
            k = torch.eye(4)
            k[:3, :3] = torch.tensor([[16.0, 0.0, 16.0], [0.0, 16.0, 16.0], [0.0, 0.0, 1.0]])
            cams = CameraImages(torch.rand(1, 3, 32, 32, generator=g), k[None], lidar2cam[None], ("CAM_FRONT",))
        boxes = BoxAnnotations(Boxes3D(torch.tensor([[2.0, 2.0, 0.5, 1.0, 1.0, 1.0, 0.0]])), torch.tensor([0]), ("car",))
        samples.append(Sample(f"s{i}", points=PointCloud(pts, ("x", "y", "z", "intensity")), cameras=cams, boxes=boxes))
    return point_range, collate(samples)


def test_modality_dropout_never_drops_the_lidar_of_a_sample_without_cameras():
    # a sample without cameras in a batch with cameras has a zero camera map; the fuser's dropout
    # treated its camera as there and dropped its LiDAR alone 25 % of the time (dropout 0.5):
    # the head then trained on an empty map against that sample's boxes
    point_range, batch = _mixed_batch(16)
    torch.manual_seed(0)
    lidar = LidarEncoder(*_lidar((0.2, 0.2, 0.25), point_range))
    camera = CameraEncoder(ResNetBackbone(18, (3,)), LSSViewTransform(8, 8, point_range, 0.4, depth_bins=(0.5, 5.0, 0.5)), neck_channels=8)
    fuser = ConvFuser({"lidar": 16, "camera": 8}, 16, modality_dropout=0.5)
    head = CenterHead(16, [["car"]], point_range, 0.4, head_channels=8, with_velocity=False)
    det = BoxDetector(head, BEVRegionSampler(16, 8, point_range, 3), lidar_encoder=lidar, camera_encoder=camera,
                      fuser=fuser, loss=CenterPointLoss(code_weights=None)).train()
    seen = []
    hook = fuser.fuse.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        for seed in range(3):
            torch.manual_seed(seed)
            det(batch, decode=False)
    finally:
        hook.remove()
    for x in seen:  # (B, 16 + 8, H, W): LiDAR channels first
        lidar_kept = x[:, :16].flatten(1).abs().amax(1) > 0
        camera_kept = x[:, 16:].flatten(1).abs().amax(1) > 0
        assert bool(lidar_kept[1::2].all()), "a sample without cameras lost its LiDAR"
        assert bool((lidar_kept | camera_kept)[0::2].all())
        assert not bool(lidar_kept[0::2].all() and camera_kept[0::2].all())  # dropout still acts where both exist


def test_region_sampler_of_another_range_than_the_head_is_refused():
    # the sampler turns metres into grid_sample's [-1, 1] with its own point_range: another range
    # than the map's sampled every box's features at shifted cells without a word
    point_range = (0.0, 0.0, 0.0, 4.8, 4.8, 2.0)
    head = CenterHead(16, [["car"]], point_range, 0.4, head_channels=8, with_velocity=False)
    lidar = LidarEncoder(*_lidar((0.2, 0.2, 0.25), point_range))
    shifted = BEVRegionSampler(16, 8, (1.0, 1.0, 0.0, 5.8, 5.8, 2.0), 3)
    with pytest.raises(ConfigError, match=r"BoxDetector: field 'region_sampler.point_range'.*\[1.0, 1.0, 5.8, 5.8\]"):
        BoxDetector(head, shifted, lidar_encoder=lidar)
    BoxDetector(head, BEVRegionSampler(16, 8, (0.0, 0.0, -1.0, 4.8, 4.8, 3.0), 3), lidar_encoder=lidar)  # z may differ
