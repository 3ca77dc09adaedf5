"""tools/merge_synth_sets.py: one split of several synthetic sets as one (outdoor: linked; av: renamed, linked)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dense3d.data.datasets.tod3cap import TOD3CapDataset
from dense3d.data.synthetic import SynthConfig, generate
from dense3d.errors import AnnotationError

_spec = importlib.util.spec_from_file_location("merge_synth_sets", Path(__file__).parents[2] / "tools" / "merge_synth_sets.py")
merge_synth_sets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(merge_synth_sets)


def test_merge_outdoor_concatenates_samples_captions_and_links_sensor_files(tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    generate(SynthConfig(kind="outdoor", scenes=4, seed=0), a)  # 2 train, 1 val, 1 test
    generate(SynthConfig(kind="outdoor", scenes=2, seed=1, split=(1.0, 0.0, 0.0)), b)  # 2 train
    assert merge_synth_sets.main(["--kind", "outdoor", str(out), str(a), str(b)]) == 0

    merged = TOD3CapDataset(str(out / "nuscenes_infos_{split}.pkl"), split="train", caption_file=str(out / "tod3cap_captions_{split}.json"))
    parts = [TOD3CapDataset(str(r / "nuscenes_infos_{split}.pkl"), split="train", caption_file=str(r / "tod3cap_captions_{split}.json")) for r in (a, b)]
    assert len(merged) == 4 == sum(len(p) for p in parts)
    assert merged.class_names == parts[0].class_names
    for k, ref in enumerate([parts[0][0], parts[0][1], parts[1][0], parts[1][1]]):
        got = merged[k]  # same points, images and captions as read from the input set
        assert got.sample_id == ref.sample_id
        assert got.points.points.equal(ref.points.points)
        assert got.cameras.images.equal(ref.cameras.images)
        assert got.boxes.captions == ref.boxes.captions and any(got.boxes.captions)
    lidar = merged.index[2][1]["lidar_points"]["lidar_path"]
    assert (out / lidar).is_symlink() and (out / lidar).resolve() == (b / lidar).resolve()
    ann = json.loads((out / "synthetic_annotations.json").read_text())["scenes"]
    assert len(ann) == 4 and {s["split"] for s in ann} == {"train"}


def test_merge_outdoor_refuses_a_set_twice_and_missing_sets_before_writing(tmp_path):
    a, out = tmp_path / "a", tmp_path / "out"
    generate(SynthConfig(kind="outdoor", scenes=2, seed=3, split=(1.0, 0.0, 0.0)), a)
    with pytest.raises(AnnotationError, match="each set once"):
        merge_synth_sets.merge_outdoor(out, [a, a])
    with pytest.raises(AnnotationError, match="nope/nuscenes_infos_train.pkl"):
        merge_synth_sets.merge_outdoor(out, [a, tmp_path / "nope"])
    assert not out.exists()


def _set(root: Path, clips: dict) -> Path:
    (root / "clips").mkdir(parents=True)
    for clip in clips:
        for ext in ("wav", "mp4"):
            (root / "clips" / f"{clip}.{ext}").write_text(f"{root.name} {clip} {ext}")
    (root / "dense_events_train.json").write_text(json.dumps(clips))
    return root


def test_merge_av_renames_clashing_clip_ids_and_links_media(tmp_path):
    a = _set(tmp_path / "a", {"av00000": {"duration": 10.0}, "av00001": {"duration": 9.0}})
    b = _set(tmp_path / "b", {"av00000": {"duration": 8.0}})
    out = tmp_path / "out"
    assert merge_synth_sets.main(["--kind", "av", str(out), str(a), str(b)]) == 0
    merged = json.loads((out / "dense_events_train.json").read_text())
    assert merged == {"s0_av00000": {"duration": 10.0}, "s0_av00001": {"duration": 9.0}, "s1_av00000": {"duration": 8.0}}
    assert (out / "clips" / "s1_av00000.wav").is_symlink() and (out / "clips" / "s1_av00000.wav").read_text() == "b av00000 wav"
    assert (out / "clips" / "s0_av00000.mp4").read_text() == "a av00000 mp4"
    with pytest.raises(AnnotationError, match="dense_events_val.json"):
        merge_synth_sets.merge_av(out, [a], split="val")


def test_merge_indoor_renames_rooms_and_reads_back_the_same_points_and_descriptions(tmp_path):
    from dense3d.data.datasets.scanrefer import ScanReferDataset

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    generate(SynthConfig(kind="indoor", scenes=4, seed=0), a)  # 2 train, 1 val, 1 test
    generate(SynthConfig(kind="indoor", scenes=2, seed=1, split=(1.0, 0.0, 0.0)), b)  # 2 train, ids clash with a's
    assert merge_synth_sets.main(["--kind", "indoor", str(out), str(a), str(b)]) == 0

    def read(root):
        return ScanReferDataset(str(root / "ScanRefer_filtered_{split}.json"), str(root / "scans"), split="train")

    merged, parts = read(out), [read(a), read(b)]
    assert len(merged) == 4 == sum(len(p) for p in parts)
    got = {merged[i].sample_id: merged[i] for i in range(len(merged))}
    for k, part in enumerate(parts):
        for i in range(len(part)):
            ref = part[i]
            m = got[f"s{k}_{ref.sample_id}"]  # renamed, the same room
            assert m.points.points.equal(ref.points.points) and m.boxes.boxes.tensor.equal(ref.boxes.boxes.tensor)
            assert m.boxes.captions == ref.boxes.captions and any(m.boxes.captions)
    assert (out / "scans" / f"s1_{parts[1][0].sample_id}_aligned_vert.npy").is_symlink()
    ann = json.loads((out / "synthetic_annotations.json").read_text())
    assert ann["kind"] == "indoor" and sorted(s["scene_id"] for s in ann["scenes"]) == sorted(got)
    assert sorted((out / "ScanRefer_filtered_train.txt").read_text().split()) == sorted(got)


def test_merge_indoor_refuses_descriptions_of_unknown_rooms_before_writing(tmp_path):
    a, out = tmp_path / "a", tmp_path / "out"
    generate(SynthConfig(kind="indoor", scenes=2, seed=2, split=(1.0, 0.0, 0.0)), a)
    rows = json.loads((a / "ScanRefer_filtered_train.json").read_text())
    rows[1]["scene_id"] = "scene9999_00"
    (a / "ScanRefer_filtered_train.json").write_text(json.dumps(rows))
    with pytest.raises(AnnotationError, match=r"ScanRefer_filtered_train.json: field '\[1\]\.scene_id'.*scene9999_00"):
        merge_synth_sets.merge_indoor(out, [a])
    assert not out.exists()


def test_merging_again_in_another_order_relinks_the_rooms(tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    generate(SynthConfig(kind="indoor", scenes=2, seed=4, split=(1.0, 0.0, 0.0)), a)
    generate(SynthConfig(kind="indoor", scenes=2, seed=5, split=(1.0, 0.0, 0.0)), b)
    merge_synth_sets.merge_indoor(out, [a, b])
    merge_synth_sets.merge_indoor(out, [b, a])  # s0_ is now b's: every link must follow (it kept a's)
    for room in json.loads((out / "synthetic_annotations.json").read_text())["scenes"]:
        tag, scene = room["scene_id"].split("_", 1)
        src = {"s0": b, "s1": a}[tag]
        for suffix in merge_synth_sets.SCAN_FILES:
            assert (out / "scans" / f"{room['scene_id']}{suffix}").resolve() == (src / "scans" / f"{scene}{suffix}").resolve()
