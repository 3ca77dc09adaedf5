"""Merge one split of several synthetic audio-visual sets into one training set.

Each set is a folder written by ``dense3d convert synth --kind av`` (``dense_events_{split}.json``
+ ``clips/``). Clip ids repeat between sets made with other seeds, so every clip is renamed
``{tag}_{clip}`` (tag = the set's position, ``s0``, ``s1``, ...); the media are symlinked, not
copied. Point a run's train split at the result:

    python tools/merge_event_sets.py data_extra/av_all data/synthetic/big/av data_extra/av_s1
    dense3d train experiment=perception_events data.train.annotation_file=data_extra/av_all/dense_events_train.json \\
        data.train.media_dir=data_extra/av_all/clips ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dense3d.errors import AnnotationError, exit_status
from dense3d.utils.io import atomic_write_json


def merge(out: Path, sets: list[Path], split: str = "train") -> int:
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
                if not link.exists():
                    os.symlink(media.resolve(), link)
    atomic_write_json(out / f"dense_events_{split}.json", merged)
    return len(merged)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("sets", type=Path, nargs="+")
    p.add_argument("--split", default="train")
    args = p.parse_args(argv)
    n = merge(args.out, args.sets, args.split)
    print(f"{n} {args.split} clips of {len(args.sets)} sets -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/merge_event_sets.py"))
