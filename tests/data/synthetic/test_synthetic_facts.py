"""The facts of synthetic outdoor objects: complete (they write the fixed-phrasing oracle's
caption word for word) and encoded one-hot; indoor ones read back from every description; and
the tools that read a model's captions back fact by fact."""
from __future__ import annotations

import dataclasses
import json

import pytest

from dense3d.data.synthetic.facts import (
    FACT_DIM,
    fact_vector,
    fixed_caption,
    fixed_indoor_caption,
    load_indoor_facts,
    load_outdoor_facts,
    parse_indoor_caption,
    parse_outdoor_caption,
    set_kind,
)
from dense3d.errors import AnnotationError, PredictionFormatError, exit_status


def test_facts_write_the_fixed_phrasing_caption(synth_root):
    objs = load_outdoor_facts(synth_root / "outdoor", "train") + load_outdoor_facts(synth_root / "outdoor", "val")
    assert len(objs) > 20
    for o in objs:
        assert fixed_caption(o["facts"]) == o["fixed"]
    kinds = {o["facts"].relation for o in objs}
    assert len(kinds) >= 3  # several relation types were checked, not one


def _as_dict(f):
    d = dataclasses.asdict(f)
    d["targets"] = tuple(tuple(t) for t in d["targets"])
    return d


def test_parsing_a_caption_gives_back_its_facts(synth_root):
    """Every template and paraphrase of the annotator, and the fixed phrasing, read back to the
    object's facts (template 1 does not say the motion)."""
    objs = load_outdoor_facts(synth_root / "outdoor", "train") + load_outdoor_facts(synth_root / "outdoor", "val")
    no_motion = 0
    for o in objs:
        want = _as_dict(o["facts"])
        assert parse_outdoor_caption(o["fixed"]) == want
        got = parse_outdoor_caption(o["caption"])
        if got["motion"] is None:
            no_motion += 1
            got["motion"] = want["motion"]
        assert got == want, o["caption"]
    assert 0 < no_motion < len(objs)


def test_parsing_model_style_captions():
    p = parse_outdoor_caption("there is a green truck far away behind the ego car, left of the pedestrian in red.")
    assert p == {"colour": "green", "cls": "truck", "motion": None, "direction": "back", "distance": "far",
                 "relation": "left_of", "targets": (("red", "pedestrian"),)}
    p = parse_outdoor_caption("between the blue car and the orange traffic cone, a pedestrian in gray is walking "
                              "on the front left of the ego car, nearby.")
    assert (p["colour"], p["cls"], p["motion"], p["direction"], p["distance"]) == ("gray", "pedestrian", "walking", "front left", "near")
    assert p["relation"] == "between" and p["targets"] == (("blue", "car"), ("orange", "traffic_cone"))
    p = parse_outdoor_caption("a red car parked to the right of the ego car, close to the ego car.")
    assert p["relation"] == "none" and p["targets"] == () and p["direction"] == "right" and p["distance"] == "near"
    assert set(parse_outdoor_caption("a) to the orange, to the").values()) == {None}


def test_parsing_an_indoor_description_gives_back_its_facts(synth_root):
    """All three descriptions of every indoor object (four templates, every wording) and the
    fixed phrasing read back to the object's facts."""
    objs = [o for split in ("train", "val", "test") for o in load_indoor_facts(synth_root / "indoor", split)]
    assert len(objs) > 20
    for o in objs:
        want = _as_dict(o["facts"])
        assert len(o["captions"]) == 3
        for caption in [*o["captions"], o["fixed"]]:
            assert parse_indoor_caption(caption) == want, caption
    captions = [c for o in objs for c in o["captions"]]
    assert {c.split()[0] for c in captions} == {"this", "the", "a", "there"}  # all four templates
    assert {o["facts"].relation for o in objs} >= {"next_to", "between", "closest_to"}
    assert {o["facts"].place for o in objs} == {"corner", "wall", "middle"}


def test_parsing_model_style_indoor_descriptions(tmp_path):
    p = parse_indoor_caption("there is an orange picture. it is between the brown desk and the gray trash can. "
                             "the picture is by the wall.")
    assert p == {"colour": "orange", "cls": "picture", "place": "wall", "relation": "between",
                 "targets": (("brown", "desk"), ("gray", "garbagebin"))}
    p = parse_indoor_caption("the chair is red and stands in a corner. it is the chair closest to the black garbagebin.")
    assert p == {"colour": "red", "cls": "chair", "place": "corner", "relation": "closest_to",
                 "targets": (("black", "garbagebin"),)}
    p = parse_indoor_caption("a white table in the center of the room.")
    assert p == {"colour": "white", "cls": "table", "place": "middle", "relation": "none", "targets": ()}
    p = parse_indoor_caption("it is beside the blue bed. the sofa is against the wall.")  # no colour of its own
    assert p == {"colour": None, "cls": "sofa", "place": "wall", "relation": "next_to", "targets": (("blue", "bed"),)}
    assert set(parse_indoor_caption("a) near the, in the room").values()) == {None}
    with pytest.raises(AnnotationError, match="synthetic_annotations.json"):
        load_indoor_facts(tmp_path, "train")
    (tmp_path / "synthetic_annotations.json").write_text(json.dumps({"kind": "outdoor", "scenes": []}))
    with pytest.raises(AnnotationError, match="kind"):
        load_indoor_facts(tmp_path, "train")


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



def test_set_kind_reads_meta_json_and_names_it_when_malformed(tmp_path, capsys):
    assert set_kind(tmp_path) == "outdoor"  # no meta.json: the outdoor sets predate it
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"kind": "indoor"}))
    assert set_kind(tmp_path) == "indoor"
    meta.write_text('{"kind": "indoor"')  # cut short
    with pytest.raises(AnnotationError, match="meta.json.*valid JSON"):
        set_kind(tmp_path)
    meta.write_text('["indoor"]')
    with pytest.raises(AnnotationError, match="meta.json.*JSON object"):
        set_kind(tmp_path)
    # the tools that read it: one line naming the file, status 2, nothing written
    tool = _tool("caption_facts")
    pred = tmp_path / "eval"
    pred.mkdir()
    (pred / "predictions_boxes.json").write_text(json.dumps({"scene-0": []}))
    assert exit_status(lambda: tool.main([str(tmp_path), str(pred)]), "tools/caption_facts.py") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "meta.json" in err and "Traceback" not in err
    assert not (pred / "caption_facts.json").exists()

@pytest.mark.slow
def test_captioner_ceiling_tool_trains_and_scores(synth_root, tmp_path):
    """tools/captioner_ceiling.py end to end on SmolLM2: a few steps, scores and captions written."""
    tool = _tool("captioner_ceiling")
    out = tmp_path / "ceiling.json"
    assert tool.main([str(synth_root / "outdoor"), "--layers", "2", "--steps", "3", "--batch", "4",
                      "--val-objects", "3", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["layers"] == 2 and r["history"][-1]["step"] == 3
    assert 0 < r["oracle"]["CIDEr"] and r["history"][-1]["CIDEr"] >= 0
    assert len(r["examples"]) == 3 and all(set(e) == {"generated", "reference", "fixed_oracle"} for e in r["examples"])


def _tool(name):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[3] / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_caption_facts_tool_counts_right_and_wrong_facts(synth_root, tmp_path):
    objs = load_outdoor_facts(synth_root / "outdoor", "val")
    pred = {}
    for o in objs:  # the fixed-phrasing oracle on slightly moved boxes ...
        box = list(o["box"])
        box[0] += 0.3
        pred.setdefault(o["scene"], []).append({"box": box, "caption": o["fixed"], "score": 1.0})
    first = pred[objs[0]["scene"]][0]  # ... but one says another colour and no distance
    colour = objs[0]["facts"].colour
    other = "red" if colour != "red" else "blue"
    first["caption"] = first["caption"].replace(f"{colour} ", f"{other} ", 1).replace(", far away", "").replace(
        ", at a medium distance", "").replace(", close to the ego car", "")
    (tmp_path / "predictions_boxes.json").write_text(json.dumps(pred))
    tool = _tool("caption_facts")
    assert tool.main([str(synth_root / "outdoor"), str(tmp_path)]) == 0
    r = json.loads((tmp_path / "caption_facts.json").read_text())
    n = len(objs)
    assert r["objects"] == n
    t = r["facts"]
    assert t["colour"]["correct"] == pytest.approx(100 * (n - 1) / n) and t["colour"]["stated"] == 100
    assert t["distance"]["correct"] == pytest.approx(100 * (n - 1) / n) == t["distance"]["stated"]
    assert t["cls"]["correct"] == t["direction"]["correct"] == t["targets"]["correct"] == 100
    assert t["all"]["correct"] == pytest.approx(100 * (n - 1) / n)
    # boxes too far from any object are not matched; a bad file is a one-line error
    assert tool.main([str(synth_root / "outdoor"), str(tmp_path), "--max-dist", "0.1", "--out", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())["objects"] == 0
    # predictions of another split than --split say so instead of counting nothing
    with pytest.raises(PredictionFormatError, match="'scenes'.*'train' split"):
        tool.main([str(synth_root / "outdoor"), str(tmp_path), "--split", "train"])
    (tmp_path / "predictions_boxes.json").write_text(json.dumps({"s": [{"box": [0] * 7}]}))
    with pytest.raises(PredictionFormatError, match="predictions_boxes.json"):
        tool.main([str(synth_root / "outdoor"), str(tmp_path)])
    (tmp_path / "predictions_boxes.json").write_text('{"s": [')  # cut short: one line, not a JSON traceback
    with pytest.raises(PredictionFormatError, match="predictions_boxes.json"):
        tool.main([str(synth_root / "outdoor"), str(tmp_path)])


def test_relation_oracle_replaces_the_annotators_coin_with_the_likelier_side(synth_root, tmp_path):
    """tools/relation_oracle.py: the fixed oracle, except that every object between two others is
    described as between them; all other captions are the fixed oracle's word for word."""
    import numpy as np

    tool = _tool("relation_oracle")
    xy = np.array([[0.0, 0.0], [-6.0, 0.1], [6.0, -0.1], [0.0, 15.0]])  # 0 lies between 1 and 2
    keys = [("red", "car"), ("blue", "bus"), ("gray", "barrier"), ("white", "truck")]
    rel = tool.choose_relation(0, xy, keys, tool._Likeliest(), indoor=False, max_dist=20.0, next_to=4.0)
    assert rel == {"type": "between", "targets": [1, 2]}
    out = tmp_path / "likeliest.json"
    assert tool.main([str(synth_root / "outdoor"), "--split", "train", "--out", str(out)]) == 0
    oracle = json.loads(out.read_text())
    objects = load_outdoor_facts(synth_root / "outdoor", "train")
    rows = [r for scene in oracle.values() for r in scene]
    assert len(rows) == len(objects) and set(oracle) == {o["scene"] for o in objects}
    _, n, changed = tool.likeliest_relations(synth_root / "outdoor", "train")
    differ = [(o, r) for o, r in zip(objects, rows) if r["caption"] != o["fixed"]]
    assert n == len(objects) and changed == len(differ) > 0  # seed 0 has objects between two others
    for o, r in differ:  # only "between" is ever added, never taken away
        assert o["facts"].relation != "between" and parse_outdoor_caption(r["caption"])["relation"] == "between"
        assert r["box"] == o["box"]


def test_relation_oracle_on_an_indoor_set(synth_root, tmp_path):
    """Indoors the likelier side is "closest to" where it qualifies, then "between"; unchanged
    relations give the fixed oracle's description word for word, and --guess-motion is refused."""
    import numpy as np

    tool = _tool("relation_oracle")
    root = synth_root / "indoor"
    # chair 0 is nearer the table than chair 3 is, and lies between the table and the door
    xy = np.array([[0.0, 0.0], [-0.9, 0.05], [1.0, 0.0], [2.5, 0.0]])
    keys = [("red", "chair"), ("brown", "table"), ("white", "door"), ("blue", "chair")]
    rel = tool.choose_relation(0, xy, keys, tool._Likeliest(), indoor=True, max_dist=3.0, next_to=1.5)
    assert rel == {"type": "closest_to", "targets": [1]}
    out = tmp_path / "likeliest.json"
    assert tool.main([str(root), "--split", "train", "--out", str(out)]) == 0
    rows = [r for scene in json.loads(out.read_text()).values() for r in scene]
    objects = load_indoor_facts(root, "train")
    assert len(rows) == len(objects)
    _, n, changed = tool.likeliest_indoor_relations(root, "train")
    differ = 0
    for o, r in zip(objects, rows):
        got = parse_indoor_caption(r["caption"])
        want = _as_dict(o["facts"])
        assert {k: got[k] for k in ("colour", "cls", "place")} == {k: want[k] for k in ("colour", "cls", "place")}
        if r["caption"] != o["fixed"]:
            differ += 1
            assert got["relation"] in ("closest_to", "between") and got["relation"] != want["relation"]
    assert n == len(objects) and changed == differ > 0
    with pytest.raises(AnnotationError, match="guess-motion"):
        tool.main([str(root), "--out", str(tmp_path / "x.json"), "--guess-motion"])
    bare = tmp_path / "bare"  # an indoor meta.json without its annotations: one line, no traceback
    bare.mkdir()
    (bare / "meta.json").write_text(json.dumps({"kind": "indoor"}))
    with pytest.raises(AnnotationError, match="synthetic_annotations.json"):
        tool.main([str(bare), "--out", str(tmp_path / "y.json")])
    assert not (tmp_path / "y.json").exists()


def test_relation_oracle_guesses_motion_from_class_and_place(synth_root, tmp_path):
    """--guess-motion: the motion word becomes the training split's commonest for the object's
    class and lateral 1 m bin (one word per bin); every other fact but the relation stays."""
    tool = _tool("relation_oracle")
    root = synth_root / "outdoor"
    out = tmp_path / "sensor.json"
    assert tool.main([str(root), "--split", "train", "--out", str(out), "--guess-motion"]) == 0
    rows = [r for scene in json.loads(out.read_text()).values() for r in scene]
    objects = load_outdoor_facts(root, "train")
    ann = [o for s in json.loads((root / "synthetic_annotations.json").read_text())["scenes"]
           if s["split"] == "train" for o in s["objects"]]
    assert len(rows) == len(objects) == len(ann)
    by_place, by_class = tool.motion_guesses(root)
    right = {"place": 0, "class": 0}
    words = {}
    for o, r, a in zip(objects, rows, ann):
        got, want = parse_outdoor_caption(r["caption"]), _as_dict(o["facts"])
        assert {k: got[k] for k in ("colour", "cls", "direction", "distance")} == \
            {k: want[k] for k in ("colour", "cls", "direction", "distance")}
        assert words.setdefault(tool._place(a), got["motion"]) == got["motion"]  # one word per (class, bin)
        if want["cls"] in ("traffic_cone", "barrier"):
            assert got["motion"] == "placed"  # never moves: the guess is the truth
        right["place"] += got["motion"] == want["motion"]
        right["class"] += by_class[want["cls"]] == want["motion"]
    # the commonest word per bin is right at least as often as the commonest per class, and the
    # guesses change something (seed 0 has moving and parked cars alike)
    assert right["place"] >= right["class"] and right["place"] < len(objects)
    _, _, relations_only = tool.likeliest_relations(root, "train")
    _, n, changed = tool.likeliest_relations(root, "train", guess_motion=True)
    assert changed > relations_only and set(by_place.values()) <= {"placed", "moving", "parked", "walking", "standing", "riding"}


def test_score_oracle_on_predicted_boxes(synth_root, tmp_path):
    """--on-predictions: each predicted box takes the oracle caption of the nearest ground-truth
    box; on boxes equal to the ground truth that is the oracle itself, and a duplicate of every
    box halves its precision, not its recall."""
    tool = _tool("score_oracle")
    root = synth_root / "outdoor"
    oracle_file = root / "oracles" / "val" / "fixed.json"
    objects = load_outdoor_facts(root, "val")
    gt, pred = {}, {}
    for o in objects:
        gt.setdefault(o["scene"], []).append({"label": o["facts"].cls, "box": o["box"], "descriptions": [o["caption"]],
                                              "num_pts": 10})
        moved = [o["box"][0] + 0.2, *o["box"][1:]]  # still the nearest to its own object
        pred.setdefault(o["scene"], []).append({"box": moved, "caption": "x", "score": 0.9, "label": o["facts"].cls})
    (tmp_path / "ground_truth_boxes.json").write_text(json.dumps(gt))
    (tmp_path / "predictions_boxes.json").write_text(json.dumps(pred))
    oracle = {s: rows for s, rows in json.loads(oracle_file.read_text()).items() if s in gt}
    mapped = tool._on_predictions(oracle, tmp_path / "predictions_boxes.json")
    for s in gt:
        assert [r["caption"] for r in mapped[s]] == [r["caption"] for r in oracle[s]]
        assert [r["box"] for r in mapped[s]] == [r["box"] for r in pred[s]]

    def cider(*extra):
        assert tool.main([str(oracle_file), str(tmp_path), "--out", str(tmp_path / "m.json"), *extra]) == 0
        m = json.loads((tmp_path / "m.json").read_text())["tod3cap_corrected"]
        return m["CIDEr-P@0.25"], m["CIDEr-R@0.25"]

    plain, on_pred = cider(), cider("--on-predictions")
    assert on_pred == pytest.approx(plain)
    (tmp_path / "predictions_boxes.json").write_text(json.dumps({s: rows + rows for s, rows in pred.items()}))
    p, r = cider("--on-predictions")
    assert p == pytest.approx(plain[0] / 2) and r == pytest.approx(plain[1])
    (tmp_path / "predictions_boxes.json").write_text(json.dumps({"s": [{"caption": "x"}]}))
    with pytest.raises(PredictionFormatError, match=r"predictions_boxes.json.*s\[0\].box"):
        tool.main([str(oracle_file), str(tmp_path), "--on-predictions"])


def test_caption_facts_tool_reads_indoor_sets(synth_root, tmp_path):
    """An indoor set (told by its meta.json) is scored on colour, class, place, relation
    and targets: the fixed-phrasing oracle is right on all, a wrong colour and a missing place
    count against one object only."""
    root = synth_root / "indoor"
    objs = load_indoor_facts(root, "val")
    pred = {}
    for o in objs:
        box = list(o["box"])
        box[0] += 0.2
        pred.setdefault(o["scene"], []).append({"box": box, "caption": o["fixed"], "score": 1.0})
    first = pred[objs[0]["scene"]][0]
    colour = objs[0]["facts"].colour
    other = "red" if colour != "red" else "blue"
    first["caption"] = first["caption"].replace(f"a {colour} ", f"a {other} ", 1).rsplit(" it is ", 1)[0]
    (tmp_path / "predictions_boxes.json").write_text(json.dumps(pred))
    tool = _tool("caption_facts")
    assert set_kind(root) == "indoor" and set_kind(synth_root / "outdoor") == "outdoor"
    assert tool.main([str(root), str(tmp_path)]) == 0
    r = json.loads((tmp_path / "caption_facts.json").read_text())
    n = len(objs)
    assert r["objects"] == n and set(r["facts"]) == {"colour", "cls", "place", "relation", "targets", "all"}
    t = r["facts"]
    assert t["colour"]["correct"] == pytest.approx(100 * (n - 1) / n) and t["colour"]["stated"] == 100
    assert t["place"]["correct"] == pytest.approx(100 * (n - 1) / n) == t["place"]["stated"]
    assert t["cls"]["correct"] == t["relation"]["correct"] == t["targets"]["correct"] == 100
    assert t["all"]["correct"] == pytest.approx(100 * (n - 1) / n)
    by_rel = r["targets_by_relation"]
    types = [o["facts"].relation for o in objs]
    assert {k: v["objects"] for k, v in by_rel.items()} == {k: types.count(k) for k in set(types)}
    assert all(v["correct"] == 100 for v in by_rel.values())
    parts = r["target_parts"]
    ranks = r["named_target_ranks"]  # the oracle names the annotated target: the same ranks
    assert ranks["objects"] == sum(1 for o in objs if len(o["facts"].targets) == 1)
    assert {k: v for k, v in ranks["named"].items() if k != "not_one"} == ranks["truth"]
    assert ranks["named"]["not_one"] == 0 and ranks["truth"]["not_in_scene"] == 0
    assert sum(ranks["truth"].values()) == pytest.approx(100)
    assert parts["objects"] == sum(1 for o in objs if o["facts"].targets)
    assert all(parts[k] == 100 for k in ("cls", "colour", "cls_in_scene", "pair_in_scene"))
    assert parts["chance_objects"] == sum(1 for o in objs if len(o["facts"].targets) == 1)
    # a wrong target counts against its relation type only
    wrong = next(i for i, o in enumerate(objs) if i > 0 and o["facts"].relation == "next_to")  # 0 lost its place
    w = objs[wrong]
    row = next(x for x in pred[w["scene"]] if x["caption"] == w["fixed"])
    tgt = w["facts"].targets[0]
    row["caption"] = row["caption"].replace(f"the {tgt[0]} ", f"the {'red' if tgt[0] != 'red' else 'blue'} ", 1)
    (tmp_path / "predictions_boxes.json").write_text(json.dumps(pred))
    assert tool.main([str(root), str(tmp_path), "--out", str(tmp_path / "w.json")]) == 0
    by_rel = json.loads((tmp_path / "w.json").read_text())["targets_by_relation"]
    assert by_rel["next_to"]["correct"] == pytest.approx(100 * (types.count("next_to") - 1) / types.count("next_to"))
    assert all(v["correct"] == 100 for k, v in by_rel.items() if k != "next_to")
    parts = json.loads((tmp_path / "w.json").read_text())["target_parts"]
    assert parts["cls"] == 100 and parts["cls_in_scene"] == 100  # the class was kept
    assert parts["colour"] == pytest.approx(100 * (parts["objects"] - 1) / parts["objects"])
    in_scene = {(o["facts"].colour, o["facts"].cls) for o in objs if o["scene"] == w["scene"]}
    recoloured = ("red" if tgt[0] != "red" else "blue", tgt[1])
    assert parts["pair_in_scene"] == pytest.approx(100 - (recoloured not in in_scene) * 100 / parts["objects"])
    # the indoor default is 0.5 m: boxes moved 0.6 m are not matched
    for rows in pred.values():
        for row in rows:
            row["box"][0] += 0.4
    (tmp_path / "predictions_boxes.json").write_text(json.dumps(pred))
    assert tool.main([str(root), str(tmp_path), "--out", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())["objects"] == 0


def test_target_parts_by_hand():
    """Three objects of one room, each "next to" one other; the named targets are right, right
    in colour only (another object's), and wrong with a pair the room does not hold."""
    from dense3d.data.synthetic.facts import IndoorFacts

    tool = _tool("caption_facts")
    objs = [{"scene": "s", "facts": IndoorFacts(col, cls, "wall", "next_to", (tgt,))}
            for col, cls, tgt in (("red", "chair", ("blue", "table")), ("blue", "table", ("red", "chair")),
                                  ("red", "table", ("blue", "table")))]
    named = ("the blue table", "the red table", "the green sofa")
    pairs = [(o, {"caption": f"this is a {o['facts'].colour} {o['facts'].cls}. it is next to {t}. it is against the wall."})
             for o, t in zip(objs, named)]
    parts = tool.target_parts(pairs, objs, "indoor")
    assert parts["objects"] == parts["chance_objects"] == 3
    assert parts["cls"] == pytest.approx(100 / 3)                 # only the first names a table
    assert parts["colour"] == pytest.approx(200 / 3)              # the second names red, as its target is
    assert parts["cls_in_scene"] == parts["pair_in_scene"] == pytest.approx(200 / 3)  # no green sofa here
    # at random among the two others: the table's class is both others' for the first (100),
    # one of two for the others (50); the colours 50, 100, 50; the pairs one of two each
    assert parts["chance_cls"] == pytest.approx(200 / 3) == parts["chance_colour"]
    assert parts["chance_pair"] == pytest.approx(50)


def test_named_target_ranks_by_hand():
    """Four objects on a line (x = 0, 1, 3, 7); each caption names one of its neighbours, a pair
    the room does not hold, or two targets."""
    from dense3d.data.synthetic.facts import IndoorFacts

    tool = _tool("caption_facts")
    spec = (("red", "chair", 0.0), ("blue", "table", 1.0), ("green", "sofa", 3.0), ("brown", "door", 7.0))
    objs = [{"scene": "s", "box": [x, 0.0, 0.5, 1, 1, 1, 0], "facts": IndoorFacts(col, cls, "wall", "next_to", (tgt,))}
            for (col, cls, x), tgt in zip(spec, (("blue", "table"), ("red", "chair"), ("blue", "table"),
                                                 ("green", "sofa")))]
    named = ("next to the blue table",                            # chair: its nearest
             "next to the green sofa",                            # table: its second (chair 1 m, sofa 2 m)
             "next to the red door",                              # sofa: no red door here
             "between the red chair and the blue table")          # door: two targets
    pairs = [(o, {"caption": f"this is a {o['facts'].colour} {o['facts'].cls}. it is {t}. it is against the wall."})
             for o, t in zip(objs, named)]
    r = tool.named_target_ranks(pairs, objs, "indoor")
    assert r["objects"] == 4
    assert r["named"] == {"nearest": 25, "second": 25, "third": 0, "further": 0, "not_in_scene": 25, "not_one": 25}
    # the annotated targets: chair -> table (nearest), table -> chair (nearest), sofa -> table
    # (nearest, 2 m; chair 3 m), door -> sofa (nearest)
    assert r["truth"] == {"nearest": 100, "second": 0, "third": 0, "further": 0, "not_in_scene": 0}


# -- tools/fact_costs.py: the fixed oracle rewritten with the facts a model's captions state, fact by fact
def test_fixed_indoor_caption_writes_the_generators_fixed_description(synth_root):
    objs = load_indoor_facts(synth_root / "indoor", "train") + load_indoor_facts(synth_root / "indoor", "val")
    assert len(objs) > 10 and len({o["facts"].relation for o in objs}) >= 2
    for o in objs:
        assert fixed_indoor_caption(o["facts"]) == o["fixed"]
        assert parse_indoor_caption(o["fixed"]) == {**dataclasses.asdict(o["facts"]), "targets": o["facts"].targets}


def test_fixed_caption_leaves_out_an_unstated_motion(synth_root):
    o = load_outdoor_facts(synth_root / "outdoor", "val")[0]
    f = o["facts"]
    caption = fixed_caption(dataclasses.replace(f, motion=None))
    assert caption == o["fixed"].replace(f" {f.motion} ", " ", 1) and "  " not in caption
    said = parse_outdoor_caption(caption)
    assert said["motion"] is None
    assert {k: v for k, v in said.items() if k != "motion"} == {
        k: v for k, v in dataclasses.asdict(f).items() if k not in ("motion", "targets")} | {"targets": f.targets}


def _eval_folder(tmp_path, objects, captions):
    """An evaluation folder as ``dense3d eval --regions gt`` writes it: a prediction on every
    ground-truth box, captioned ``captions[i]``."""
    gt, pred = {}, {}
    for o, caption in zip(objects, captions):
        gt.setdefault(o["scene"], []).append({"label": o["facts"].cls, "box": o["box"], "descriptions": [o["caption"]],
                                              "num_pts": 10})
        pred.setdefault(o["scene"], []).append({"box": o["box"], "caption": caption, "score": 1.0, "label": o["facts"].cls})
    (tmp_path / "ground_truth_boxes.json").write_text(json.dumps(gt))
    (tmp_path / "predictions_boxes.json").write_text(json.dumps(pred))
    return tmp_path


def _other(colour):
    return "red" if colour != "red" else "blue"


@pytest.mark.slow
def test_fact_costs_outdoor_charge_each_wrong_fact_to_its_own_row(synth_root, tmp_path):
    """Captions in the fixed phrasing, one with a wrong colour, one without its motion word: only
    the colour and motion rows cost anything, the model's captions are its facts in the fixed
    phrasing (wording 0), and the oracle row is the fixed oracle."""
    root = synth_root / "outdoor"
    objects = load_outdoor_facts(root, "val")
    captions = [o["fixed"] for o in objects]
    f0, f1 = objects[0]["facts"], objects[1]["facts"]
    captions[0] = fixed_caption(dataclasses.replace(f0, colour=_other(f0.colour)))
    captions[1] = fixed_caption(dataclasses.replace(f1, motion=None))
    folder = _eval_folder(tmp_path, objects, captions)
    tool = _tool("fact_costs")
    assert tool.main([str(root), str(folder)]) == 0
    r = json.loads((folder / "fact_costs.json").read_text())
    assert r["matched"] == r["predictions"] == len(objects) and r["protocol"] == "TOD3Cap corrected"
    cost = r["cost"]
    assert cost["oracle"] == 0 and cost["colour"] > 0 and cost["motion"] > 0
    for fact in ("cls", "direction", "distance", "relation", "targets"):
        assert cost[fact] == pytest.approx(0, abs=1e-9), fact
    assert r["cider"]["all facts"] == pytest.approx(r["cider"]["model"]) and r["wording"] == pytest.approx(0, abs=1e-9)
    assert r["unstated"] == {}  # an unstated motion is left out, not kept true
    # the oracle row is the fixed oracle's own captions scored as a model's
    (tmp_path / "fixed").mkdir()
    fixed = _eval_folder(tmp_path / "fixed", objects, [o["fixed"] for o in objects])
    assert tool.main([str(root), str(fixed)]) == 0
    assert json.loads((fixed / "fact_costs.json").read_text())["cider"]["model"] == pytest.approx(r["cider"]["oracle"])


def test_fact_costs_rows_rewrite_one_fact_each(synth_root):
    """The rows' captions: a relation takes the caption's targets with it; the targets row takes
    them only under the true relation type, and only where they are as many as the true ones."""
    root = synth_root / "outdoor"
    objects = load_outdoor_facts(root, "val")
    o = next(x for x in objects if len(x["facts"].targets) == 1)
    f = o["facts"]
    wrong_target = (_other(f.targets[0][0]), f.targets[0][1])
    said_facts = dataclasses.replace(f, direction="back" if f.direction != "back" else "front", targets=(wrong_target,))
    pred = {"box": o["box"], "caption": fixed_caption(said_facts)}
    tool = _tool("fact_costs")
    rows, unstated = tool.variants([(o, pred)], "outdoor")
    by_row = {name: captions[id(pred)] for name, captions in rows.items()}
    assert by_row["oracle"] == o["fixed"] == by_row["colour"] == by_row["motion"]
    assert by_row["direction"] == fixed_caption(dataclasses.replace(f, direction=said_facts.direction))
    assert by_row["targets"] == by_row["relation"] == fixed_caption(dataclasses.replace(f, targets=(wrong_target,)))
    assert by_row["all facts"] == pred["caption"] and unstated == {}
    # "between" said of an object with one true target: the relation row takes both, the targets row neither
    between = dataclasses.replace(f, relation="between", targets=(wrong_target, f.targets[0]))
    pred = {"box": o["box"], "caption": fixed_caption(between)}
    rows, _ = tool.variants([(o, pred)], "outdoor")
    assert rows["relation"][id(pred)] == pred["caption"] and rows["targets"][id(pred)] == o["fixed"]


@pytest.mark.slow
def test_fact_costs_on_an_indoor_set(synth_root, tmp_path):
    """Indoor sets are scored with Scan2Cap on the indoor facts; a wrong place costs only its row."""
    root = synth_root / "indoor"
    objects = load_indoor_facts(root, "val")
    captions = [o["fixed"] for o in objects]
    f0 = objects[0]["facts"]
    captions[0] = fixed_indoor_caption(dataclasses.replace(f0, place="middle" if f0.place != "middle" else "corner"))
    folder = _eval_folder(tmp_path, objects, captions)
    tool = _tool("fact_costs")
    assert tool.main([str(root), str(folder)]) == 0
    r = json.loads((folder / "fact_costs.json").read_text())
    assert r["protocol"] == "Scan2Cap" and set(r["cost"]) == {"oracle", "colour", "cls", "place", "relation", "targets",
                                                              "all facts", "model"}
    assert r["cost"]["place"] > 0 and r["cost"]["colour"] == pytest.approx(0, abs=1e-9)
    assert r["cider"]["all facts"] == pytest.approx(r["cider"]["model"])


def test_fact_costs_bad_input_is_one_line_and_writes_nothing(synth_root, tmp_path, capsys):
    root = synth_root / "outdoor"
    objects = load_outdoor_facts(root, "val")
    folder = _eval_folder(tmp_path, objects, [o["fixed"] for o in objects])
    (folder / "ground_truth_boxes.json").unlink()
    tool = _tool("fact_costs")
    assert exit_status(lambda: tool.main([str(root), str(folder)]), "tools/fact_costs.py") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ground_truth_boxes.json" in err and not (folder / "fact_costs.json").exists()
    _eval_folder(tmp_path, objects, [o["fixed"] for o in objects])
    with pytest.raises(PredictionFormatError, match="'scenes'.*'train' split"):
        tool.main([str(root), str(folder), "--split", "train"])
    assert not (folder / "fact_costs.json").exists()


# -- tools/relation_pair_probe.py: the relation told from the pair features alone
def test_relation_pair_probe_reads_the_annotated_relations_and_learns_them(synth_root, tmp_path):
    from dense3d.data.synthetic.annotations import load_synthetic_annotations
    from dense3d.data.synthetic.grammar import RELATION_TYPES

    tool = _tool("relation_pair_probe")
    root = synth_root / "outdoor"
    X, Y = tool.pair_features(root, "train", 4)
    objs = [o for s in load_synthetic_annotations(root)["scenes"] if s["split"] == "train" and len(s["objects"]) > 1
            for o in s["objects"]]
    assert X.shape == (len(objs), 4 * (11 + 5 + 6 + 1)) and Y.tolist() == [RELATION_TYPES.index(o["relation"]) for o in objs]
    # scored on the objects it trained on, it learns them: far above the commonest relation alone
    r = tool.probe((X, Y), (X, Y), steps=300, lr=3e-3, batch=16)
    assert r["accuracy"][300] >= 90.0 and r["accuracy"][300] > r["majority"] + 20
    out = tmp_path / "probe.json"
    assert tool.main([str(root), "--steps", "20", "--neighbours", "4", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["accuracy"]) == {"5", "10", "15", "20"}
