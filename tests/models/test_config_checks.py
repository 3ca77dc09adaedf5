"""Bad sizes and decoding options are one-line ConfigErrors when the parts are built, naming both
sides, not raw torch / transformers errors in the first forward step or inside ``generate``."""
from __future__ import annotations

import math

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.captioner.decoder import tiny_llama, tiny_llama_decoder
from dense3d.models.captioner.generate import generate_captions
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.captioner.qformer import RelationQFormer
from dense3d.models.captioner.region_captioner import RegionCaptioner
from dense3d.models.context.bica import BiCADecoder
from dense3d.models.dense_captioner import DenseCaptioner
from dense3d.models.encoders.audio.encoder import AudioEncoder
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.camera.encoder import CameraEncoder
from dense3d.models.encoders.camera.lss import LSSViewTransform
from dense3d.models.encoders.lidar.bev_backbone import BEVBackbone
from dense3d.models.encoders.lidar.encoder import LidarEncoder
from dense3d.models.encoders.lidar.sparse_backbone import SparseEncoder
from dense3d.models.encoders.lidar.voxel_encoder import DynamicVoxelEncoder
from dense3d.models.fusion.conv_fuser import ConvFuser
from dense3d.models.fusion.temporal_fuser import TemporalFuser
from dense3d.models.proposals.boxes.center_head import CenterHead
from dense3d.models.proposals.boxes.detector import BoxDetector
from dense3d.models.proposals.boxes.point_features import PointRegionEncoder
from dense3d.models.proposals.boxes.region_features import BEVRegionSampler
from dense3d.models.proposals.events.detector import EventDetector
from dense3d.models.proposals.events.event_head import EventHead

INDOOR = (-0.4, -0.4, -0.2, 9.2, 9.2, 3.0)
WORDS = ["describe the object. describe the sound. a red car near the tree"]


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------- captioner
def captioner(bica_region_dim: int = 256, bica_context_dim: int = 128, qformer_region_dim: int = 64,
              token_dim: int | None = None, raw_dim: int | None = None, bica: bool = True, **options) -> RegionCaptioner:
    return RegionCaptioner(
        decoder=tiny_llama_decoder(WORDS),
        adapter=LlamaAdapter(64, 4, num_layers=2, prompt_len=4),
        qformer=RelationQFormer(64, 4, 1, num_queries=4, num_neighbours=3, region_dim=qformer_region_dim, out_dim=64,
                                token_dim=token_dim, raw_dim=raw_dim),
        bica=BiCADecoder(64, 4, 1, region_dim=bica_region_dim, context_dim=bica_context_dim) if bica else None,
        **options,
    )


@pytest.mark.parametrize("field, value, expected", [
    ("num_beams", 0, "an integer >= 1"),
    ("num_beams", -1, "an integer >= 1"),
    ("max_new_tokens", 0, "an integer >= 1"),
    ("max_new_tokens", -1, "an integer >= 1"),
    ("max_caption_tokens", 0, "an integer >= 1"),
    ("repetition_penalty", 0, "a finite number > 0"),
    ("repetition_penalty", -1.0, "a finite number > 0"),
    ("repetition_penalty", math.nan, "a finite number > 0"),
    ("no_repeat_ngram_size", -1, "an integer >= 0"),
    ("cache_frozen_layers_mb", -1, "an integer >= 0"),
])
def test_decoding_options_are_checked_when_the_captioner_is_built(field, value, expected):
    with pytest.raises(ConfigError, match=rf"^RegionCaptioner: field '{field}': expected {expected}.*, got {value}$") as e:
        captioner(**{field: value})
    one_line(e)


def test_generate_checks_its_overrides_before_loading_the_llm():
    model = captioner()
    with pytest.raises(ConfigError, match=r"^RegionCaptioner.generate: field 'num_beams': expected an integer >= 1, got 0$"):
        model.generate([], num_beams=0)
    with pytest.raises(ConfigError, match=r"field 'batch_size': expected an integer >= 1.*, got -1$"):
        model.generate([], batch_size=-1)
    assert not model.decoder.loaded


@pytest.mark.parametrize("kw, field", [
    (dict(num_beams=0), "num_beams"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
    (dict(batch_size=0), "batch_size"), (dict(do_sample=True, temperature=0.0), "temperature"),
])
def test_generate_captions_checks_its_arguments(kw, field):
    with pytest.raises(ConfigError, match=rf"^generate_captions: field '{field}'"):
        generate_captions(None, None, None, torch.zeros(2, 4, 64), "Describe the object.", **kw)


def test_qformer_must_take_bica_widths():
    with pytest.raises(ConfigError, match=r"^RegionCaptioner: field 'qformer.region_dim': expected bica.d_model=64 .*, got 32$"):
        captioner(qformer_region_dim=32)
    with pytest.raises(ConfigError, match=r"^RegionCaptioner: field 'qformer.raw_dim': expected bica.region_dim=256 .*, got 128$"):
        captioner(raw_dim=128)


@pytest.mark.parametrize("kw, field, expected", [
    (dict(num_heads=3), "num_heads", "a divisor of hidden_size=64"),
    (dict(num_kv_heads=3), "num_kv_heads", "a divisor of num_heads=4"),
    (dict(hidden_size=0), "hidden_size", "an integer >= 1"),
    (dict(hidden_size=12), "num_heads", "heads of an even width"),
    (dict(num_layers=0), "num_layers", "an integer >= 1"),
])
def test_tiny_llama_sizes(kw, field, expected):
    with pytest.raises(ConfigError, match=rf"^tiny_llama_decoder: field '{field}': expected {expected}"):
        tiny_llama_decoder(WORDS, **kw)
    with pytest.raises(ConfigError, match=rf"^tiny_llama: field '{field}': expected {expected}"):
        tiny_llama(32, **kw)


@pytest.mark.parametrize("kw, field, expected", [
    (dict(n_heads=5), "n_heads", "a divisor of d_model=64"),
    (dict(d_model=-8), "d_model", "an integer >= 1"),
    (dict(region_dim=0), "region_dim", "an integer >= 1"),
    (dict(num_queries=0), "num_queries", "an integer >= 1"),
    (dict(n_layers=-1), "n_layers", "an integer >= 0"),
])
def test_qformer_sizes(kw, field, expected):
    args = dict(d_model=64, n_heads=4, n_layers=1, num_queries=4, num_neighbours=3, region_dim=64, out_dim=64) | kw
    with pytest.raises(ConfigError, match=rf"^RelationQFormer: field '{field}': expected {expected}"):
        RelationQFormer(**args)


@pytest.mark.parametrize("kw, field, expected", [
    (dict(d_model=-8), "d_model", "an integer >= 1"),
    (dict(n_heads=0), "n_heads", "an integer >= 1"),
    (dict(context_dim=0), "context_dim", "an integer >= 1"),
    (dict(region_dim=-1), "region_dim", "an integer >= 1"),
])
def test_bica_sizes(kw, field, expected):
    args = dict(d_model=64, n_heads=4, n_layers=1, region_dim=32, context_dim=32) | kw
    with pytest.raises(ConfigError, match=rf"^BiCADecoder: field '{field}': expected {expected}"):
        BiCADecoder(**args)


# ---------------------------------------------------------------------- box detector
def lidar(sparse_in: int = 16, bev_in: int = 96) -> LidarEncoder:
    vox = DynamicVoxelEncoder(6, (0.1, 0.1, 0.1), INDOOR, out_channels=16, hidden_channels=16)
    sparse = SparseEncoder(sparse_in, vox.sparse_shape, stage_channels=(16, 32, 64), out_channels=32)  # 32 x 3 z-cells
    bev = BEVBackbone(bev_in, layer_channels=(64, 128), layer_nums=(1, 1), layer_strides=(1, 2), upsample_channels=(64, 64))
    return LidarEncoder(vox, sparse, bev)


def box_detector(head_in: int = 128, sampler_in: int = 128, out: int = 256) -> BoxDetector:
    head = CenterHead(head_in, [["chair", "table"]], INDOOR, 0.4, head_channels=16, with_velocity=False, axis_aligned=True)
    return BoxDetector(head, BEVRegionSampler(sampler_in, out, INDOOR, grid_points=3), lidar_encoder=lidar())


def test_lidar_encoder_channels():
    with pytest.raises(ConfigError, match=r"^LidarEncoder: field 'bev_backbone.in_channels': "
                                          r"expected the sparse encoder's 96 BEV channels \(its out_channels 32 x 3 z-cells\), got 50$"):
        lidar(bev_in=50)
    with pytest.raises(ConfigError, match=r"^LidarEncoder: field 'sparse_encoder.in_channels': expected the voxel features' 16"):
        lidar(sparse_in=8)


def test_box_detector_head_and_sampler_read_the_bev_channels():
    pattern = r"^BoxDetector: field '{}': expected the BEV map's 128 channels \(the sum of lidar_encoder.bev_backbone.upsample_channels\), got 64$"
    with pytest.raises(ConfigError, match=pattern.format("box_head.in_channels")):
        box_detector(head_in=64)
    with pytest.raises(ConfigError, match=pattern.format("region_sampler.in_channels")):
        box_detector(sampler_in=64)
    assert box_detector().bev_channels == 128


def test_fuser_and_camera_channels():
    cam = CameraEncoder(ResNetBackbone(18, (3, 4)), LSSViewTransform(64, 32, INDOOR, 0.4, depth_bins=(1.0, 10.0, 1.0)),
                        neck_channels=64)
    head = CenterHead(64, [["chair"]], INDOOR, 0.4, head_channels=16)
    sampler = BEVRegionSampler(64, 32, INDOOR, grid_points=3)
    with pytest.raises(ConfigError, match=r"^BoxDetector: field 'fuser.in_channels.camera': expected the camera encoder's 32 BEV channels, got 16$"):
        BoxDetector(head, sampler, lidar_encoder=lidar(), camera_encoder=cam, fuser=ConvFuser({"lidar": 128, "camera": 16}, 64))
    with pytest.raises(ConfigError, match=r"^BoxDetector: field 'box_head.in_channels': expected the BEV map's 32 channels \(fuser.out_channels\)"):
        BoxDetector(head, sampler, lidar_encoder=lidar(), camera_encoder=cam, fuser=ConvFuser({"lidar": 128, "camera": 32}, 32))
    with pytest.raises(ConfigError, match=r"^CameraEncoder: field 'view_transform.in_channels': expected the image features' 64 channels"):
        CameraEncoder(ResNetBackbone(18, (3, 4)), LSSViewTransform(32, 32, INDOOR, 0.4, depth_bins=(1.0, 10.0, 1.0)),
                      neck_channels=64)


# ---------------------------------------------------------------------- event detector
def event_detector(fuser_audio: int = 32, head_d: int = 32) -> EventDetector:
    audio = AudioEncoder(num_channels=4, sample_rate=16000, cnn_channels=(8, 16), time_pool=4, out_channels=32, max_lag=8)
    fuser = TemporalFuser(fuser_audio, 0, d_model=32, num_layers=1, num_heads=2)
    head = EventHead(head_d, num_classes=2, num_queries=4, num_layers=1, num_heads=2)
    return EventDetector(fuser, head, audio_encoder=audio)


def test_event_detector_channels():
    with pytest.raises(ConfigError, match=r"^EventDetector: field 'temporal_fuser.audio_channels': expected the audio encoder's 32 channels"):
        event_detector(fuser_audio=16)
    with pytest.raises(ConfigError, match=r"^EventDetector: field 'event_head.d_model': expected the fused sequence's 32 channels"):
        event_detector(head_d=64)


# ---------------------------------------------------------------------- dense captioner
def test_dense_captioner_fits_the_captioner_to_the_detector():
    det = box_detector()
    with pytest.raises(ConfigError, match=r"^DenseCaptioner: field 'captioner.bica.context_dim': expected the BEV map's 128 channels "
                                          r"\(the sum of box_detector.lidar_encoder.bev_backbone.upsample_channels\), got 64$") as e:
        DenseCaptioner(captioner(bica_context_dim=64), box_detector=det)
    one_line(e)
    with pytest.raises(ConfigError, match=r"^DenseCaptioner: field 'captioner.bica.region_dim': expected the box region features' 256 "
                                          r"channels \(box_detector.region_sampler.out_channels\), got 128$"):
        DenseCaptioner(captioner(bica_region_dim=128), box_detector=det)
    with pytest.raises(ConfigError, match=r"^DenseCaptioner: field 'captioner.qformer.region_dim': expected the box region features' 256"):
        DenseCaptioner(captioner(bica=False, qformer_region_dim=64), box_detector=det)
    with pytest.raises(ConfigError, match=r"^DenseCaptioner: field 'captioner.qformer.token_dim': expected the box region features' 256"):
        DenseCaptioner(captioner(token_dim=64), box_detector=det)
    with pytest.raises(ConfigError, match=r"^DenseCaptioner: field 'point_regions.out_channels': expected the box region features' 256 "
                                          r"channels \(box_detector.region_sampler.out_channels\), got 128$"):
        DenseCaptioner(captioner(), box_detector=det, point_regions=PointRegionEncoder(out_channels=128))
    DenseCaptioner(captioner(token_dim=256, raw_dim=256), box_detector=det, point_regions=PointRegionEncoder(out_channels=256))


def test_dense_captioner_fits_the_captioner_to_the_events():
    with pytest.raises(ConfigError, match=r"^DenseCaptioner: field 'captioner.bica.context_dim': expected the fused sequence's 32 channels "
                                          r"\(event_detector.temporal_fuser.d_model\), got 128$"):
        DenseCaptioner(captioner(bica_region_dim=32), event_detector=event_detector())
    with pytest.raises(ConfigError, match=r"^DenseCaptioner: field 'captioner.bica.region_dim': expected the event region features' 32"):
        DenseCaptioner(captioner(bica_context_dim=32), event_detector=event_detector())
    DenseCaptioner(captioner(bica_region_dim=32, bica_context_dim=32, token_dim=32), event_detector=event_detector())


@pytest.mark.parametrize("prompts", [{"box": ""}, {"event": "   "}, {"box": None}])
def test_an_empty_prompt_is_a_config_error(prompts):
    # generation starts from the prompt's last token: an empty one ended in an IndexError inside generate
    with pytest.raises(ConfigError, match="prompts") as e:
        captioner(prompts=prompts)
    one_line(e)
