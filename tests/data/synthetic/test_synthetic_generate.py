"""Generation as a whole: same seed -> identical files, nothing partial on failure, the
oracle prediction files, the default set's skip, and the command line."""
from __future__ import annotations

import hashlib
import json

import pytest

from dense3d.cli import main
from dense3d.data.synthetic import SynthConfig, dataset_stats, format_stats, generate, generate_default
from dense3d.errors import AnnotationError, ConfigError
from dense3d.utils.progress import ProgressBar


def _hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["outdoor", "indoor", "av"])
def test_same_seed_gives_identical_files(synth_root, tmp_path, kind):
    generate(SynthConfig(kind=kind, scenes=4, seed=0), tmp_path / kind)
    a, b = _hashes(synth_root / kind), _hashes(tmp_path / kind)
    assert a.keys() == b.keys() and len(a) > 8
    assert a == b, sorted(k for k in a if a[k] != b[k])
    generate(SynthConfig(kind=kind, scenes=4, seed=1), tmp_path / "other")
    c = _hashes(tmp_path / "other")
    media = [k for k in a if k.endswith((".bin", ".npy", ".wav"))]
    assert media and all(a[k] != c.get(k) for k in media)


def test_failed_generation_leaves_nothing_partial(tmp_path):
    out = tmp_path / "set"
    generate(SynthConfig(kind="indoor", scenes=3, seed=0), out)
    before = _hashes(out)

    def boom(done, total):
        if done == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        generate(SynthConfig(kind="indoor", scenes=5, seed=7), out, progress=boom)
    assert _hashes(out) == before  # the old set is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temp folder left
    with pytest.raises(RuntimeError):
        generate(SynthConfig(kind="indoor", scenes=5, seed=7), tmp_path / "new", progress=boom)
    assert not (tmp_path / "new").exists()


def test_bad_config_is_one_line_error():
    with pytest.raises(ConfigError, match="field 'kind'"):
        SynthConfig(kind="underwater")
    with pytest.raises(ConfigError, match="field 'split'"):
        SynthConfig(kind="indoor", split=(0.5, 0.2, 0.2))


def test_oracles_in_evaluation_formats(synth_root):
    for kind in ("outdoor", "indoor"):
        ann = json.loads((synth_root / kind / "synthetic_annotations.json").read_text())["scenes"]
        for split in ("train", "val", "test"):
            gt = json.loads((synth_root / kind / "oracles" / split / "gt.json").read_text())
            free = json.loads((synth_root / kind / "oracles" / split / "context_free.json").read_text())
            assert set(gt) == set(free) == {r["scene_id"] for r in ann if r["split"] == split}
            recs = {r["scene_id"]: r for r in ann}
            for sid, preds in gt.items():
                objs = recs[sid]["objects"]
                for p, q, o in zip(preds, free[sid], objs):
                    assert len(p["box"]) == 7 and p["score"] == 1.0 and p["label"] == o["label"] == q["label"]
                    assert p["box"] == q["box"] == o["box"] and p["caption"] == o["captions"][0]
                    assert o["colour"] in q["caption"]
                    for t in o["relation_targets"]:  # the context-free oracle never names the other object
                        assert objs[t]["colour"] + " " not in q["caption"].replace(o["colour"] + " ", "", 1)
    _check_fixed_phrasing_oracles(synth_root)
    _check_indoor_fixed_oracles(synth_root)
    ev = json.loads((synth_root / "av" / "oracles" / "val" / "gt_events.json").read_text())
    dense = json.loads((synth_root / "av" / "dense_events_val.json").read_text())
    assert set(ev["results"]) == set(dense)
    for vid, preds in ev["results"].items():
        assert [p["timestamp"] for p in preds] == dense[vid]["timestamps"]
        assert [p["sentence"] for p in preds] == dense[vid]["sentences"]
    favd = json.loads((synth_root / "av" / "oracles" / "val" / "gt_favd.json").read_text())
    free = json.loads((synth_root / "av" / "oracles" / "val" / "context_free_favd.json").read_text())
    assert set(favd) == set(free) == set(dense)
    assert all(isinstance(v, str) and len(v.split()) > 20 for v in favd.values())


def test_stats_histograms(synth_root):
    s = dataset_stats(synth_root / "outdoor")
    assert s["scenes"] == 4 and sum(s["classes"].values()) == s["objects"] == sum(s["relations"].values())
    assert sum(s["caption_words"].values()) == s["captions"]
    a = dataset_stats(synth_root / "av")
    assert sum(a["event_classes"].values()) == a["events"] > 0
    text = format_stats(a)
    assert "relation type" in text and "event class" in text
    with pytest.raises(AnnotationError, match="synthetic_annotations.json"):
        dataset_stats(synth_root)


def test_default_set_is_skipped_when_up_to_date(tmp_path):
    logs = []
    small = {"outdoor": 1, "indoor": 3, "av": 1}
    bar = ProgressBar()  # silent; counts one per generated scene
    generate_default(tmp_path, seed=0, scenes=small, log=logs.append, progress=bar)
    assert (bar.completed, bar.total) == (5, 5)
    first = _hashes(tmp_path)
    logs.clear()
    generate_default(tmp_path, seed=0, scenes=small, log=logs.append)
    assert all("up to date" in line for line in logs) and len(logs) == 3
    assert _hashes(tmp_path) == first


def test_cli_convert_synth_and_stats(tmp_path, capsys):
    out = tmp_path / "rooms"
    assert main(["convert", "synth", "--kind", "indoor", "--out", str(out), "--scenes", "3", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "scenes/min" in text and "relation type" in text
    assert (out / "ScanRefer_filtered_train.json").exists()
    assert main(["convert", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scenes"] == 3
    assert main(["convert", "stats", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "AnnotationError" in err


def test_cli_convert_synth_split_flag(tmp_path, capsys):
    out = tmp_path / "extra"
    assert main(["convert", "synth", "--kind", "indoor", "--out", str(out), "--scenes", "3", "--split", "1,0,0"]) == 0
    assert json.loads((out / "meta.json").read_text())["config"]["split"] == [1.0, 0.0, 0.0]
    assert len((out / "ScanRefer_filtered_train.txt").read_text().split()) == 3
    capsys.readouterr()
    for bad in ("1,0", "a,b,c"):
        assert main(["convert", "synth", "--kind", "indoor", "--out", str(tmp_path / "bad"), "--split", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "ConfigError" in err and "split" in err, err
    assert not (tmp_path / "bad").exists()


def test_output_does_not_depend_on_workers(synth_root, tmp_path):
    generate(SynthConfig(kind="outdoor", scenes=4, seed=0), tmp_path / "outdoor", workers=2)
    assert _hashes(tmp_path / "outdoor") == _hashes(synth_root / "outdoor")


def _check_fixed_phrasing_oracles(synth_root):
    """Outdoor ``fixed`` / ``fixed_context_free`` oracles: the same facts as the captions (colour,
    class, relation object) in the first paraphrase always: one template for every object."""
    from dense3d.data.synthetic.grammar import noun_phrase

    ann = {r["scene_id"]: r for r in json.loads((synth_root / "outdoor" / "synthetic_annotations.json").read_text())["scenes"]}
    fixed, free = {}, {}
    for split in ("train", "val", "test"):
        fixed.update(json.loads((synth_root / "outdoor" / "oracles" / split / "fixed.json").read_text()))
        free.update(json.loads((synth_root / "outdoor" / "oracles" / split / "fixed_context_free.json").read_text()))
    assert set(fixed) == set(free) == set(ann)
    n = 0
    for sid, preds in fixed.items():
        objs = ann[sid]["objects"]
        for p, q, o in zip(preds, free[sid], objs):
            assert p["box"] == q["box"] == o["box"]
            assert noun_phrase(o["colour"], o["label"]) in p["caption"] and noun_phrase(o["colour"], o["label"]) in q["caption"]
            assert p["caption"].startswith(q["caption"][:-1])  # template 0: the context-free sentence, then the relation
            for t in o["relation_targets"]:
                assert "the " + noun_phrase(objs[t]["colour"], objs[t]["label"]) in p["caption"]
            n += 1
    assert n > 5


def _check_indoor_fixed_oracles(synth_root):
    """Indoor ``fixed`` oracle: the first template ("this is a <colour> <class>. ...") and first
    place word for every object, naming its relation targets; ``fixed_context_free`` is the
    context-free oracle (one wording already)."""
    from dense3d.data.synthetic.grammar import class_words, noun_phrase

    ann = {r["scene_id"]: r for r in json.loads((synth_root / "indoor" / "synthetic_annotations.json").read_text())["scenes"]}
    n = 0
    for split in ("train", "val", "test"):
        d = synth_root / "indoor" / "oracles" / split
        fixed, free_fixed = json.loads((d / "fixed.json").read_text()), json.loads((d / "fixed_context_free.json").read_text())
        assert free_fixed == json.loads((d / "context_free.json").read_text())
        for sid, preds in fixed.items():
            objs = ann[sid]["objects"]
            for p, q, o in zip(preds, free_fixed[sid], objs):
                assert p["caption"].startswith(f"this is a {o['colour']} {class_words(o['label'])}.")
                assert p["caption"].endswith(q["caption"].split(". ", 1)[1])  # the same first place word
                for t in o["relation_targets"]:
                    assert "the " + noun_phrase(objs[t]["colour"], objs[t]["label"]) in p["caption"]
                n += 1
    assert n > 5


def test_output_path_that_is_not_a_generated_set_is_refused(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    afile = tmp_path / "afile"
    afile.write_text("keep me too")
    for out, got in ((victim, "other entries"), (afile, "it is a file"), (afile / "sub", "below the file")):
        with pytest.raises(ConfigError, match=rf"{out.name}: field 'out': expected .*{got}") as e:
            generate(SynthConfig(kind="indoor", scenes=2, seed=0), out)
        assert "\n" not in str(e.value)
    assert (victim / "notes.txt").read_text() == "keep me" and afile.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "victim"]  # no temp or .old folder left
    assert main(["convert", "synth", "--kind", "indoor", "--out", str(afile), "--scenes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ConfigError" in err and "afile" in err
    with pytest.raises(ConfigError, match="afile: field 'data folder'"):
        generate_default(afile, scenes={"outdoor": 1, "indoor": 1, "av": 1}, log=lambda s: None)
    # an empty folder and an earlier generated set are (re)placed
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(SynthConfig(kind="indoor", scenes=2, seed=0), empty)
    generate(SynthConfig(kind="indoor", scenes=3, seed=1), empty)
    assert json.loads((empty / "meta.json").read_text())["config"]["scenes"] == 3


def test_synth_config_wrong_types_are_one_line_errors():
    for kw, fld in ((dict(scenes="abc"), "scenes"), (dict(seed="x"), "seed"), (dict(split="abc"), "split"),
                    (dict(image_size=[64, "a"]), "image_size"), (dict(fps=0), "fps"), (dict(clip_seconds="ten"), "clip_seconds"),
                    (dict(min_objects="2"), "min_objects"), (dict(scenes=True), "scenes")):
        with pytest.raises(ConfigError, match=rf"SynthConfig: field '{fld}'"):
            SynthConfig(kind="outdoor", **kw)
    assert SynthConfig(kind="indoor", scenes=2.0).scenes == 2


def test_load_synth_config_names_the_file_and_key(tmp_path):
    from pathlib import Path

    from dense3d.data.synthetic import load_synth_config

    repo_cfg = Path(__file__).resolve().parents[3] / "configs" / "synthetic" / "outdoor.yaml"
    cfg = load_synth_config(repo_cfg, kind="outdoor", seed=3, scenes=2)
    assert (cfg.kind, cfg.seed, cfg.scenes, cfg.image_size) == ("outdoor", 3, 2, (448, 252))
    assert load_synth_config(None, kind="indoor", seed=0).kind == "indoor"
    cases = {
        "nope.yaml": (None, "field '<file>': expected an existing"),
        "bad.yaml": ("scenes: [unclosed\n", "field '<file>': expected valid YAML"),
        "list.yaml": ("- 1\n- 2\n", "field '<file>': expected a mapping"),
        "unk.yaml": ("scenes: 2\nbogus_key: 1\n", "field 'bogus_key': expected a SynthConfig field"),
        "str.yaml": ("scenes: abc\n", "field 'scenes': expected an integer >= 1, got 'abc'"),
    }
    for name, (text, msg) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError, match=rf"{name}: {msg}") as e:
            load_synth_config(path, kind="indoor", seed=0)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="SynthConfig: field 'bogus'"):
        load_synth_config(None, kind="indoor", bogus=1)
