"""Review of the audio-visual branch: readers, datasets, collate, audio / video encoders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dense3d.data.converters import write_wav
from dense3d.models.encoders.audio.encoder import AudioEncoder
from dense3d.structures import Sample
from dense3d.structures.sample import AudioClip

from tests.models.av_clips import SR, audio_batch as _audio_batch, noise as _noise


@pytest.mark.parametrize("samples", [1, 100, 256])
def test_audio_encoder_takes_clips_shorter_than_half_an_fft(samples):
    """A clip of fewer than n_fft / 2 + 1 samples raised torch's 'Padding size should be less
    than the corresponding input dimension' from the STFT's reflect padding."""
    torch.manual_seed(0)
    enc = AudioEncoder(num_channels=2, max_lag=4, directions=8, mic_positions=[[0.1, 0, 0], [-0.1, 0, 0]]).eval()
    with torch.no_grad():
        out = enc(_audio_batch([_noise(2, samples, 0)]))
    assert out.features.shape == (1, 1, enc.out_channels) and out.mask.tolist() == [[True]]
    assert bool(torch.isfinite(out.features).all()) and bool(torch.isfinite(out.directions).all())


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _dataset_from_config(name: str, **fields):
    """Instantiate ``configs/data/<name>.yaml`` (a data set config) with ``fields`` set."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIGS / "data" / f"{name}.yaml")
    return instantiate(OmegaConf.merge(cfg, fields))


def test_dense_events_config_resamples_other_rates(tmp_path):
    """configs/data/dense_events.yaml asked for exactly 16000 Hz *and* resampled to 16 kHz: a
    22.05 kHz file raised 'expected 16000 Hz (resample in the pipeline instead)' before its
    AudioResample could run."""
    rate = 22050
    write_wav(tmp_path / "v.wav", _noise(2, 2 * rate, 0), rate)
    (tmp_path / "ev_train.json").write_text(json.dumps({"v": {"duration": 2.0, "timestamps": [[0.5, 1.0]], "sentences": ["A horn."]}}))
    ds = _dataset_from_config("dense_events", annotation_file=str(tmp_path / "ev_{split}.json"), media_dir=str(tmp_path), sensors=["audio"])
    audio = ds[0].audio
    assert audio.sample_rate == SR and audio.waveform.shape == (2, 2 * SR)


def _two_mic_encoder() -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(num_channels=2, max_lag=4, directions=8, mic_positions=[[0.1, 0, 0], [-0.1, 0, 0]])


def test_audio_features_do_not_depend_on_the_batch_padding():
    """A clip's frames beside a longer clip (zero-padded to its length) equal the clip's frames
    alone. The STFT's reflect padding at the batch's end, the CNN reading the padding's log(1e-6)
    and the last pooling window counting padded frames changed its last 5 of 26 frames by up to
    0.05 (features ~0.16); with time_pool 4 and 16077 samples the last window is partial."""
    enc = _two_mic_encoder().eval()
    short, long = _noise(2, SR + 77, 1), _noise(2, 3 * SR, 2)
    with torch.no_grad():
        alone = enc(_audio_batch([short]))
        both = enc(_audio_batch([short, long]))
    T = alone.features.shape[1]
    assert both.mask[0].sum() == T and not both.mask[0, T:].any()
    torch.testing.assert_close(both.features[0, :T], alone.features[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both.directions[0, :T], alone.directions[0], atol=1e-6, rtol=1e-5)


def test_audio_batch_norm_statistics_come_from_real_frames():
    """In training the input BatchNorm's statistics counted the padding of a short clip (log-mel
    log(1e-6) = -13.8 on every padded frame), so its running mean depended on how much padding the
    batches held; now it is the mean of the real frames' log-mel (torchaudio's MelSpectrogram of
    each clip alone)."""
    enc = _two_mic_encoder().train()
    short, long = _noise(2, SR // 2, 3), _noise(2, 2 * SR, 4)
    enc(_audio_batch([short, long]))
    with torch.no_grad():
        logmel = [(enc.mel(w) + 1e-6).log() for w in (short, long)]  # (A, M, T_b)
        real_mean = torch.cat([m.flatten(1) for m in logmel], dim=1).mean(dim=1)  # (A,)
    momentum = enc.input_bn.momentum
    torch.testing.assert_close(enc.input_bn.running_mean, momentum * real_mean, atol=1e-4, rtol=1e-4)


def test_collate_names_the_files_that_disagree():
    """A mono file among stereo ones (common in YouTube-derived sets) stopped the batch with
    'collate: field 'audio channels': expected the same value ... (2), got 1': no file named."""
    from dense3d.data.collate import collate
    from dense3d.errors import AudioError, VideoError
    from dense3d.structures.sample import VideoFrames

    stereo = Sample("clip_a", audio=AudioClip(_noise(2, 100, 0), SR, source="/data/a.wav"))
    mono = Sample("clip_b", audio=AudioClip(_noise(1, 100, 1), SR, source="/data/b.flac"))
    with pytest.raises(AudioError, match=r"collate: field 'audio channels': expected the same value in every sample of the batch "
                                         r"\(2 in clip_a \(/data/a.wav\)\), got 1 in clip_b \(/data/b.flac\)$"):
        collate([stereo, mono])
    small = Sample("clip_c", video=VideoFrames(torch.zeros(2, 3, 8, 8), torch.arange(2.0), source="/data/c.mp4"))
    big = Sample("clip_d", video=VideoFrames(torch.zeros(2, 3, 8, 16), torch.arange(2.0), source="/data/d.mp4"))
    with pytest.raises(VideoError, match=r"got \(0, 3, 8, 16\) in clip_d \(/data/d.mp4\)$"):
        collate([small, big])


@pytest.mark.parametrize("padded", [False, True])
def test_event_span_tokens_near_the_clip_ends_read_real_frames(padded):
    """Span tokens sample the fused sequence at times inside the span; between a clip's start and
    its first frame centre, or after its last real frame centre, they blended that frame with
    grid_sample's zero padding (or the batch's padded frames): on a constant sequence the first
    and last tokens of a whole-clip span read 0.75 instead of 1 (video at 2 fps, 2 s)."""
    from dense3d.models.proposals.events.event_head import EventHead, EventPredictions

    torch.manual_seed(0)
    head = EventHead(d_model=4, num_classes=1, num_queries=1, max_events=2, span_tokens=8).eval()
    T = 6 if padded else 4
    times = torch.arange(T, dtype=torch.float32)[None] * 0.5 + 0.25  # (1, T) centres of 2 fps frames
    mask = torch.arange(T)[None] < 4
    memory = mask[..., None].float().expand(1, T, 4)  # 1 on the real frames, 0 on the padding
    pred = EventPredictions(
        logits=torch.tensor([[[5.0, -5.0]]]), spans=torch.tensor([[[0.5, 1.0]]]), azimuth=torch.tensor([[[0.0, 1.0]]]),
        count_logits=torch.tensor([[-5.0, 5.0, -5.0]]), queries=torch.zeros(1, 1, 4),
    )
    regions = head.regions(pred, memory, times, torch.tensor([2.0]), mask)
    assert regions.tokens.shape == (1, 1, 8, 4)
    torch.testing.assert_close(regions.tokens, torch.ones(1, 1, 8, 4))


def test_video_much_shorter_than_the_annotated_duration_is_an_error(tmp_path):
    """A truncated video (2 s of frames for a 10 s annotation) was read silently, where truncated
    audio raises: the detector's video-only time axis then ended at 2 s, so every event after it
    became a span target beyond the clip. Cut by max_frames on purpose, it is accepted."""
    from dense3d.data.converters import write_mp4
    from dense3d.data.datasets import DenseEventsDataset
    from dense3d.errors import VideoError

    write_mp4(tmp_path / "v.mp4", torch.rand(16, 3, 16, 16), fps=8)  # 2 s
    ann = lambda d: json.dumps({"v": {"duration": d, "timestamps": [[0.5, 1.0]], "sentences": ["A horn."]}})  # noqa: E731
    (tmp_path / "ev_val.json").write_text(ann(10.0))
    ds = lambda **kw: DenseEventsDataset(str(tmp_path / "ev_{split}.json"), str(tmp_path), split="val", sensors=["video"], **kw)  # noqa: E731
    with pytest.raises(VideoError, match=r"v.mp4: field 'frames': expected at least half of v.duration = 10 s of video .*ev_val.json.*"
                                         r"got 4 frames up to 2.000 s$"):
        ds(fps=2.0)[0]
    assert ds(fps=2.0, max_frames=4)[0].video.frames.shape[0] == 4
    (tmp_path / "ev_val.json").write_text(ann(3.5))
    assert ds(fps=2.0)[0].video.frames.shape[0] == 4


def test_event_targets_end_with_the_clip_audio():
    """The clip lasts as long as its audio (durations from audio_lengths); an annotated span
    running past it (real durations differ from the media by a second or more; dense events
    accept audio down to half of the annotation) gave normalised targets beyond 1, which the
    sigmoid spans cannot reach, and an event starting after it was a target outside the clip.
    Now such a span ends with the clip and such an event is left out: the loss equals that of
    the annotation cut at the clip's end."""
    from dense3d.models.encoders.camera.backbone import ResNetBackbone
    from dense3d.models.encoders.video.encoder import VideoEncoder
    from dense3d.models.fusion.temporal_fuser import TemporalFuser
    from dense3d.models.losses.event_loss import EventSetLoss
    from dense3d.models.proposals.events.detector import EventDetector
    from dense3d.models.proposals.events.event_head import EventHead
    from dense3d.models.proposals.events.matcher import HungarianEventMatcher
    from dense3d.structures import EventAnnotations, Events

    torch.manual_seed(0)
    audio = AudioEncoder(num_channels=2, cnn_channels=(8, 16), time_pool=4, out_channels=16, max_lag=4)
    head = EventHead(16, num_classes=2, num_queries=4, num_layers=1, num_heads=2, dropout=0.0, max_events=3, span_tokens=4, two_stage=True)
    detector = EventDetector(TemporalFuser(16, 0, d_model=16, num_layers=1, num_heads=2, dropout=0.0), head, audio_encoder=audio,
                             loss=EventSetLoss(HungarianEventMatcher(cost_azimuth=1.0))).eval()
    batch = _audio_batch([_noise(2, int(1.5 * SR), 0)])  # 1.5 s of audio, annotated as 2 s

    def loss(spans, labels):
        batch.samples[0].events = EventAnnotations(Events(torch.tensor(spans)), torch.tensor(labels), ("a", "b"),
                                                   azimuth=torch.arange(len(labels), dtype=torch.float32))
        with torch.no_grad():
            return detector.loss(detector(batch), batch)

    annotated = loss([[0.2, 0.6], [1.0, 2.0], [1.7, 2.0]], [0, 1, 0])
    in_clip = loss([[0.2, 0.6], [1.0, 1.5]], [0, 1])
    for name in ("span", "tiou", "count", "frame_class", "frame_span", "total"):
        torch.testing.assert_close(annotated[name], in_clip[name], msg=name)


def test_corrupt_mp3_is_not_reported_missing(tmp_path):
    """libsndfile answers undecodable MP3 data with 'File does not exist or is not a regular file
    (possibly a pipe?)': the one-line error said that of a file that exists."""
    import soundfile as sf

    from dense3d.data.readers import read_audio_file
    from dense3d.errors import AudioError

    good = tmp_path / "good.mp3"
    sf.write(str(good), 0.3 * _noise(2, SR, 0).T.numpy(), SR, format="MP3")
    wave, rate = read_audio_file(good)
    assert wave.shape[0] == 2 and rate == SR
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(good.read_bytes()[:300])  # a cut download
    with pytest.raises(AudioError, match=r"bad.mp3: field 'audio': expected a readable wav/flac/mp3 file, got data libsndfile "
                                         r"cannot decode \(300 bytes; libsndfile: ") as e:
        read_audio_file(bad)
    assert "Error opening" not in str(e.value) and "\n" not in str(e.value)


def test_audio_encoder_dtypes():
    """int16 PCM (scipy's wavfile, or numpy arrays built by hand) raised torch.stft's multi-line
    RuntimeError, float64 samples 'expected m1 and m2 to have the same dtype'; now integers are
    a one-line AudioError and float64 samples give the float32 features of the same clip."""
    from dense3d.errors import AudioError

    enc = _two_mic_encoder().eval()
    wave = _noise(2, SR, 5)
    batch = _audio_batch([wave])
    with torch.no_grad():
        ref = enc(batch).features
        batch.audio = wave[None].double()
        torch.testing.assert_close(enc(batch).features, ref, atol=1e-5, rtol=1e-4)
    batch.audio = (wave[None] * 32767).to(torch.int16)
    with pytest.raises(AudioError, match=r"Batch: field 'audio': expected float samples in \[-1, 1\].*got torch.int16$"):
        enc(batch)


def test_favdbench_config_spreads_its_32_frames_over_the_clip(tmp_path):
    """configs/data/favdbench.yaml read fps 8 with max_frames 32: the first 4 s of a clip, where
    FAVDBench extracts its 32 frames over the whole clip (ffmpeg fps = 32 / duration); a 10 s
    clip's video ended at 3.875 s while its audio and paragraph covered 10 s."""
    from dense3d.data.converters import write_mp4
    from dense3d.data.datasets import FAVDBenchDataset
    from dense3d.errors import ConfigError

    write_mp4(tmp_path / "c.mp4", torch.rand(80, 3, 16, 16), fps=8)  # 10 s
    (tmp_path / "favd_train.json").write_text(json.dumps({"c": {"summary": "A street.", "visual": [], "audio": []}}))
    ds = _dataset_from_config("favdbench", annotation_file=str(tmp_path / "favd_{split}.json"), media_dir=str(tmp_path),
                              audio_dir=None, sensors=["video"])
    times = ds[0].video.timestamps
    assert len(times) == 32 and float(times[0]) == 0.0 and float(times[-1]) >= 9.5
    assert float((times[1:] - times[:-1]).max()) <= 0.375 + 1e-6  # 0.3125 s apart, on the 8 fps frames
    first = FAVDBenchDataset(str(tmp_path / "favd_{split}.json"), str(tmp_path), sensors=["video"], fps=8, max_frames=32)
    assert float(first[0].video.timestamps[-1]) == pytest.approx(3.875)  # without spread_frames: the first 32
    slow = FAVDBenchDataset(str(tmp_path / "favd_{split}.json"), str(tmp_path), sensors=["video"], fps=2, max_frames=32, spread_frames=True)
    assert len(slow[0].video.timestamps) == 20  # fps caps the rate: 2 a second over 10 s
    with pytest.raises(ConfigError, match=r"FAVDBenchDataset: field 'spread_frames': expected true \(with max_frames\) or false"):
        FAVDBenchDataset(str(tmp_path / "favd_{split}.json"), str(tmp_path), max_frames=None, spread_frames=True)
