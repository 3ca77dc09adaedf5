"""tools/*.py: bad flags and outputs are refused before any work with one line (argparse's usage
error or a Dense3DError through exit_status, status 2), and tools/score_oracle.py reads its oracle
with dense3d eval's parsers."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dense3d.data.synthetic import SynthConfig, generate
from dense3d.errors import exit_status

TOOLS = Path(__file__).parents[2] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``tools/NAME.py ARGV`` as its ``__main__`` runs it."""
    module = _tool(name)
    try:
        rc = exit_status(lambda: module.main([str(a) for a in argv]), f"tools/{name}.py")
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    return rc, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def outdoor(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "outdoor"
    generate(SynthConfig(kind="outdoor", scenes=4, seed=0), root)  # 2 train, 1 val, 1 test
    return root


def _one_line(err: str, *parts: str) -> None:
    assert err.count("\n") == 0, err
    for p in parts:
        assert p in err, err


def test_caption_facts_refuses_a_folder_as_out_and_a_negative_max_dist(tmp_path, capsys):
    rc, err = _run("caption_facts", [tmp_path, tmp_path, "--out", tmp_path], capsys)
    assert rc == 2
    _one_line(err, "ConfigError", "'--out'", "a path for a file (it is a folder)")
    rc, err = _run("caption_facts", [tmp_path, tmp_path, "--max-dist", "-1"], capsys)
    assert rc == 2 and "argument --max-dist: expected a finite number > 0, got '-1'" in err


def test_relation_oracle_refuses_a_folder_as_out_and_names_the_splits(outdoor, tmp_path, capsys):
    rc, err = _run("relation_oracle", [outdoor, "--out", tmp_path], capsys)
    assert rc == 2
    _one_line(err, "ConfigError", "'--out'", "it is a folder")
    out = tmp_path / "oracle.json"
    rc, err = _run("relation_oracle", [outdoor, "--split", "bogus", "--out", out], capsys)
    assert rc == 2
    _one_line(err, "field '--split'", "synthetic_annotations.json (test, train, val)", "got bogus")
    assert not out.exists()  # used to write {}


def test_merge_synth_sets_refuses_a_file_as_out(outdoor, tmp_path, capsys):
    out = tmp_path / "merged"
    out.write_text("a file")
    rc, err = _run("merge_synth_sets", ["--kind", "outdoor", out, outdoor], capsys)
    assert rc == 2
    _one_line(err, "ConfigError", "field 'out'", "a path for a folder (it is a file)")
    assert out.read_text() == "a file"


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--layers", "0"), ("--batch", "0"), ("--threads", "0"),
                                        ("--val-objects", "-1"), ("--lr", "-1"), ("--eval-every", "-1")])
def test_captioner_ceiling_refuses_counts_below_one(flag, value, tmp_path, capsys):
    rc, err = _run("captioner_ceiling", [tmp_path, flag, value], capsys)
    assert rc == 2 and f"argument {flag}: expected" in err and f"got '{value}'" in err


def test_captioner_ceiling_checks_the_batch_and_out_before_loading_the_model(outdoor, tmp_path, capsys, monkeypatch):
    module = _tool("captioner_ceiling")
    monkeypatch.setattr(module, "build_captioner", lambda *a, **k: pytest.fail("the model was built before the checks"))
    with pytest.raises(Exception, match=r"field '--batch': expected at most the \d+ training objects"):
        module.main([str(outdoor), "--batch", "100000"])
    with pytest.raises(Exception, match=r"field '--out': expected a path for a file \(it is a folder\)"):
        module.main([str(outdoor), "--out", str(tmp_path)])


@pytest.mark.parametrize("flag,value", [("--train-scenes", "0"), ("--train-scenes", "-5"), ("--val-scenes", "0")])
def test_probe_tokens_refuses_scene_counts_below_one(flag, value, tmp_path, capsys):
    rc, err = _run("probe_tokens", [tmp_path, tmp_path, flag, value], capsys)
    assert rc == 2 and f"argument {flag}: expected an integer >= 1, got '{value}'" in err


def test_probe_tokens_checks_out_before_loading_the_run(tmp_path, capsys):
    rc, err = _run("probe_tokens", [tmp_path / "no_run", tmp_path, "--out", tmp_path], capsys)
    assert rc == 2
    _one_line(err, "ConfigError", "'--out'", "it is a folder")


@pytest.mark.parametrize("tool,argv", [("paired_scan2cap", ["A", "B"]), ("plot_runs", ["a=RUN"])])
def test_other_tools_check_out_first(tool, argv, tmp_path, capsys):
    full = [str(tmp_path / a) for a in argv] if tool == "paired_scan2cap" else argv
    rc, err = _run(tool, full + ["--out", tmp_path], capsys)
    assert rc == 2
    _one_line(err, "ConfigError", "'--out'", "it is a folder")


# ---------------------------------------------------------------- score_oracle
CAR = {"label": "car", "box": [10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], "descriptions": ["a car ."], "num_pts": 5}


def _eval_dir(tmp_path: Path) -> Path:
    d = tmp_path / "eval"
    d.mkdir()
    (d / "ground_truth_boxes.json").write_text(json.dumps({"s1": [CAR]}))
    return d


def _oracle(tmp_path: Path, data) -> Path:
    p = tmp_path / "oracle.json"
    p.write_text(json.dumps(data))
    return p


ROW = {"box": CAR["box"], "caption": "a car .", "score": 1.0, "label": "car"}


@pytest.mark.parametrize("data,field,expected", [
    ({"boxes": {"s1": []}, "events": {"results": {"s1": [{"timestamp": [0, 1], "sentence": "x", "score": 1.0}]}}},
     "'events'", "event predictions (time spans), which `dense3d eval events` scores"),
    ({"s1": [dict(ROW, box=[10, 0, 0, -4, 2, 1.5, 0])]}, r"'s1[0].box'", "sizes dx, dy, dz >= 0"),
    ({"s1": [{"caption": "a car ."}]}, "'s1[0]'", "a 'box'"),
    ({"s9": [ROW]}, "'s9'", "scene ids of"),
])
def test_score_oracle_checks_its_oracle_as_dense3d_eval_does(data, field, expected, tmp_path, capsys):
    eval_dir = _eval_dir(tmp_path)
    rc, err = _run("score_oracle", [_oracle(tmp_path, data), eval_dir], capsys)
    assert rc == 2
    _one_line(err, "PredictionFormatError", "oracle.json: field " + field, expected)
    assert [p.name for p in eval_dir.iterdir()] == ["ground_truth_boxes.json"]  # nothing written


def test_score_oracle_names_oracle_scenes_outside_the_ground_truth(tmp_path, capsys, monkeypatch):
    module = _tool("score_oracle")
    seen = {}

    def box_metrics(pred, gt, axis_aligned, captions):
        seen["pred"] = pred
        return {"detection": {}}

    monkeypatch.setattr(module, "box_metrics", box_metrics)
    corners = [[x, y, z] for x in (8, 12) for y in (-1, 1) for z in (-0.75, 0.75)]  # the same box as corners
    eval_dir = _eval_dir(tmp_path)
    oracle = _oracle(tmp_path, {"s1": [{"corners": corners, "caption": "a car .", "score": 1.0, "label": "car"}],
                                "s7": [ROW], "s8": [ROW]})
    assert module.main([str(oracle), str(eval_dir)]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("warning: 2 oracle scenes are not in the ground truth")
    assert json.loads((eval_dir / "oracle_oracle.json").read_text())["unknown_scenes"] == ["s7", "s8"]
    assert list(seen["pred"]) == ["s1"] and seen["pred"]["s1"][0]["box"][:6] == [10.0, 0.0, 0.0, 4.0, 2.0, 1.5]
