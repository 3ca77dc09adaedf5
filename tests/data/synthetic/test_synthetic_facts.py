"""The facts of synthetic outdoor objects: complete (they write the fixed-phrasing oracle's
caption word for word) and encoded one-hot."""
from __future__ import annotations

import json

import pytest

from dense3d.data.synthetic.facts import FACT_DIM, fact_vector, fixed_caption, load_outdoor_facts
from dense3d.errors import AnnotationError


def test_facts_write_the_fixed_phrasing_caption(synth_root):
    objs = load_outdoor_facts(synth_root / "outdoor", "train") + load_outdoor_facts(synth_root / "outdoor", "val")
    assert len(objs) > 20
    for o in objs:
        assert fixed_caption(o["facts"]) == o["fixed"]
    kinds = {o["facts"].relation for o in objs}
    assert len(kinds) >= 3  # several relation types were checked, not one


def test_fact_vector_is_one_hot_per_block_and_tells_objects_apart(synth_root):
    objs = load_outdoor_facts(synth_root / "outdoor", "train")
    vecs = [fact_vector(o["facts"]) for o in objs]
    for o, v in zip(objs, vecs):
        assert v.shape == (FACT_DIM,)
        assert set(v.unique().tolist()) <= {0.0, 1.0}
        assert int(v.sum()) == 6 + 2 * len(o["facts"].targets[:2])  # six own facts, colour + class per target
    distinct = {tuple(o["facts"].__dict__.values()) for o in objs}
    assert len({tuple(v.tolist()) for v in vecs}) == len(distinct)


def test_range_filter_and_bad_input(synth_root, tmp_path):
    all_objs = load_outdoor_facts(synth_root / "outdoor", "train")
    near = load_outdoor_facts(synth_root / "outdoor", "train", xy_range=(-16.0, -20.0, 16.0, 20.0))
    assert 0 < len(near) < len(all_objs)
    assert all(-20.0 <= o["box"][1] <= 20.0 for o in near)
    with pytest.raises(AnnotationError, match="synthetic_annotations.json"):
        load_outdoor_facts(tmp_path, "train")
    (tmp_path / "synthetic_annotations.json").write_text(json.dumps({"kind": "indoor", "scenes": []}))
    (tmp_path / "nuscenes_infos_train.pkl").write_bytes(b"")
    with pytest.raises(AnnotationError, match="kind"):
        load_outdoor_facts(tmp_path, "train")


@pytest.mark.slow
def test_captioner_ceiling_tool_trains_and_scores(synth_root, tmp_path):
    """tools/captioner_ceiling.py end to end on SmolLM2: a few steps, scores and captions written."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("captioner_ceiling", Path(__file__).parents[3] / "tools" / "captioner_ceiling.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "ceiling.json"
    assert tool.main([str(synth_root / "outdoor"), "--layers", "2", "--steps", "3", "--batch", "4",
                      "--val-objects", "3", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["layers"] == 2 and r["history"][-1]["step"] == 3
    assert 0 < r["oracle"]["CIDEr"] and r["history"][-1]["CIDEr"] >= 0
    assert len(r["examples"]) == 3 and all(set(e) == {"generated", "reference", "fixed_oracle"} for e in r["examples"])
