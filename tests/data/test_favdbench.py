"""FAVDBenchDataset on clips (mp4 + wav) and paragraph JSON written here with PyAV / soundfile."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dense3d.data.converters import write_mp4, write_wav
from dense3d.data.datasets import FAVDBenchDataset
from dense3d.errors import AnnotationError, AudioError, VideoError

SR = 16000


def _tone(seconds=2.0, channels=4, sr=SR, f=440.0):
    t = torch.arange(int(seconds * sr)) / sr
    return torch.stack([0.4 * torch.sin(2 * math.pi * f * (c + 1) * t) for c in range(channels)])  # (A, S)


def _clip(folder, cid, wav=True, mp4_audio=True, channels=4, sr=SR):
    frames = torch.linspace(0, 1, 16).view(16, 1, 1, 1).expand(16, 3, 32, 48).contiguous()  # brightening
    wave = _tone(channels=channels, sr=sr)
    write_mp4(folder / f"{cid}.mp4", frames, fps=8, waveform=wave if mp4_audio else None, sample_rate=sr)
    if wav:
        write_wav(folder / f"{cid}.wav", wave, sr)
    return wave


PARAGRAPHS = {
    "clip_b": {"summary": "A street at noon.", "visual": ["A red car passes.", "Trees sway."],
               "audio": ["An engine hums.", "A horn honks twice."], "mic_positions": [[0.1, 0.1, 0], [-0.1, 0.1, 0], [-0.1, -0.1, 0], [0.1, -0.1, 0]]},
    "clip_a": {"summary": "A quiet room.", "visual": [], "audio": ["A door slams."]},
}


def test_clips_and_paragraphs(tmp_path):
    wave = _clip(tmp_path, "clip_b")
    _clip(tmp_path, "clip_a", wav=False)  # audio from the mp4's AAC stream
    (tmp_path / "favd_train.json").write_text(json.dumps(PARAGRAPHS))
    ds = FAVDBenchDataset(str(tmp_path / "favd_{split}.json"), str(tmp_path), split="train", fps=4.0)
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a.sample_id == "clip_a" and b.sample_id == "clip_b"
    assert b.paragraph == "A street at noon. A red car passes. Trees sway. An engine hums. A horn honks twice."
    assert b.meta["audio_sentences"] == ["An engine hums.", "A horn honks twice."] and b.meta["paragraph_schema"] == "dense3d"
    assert b.audio.sample_rate == SR and b.audio.waveform.shape == (4, 2 * SR)
    assert torch.allclose(b.audio.waveform, wave, atol=1e-4)  # 16-bit PCM
    assert b.audio.mic_positions.shape == (4, 3)
    assert b.video.frames.shape == (8, 3, 32, 48)  # 16 frames at 8 fps kept at 4 fps
    assert torch.allclose(b.video.timestamps, torch.arange(8) * 0.25)
    assert b.video.frames[-1].mean() > b.video.frames[0].mean() + 0.5
    # decoded AAC: 4 channels at 16 kHz, at least the 2 s written (plus codec padding)
    assert a.audio.waveform.shape[0] == 4 and a.audio.waveform.shape[1] >= 2 * SR and a.audio.sample_rate == SR
    assert a.audio.source.endswith("clip_a.mp4") and a.meta["visual_sentences"] == []


def test_coco_layout(tmp_path):
    _clip(tmp_path, "v1")
    coco = {"images": [{"id": "v1"}], "annotations": [
        {"image_id": "v1", "caption": "A man plays a guitar. He wears a hat. The guitar sounds bright.", "id": 0}]}
    (tmp_path / "test.caption_coco_format.json").write_text(json.dumps(coco))
    s = FAVDBenchDataset(str(tmp_path / "{split}.caption_coco_format.json"), str(tmp_path), split="test", sensors=["video"], max_frames=3)[0]
    assert s.meta["paragraph_schema"] == "coco" and s.meta["summary"] == "A man plays a guitar."
    assert s.meta["audio_sentences"] is None and s.audio is None and s.video.frames.shape[0] == 3


# ---------------------------------------------------------------- bad input
def test_missing_field(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"c": {"summary": "s", "visual": []}}))
    with pytest.raises(AnnotationError, match=r"p.json: field 'c.audio': expected a present field"):
        len(FAVDBenchDataset(str(tmp_path / "p.json"), str(tmp_path)))


def test_unexpected_sample_rate(tmp_path):
    _clip(tmp_path, "c", mp4_audio=False, channels=1, sr=22050)
    (tmp_path / "p.json").write_text(json.dumps({"c": {"summary": "s", "visual": [], "audio": []}}))
    with pytest.raises(AudioError, match=r"c.wav: field 'sample_rate': expected 16000 Hz .*, got 22050 Hz"):
        FAVDBenchDataset(str(tmp_path / "p.json"), str(tmp_path), sensors=["audio"])[0]
    s = FAVDBenchDataset(str(tmp_path / "p.json"), str(tmp_path), sensors=["audio"], sample_rate=None)[0]
    assert s.audio.sample_rate == 22050


def test_missing_clip_and_bad_mics(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"gone": {"summary": "s", "visual": [], "audio": []}}))
    with pytest.raises(VideoError, match=r"gone.mp4: field 'video': expected an existing video file"):
        FAVDBenchDataset(str(tmp_path / "p.json"), str(tmp_path), sensors=["video"])[0]
    with pytest.raises(AudioError, match=r"gone.wav: field 'audio'"):
        FAVDBenchDataset(str(tmp_path / "p.json"), str(tmp_path), sensors=["audio"])[0]
    _clip(tmp_path, "c")
    (tmp_path / "p.json").write_text(json.dumps({"c": {"summary": "s", "visual": [], "audio": [], "mic_positions": [[0, 0, 0]]}}))
    with pytest.raises(AudioError, match=r"p.json: field 'c.mic_positions': expected 4 finite \[x, y, z\]"):
        FAVDBenchDataset(str(tmp_path / "p.json"), str(tmp_path), sensors=["audio"])[0]
