"""Merge one split of several synthetic sets (outdoor scenes, indoor rooms or audio-visual clips) into one training set.

Each set is a folder written by ``dense3d convert synth``. Make extra training scenes with
another seed and ``--split 1,0,0``, merge them with the original set, and point a run's train
split at the result; validation stays on the original set. Media are symlinked, not copied.

``--kind outdoor`` (mmdet3d info pickle, TOD3Cap caption JSON, ``samples/``): sample and
annotation tokens hash the generator's seed, so sets made with other seeds never clash (a clash
means a set was given twice, and is refused); sensor files are linked under the same relative
paths, so the merged info pickle is the inputs' entries as they are:

    dense3d convert synth --kind outdoor --scenes 2400 --seed 1 --split 1,0,0 --workers 2 --out data_extra/outdoor_s1
    python tools/merge_synth_sets.py --kind outdoor data_extra/outdoor_all data/synthetic/big/outdoor data_extra/outdoor_s1
    dense3d train experiment=captioning_outdoor paths.synthetic_dir=data/synthetic/big \\
        'data.train.info_file="data_extra/outdoor_all/nuscenes_infos_{split}.pkl"' \\
        data.train.data_root=data_extra/outdoor_all \\
        'data.train.caption_file="data_extra/outdoor_all/tod3cap_captions_{split}.json"' ...

(hydra needs the quotes around values with braces).

``--kind indoor`` (ScanRefer layout: ``ScanRefer_filtered_{split}.json`` + ``scans/``): room ids
repeat between sets made with other seeds, so every room is renamed ``{tag}_{scene}`` (tag = the
set's position, ``s0``, ``s1``, ...) and its scan files linked under that name:

    dense3d convert synth --kind indoor --scenes 3000 --seed 1 --split 1,0,0 --workers 2 --out data_extra/indoor_s1
    python tools/merge_synth_sets.py --kind indoor data_extra/indoor_all data/synthetic/big/indoor data_extra/indoor_s1
    dense3d train experiment=captioning_indoor paths.synthetic_dir=data/synthetic/big \\
        'data.train.scanrefer_file="data_extra/indoor_all/ScanRefer_filtered_{split}.json"' \\
        data.train.scans_dir=data_extra/indoor_all/scans ...

``--kind av`` (``dense_events_{split}.json`` + ``clips/``): clip ids repeat between sets made
with other seeds, so every clip is renamed ``{tag}_{clip}`` (tag = the set's position, ``s0``,
``s1``, ...):

    python tools/merge_synth_sets.py --kind av data_extra/av_all data/synthetic/big/av data_extra/av_s1
    dense3d train experiment=perception_events data.train.annotation_file=data_extra/av_all/dense_events_train.json \\
        data.train.media_dir=data_extra/av_all/clips ...
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

from dense3d.data.readers import load_json, load_pickle, require
from dense3d.data.synthetic.annotations import ANNOTATIONS_FILE, load_synthetic_annotations
from dense3d.errors import AnnotationError, exit_status
from dense3d.utils.io import atomic_write, atomic_write_json, check_output_path


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target``, replacing a link of an earlier merge that points elsewhere (names
    are by position: another set order would otherwise pair new descriptions with old rooms)."""
    if link.is_symlink() and link.resolve() == target:
        return
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _sensor_files(info: dict, info_file: Path, where: str) -> list[str]:
    """The relative paths of one sample's LiDAR sweep and camera images."""
    lidar = require(require(info, "lidar_points", info_file, where), "lidar_path", info_file, f"{where}.lidar_points")
    images = require(info, "images", info_file, where)
    return [lidar] + [require(cam, "img_path", info_file, f"{where}.images.{name}") for name, cam in images.items()]


def merge_outdoor(out: Path, sets: list[Path], split: str = "train") -> int:
    """Write ``out/nuscenes_infos_{split}.pkl``, ``out/tod3cap_captions_{split}.json``,
    ``out/synthetic_annotations.json`` (that split's scenes) and ``out/samples/`` links;
    returns the sample count."""
    data_list, captions, scenes, links = [], {}, [], {}
    metainfo, first_info = None, None
    for root in sets:  # every input read and checked before anything is written
        info_file = root / f"nuscenes_infos_{split}.pkl"
        caption_file = root / f"tod3cap_captions_{split}.json"
        infos = load_pickle(info_file)
        meta = require(infos, "metainfo", info_file, "")
        classes = require(meta, "categories", info_file, "metainfo")
        if metainfo is None:
            metainfo, first_info = meta, info_file
        elif classes != metainfo["categories"]:
            raise AnnotationError(info_file, "metainfo.categories", f"the classes of {first_info}", got=classes)
        samples = require(infos, "data_list", info_file, "")
        for i, info in enumerate(samples):
            for rel in _sensor_files(info, info_file, f"data_list[{i}]"):
                if rel in links:
                    raise AnnotationError(info_file, f"data_list[{i}]", "samples not in an earlier set (each set once)", got=rel)
                links[rel] = (root / rel).resolve()
                if not links[rel].is_file():
                    raise AnnotationError(info_file, f"data_list[{i}]", "sensor files that exist", got=rel)
        data_list.extend(samples)
        caps = load_json(caption_file)
        if not isinstance(caps, dict):
            raise AnnotationError(caption_file, "<root>", "an object keyed by sample_annotation token", got=type(caps).__name__)
        captions.update(caps)
        scenes.extend(s for s in load_synthetic_annotations(root, "outdoor")["scenes"] if s["split"] == split)
    for rel, target in links.items():
        link = out / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        _link(link, target)
    with atomic_write(out / f"nuscenes_infos_{split}.pkl", "wb") as f:
        pickle.dump({"metainfo": metainfo, "data_list": data_list}, f)
    atomic_write_json(out / f"tod3cap_captions_{split}.json", captions)
    atomic_write_json(out / ANNOTATIONS_FILE, {"kind": "outdoor", "scenes": scenes})
    return len(data_list)


def merge_av(out: Path, sets: list[Path], split: str = "train") -> int:
    """Write ``out/dense_events_{split}.json`` and ``out/clips/`` links; returns the clip count."""
    ann_files = [root / f"dense_events_{split}.json" for root in sets]
    for ann_file in ann_files:  # every input checked before anything is written
        if not ann_file.exists():
            raise AnnotationError(ann_file, "<file>", "a synthetic av set's annotations", got="missing")
    (out / "clips").mkdir(parents=True, exist_ok=True)
    merged = {}
    for k, (root, ann_file) in enumerate(zip(sets, ann_files)):
        for clip, entry in json.loads(ann_file.read_text()).items():
            name = f"s{k}_{clip}"
            merged[name] = entry
            for media in sorted((root / "clips").glob(f"{clip}.*")):
                link = out / "clips" / f"{name}{media.suffix}"
                _link(link, media.resolve())
    atomic_write_json(out / f"dense_events_{split}.json", merged)
    return len(merged)


SCAN_FILES = ("_aligned_vert.npy", "_aligned_bbox.npy", "_ins_label.npy", "_sem_label.npy")  # what synthetic/indoor.py writes


def merge_indoor(out: Path, sets: list[Path], split: str = "train") -> int:
    """Write ``out/ScanRefer_filtered_{split}.json`` (and its ``.txt`` scene list),
    ``out/synthetic_annotations.json`` (that split's rooms) and ``out/scans/`` links; returns the
    room count. Room ids repeat between sets made with other seeds (``scene0000_00`` ...), so
    every room of set k is renamed ``s{k}_{scene}`` in the descriptions, the annotations and
    the scan files' names."""
    entries, scenes, links = [], [], {}
    for k, root in enumerate(sets):  # every input read and checked before anything is written
        ann_file = root / f"ScanRefer_filtered_{split}.json"
        rows = load_json(ann_file)
        if not isinstance(rows, list):
            raise AnnotationError(ann_file, "<root>", "a list of ScanRefer descriptions", got=type(rows).__name__)
        rooms = [s for s in load_synthetic_annotations(root, "indoor")["scenes"] if s["split"] == split]
        known = set()
        for room in rooms:
            scene = require(room, "scene_id", root / ANNOTATIONS_FILE, "scenes[]")
            for suffix in SCAN_FILES:
                src = root / "scans" / f"{scene}{suffix}"
                if not src.is_file():
                    raise AnnotationError(root / ANNOTATIONS_FILE, f"scenes.{scene}", "scan files that exist", got=f"no {src}")
                links[f"s{k}_{scene}{suffix}"] = src.resolve()
            scenes.append(dict(room, scene_id=f"s{k}_{scene}"))
            known.add(scene)
        for i, row in enumerate(rows):
            scene = require(row, "scene_id", ann_file, f"[{i}]")
            if scene not in known:
                raise AnnotationError(ann_file, f"[{i}].scene_id", f"a {split} room of {root / ANNOTATIONS_FILE}", got=scene)
            entries.append(dict(row, scene_id=f"s{k}_{scene}"))
    (out / "scans").mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        _link(out / "scans" / name, target)
    atomic_write_json(out / f"ScanRefer_filtered_{split}.json", entries)
    with atomic_write(out / f"ScanRefer_filtered_{split}.txt", "w") as f:
        f.write("".join(f"{s['scene_id']}\n" for s in scenes))
    atomic_write_json(out / ANNOTATIONS_FILE, {"kind": "indoor", "scenes": scenes})
    return len(scenes)


MERGE = {"outdoor": merge_outdoor, "indoor": merge_indoor, "av": merge_av}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", required=True, choices=sorted(MERGE))
    p.add_argument("out", type=Path)
    p.add_argument("sets", type=Path, nargs="+")
    p.add_argument("--split", default="train")
    args = p.parse_args(argv)
    check_output_path(args.out, "tools/merge_synth_sets.py", flag="out", folder=True)  # a folder, not a file
    n = MERGE[args.kind](args.out, args.sets, args.split)
    unit = {"av": "clips", "indoor": "rooms", "outdoor": "samples"}[args.kind]
    print(f"{n} {args.split} {unit} of {len(args.sets)} sets -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/merge_synth_sets.py"))
