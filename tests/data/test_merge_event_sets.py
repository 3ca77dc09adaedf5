"""tools/merge_event_sets.py: one split of several synthetic av sets as one (renamed, linked)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dense3d.errors import AnnotationError

_spec = importlib.util.spec_from_file_location("merge_event_sets", Path(__file__).parents[2] / "tools" / "merge_event_sets.py")
merge_event_sets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(merge_event_sets)


def _set(root: Path, clips: dict) -> Path:
    (root / "clips").mkdir(parents=True)
    for clip in clips:
        for ext in ("wav", "mp4"):
            (root / "clips" / f"{clip}.{ext}").write_text(f"{root.name} {clip} {ext}")
    (root / "dense_events_train.json").write_text(json.dumps(clips))
    return root


def test_merge_renames_clashing_clip_ids_and_links_media(tmp_path):
    a = _set(tmp_path / "a", {"av00000": {"duration": 10.0}, "av00001": {"duration": 9.0}})
    b = _set(tmp_path / "b", {"av00000": {"duration": 8.0}})
    out = tmp_path / "out"
    assert merge_event_sets.main([str(out), str(a), str(b)]) == 0
    merged = json.loads((out / "dense_events_train.json").read_text())
    assert merged == {"s0_av00000": {"duration": 10.0}, "s0_av00001": {"duration": 9.0}, "s1_av00000": {"duration": 8.0}}
    assert (out / "clips" / "s1_av00000.wav").is_symlink() and (out / "clips" / "s1_av00000.wav").read_text() == "b av00000 wav"
    assert (out / "clips" / "s0_av00000.mp4").read_text() == "a av00000 mp4"
    with pytest.raises(AnnotationError, match="dense_events_val.json"):
        merge_event_sets.merge(out, [a], split="val")
