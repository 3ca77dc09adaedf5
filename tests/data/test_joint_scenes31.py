"""Joint scenes end to end: `dense3d convert synth --kind joint` (outdoor scenes + a 4-mic recording
whose events come from the scene's boxes), `JointScenesDataset` (the TOD3Cap and dense-events
loaders joined by sample token), and experiment=captioning_joint (box + event detector, one shared
BiCA) trained and run with `dense3d predict`."""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from dense3d.cli import main
from dense3d.data import collate
from dense3d.data.datasets import DenseEventsDataset, JointScenesDataset, TOD3CapDataset
from dense3d.data.synthetic import DEFAULT_SCENES, SynthConfig, dataset_stats, generate
from dense3d.data.synthetic.av import ARRAY_CENTRE, MIC_POSITIONS, SPEED_OF_SOUND
from dense3d.data.synthetic.calib import LIDAR2EGO
from dense3d.data.synthetic.common import make_token
from dense3d.data.synthetic.grammar import ego_where, noun_phrase
from dense3d.data.synthetic.joint import event_emitters
from dense3d.data.transforms import ObjectRangeFilter
from dense3d.errors import AnnotationError, ConfigError

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def joint_root(tmp_path_factory):
    """4 joint scenes of seed 0 (train 2, val 1, test 1) under ``root/joint``: ``paths.synthetic_dir=root``."""
    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(kind="joint", scenes=4, seed=0), root / "joint")
    return root


def _read(root):
    folder = root / "joint"
    infos, caps, events = {}, {}, {}
    for split in SPLITS:
        with open(folder / f"nuscenes_infos_{split}.pkl", "rb") as f:
            infos.update({info["token"]: info for info in pickle.load(f)["data_list"]})
        caps.update(json.loads((folder / f"tod3cap_captions_{split}.json").read_text()))
        events.update(json.loads((folder / f"dense_events_{split}.json").read_text()))
    ann = json.loads((folder / "synthetic_annotations.json").read_text())
    return infos, caps, events, {r["scene_id"]: r for r in ann["scenes"]}


def _ego_azimuth(box_lidar) -> float:
    """Azimuth of a LiDAR-frame box centre from the microphone array, in the ego frame."""
    centre = LIDAR2EGO[:3, :3] @ np.asarray(box_lidar[:3]) + LIDAR2EGO[:3, 3]  # (3,) ego frame
    return math.atan2(centre[1] - ARRAY_CENTRE[1], centre[0] - ARRAY_CENTRE[0])


def _angle(a: float, b: float) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def _srp_phat_azimuth(x: np.ndarray, sr: int) -> float:
    """(A, S) recording -> the azimuth (radians, ego frame) of the steered response power's peak
    (PHAT-weighted pair cross-spectra, far field, 1 degree grid, 300 Hz - 6 kHz)."""
    n = 1 << (2 * x.shape[1] - 1).bit_length()
    spec = np.fft.rfft(x, n)  # (A, F)
    freq = np.fft.rfftfreq(n, 1.0 / sr)
    band = (freq > 300) & (freq < 6000)
    spec, omega = spec[:, band], 2 * np.pi * freq[band]
    theta = np.deg2rad(np.arange(360.0))
    u = np.stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)], 1)  # (N, 3)
    delay = -(MIC_POSITIONS - MIC_POSITIONS.mean(0)) @ u.T / SPEED_OF_SOUND  # (A, N) arrival times
    power = np.zeros(len(theta))
    for i in range(len(MIC_POSITIONS)):
        for j in range(i + 1, len(MIC_POSITIONS)):
            cross = spec[i] * np.conj(spec[j])
            cross /= np.abs(cross) + 1e-12
            power += np.real(np.exp(1j * omega[None, :] * (delay[i] - delay[j])[:, None]) @ cross)
    return float(theta[int(power.argmax())])


# ----------------------------------------------------------------------------- the generator
def test_each_event_comes_from_a_box_of_its_scene_and_is_captioned_by_its_facts(joint_root):
    infos, caps, events, records = _read(joint_root)
    assert set(events) == set(infos) == set(records) and len(infos) == 4  # one recording per scene, keyed by its token
    boxed = offscreen = 0
    for token, e in events.items():
        instances, objects = infos[token]["instances"], records[token]["objects"]
        n = len(e["timestamps"])
        assert n >= 2 and all(len(e[k]) == n for k in ("sentences", "labels", "azimuth", "source_box", "source_token"))
        for i in range(n):
            k, sentence = e["source_box"][i], e["sentences"][i]
            if k < 0:
                offscreen += 1
                assert e["source_token"][i] == "" and "from somewhere" in sentence
                continue
            boxed += 1
            inst, obj = instances[k], objects[k]
            assert e["source_token"][i] == inst["ann_token"] == obj["ann_token"]
            # the box can make the sound (a horn from a car, speech from a pedestrian, ...)
            assert k in event_emitters(e["labels"][i], [o["label"] for o in objects],
                                       [float(np.hypot(*x["velocity"])) for x in instances])
            # the direction of arrival is the box's azimuth from the array
            assert _angle(e["azimuth"][i], _ego_azimuth(inst["bbox_3d"])) < 1e-6
            # the caption names the source by the box caption's facts: colour, class, direction
            assert noun_phrase(obj["colour"], obj["label"]) in sentence, sentence
            side = {"front": "ahead", "back": "behind"}.get(obj["direction"], f"on the {obj['direction']}")
            assert side in sentence, sentence
            box_caption = caps[inst["ann_token"]]["final_caption"]
            assert obj["colour"] in box_caption and ego_where(obj["direction"]) in box_caption, box_caption
        for i, ev in enumerate(records[token]["events"]):  # the annotation record agrees with the events file
            assert (ev["source"], ev["source_token"], ev["caption"]) == (e["source_box"][i], e["source_token"][i], e["sentences"][i])
    assert boxed >= 8 and offscreen >= 1, (boxed, offscreen)
    stats = dataset_stats(joint_root / "joint")
    assert stats["kind"] == "joint" and stats["events"] == boxed + offscreen and stats["objects"] > 0
    oracle = json.loads((joint_root / "joint" / "oracles" / "val" / "gt_events.json").read_text())["results"]
    assert set(oracle) == {t for t in infos if records[t]["split"] == "val"}
    assert (joint_root / "joint" / "oracles" / "val" / "gt.json").is_file()


def test_the_recording_carries_each_event_from_its_source_direction(joint_root):
    """The sound itself arrives from the annotated azimuth (SRP-PHAT on the four microphones)."""
    _, _, events, _ = _read(joint_root)
    checked = 0
    for token, e in events.items():
        wav, sr = sf.read(joint_root / "joint" / "audio" / f"{token}.wav", always_2d=True)  # (S, 4)
        assert wav.shape == (int(e["duration"] * 16000), 4) and sr == 16000
        assert np.allclose(e["mic_positions"], MIC_POSITIONS)
        for (t0, t1), azimuth in zip(e["timestamps"], e["azimuth"]):
            segment = wav[int(t0 * sr) : int(min(t1, t0 + 0.5) * sr)].T  # (4, S): the event's first half second
            assert math.degrees(_angle(_srp_phat_azimuth(segment, sr), azimuth)) < 3.0
            checked += 1
    assert checked >= 9


def test_joint_scenes_are_their_own_and_the_demo_set_has_none(tmp_path):
    """The joint kind seeds its scenes and tokens by its own name (an outdoor set of the same seed
    is another set), and `dense3d demo`'s default set does not generate it."""
    generate(SynthConfig(kind="joint", scenes=1, seed=3, lidar_azimuth_steps=64, image_size=(32, 18)), tmp_path / "j")
    generate(SynthConfig(kind="outdoor", scenes=1, seed=3, lidar_azimuth_steps=64, image_size=(32, 18)), tmp_path / "o")
    joint = json.loads((tmp_path / "j" / "meta.json").read_text())["splits"]["train"]
    outdoor = json.loads((tmp_path / "o" / "meta.json").read_text())["splits"]["train"]
    assert joint == [make_token("joint", 3, 0)] and outdoor == [make_token("outdoor", 3, 0)]
    assert not (tmp_path / "o" / "audio").exists() and not (tmp_path / "o" / "dense_events_train.json").exists()
    assert "joint" not in DEFAULT_SCENES


def test_convert_synth_writes_the_joint_kind(tmp_path, capsys):
    out = tmp_path / "joint"
    assert main(["convert", "synth", "--kind", "joint", "--scenes", "1", "--out", str(out)]) == 0
    assert "1 joint scenes" in capsys.readouterr().out
    token = json.loads((out / "meta.json").read_text())["splits"]["train"][0]
    assert (out / "audio" / f"{token}.wav").is_file() and token in json.loads((out / "dense_events_train.json").read_text())


# ----------------------------------------------------------------------------- the data set
def _joint_dataset(root, split="train", transforms=None, events_file=None):
    folder = root / "joint"
    scenes = TOD3CapDataset(info_file=str(folder / "nuscenes_infos_{split}.pkl"), data_root=str(folder), split=split,
                            caption_file=str(folder / "tod3cap_captions_{split}.json"), caption_source="final_caption",
                            sweeps=0, data_prefix=None, sensors=("lidar", "camera"), transforms=transforms)
    recordings = DenseEventsDataset(annotation_file=str(events_file or folder / "dense_events_{split}.json"),
                                    media_dir=str(folder / "audio"), split=split, sensors=("audio",),
                                    class_names=("horn", "engine", "siren", "bell", "speech", "footsteps", "door_slam"))
    return JointScenesDataset(scenes, recordings)


def test_a_joint_sample_has_both_halves_and_events_point_at_their_boxes(joint_root):
    infos, _, events, _ = _read(joint_root)
    data = _joint_dataset(joint_root)
    assert len(data) == 2
    samples = [data[0], data[1]]
    for s in samples:
        assert s.sensors == ("points", "cameras", "audio") and s.audio.waveform.shape == (4, 160000)
        e = events[s.sample_id]
        assert s.events.source_box.tolist() == e["source_box"]  # no box dropped: the file's indices
        assert [s.boxes.object_ids[k] if k >= 0 else "" for k in s.events.source_box.tolist()] == e["source_token"]
        assert torch.allclose(s.events.azimuth, torch.tensor(e["azimuth"], dtype=torch.float32))
        assert s.meta["duration"] == 10.0 and "lidar2ego" in s.meta
    batch = collate(samples)
    assert batch.points is not None and batch.images.shape[:2] == (2, 6) and batch.audio.shape == (2, 4, 160000)


def test_source_boxes_follow_the_boxes_a_scene_filter_keeps(joint_root):
    """Boxes behind the ego car filtered out (LiDAR y < 0): their events point at no box, the
    others at the same box (by id) at its new index."""
    _, _, events, _ = _read(joint_root)
    data = _joint_dataset(joint_root, transforms=ObjectRangeFilter([-60.0, 0.0, -5.0, 60.0, 60.0, 5.0]))
    full = _joint_dataset(joint_root)
    dropped = moved = 0
    for i in range(len(data)):
        s, f = data[i], full[i]
        for k, token in zip(s.events.source_box.tolist(), events[s.sample_id]["source_token"]):
            if token and token in s.boxes.object_ids:
                assert s.boxes.object_ids[k] == token
                moved += int(k != f.boxes.object_ids.index(token))
            else:
                assert k == -1
                dropped += int(bool(token))
    assert dropped >= 1 and moved >= 1, (dropped, moved)


def test_a_scene_without_its_recording_or_with_bad_source_ids_is_one_line(joint_root, tmp_path):
    good = json.loads((joint_root / "joint" / "dense_events_train.json").read_text())
    first, second = sorted(good)[:2]
    missing = {k: v for k, v in good.items() if k != first}
    path = tmp_path / "events_train.json"
    path.write_text(json.dumps(missing))
    data = _joint_dataset(joint_root, events_file=tmp_path / "events_{split}.json")
    which = next(i for i in range(len(data)) if data.scenes.index[i][1]["token"] == first)
    with pytest.raises(AnnotationError) as err:
        data[which]
    assert str(path) in str(err.value) and first in str(err.value) and "\n" not in str(err.value)
    bad = dict(good)
    bad[second] = dict(good[second], source_token=good[second]["source_token"][:-1])
    path.write_text(json.dumps(bad))
    data = _joint_dataset(joint_root, events_file=tmp_path / "events_{split}.json")
    which = next(i for i in range(len(data)) if data.scenes.index[i][1]["token"] == second)
    with pytest.raises(AnnotationError, match=f"{second}.source_token"):
        data[which]
    with pytest.raises(ConfigError, match="recordings"):
        JointScenesDataset(data.scenes, data.scenes)


# ----------------------------------------------------------------------------- the model
TINY = ["model/captioner=tiny", "model.captioner.bica.region_dim=64", "model.captioner.bica.context_dim=64",
        "model.captioner.adapter.num_layers=2"]


@pytest.mark.slow
def test_captioning_joint_trains_and_captions_the_boxes_and_events_of_a_scene(joint_root, tmp_path):
    common = ["experiment=captioning_joint", f"paths.synthetic_dir={joint_root}", *TINY]
    assert main(["train", *common, "debug=fast_dev_run", f"paths.output_dir={tmp_path / 'debug'}"]) == 0
    run = tmp_path / "run"
    assert main(["train", *common, f"paths.output_dir={run}", "logger=csv", "trainer.max_steps=1"]) == 0
    pred = tmp_path / "pred.json"
    assert main(["predict", "--checkpoint", str(run), "--split", "val", "--regions", "gt", "--out", str(pred)]) == 0
    out = json.loads(pred.read_text())
    _, _, events, records = _read(joint_root)
    (scene,) = [t for t, r in records.items() if r["split"] == "val"]
    boxes, spans = out["boxes"][scene], out["events"]["results"][scene]
    # one caption per ground-truth box and per ground-truth event of the scene
    assert len(boxes) == len(records[scene]["objects"]) and len(spans) == len(events[scene]["timestamps"])
    assert all(isinstance(b["caption"], str) for b in boxes) and all(isinstance(e["sentence"], str) for e in spans)
    got = sorted(t for e in spans for t in e["timestamp"])
    assert got == pytest.approx(sorted(t for span in events[scene]["timestamps"] for t in span), abs=1e-4)

    # in the trained model, an event's visual tokens depend on the boxes: one BiCA decodes both kinds
    import dense3d.api as api

    loaded = api.load(run, regions="gt")
    model = loaded.model
    assert model.box_detector is not None and model.event_detector is not None and model.captioner.bica is not None
    batch = collate([loaded.dataset("val")[0]])
    kinds, contexts = model.region_inputs(batch, "gt")
    assert [k.kind for k in kinds] == ["box", "event"]
    with torch.no_grad():
        tokens = model.captioner.encode(kinds, contexts)
        moved = dataclasses.replace(kinds[0], features=kinds[0].features.flip(1))  # the same boxes, features swapped around
        swapped = model.captioner.encode([moved, kinds[1]], contexts)
        alone = model.captioner.encode([kinds[1]], [contexts[1]])
    assert tokens[1].shape[:2] == (1, len(events[scene]["timestamps"]))
    assert not torch.allclose(tokens[1], swapped[1], atol=1e-5)
    assert not torch.allclose(tokens[1], alone[0], atol=1e-5)
    shutil.rmtree(run)
