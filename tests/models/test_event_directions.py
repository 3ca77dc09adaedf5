"""SRP-PHAT direction maps of the audio encoder, the event head's azimuth read-out, its
two-stage (dense frame head -> query references) mode and decode-time NMS."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dense3d.errors import ConfigError
from dense3d.models.encoders.audio.encoder import AudioEncoder, _mean_pool_time, azimuth_bins, gcc_phat, pair_delays, phat_cross_spectrum, srp_phat
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.video.encoder import VideoEncoder
from dense3d.models.fusion.temporal_fuser import TemporalFuser
from dense3d.models.losses.event_loss import EventSetLoss
from dense3d.models.proposals.events.detector import EventDetector
from dense3d.models.proposals.events.event_head import EventHead, EventPredictions, temporal_nms
from dense3d.models.proposals.events.matcher import HungarianEventMatcher
from tests.models.av_clips import MICS, SR, av_batch


def _angle_error_deg(a: float, b: float) -> float:
    d = abs(math.degrees(a - b)) % 360.0
    return min(d, 360.0 - d)


def _two_stage_detector(directions: int = 72, seed: int = 0) -> EventDetector:
    torch.manual_seed(seed)
    audio = AudioEncoder(num_channels=4, sample_rate=SR, cnn_channels=(8, 16), time_pool=4, out_channels=32, max_lag=8, directions=directions)
    video = VideoEncoder(ResNetBackbone(18, out_indices=(1,)), out_channels=32)
    fuser = TemporalFuser(32, 32, d_model=32, num_layers=1, num_heads=2, dropout=0.0)
    head = EventHead(32, num_classes=2, num_queries=4, num_layers=1, num_heads=2, dropout=0.0, max_events=3, span_tokens=4,
                     two_stage=True, decode_nms=0.5, direction_readout=directions > 0)
    return EventDetector(fuser, head, audio_encoder=audio, video_encoder=video, loss=EventSetLoss(HungarianEventMatcher(cost_azimuth=1.0)))


@pytest.mark.parametrize("azimuth_deg", [0.0, 37.0, 100.0, 150.0, 179.0, -120.0, -60.0])
def test_direction_map_peaks_at_the_source_azimuth_all_around(azimuth_deg):
    """A square array has no front/back ambiguity: the event-long SRP-PHAT map peaks within a
    bin (5 deg) of the true azimuth for sources in front, behind and across the +-180 seam."""
    az = math.radians(azimuth_deg)
    batch = av_batch([(az, 0.4, 1.6, 0)])
    enc = AudioEncoder(num_channels=4, sample_rate=SR, cnn_channels=(8, 16), out_channels=16, max_lag=8, directions=72).eval()
    with torch.no_grad():
        out = enc(batch)
    assert out.directions.shape == (1, out.features.shape[1], 72)
    inside = (out.times[0] > 0.5) & (out.times[0] < 1.5)
    est = float(azimuth_bins(72)[out.directions[0, inside].mean(0).argmax()])
    assert _angle_error_deg(est, az) <= 5.0, (azimuth_deg, math.degrees(est))


def test_srp_at_integer_lags_equals_gcc_phat_and_delays_follow_its_sign():
    """``srp_phat`` reads the same correlation ``gcc_phat`` gives at integer lags, and
    ``pair_delays`` predicts the lag where ``gcc_phat`` peaks."""
    batch = av_batch([(math.radians(30), 0.2, 1.8, 0)])
    spec = torch.stft(batch.audio[0], 512, 160, window=torch.hann_window(512), return_complex=True)[None]  # (1, 4, F, T)
    pairs = [(0, 2), (1, 3), (0, 1)]
    cc = gcc_phat(spec, pairs, 512, 16)  # (1, P, 33, T)
    lags = torch.tensor([[-3.0, 0.0, 5.0]] * 3)[None]  # (1, P, N=3) integer lags
    srp_single = [srp_phat(phat_cross_spectrum(spec, [p]), lags[:, k : k + 1], 512) for k, p in enumerate(pairs)]  # each (1, 3, T)
    for k in range(3):
        for n, lag in enumerate((-3, 0, 5)):
            torch.testing.assert_close(srp_single[k][0, n], cc[0, k, 16 + lag], atol=1e-5, rtol=1e-4)
    expected = pair_delays(MICS, pairs, torch.tensor([math.radians(30)]), 343.0)[:, 0] * SR  # (P,) samples
    peaks = cc[0, :, :, 20:180].mean(-1).argmax(-1) - 16
    assert (peaks.float() - expected).abs().max() <= 1.0, (peaks, expected)


def test_pooled_gcc_features_equal_pooling_the_per_frame_correlation():
    """The encoder averages cross-spectra before the inverse FFT; by linearity that is the
    per-frame GCC-PHAT averaged over each output frame (the previous computation)."""
    x = torch.randn(2, 5, 3, 11, dtype=torch.complex64)
    torch.testing.assert_close(_mean_pool_time(x, 4).real, F.avg_pool1d(x.real.flatten(0, 2), 4, ceil_mode=True).view(2, 5, 3, 3))
    batch = av_batch([(0.7, 0.3, 1.5, 0)])
    enc = AudioEncoder(num_channels=4, sample_rate=SR, cnn_channels=(8, 16), out_channels=16, max_lag=8).eval()
    captured = []
    enc.gcc_proj.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        T = enc(batch).features.shape[1]
    spec = torch.stft(batch.audio[0], 512, 160, window=enc.window, return_complex=True)[None]
    cc = gcc_phat(spec, enc.pairs, 512, 8)  # (1, P, L, T_stft)
    ref = F.avg_pool1d(cc.flatten(1, 2), 4, ceil_mode=True)[..., :T].transpose(1, 2)  # (1, T, P * L)
    torch.testing.assert_close(captured[0], ref, atol=1e-5, rtol=1e-4)


def test_direction_map_needs_microphone_positions():
    batch = av_batch([(0.3, 0.4, 1.2, 0)])
    batch.samples[0].audio.mic_positions = None
    enc = AudioEncoder(num_channels=4, sample_rate=SR, cnn_channels=(8,), out_channels=8, max_lag=4, time_pool=2, directions=8)
    with pytest.raises(ConfigError, match="mic_positions"):
        enc(batch)
    configured = AudioEncoder(num_channels=4, sample_rate=SR, cnn_channels=(8,), out_channels=8, max_lag=4, time_pool=2, directions=8,
                              mic_positions=MICS.tolist())
    assert configured(batch).directions.shape[-1] == 8
    with pytest.raises(ConfigError, match="mic_positions"):
        AudioEncoder(num_channels=4, directions=8, mic_positions=[[0.0, 0.0, 0.0]])


def test_azimuth_readout_pools_inside_the_span_and_wraps():
    """The read-out takes the map inside the query's span only, and a peak at the +-180 deg
    seam reads back there (a circular mean, not a linear one that would give 0 deg)."""
    head = EventHead(16, num_classes=2, num_queries=2, num_layers=1, num_heads=2, direction_readout=True)
    T, N = 50, 72
    pos = ((torch.arange(T) + 0.5) / T)[None]  # (1, T)
    bins = azimuth_bins(N)
    directions = torch.zeros(1, T, N)
    directions[0, 10:20] = torch.cos(bins - math.radians(179.0)).clamp(min=0) ** 8  # event 1 at 179 deg
    directions[0, 30:40] = torch.cos(bins - math.radians(-90.0)).clamp(min=0) ** 8  # event 2 at -90 deg
    spans = torch.tensor([[[0.3, 0.2], [0.7, 0.2]]])  # centre, length: frames 10-19 and 30-39
    with torch.no_grad():
        az = head.read_azimuth(directions, spans, pos, torch.ones(1, T, dtype=torch.bool))
    est = torch.atan2(az[0, :, 0], az[0, :, 1])
    assert _angle_error_deg(float(est[0]), math.radians(179.0)) < 3.0
    assert _angle_error_deg(float(est[1]), math.radians(-90.0)) < 3.0


def test_temporal_nms_hand_made():
    spans = torch.tensor([[0.0, 1.0], [0.05, 1.0], [2.0, 3.0], [0.0, 0.9]])
    scores = torch.tensor([0.9, 0.8, 0.5, 0.95])
    assert temporal_nms(spans, scores, 0.5, 2).tolist() == [3, 2]
    # fewer survivors than asked: the best suppressed fill up, then repeats
    assert temporal_nms(spans, scores, 0.5, 3).tolist() == [3, 2, 0]
    assert temporal_nms(spans[:1], scores[:1], 0.5, 3).tolist() == [0, 0, 0]


def test_frame_targets_hand_made():
    pos = torch.tensor([0.05, 0.15, 0.25, 0.35, 0.45, 0.55])
    mask = torch.tensor([True, True, True, True, True, False])
    labels = torch.tensor([1, 0])
    spans = torch.tensor([[0.2, 0.2], [0.5, 0.2]])  # t0, t1 = (0.1, 0.3), (0.4, 0.6)
    cls, off, hit = EventSetLoss.frame_targets(pos, mask, labels, spans, background=2)
    assert cls.tolist() == [2, 1, 1, 2, 0, 2] and hit.tolist() == [False, True, True, False, True, False]
    torch.testing.assert_close(off[1], torch.tensor([0.05, 0.15]))
    torch.testing.assert_close(off[4], torch.tensor([0.05, 0.15]))
    assert (off[~hit] == 0).all()
    cls, off, hit = EventSetLoss.frame_targets(pos, mask, labels[:0], spans[:0], background=2)
    assert (cls == 2).all() and not hit.any()


def test_two_stage_flow_references_and_losses():
    batch = av_batch([(0.5, 0.4, 1.2, 0), (2.0, 1.0, 1.8, 1)])
    det = _two_stage_detector()
    out = det(batch)
    p = out.predictions
    T = out.fused.shape[1]
    assert p.frame_logits.shape == (2, T, 3) and p.frame_offsets.shape == (2, T, 2) and p.reference.shape == (2, 4, 2)
    # the span head starts at zero: every query's span is its reference
    torch.testing.assert_close(p.spans, p.reference.clamp(1e-4, 1 - 1e-4), atol=1e-5, rtol=1e-4)
    losses = det.loss(out, batch)
    assert set(losses) >= {"class", "span", "tiou", "azimuth", "count", "frame_class", "frame_span", "frame_tiou", "total"}
    losses["total"].backward()
    assert det.event_head.frame_class.weight.grad.abs().sum() > 0 and det.event_head.frame_offsets[0].weight.grad.abs().sum() > 0
    assert det.event_head.log_direction_gain.grad is not None and det.event_head.azimuth_head[0].weight.grad is None
    r = out.regions
    assert r.kind == "event" and r.extra["azimuth"].shape == r.scores.shape


def test_readout_azimuth_of_the_true_span_is_right():
    """Encoder map + read-out on ground-truth spans: the source's azimuth within a few degrees
    for a source behind the array."""
    az = math.radians(-140.0)
    batch = av_batch([(az, 0.4, 1.6, 0)])
    det = _two_stage_detector().eval()
    with torch.no_grad():
        a = det.audio_encoder(batch)
        pos, _ = det.event_head.frame_positions(a.times, a.mask, torch.tensor([2.0]))
        vec = det.event_head.read_azimuth(a.directions, torch.tensor([[[0.5, 0.6]]]), pos, a.mask)
    assert _angle_error_deg(float(torch.atan2(vec[0, 0, 0], vec[0, 0, 1])), az) < 4.0


def test_decode_nms_drops_a_duplicate_for_the_next_event():
    head = EventHead(8, num_classes=2, num_queries=3, num_layers=1, num_heads=2, max_events=3, decode_nms=0.5)
    logits = torch.tensor([[[5.0, 0, 0], [4.9, 0, 0], [0, 3.0, 0]]])  # two confident duplicates, one other
    spans = torch.tensor([[[0.3, 0.2], [0.31, 0.2], [0.7, 0.1]]])
    count = torch.tensor([[0.0, 0.0, 9.0, 0.0]])  # the counter says 2
    pred = EventPredictions(logits, spans, torch.zeros(1, 3, 2), count, torch.zeros(1, 3, 8))
    idx, _, labels, mask = head.decode_selection(pred)
    assert idx[0].tolist() == [0, 2] and labels[0].tolist() == [0, 1] and mask.all()
    head.decode_nms = None
    assert head.decode_selection(pred)[0][0].tolist() == [0, 1]


def test_quality_ranks_well_placed_queries_first_and_is_trained_to_tiou():
    head = EventHead(8, num_classes=2, num_queries=3, num_layers=1, num_heads=2, max_events=3, quality=True)
    logits = torch.tensor([[[5.0, 0, 0], [4.0, 0, 0], [3.0, 0, 0]]])
    spans = torch.tensor([[[0.3, 0.2], [0.6, 0.2], [0.9, 0.1]]])
    count = torch.tensor([[0.0, 9.0, 0.0, 0.0]])  # one event
    quality = torch.tensor([[-5.0, 5.0, 0.0]])  # the second query is the well-placed one
    pred = EventPredictions(logits, spans, torch.zeros(1, 3, 2), count, torch.zeros(1, 3, 8), quality=quality)
    assert head.decode_selection(pred)[0][0].tolist() == [1]
    pred.quality = None
    assert head.decode_selection(pred)[0][0].tolist() == [0]
    # targets: each span's best tIoU with a true event (0 without events)
    target = EventSetLoss.quality_targets(spans.expand(2, -1, -1), [torch.tensor([[0.6, 0.2], [0.3, 0.1]]), torch.zeros(0, 2)])
    torch.testing.assert_close(target, torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    batch = av_batch([(0.5, 0.4, 1.2, 0)])
    det = _two_stage_detector()
    det.event_head.quality_head = torch.nn.Sequential(torch.nn.Linear(32, 1))
    out = det(batch)
    assert out.predictions.quality.shape == (1, 4)
    losses = det.loss(out, batch)
    assert "quality" in losses
    losses["total"].backward()
    assert det.event_head.quality_head[0].weight.grad.abs().sum() > 0
