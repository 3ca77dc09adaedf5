"""DenseEventsDataset: ActivityNet-Captions-style JSON plus the audio extension fields."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dense3d.data.converters import write_wav
from dense3d.data.datasets import DenseEventsDataset
from dense3d.errors import AnnotationError, AudioError, ConfigError, EventError

CLASSES = ["engine", "horn", "siren"]
ANN = {
    "v_b": {"duration": 10.0, "timestamps": [[0.5, 2.0], [3.0, 12.0]], "sentences": ["A horn honks twice.", "A siren wails."],
            "labels": ["horn", "siren"], "azimuth": [0.5, -2.0], "source_box": [3, -1]},
    "v_a": {"duration": 82.7, "timestamps": [[0.8, 19.9]], "sentences": ["A man talks. "]},  # plain ActivityNet entry
}


def _write(tmp_path, ann=ANN, name="events_val.json"):
    (tmp_path / name).write_text(json.dumps(ann))
    return str(tmp_path / "events_{split}.json")


def test_annotations(tmp_path):
    ds = DenseEventsDataset(_write(tmp_path), split="val", class_names=CLASSES, sensors=())
    a, b = ds[0], ds[1]
    assert (a.sample_id, b.sample_id) == ("v_a", "v_b")
    assert a.events.captions == [["A man talks."]] and a.events.labels.tolist() == [-1] and a.events.azimuth is None
    ev = b.events
    assert torch.allclose(ev.events.tensor, torch.tensor([[0.5, 2.0], [3.0, 10.0]]))  # clipped to duration
    assert b.meta["clipped_spans"] == 1 and b.meta["duration"] == 10.0
    assert ev.labels.tolist() == [1, 2] and ev.class_names == tuple(CLASSES)
    assert torch.allclose(ev.azimuth, torch.tensor([0.5, -2.0])) and ev.source_box.tolist() == [3, -1]
    assert b.audio is None and b.video is None
    assert DenseEventsDataset(_write(tmp_path), split="val", sensors=()).class_names == ("horn", "siren")


def test_with_audio(tmp_path):
    t = torch.arange(160000) / 16000  # the entry's duration: 10 s
    write_wav(tmp_path / "v_b.wav", torch.stack([torch.sin(2 * math.pi * 300 * t)] * 2) * 0.3, 16000)
    ann = {"v_b": dict(ANN["v_b"], mic_positions=[[0, 0.1, 0], [0, -0.1, 0]])}
    s = DenseEventsDataset(_write(tmp_path, ann), media_dir=str(tmp_path), split="val", class_names=CLASSES, sensors=["audio"])[0]
    assert s.audio.waveform.shape == (2, 160000) and s.audio.mic_positions[1, 1] == pytest.approx(-0.1)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "entry,err,msg",
    [
        ({"duration": 5.0, "timestamps": [[0, 1]]}, AnnotationError, r"field 'v.sentences': expected a present field"),
        ({"duration": 5.0, "timestamps": [[0, 1]], "sentences": ["a"], "labels": ["dog"]}, AnnotationError,
         r"field 'v.labels\[0\]': expected a class among \['engine', 'horn', 'siren'\], got dog"),
        ({"duration": 5.0, "timestamps": [[6, 7]], "sentences": ["a"]}, EventError, r"field 'v.timestamps\[0\]': expected t0 <= duration 5.0"),
        ({"duration": 5.0, "timestamps": [[2, 1]], "sentences": ["a"]}, EventError, r"expected t1 >= t0"),
        ({"duration": 5.0, "timestamps": [[0, 1], [1, 2]], "sentences": ["a"]}, AnnotationError,
         r"field 'v.sentences': expected 2 sentences \(one per timestamp\), got 1"),
        ({"duration": 5.0, "timestamps": [[0, 1]], "sentences": ["a"], "azimuth": [0.1, 0.2]}, AnnotationError, r"field 'v.azimuth': expected 1 values"),
    ],
)
def test_bad_entries(tmp_path, entry, err, msg):
    ds = DenseEventsDataset(_write(tmp_path, {"v": entry}), split="val", class_names=CLASSES, sensors=())
    with pytest.raises(err, match=r"events_val.json.*" + msg):
        ds[0]


def test_media_dir_required(tmp_path):
    with pytest.raises(AnnotationError, match=r"DenseEventsDataset: field 'media_dir'"):
        DenseEventsDataset(_write(tmp_path), split="val", sensors=["audio"])


def test_audio_shorter_than_duration_is_an_error(tmp_path):
    ann = {"v_b": ANN["v_b"]}  # duration 10 s
    wav = tmp_path / "v_b.wav"
    for seconds, ok in ((9.6, True), (6.0, True), (4.9, False), (3000 / 16000, False)):  # half of 10 s is the bar
        n = int(seconds * 16000)
        write_wav(wav, torch.full((2, n), 0.1), 16000)
        ds = DenseEventsDataset(_write(tmp_path, ann), media_dir=str(tmp_path), split="val", class_names=CLASSES, sensors=["audio"])
        if ok:
            assert ds[0].audio.waveform.shape == (2, n)
            continue
        with pytest.raises(AudioError, match=rf"v_b.wav: field 'audio': expected at least half of v_b.duration = 10 s of audio .*events_val.json.*got {seconds:.3f} s") as e:
            ds[0]
        assert "\n" not in str(e.value)
    full = wav.read_bytes()
    wav.write_bytes(full[:44])  # a header and no frame
    ds = DenseEventsDataset(_write(tmp_path, ann), media_dir=str(tmp_path), split="val", class_names=CLASSES, sensors=["audio"])
    with pytest.raises(AudioError, match=r"v_b.wav: field 'audio': expected at least one audio sample"):
        ds[0]


@pytest.mark.parametrize("kw,fld", [({"fps": "fast"}, "fps"), ({"fps": -1}, "fps"), ({"max_frames": 0}, "max_frames"),
                                    ({"max_frames": -2}, "max_frames"), ({"max_frames": 2.5}, "max_frames")])
def test_bad_video_options(tmp_path, kw, fld):
    from dense3d.data.datasets import FAVDBenchDataset

    with pytest.raises(ConfigError, match=rf"DenseEventsDataset: field '{fld}'"):
        DenseEventsDataset(_write(tmp_path), media_dir=str(tmp_path), split="val", **kw)
    with pytest.raises(ConfigError, match=rf"FAVDBenchDataset: field '{fld}'"):
        FAVDBenchDataset(_write(tmp_path), media_dir=str(tmp_path), split="val", **kw)
    ds = DenseEventsDataset(_write(tmp_path), media_dir=str(tmp_path), split="val", fps=0, max_frames=None)
    assert (ds.fps, ds.max_frames) == (None, None)  # 0 / None: every frame


@pytest.mark.parametrize(
    "labels,msg",
    [(5, r"field 'v.labels': expected 1 class names, got 5"), ("horn", r"field 'v.labels': expected 1 class names, got horn")],
)
def test_labels_not_a_list_without_class_names(tmp_path, labels, msg):
    """class_names inferred from the file: a non-list ``labels`` is the entry's one-line error
    (5 was a TypeError traceback; "horn" made the classes 'h', 'n', 'o', 'r')."""
    entry = {"duration": 5.0, "timestamps": [[0, 1]], "sentences": ["a"], "labels": labels}
    ds = DenseEventsDataset(_write(tmp_path, {"v": entry, "w": dict(entry, labels=["siren"])}), split="val", sensors=())
    assert ds.class_names == ("siren",)
    with pytest.raises(AnnotationError, match=r"events_val.json: " + msg):
        ds[0]


def test_fractional_source_box_is_refused(tmp_path):
    entry = {"duration": 5.0, "timestamps": [[0, 1]], "sentences": ["a"], "source_box": [0.5]}
    ds = DenseEventsDataset(_write(tmp_path, {"v": entry}), split="val", class_names=CLASSES, sensors=())
    with pytest.raises(AnnotationError, match=r"field 'v.source_box': expected 1 values \(box indices >= -1\), got \[0.5\]"):
        ds[0]
