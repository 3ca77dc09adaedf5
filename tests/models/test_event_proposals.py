"""Audio / video encoders, temporal fuser and event head on synthetic audio-visual clips."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dense3d.errors import AudioError, ConfigError
from dense3d.models.encoders.audio.encoder import AudioEncoder, gcc_phat
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.video.encoder import VideoEncoder, interpolate_in_time
from dense3d.models.fusion.temporal_fuser import TemporalFuser
from dense3d.models.losses.event_loss import EventSetLoss
from dense3d.models.proposals.events.detector import EventDetector
from dense3d.models.proposals.events.event_head import EventHead
from dense3d.models.proposals.events.matcher import HungarianEventMatcher
from tests.models.av_clips import MICS, SPEED_OF_SOUND, SR, av_batch, tone_burst_clip


def _detector(seed=0, num_queries=4, tiny=False, video_timestamps="starts"):
    torch.manual_seed(seed)
    cnn = (8, 16) if tiny else (16, 32)
    audio = AudioEncoder(num_channels=4, sample_rate=SR, cnn_channels=cnn, time_pool=4, out_channels=32, max_lag=8)
    video = VideoEncoder(ResNetBackbone(18, out_indices=(1,) if tiny else (2,)), out_channels=32)
    fuser = TemporalFuser(32, 32, d_model=32, num_layers=1, num_heads=2, dropout=0.0)
    head = EventHead(32, num_classes=2, num_queries=num_queries, num_layers=1, num_heads=2, dropout=0.0, max_events=3, span_tokens=4)
    loss = EventSetLoss(HungarianEventMatcher(cost_azimuth=1.0))
    return EventDetector(fuser, head, audio_encoder=audio, video_encoder=video, loss=loss, video_timestamps=video_timestamps)


def test_gcc_phat_peaks_at_the_true_delay():
    """The GCC-PHAT peak of mics 0 and 2 (opposite, 0.2 m apart) matches the plane-wave delay."""
    az = math.radians(30)
    wave, _, _ = tone_burst_clip(az, 0.2, 1.8, noise=0.0)
    spec = torch.stft(wave, 512, 160, window=torch.hann_window(512), return_complex=True)[None]  # (1, 4, F, T)
    cc = gcc_phat(spec, [(0, 2)], 512, 16)  # (1, 1, 33, T)
    lag = int(cc[0, 0, :, 20:180].mean(-1).argmax()) - 16
    d = MICS[2] - MICS[0]
    expected = float(-(d @ torch.tensor([math.cos(az), math.sin(az), 0.0])) / SPEED_OF_SOUND * SR)
    assert abs(lag - expected) <= 1.0, (lag, expected)


def test_audio_video_shapes_and_time_alignment():
    batch = av_batch([(0.5, 0.4, 1.2, 0), (2.0, 1.0, 1.8, 1)])
    batch.audio_lengths = torch.tensor([32000, 16000])
    det = _detector().eval()
    a = det.audio_encoder(batch)
    T = a.features.shape[1]
    assert a.features.shape == (2, T, 32) and T == math.ceil((32000 // 160 + 1) / 4)
    assert a.mask[0].all() and a.mask[1].sum() == math.ceil((16000 // 160 + 1) / 4)
    assert 1.95 < float(a.times[0, -1]) < 2.05 and float(a.times[0, 1] - a.times[0, 0]) == pytest.approx(0.04)
    v = det.video_encoder(batch, a.times, a.mask)
    assert v.features.shape == (2, T, 32)
    assert torch.isfinite(v.features).all() and (v.features[1, ~a.mask[1]] == 0).all()
    # interpolation is exact at the frame times and clamped outside
    f = torch.arange(8.0)[:, None].repeat(1, 3)
    centres = (torch.arange(8) + 0.5) * 0.25  # (8,) 8 frames at 4 fps, centred at 0.125, 0.375, ...
    out = interpolate_in_time(f, centres, torch.ones(8, dtype=torch.bool), torch.tensor([0.0, 0.125, 0.375, 5.0]))
    assert out[:, 0].tolist() == pytest.approx([0.0, 0.0, 1.0, 7.0])
    with pytest.raises(AudioError, match="sample_rate"):
        batch.sample_rate = 8000
        det.audio_encoder(batch)


def test_each_encoder_changes_only_with_its_input():
    det = _detector().eval()
    base = av_batch([(0.5, 0.4, 1.2, 0)])
    with torch.no_grad():
        a0, v0 = det.audio_encoder(base).features, det.video_encoder(base).features
        b = av_batch([(0.5, 0.4, 1.2, 0)])
        b.audio = b.audio.roll(3, dims=1)  # only the audio changes
        assert not torch.allclose(det.audio_encoder(b).features, a0)
        assert torch.equal(det.video_encoder(b).features, v0)
        c = av_batch([(0.5, 0.4, 1.2, 0)])
        c.video = c.video.flip(-1)  # only the video changes
        assert torch.equal(det.audio_encoder(c).features, a0)
        assert not torch.allclose(det.video_encoder(c).features, v0)
        # direction alone (same signal, other azimuth) changes the audio features: GCC-PHAT
        d = av_batch([(2.5, 0.4, 1.2, 0)])
        assert not torch.allclose(det.audio_encoder(d).features, a0, atol=1e-4)


def test_hungarian_matching_hand_made():
    m = HungarianEventMatcher(cost_class=1.0, cost_span=5.0, cost_tiou=2.0)
    big = 10.0
    logits = torch.tensor([[big, 0, 0], [0, big, 0], [0, 0, big], [big, 0, 0]])  # classes 0, 1, none, 0
    spans = torch.tensor([[0.2, 0.1], [0.7, 0.2], [0.5, 0.5], [0.8, 0.2]])
    gt_labels = torch.tensor([0, 1])
    gt_spans = torch.tensor([[0.75, 0.2], [0.21, 0.1]])
    qi, gi = m(logits, spans, gt_labels, gt_spans)
    pairs = sorted(zip(qi.tolist(), gi.tolist()))
    # query 3 (class 0 at 0.8) takes gt 0 (class 0 at 0.75), not query 0 (class 0 but at 0.2);
    # gt 1 (class 1 at 0.21) goes to query 1 (class 1) over query 0's better span? no: span cost
    # 5 * |0.7 - 0.21| dominates, so query 0 (span 0.2) takes it.
    assert pairs == [(0, 1), (3, 0)]
    e = m(logits, spans, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))
    assert e[0].numel() == 0


def test_event_regions_and_loss_flow():
    batch = av_batch([(0.5, 0.4, 1.2, 0), (2.0, 1.0, 1.8, 1)])
    det = _detector()
    out = det(batch)
    r = out.regions
    assert r.kind == "event" and r.geometry.shape[-1] == 2 and r.features.shape[-1] == 32
    R = r.num_regions
    assert r.tokens.shape == (2, R, 4, 32) and r.extra["azimuth"].shape == (2, R)
    assert (r.geometry[r.mask][:, 1] >= r.geometry[r.mask][:, 0]).all() and (r.geometry <= 2.0 + 1e-5).all()
    losses = det.loss(out, batch)
    assert set(losses) >= {"class", "span", "tiou", "azimuth", "count", "total"}
    losses["total"].backward()
    grads = [p.grad for p in det.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.8 * len(grads)


def test_audio_only_batch_runs():
    batch = av_batch([(0.5, 0.4, 1.2, 0)], with_video=False)
    out = _detector().eval()(batch)
    assert out.video is None and out.fused.shape[0] == 1


@pytest.mark.slow
def test_event_loss_goes_down_when_overfitting_one_clip():
    torch.manual_seed(0)
    batch = av_batch([(1.0, 0.2, 0.6, 0), (-2.0, 0.5, 0.9, 1)], duration=1.0, size=32)
    det = _detector(num_queries=4, tiny=True)
    det.train()
    opt = torch.optim.AdamW(det.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        out = det(batch)
        loss = det.loss(out, batch)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in loss.items()})
    first = sum(h["total"] for h in history[:3]) / 3
    last = sum(h["total"] for h in history[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert history[-1]["span"] < history[0]["span"]


def test_video_only_batch_runs_on_the_video_time_axis():
    batch = av_batch([(0.5, 0.4, 1.2, 0)])
    batch.audio = batch.audio_lengths = None
    out = _detector().eval()(batch)  # av_clips' timestamps are frame starts, as the video reader's
    assert out.audio is None and out.fused.shape[1] == 8  # the 8 video frames
    assert float(out.durations[0]) == pytest.approx(2.0)
    assert (out.regions.geometry <= 2.0 + 1e-5).all()


def test_video_only_clip_lasts_frames_over_fps_with_frame_start_timestamps():
    """A clip of N frames at f fps lasts N / f. Video pts are frame starts (0, 1/f, ...), so the
    8 frames at 4 fps (0, 0.25, ..., 1.75 s) last 2.0 s; taking them as centres gave 1.875 s,
    half a frame short, and squeezed every event's normalised span by that much."""
    batch = av_batch([(0.5, 0.4, 1.2, 0)])
    batch.audio = batch.audio_lengths = None
    batch.video_timestamps = (torch.arange(8) * 0.25)[None]  # (1, 8) frame starts
    out = _detector().eval()(batch)
    assert float(out.durations[0]) == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="video_timestamps"):
        _detector(video_timestamps="middle")


def test_clip_durations_end_at_the_last_frames_end():
    from dense3d.models.proposals.events.event_head import clip_durations

    k = torch.arange(80, dtype=torch.float32)
    starts, centres = k / 8, (k + 0.5) / 8  # the synthetic av clips: 10 s at 8 fps
    mask = torch.ones(1, 80, dtype=torch.bool)
    assert float(clip_durations(starts[None], mask, frame_starts=True)[0]) == pytest.approx(10.0)
    assert float(clip_durations(centres[None], mask, frame_starts=False)[0]) == pytest.approx(10.0)
    # a 1 s clip at 25 fps read at 8 fps keeps 0, 0.16, 0.28, ..., 0.88 (the reader's fps grid):
    # the mean gap (0.1257 s) ends it at 1.006 s; the first gap (0.16 s) would give 1.04 s
    kept = torch.tensor([[0.0, 0.16, 0.28, 0.40, 0.52, 0.64, 0.76, 0.88]])
    assert float(clip_durations(kept, torch.ones(1, 8, dtype=torch.bool), frame_starts=True)[0]) == pytest.approx(1.0, abs=0.01)
    # padded clips use their own frames: 3 frames at 2 fps (1.5 s), 1 frame (no period: 1 s)
    times = torch.zeros(3, 80)
    times[0], times[1, :3], times[2, :1] = starts, torch.tensor([0.0, 0.5, 1.0]), 0.0
    mask = torch.zeros(3, 80, dtype=torch.bool)
    mask[0], mask[1, :3], mask[2, :1] = True, True, True
    assert clip_durations(times, mask, frame_starts=True).tolist() == pytest.approx([10.0, 1.5, 1.0])


def test_video_encoder_resizes_frames_before_the_backbone():
    seen = []
    video = VideoEncoder(ResNetBackbone(18, out_indices=(1,)), out_channels=8, frame_size=(32, 48))
    video.backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    frames = torch.rand(3, 3, 64, 112)
    feats = video.frame_features(frames[None], torch.ones(1, 3, dtype=torch.bool))
    assert seen == [(3, 3, 32, 48)] and feats.shape == (1, 3, 8)


@pytest.mark.parametrize("t0, dt", [(0.0, 0.5), (0.015, 0.04)])  # video pts (2 fps), audio frame centres
def test_event_tokens_read_the_sequence_at_their_own_times(t0, dt):
    """Each span token is the fused sequence at its time, frame k sitting at ``times[k]`` (the
    frames' centres, ``TemporalFeatures``). Before, frame k was taken to sit at (k + 0.5) dt
    whatever the times: on video timestamps (first frame at 0 s) every token read the sequence
    half a frame period (0.25 s at 2 fps) before its time."""
    from dense3d.models.proposals.events.event_head import EventPredictions

    torch.manual_seed(0)
    T, D, Q, duration = 40, 8, 3, 20 * dt + t0
    head = EventHead(D, num_classes=1, num_queries=Q, num_layers=1, num_heads=2, max_events=3, span_tokens=4).eval()
    times = (t0 + dt * torch.arange(T, dtype=torch.float32))[None]  # (1, T)
    memory = times[..., None].expand(1, T, D).clone()  # every channel holds the frame's time
    t01 = torch.tensor([0.3, 0.7]) * duration  # well inside the sequence (no clamping at its ends)
    spans = torch.tensor([[(t01[0] + t01[1]) / 2, t01[1] - t01[0]]]).expand(Q, 2)[None] / duration
    count = torch.tensor([[0.0, 5.0, 0.0, 0.0]])  # one event
    pred = EventPredictions(torch.zeros(1, Q, 2), spans, torch.tensor([0.0, 1.0]).expand(1, Q, 2), count, torch.zeros(1, Q, D))
    r = head.regions(pred, memory, times, torch.tensor([duration]))
    u = (torch.arange(4) + 0.5) / 4
    want = t01[0] + (t01[1] - t01[0]) * u
    assert r.tokens[0, 0, :, 0].tolist() == pytest.approx(want.tolist(), abs=1e-4)


def test_event_tokens_of_a_padded_clip_read_its_own_frames():
    """A clip shorter than the batch's longest: its frame period is its own, not its first gap into
    the padding. A one-frame clip (centre 0.5 s, zeros after it) had a period of 0 - 0.5 = -0.5 s,
    and its tokens read the padding; now every token reads its one frame."""
    from dense3d.models.proposals.events.event_head import EventPredictions

    T, D, Q = 12, 4, 3
    head = EventHead(D, num_classes=1, num_queries=Q, num_layers=1, num_heads=2, max_events=3, span_tokens=4).eval()
    times = torch.zeros(2, T)
    times[0] = 0.25 + 0.5 * torch.arange(T)  # 12 frames at 2 fps (centres), 6 s
    times[1, 0] = 0.5  # one frame, 1 s
    frame_mask = torch.zeros(2, T, dtype=torch.bool)
    frame_mask[0], frame_mask[1, 0] = True, True
    memory = times[..., None].expand(2, T, D).clone()  # every channel holds the frame's time
    memory[1, 0] = 7.0
    durations = torch.tensor([6.0, 1.0])
    spans = torch.tensor([0.5, 0.4]).expand(2, Q, 2)  # normalised centre, length: 0.3-0.7 of each clip
    count = torch.tensor([[0.0, 5.0, 0.0, 0.0]]).expand(2, 4)  # one event each
    pred = EventPredictions(torch.zeros(2, Q, 2), spans, torch.tensor([0.0, 1.0]).expand(2, Q, 2), count, torch.zeros(2, Q, D))
    r = head.regions(pred, memory, times, durations, frame_mask)
    u = (torch.arange(4) + 0.5) / 4
    assert r.tokens[0, 0, :, 0].tolist() == pytest.approx((6.0 * (0.3 + 0.4 * u)).tolist(), abs=1e-4)
    assert r.tokens[1, 0, :, 0].tolist() == pytest.approx([7.0] * 4)


def _frame_index_encoder(monkeypatch) -> VideoEncoder:
    """A video encoder whose frame feature is the frame's index (channel 0), so a feature read at a
    time says which frames it came from."""
    video = VideoEncoder(ResNetBackbone(18, out_indices=(1,)), out_channels=2)

    def index_features(frames, mask):
        B, T = mask.shape
        return torch.arange(T, dtype=torch.float32)[None, :, None].expand(B, T, 2) * mask[..., None]

    monkeypatch.setattr(video, "frame_features", index_features)
    return video


def test_video_features_sit_at_frame_centres(monkeypatch):
    """Video pts are frame starts; a frame's feature describes the whole frame, so it sits at the
    frame's centre: 4 fps frames starting at 0 give feature times 0.125, 0.375, ... (each clip
    from its own frame period). Timestamps that are centres already stay as they are."""
    video = _frame_index_encoder(monkeypatch)
    batch = av_batch([(0.5, 0.4, 1.2, 0), (2.0, 1.0, 1.8, 1)])
    batch.video_timestamps = torch.zeros(2, 8)
    batch.video_timestamps[0] = torch.arange(8) * 0.25  # 8 frames at 4 fps from 0 s
    batch.video_timestamps[1, :3] = 1.0 + torch.arange(3) * 0.5  # 3 frames at 2 fps from 1 s, then padding
    batch.video_mask = torch.zeros(2, 8, dtype=torch.bool)
    batch.video_mask[0], batch.video_mask[1, :3] = True, True
    out = video(batch)
    assert out.times[0].tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875, 1.125, 1.375, 1.625, 1.875])
    assert out.times[1, :3].tolist() == pytest.approx([1.25, 1.75, 2.25]) and (out.times[1, 3:] == 0).all()
    centred = dataclasses.replace(batch, video_timestamps=out.times.clone())
    assert torch.equal(video(centred, timestamps="centres").times, out.times)
    with pytest.raises(ConfigError, match="timestamps"):
        video(batch, timestamps="middle")


def test_audio_frames_read_the_video_frame_they_fall_in(monkeypatch):
    """With audio, video features are interpolated onto the audio frames' times. 4 fps frames
    starting at 0: frame 1 runs 0.25..0.5 s, so an audio frame at 0.375 s (its centre) reads frame
    1 alone, one at 0.25 s (the frames' boundary) half of frames 0 and 1. Taken as centres, the pts
    gave 1.5 and 1.0: the video of half a frame later."""
    video = _frame_index_encoder(monkeypatch)
    batch = av_batch([(0.5, 0.4, 1.2, 0)])
    batch.video_timestamps = (torch.arange(8) * 0.25)[None]  # (1, 8) frame starts
    times = torch.tensor([[0.125, 0.25, 0.375, 1.0, 1.875]])  # (1, 5) audio frame times
    out = video(batch, times, torch.ones(1, 5, dtype=torch.bool))
    assert out.features[0, :, 0].tolist() == pytest.approx([0.0, 0.5, 1.0, 3.5, 7.0])
    assert torch.equal(out.times, times)


def test_detector_gives_the_same_video_time_axis_for_starts_and_centres():
    """The detector's video_timestamps switch reaches the encoder: frame starts declared as
    starts, and the same frames' centres declared as centres, give the same times, durations
    and outputs, video only and with audio (no double shift of the clip's end)."""
    starts = av_batch([(0.5, 0.4, 1.2, 0)])
    centres = av_batch([(0.5, 0.4, 1.2, 0)])
    centres.video_timestamps = starts.video_timestamps + 0.125  # 8 frames at 4 fps
    by_starts, by_centres = _detector().eval(), _detector(video_timestamps="centres").eval()
    with torch.no_grad():
        a, b = by_starts(starts), by_centres(centres)
        assert torch.allclose(a.video.features, b.video.features) and torch.allclose(a.fused, b.fused)
        for batch in (starts, centres):
            batch.audio = batch.audio_lengths = None
        a, b = by_starts(starts), by_centres(centres)
    assert a.times[0].tolist() == pytest.approx((0.125 + 0.25 * torch.arange(8)).tolist())
    assert torch.equal(a.times, b.times)
    assert float(a.durations[0]) == pytest.approx(2.0) and float(b.durations[0]) == pytest.approx(2.0)
    assert torch.allclose(a.regions.geometry, b.regions.geometry) and torch.allclose(a.regions.tokens, b.regions.tokens)


def test_video_only_clip_read_below_its_native_rate_lasts_its_kept_frames():
    """A 2 s clip of 8 fps video read at 4 fps keeps starts 0, 0.25, ..., 1.75; the encoder puts
    each kept frame at its native centre (start + 1/16 s). The clip lasts 2.0 s (last start plus
    the kept gap); from the encoder's times (last centre plus half the kept gap) it came out
    1.9375 s, and every event's normalised span was stretched by that much."""
    batch = av_batch([(0.5, 0.4, 1.2, 0)])
    batch.audio = batch.audio_lengths = None
    batch.video_timestamps = (torch.arange(8) * 0.25)[None]  # (1, 8) kept frame starts
    batch.video_frame_duration = torch.tensor([1 / 8])  # the video's native frame period
    out = _detector().eval()(batch)
    assert float(out.times[0, 0]) == pytest.approx(1 / 16)  # native centres
    assert float(out.durations[0]) == pytest.approx(2.0)
