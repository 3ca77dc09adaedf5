"""Audio-visual timing and channels: where video frames read below their native rate sit in time,
and FAVDBench's mono / stereo soundtracks through its config, collate and the audio encoder."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dense3d.data.collate import collate
from dense3d.data.datasets.media import load_clip
from dense3d.data.readers import read_video_frames
from dense3d.data.synthetic.av import _write_mp4
from dense3d.errors import AudioError, VideoError
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.video.encoder import VideoEncoder
from dense3d.structures import Sample, VideoFrames

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NATIVE_FPS = 8
FLASH = 4  # the one frame (pts 0.5 s) that shows the event: white, every other frame black


def _flash_clip(folder: Path) -> Path:
    """A 2 s, 8 fps clip (16 frames) written as the synthetic generator writes its clips (each
    frame the picture of the instant f / 8), black except frame FLASH."""
    frames = np.zeros((2 * NATIVE_FPS, 32, 32, 3), np.uint8)
    frames[FLASH] = 255
    _write_mp4(folder / "flash.mp4", frames, NATIVE_FPS)
    return folder / "flash.mp4"


def _video_encoder() -> VideoEncoder:
    torch.manual_seed(0)
    return VideoEncoder(ResNetBackbone(18, out_indices=(1,)), out_channels=16).eval()


@pytest.mark.parametrize("fps", [None, 8.0, 2.0])
def test_a_frame_read_below_its_native_rate_sits_at_its_own_centre(tmp_path, fps):
    """perception_events reads the 8 fps clips at 2 fps: the encoder put each kept frame at its pts
    plus half the gap between *kept* frames (0.25 s), so the frame of 0.5-0.625 s sat at 0.75 s,
    0.19 s after the audio of the same instant; read at 8 fps it sat at 0.5625 s. Frame f shows
    [f / 8, (f + 1) / 8): its features belong at f / 8 + 1 / 16 at any read rate."""
    _flash_clip(tmp_path)
    _, video = load_clip(tmp_path, None, "flash", ("video",), None, fps, None)
    assert video.frame_duration == pytest.approx(1 / NATIVE_FPS)
    kept = video.timestamps.tolist()
    assert kept == pytest.approx([k / NATIVE_FPS for k in range(0, 16, 8 // int(fps or 8))])
    batch = collate([Sample("flash", video=video)])
    enc = _video_encoder()
    centre = FLASH / NATIVE_FPS + 0.5 / NATIVE_FPS  # 0.5625 s
    with torch.no_grad():
        at_frames = enc(batch)
        i = kept.index(FLASH / NATIVE_FPS)
        assert float(at_frames.times[0, i]) == pytest.approx(centre)
        # resampled onto an audio-like grid (every 10 ms): the flash's features peak at its centre
        grid = torch.arange(0.0, 2.0, 0.01)[None]
        on_grid = enc(batch, grid, torch.ones_like(grid, dtype=torch.bool))
    dark = at_frames.features[0, 0]  # a black frame's features
    away = (on_grid.features[0] - dark).norm(dim=-1)  # (T',) how far each time is from "black"
    assert float(grid[0, int(away.argmax())]) == pytest.approx(centre, abs=0.006)


def test_read_video_frames_gives_the_native_frame_duration(tmp_path):
    path = _flash_clip(tmp_path)
    for fps in (None, 8.0, 2.0, 3.0):
        frames, times, duration = read_video_frames(path, fps=fps, return_frame_duration=True)
        assert duration == pytest.approx(0.125)
    frames, times = read_video_frames(path, fps=2.0)  # the two-value form callers use stays
    assert len(times) == 4


def test_video_frames_without_a_frame_duration_fall_back_to_the_kept_gap_with_a_warning():
    """VideoFrames built by user code (no frame_duration): the kept frames' half gap, documented,
    with one warning; a mixed batch centres each clip its own way."""
    enc = _video_encoder()
    frames = torch.zeros(4, 3, 32, 32)
    starts = torch.arange(4) * 0.5
    user = Sample("user", video=VideoFrames(frames, starts))
    read = Sample("read", video=VideoFrames(frames, starts, frame_duration=0.125))
    batch = collate([user, read])
    assert torch.isnan(batch.video_frame_duration[0]) and float(batch.video_frame_duration[1]) == 0.125
    with pytest.warns(UserWarning, match="without VideoFrames.frame_duration"), torch.no_grad():
        out = enc(batch)
    assert out.times[0].tolist() == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert out.times[1].tolist() == pytest.approx([0.0625, 0.5625, 1.0625, 1.5625])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per encoder
        with torch.no_grad():
            enc(batch)
            enc(collate([read]))


@pytest.mark.parametrize("bad", [0.0, -0.125, float("nan"), "1/8", True])
def test_a_bad_frame_duration_is_one_line(bad):
    with pytest.raises(VideoError, match=r"^/data/c\.mp4: field 'frame_duration': expected seconds > 0 .*, got ") as e:
        VideoFrames(torch.zeros(2, 3, 8, 8), torch.arange(2.0), source="/data/c.mp4", frame_duration=bad)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- FAVDBench audio
def _favd_folder(tmp_path: Path) -> Path:
    """A stereo 44.1 kHz mp3 and a mono 22.05 kHz wav, as FAVDBench's audios/ may hold, with a
    dense3d-layout paragraph file."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((2 * 44100, 2))).astype(np.float32)
    stereo[:, 1] *= 0.5  # left and right differ
    sf.write(tmp_path / "st.mp3", stereo, 44100, format="MP3")
    sf.write(tmp_path / "mo.wav", (0.1 * rng.standard_normal((2 * 22050, 1))).astype(np.float32), 22050)
    para = {"summary": "A street.", "visual": ["A car passes."], "audio": ["An engine hums."]}
    (tmp_path / "favd_train.json").write_text(json.dumps({"st": para, "mo": para}))
    return tmp_path


def _favd_dataset(folder: Path):
    """configs/data/favdbench.yaml (with data=favdbench sensors=audio_video, composed by hydra)
    on ``folder``, audio only (no videos here)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=["data=favdbench", "sensors=audio_video", f"data.annotation_file='{folder}/favd_{{split}}.json'",
                                          f"data.media_dir={folder}", f"data.audio_dir={folder}", "data.sensors=[audio]"])
    return instantiate(cfg.data)


def test_favdbench_stereo_and_mono_audio_reach_the_mono_audio_encoder(tmp_path):
    """FAVDBench ships mono / stereo mp3 soundtracks, the AV configs a 4-microphone array: no
    config read them (the 4-mic encoder refused them: 'Batch: field audio: expected a (B, 4, S)
    waveform, got (1, 2, S)'), and an encoder set to 2 channels would have computed GCC-PHAT
    direction cues from a stereo mix. favdbench.yaml now downmixes to mono (AudioChannels) for
    configs/model/audio/mono.yaml, which has no direction branch."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ds = _favd_dataset(_favd_folder(tmp_path))
    samples = [ds[i] for i in range(len(ds))]
    assert sorted(s.sample_id for s in samples) == ["mo", "st"]
    for s in samples:
        assert s.audio.waveform.shape[0] == 1 and s.audio.sample_rate == 16000 and s.audio.mic_positions is None
    st = next(s for s in samples if s.sample_id == "st")
    import soundfile as sf

    raw, _ = sf.read(tmp_path / "st.mp3", dtype="float32", always_2d=True)  # (S, 2)
    assert st.audio.waveform.shape[1] == pytest.approx(raw.shape[0] * 16000 / 44100, abs=2)  # mean of L and R, resampled
    enc = instantiate(OmegaConf.load(CONFIGS / "model" / "audio" / "mono.yaml")).eval()
    assert enc.num_channels == 1 and enc.gcc_proj is None and enc.directions == 0
    with torch.no_grad():
        out = enc(collate(samples))
    assert out.features.shape[0] == 2 and out.directions is None and bool(torch.isfinite(out.features).all())


def test_audio_channels_mismatch_is_one_line_naming_the_file(tmp_path):
    """A downmix to mono is the only conversion: a stereo file for a 4-microphone encoder (or a
    mono one for a 2-channel encoder) is refused naming the file, not made up."""
    from dense3d.data.datasets import FAVDBenchDataset
    from dense3d.data.transforms import AudioChannels, Compose
    from dense3d.errors import ConfigError

    folder = _favd_folder(tmp_path)
    ds = FAVDBenchDataset(str(folder / "favd_{split}.json"), str(folder), audio_dir=str(folder), sensors=["audio"], sample_rate=None,
                          transforms=Compose({"channels": AudioChannels(4)}))
    msgs = []
    for k in range(len(ds)):
        with pytest.raises(AudioError) as e:
            ds[k]
        msgs.append(str(e.value))
    assert any(m.startswith(str(folder / "st.mp3")) and "field 'audio channels': expected 4 channels" in m and m.endswith("got 2 channels")
               for m in msgs)
    assert any(m.startswith(str(folder / "mo.wav")) and m.endswith("got 1 channel") for m in msgs)
    assert all("\n" not in m for m in msgs)
    first = AudioChannels(1, mode="first")
    s = FAVDBenchDataset(str(folder / "favd_{split}.json"), str(folder), audio_dir=str(folder), sensors=["audio"], sample_rate=None)
    st = next(s[k] for k in range(len(s)) if s[k].sample_id == "st")
    assert torch.equal(first(st).audio.waveform, st.audio.waveform[:1])
    with pytest.raises(ConfigError, match="AudioChannels: field 'mode'"):
        AudioChannels(1, mode="left")
    with pytest.raises(ConfigError, match="AudioChannels: field 'num_channels'"):
        AudioChannels(0)


def test_synthetic_favd_keeps_its_four_microphones():
    """synthetic_favd.yaml inherits favdbench.yaml; its clips are the 4-microphone array."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=["data=synthetic_favd", "sensors=audio_video"])
    pipeline = instantiate(cfg.data.transforms)
    assert "channels" not in pipeline.transforms and "resample" in pipeline.transforms


def test_an_audio_encoder_of_other_channels_names_the_file():
    """A stereo soundtrack read without the downmix, for the 4-microphone encoder: the one-line
    error named 'Batch', not the file, and not the way out (the mono encoder)."""
    from dense3d.models.encoders.audio.encoder import AudioEncoder
    from dense3d.structures import AudioClip

    path = str(Path("clips") / "st.mp3")
    clip = AudioClip(torch.zeros(2, 16000), 16000, source=path)
    enc = AudioEncoder(num_channels=4, sample_rate=16000, cnn_channels=(8, 16), time_pool=4, out_channels=16, max_lag=8)
    with pytest.raises(AudioError) as e:
        enc(collate([Sample("st", audio=clip)]))
    msg = str(e.value)
    assert msg.startswith(path) and "audio channels" in msg and "mono.yaml" in msg and msg.endswith("got 2") and "\n" not in msg
