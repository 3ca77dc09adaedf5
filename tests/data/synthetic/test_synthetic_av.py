"""Audio-visual synthetic clips: event energy inside the spans, inter-microphone delays
that match the source direction, captions naming the source, and the FAVDBench /
dense-events loaders reading them."""
from __future__ import annotations

import json
import math

import numpy as np
import soundfile as sf

from dense3d.data.datasets import DenseEventsDataset, FAVDBenchDataset
from dense3d.data.synthetic.av import SPEED_OF_SOUND
from dense3d.data.synthetic.grammar import noun_phrase

SPLITS = ("train", "val", "test")


def _events(root):
    out = {}
    for s in SPLITS:
        out.update(json.loads((root / "av" / f"dense_events_{s}.json").read_text()))
    return out


def _frame_energy(x: np.ndarray, sr: int, hop: float = 0.01) -> np.ndarray:
    n = int(hop * sr)
    m = len(x) // n
    return (x[: m * n].reshape(m, n) ** 2).mean(1)  # (frames,)


def test_event_energy_peaks_inside_its_span(synth_root):
    checked = 0
    for vid, ann in _events(synth_root).items():
        audio, sr = sf.read(synth_root / "av" / "clips" / f"{vid}.wav", dtype="float64")
        assert audio.shape == (160000, 4) and sr == 16000
        e = _frame_energy(audio.mean(1), sr)
        t = (np.arange(len(e)) + 0.5) * 0.01
        spans = np.asarray(ann["timestamps"])
        in_any = np.zeros(len(e), bool)
        for t0, t1 in spans:
            in_any |= (t >= t0 - 0.03) & (t <= t1 + 0.03)
        floor = np.median(e[~in_any])
        for t0, t1 in spans:
            inside = (t >= t0) & (t <= t1)
            assert e[inside].max() > 100 * floor
            checked += 1
        # everything loud happens inside some span
        assert (e[~in_any] < 10 * floor).mean() > 0.995
    assert checked >= 8


def _gcc_phat(a: np.ndarray, b: np.ndarray, max_lag: float, up: int = 32) -> float:
    """Delay of b relative to a (samples, > 0: b arrives later), GCC-PHAT with a
    ``up``-times interpolated correlation."""
    n = 1 << (len(a) + len(b)).bit_length()
    cross = np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n))
    cross /= np.abs(cross) + 1e-12
    cc = np.fft.irfft(cross, n * up)
    lags = np.concatenate([np.arange(0, n * up // 2), np.arange(-n * up // 2, 0)]) / up
    keep = np.abs(lags) <= max_lag
    return float(lags[keep][np.argmax(cc[keep])])


def test_microphone_delays_match_the_source_direction(synth_root):
    errs = []
    for vid, ann in _events(synth_root).items():
        audio, sr = sf.read(synth_root / "av" / "clips" / f"{vid}.wav", dtype="float64")
        mics = np.asarray(ann["mic_positions"])
        for (t0, t1), az in zip(ann["timestamps"], ann["azimuth"]):
            seg = audio[int(t0 * sr) : int(t1 * sr)]
            u = np.array([math.cos(az), math.sin(az), 0.0])  # towards the source
            for i, j in ((0, 2), (1, 3), (0, 1)):
                # far field: mic j hears it later by (m_i - m_j) . u / c
                expected = float((mics[i] - mics[j]) @ u) / SPEED_OF_SOUND * sr
                got = _gcc_phat(seg[:, i], seg[:, j], max_lag=np.linalg.norm(mics[i] - mics[j]) / SPEED_OF_SOUND * sr + 1)
                errs.append(abs(got - expected))
                assert abs(got - expected) < 0.6, (vid, t0, i, j, got, expected)
            # the azimuth read back from the two orthogonal pairs
            d02 = _gcc_phat(seg[:, 0], seg[:, 2], 15)
            d13 = _gcc_phat(seg[:, 1], seg[:, 3], 15)
            est = math.atan2(d13, d02)
            assert abs((est - az + math.pi) % (2 * math.pi) - math.pi) < math.radians(12)
    assert len(errs) >= 24 and float(np.mean(errs)) < 0.25


def test_event_captions_name_their_source(synth_root):
    recs = json.loads((synth_root / "av" / "synthetic_annotations.json").read_text())["scenes"]
    n = m = 0
    for rec in recs:
        for e in rec["events"]:
            if e["source"] >= 0:
                o = rec["objects"][e["source"]]
                if o["visible"]:  # seen by the camera: named by colour and class
                    assert f"the {noun_phrase(o['colour'], o['label'])}" in e["caption"]
                    n += 1
                else:  # heard only: its colour cannot be known
                    assert o["colour"] not in e["caption"] and o["label"] in e["caption"]
                assert noun_phrase(o["colour"], o["label"]) not in e["context_free_caption"]
                m += 1
            else:
                assert "somewhere" in e["caption"]
    assert m >= 6 and n >= 3


def test_favdbench_and_dense_events_loaders_read_synthetic_av(synth_root):
    root = synth_root / "av"
    favd = FAVDBenchDataset(str(root / "favdbench_{split}.json"), str(root / "clips"), split="train")
    assert len(favd) == 2
    s = favd[0]
    assert tuple(s.video.frames.shape) == (80, 3, 128, 224)
    assert tuple(s.audio.waveform.shape) == (4, 160000) and s.audio.sample_rate == 16000
    para = json.loads((root / "favdbench_train.json").read_text())[s.sample_id]
    assert s.paragraph.lower().startswith(para["summary"][:20].lower())
    assert s.meta["paragraph_schema"] == "dense3d"
    ev = DenseEventsDataset(str(root / "dense_events_{split}.json"), str(root / "clips"), split="val")
    assert len(ev) == 1
    e = ev[0]
    ann = json.loads((root / "dense_events_val.json").read_text())[e.sample_id]
    assert np.allclose(e.events.events.tensor.numpy(), np.asarray(ann["timestamps"]), atol=1e-4)
    assert [c[0] for c in e.events.captions] == ann["sentences"]
    assert e.events.source_box.tolist() == ann["source_box"]
