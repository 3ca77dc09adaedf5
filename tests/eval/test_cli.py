"""`dense3d eval ...`: end to end on small files, and one-line errors for bad files."""
import json

import pytest

from dense3d.cli import main

GT = {"s1": [{"object_id": 0, "object_name": "chair", "box": [0, 0, 0, 2, 2, 2], "descriptions": [["a", "chair"]]}]}
PRED = {"s1": [{"box": [0, 0, 0, 2, 2, 2], "caption": "a chair", "score": 1.0}], "ghost": []}


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return str(p)


def test_scanrefer_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DENSE3D_PROGRESS", raising=False)  # stderr is no terminal: plain progress lines
    out = tmp_path / "m" / "metrics.json"
    rc = main(["eval", "scanrefer", "--pred", _write(tmp_path, "p.json", PRED), "--gt", _write(tmp_path, "g.json", GT),
               "--iou", "0.5", "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["protocol"] == "scanrefer" and m["matched@0.5"] == 1 and m["unknown_scenes"] == ["ghost"]
    assert {"CIDEr@0.5", "BLEU-4@0.5", "METEOR@0.5", "ROUGE-L@0.5"} <= m.keys()
    printed = capsys.readouterr()
    assert "matched@0.5" in printed.out and "1 / 1" in printed.out
    assert "not in the ground truth" in printed.err
    assert "eval scanrefer (vote2cap): METEOR (Java) @0.5 - 5/5 stages" in printed.err  # one line per stage


def test_detection_voc_end_to_end(tmp_path, capsys):
    pred = {"s1": [{"box": [0, 0, 0, 2, 2, 2], "score": 0.5, "label": "chair"}]}
    rc = main(["eval", "detection", "--pred", _write(tmp_path, "p.json", pred), "--gt", _write(tmp_path, "g.json", GT)])
    assert rc == 0 and "mAP@0.25" in capsys.readouterr().out


@pytest.mark.parametrize("bad, field", [
    ({"s1": [{"box": [0, 0, float("nan"), 1, 1, 1], "caption": "x"}]}, "s1[0].box"),
    ({"s1": [{"box": [0, 0, 0, 1, -1, 1], "caption": "x"}]}, "s1[0].box"),
    ({"s1": [{"box": [0, 0, 0, 1, 1, 1]}]}, "s1[0].caption"),
    ({"s1": [{"caption": "x"}]}, "s1[0]"),
    (["not", "a", "mapping"], "(top level)"),
])
def test_bad_prediction_files_give_one_line(tmp_path, capsys, bad, field):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(bad).replace("NaN", "NaN"))
    out = tmp_path / "metrics.json"
    rc = main(["eval", "scanrefer", "--pred", str(p), "--gt", _write(tmp_path, "g.json", GT), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "PredictionFormatError" in err and str(p) in err and f"'{field}" in err
    assert not out.exists()  # nothing written half


def test_bad_mode_is_an_error(tmp_path, capsys):
    rc = main(["eval", "tod3cap", "--pred", _write(tmp_path, "p.json", PRED), "--gt", _write(tmp_path, "g.json", GT), "--mode", "2018"])
    assert rc == 2 and "--mode" in capsys.readouterr().err


def test_strict_ids_turns_unknown_scenes_into_an_error(tmp_path, capsys):
    p = _write(tmp_path, "p.json", PRED)
    rc = main(["eval", "detection", "--pred", p, "--gt", _write(tmp_path, "g.json", GT), "--strict-ids"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "'ghost'" in err and p in err and len(err.splitlines()) == 1


def test_detection_predictions_without_labels_are_not_scored_zero_silently(tmp_path, capsys):
    g = _write(tmp_path, "g.json", GT)
    unlabelled = _write(tmp_path, "p.json", {"s1": [{"box": [0, 0, 0, 2, 2, 2], "score": 0.5}]})
    out = tmp_path / "m.json"
    assert main(["eval", "detection", "--pred", unlabelled, "--gt", g, "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["mAP@0.5"] == pytest.approx(100.0) and "AP@0.5/object" in m  # class-agnostic, a perfect box
    mixed = _write(tmp_path, "q.json", {"s1": [{"box": [0, 0, 0, 2, 2, 2], "score": 0.5, "label": "chair"},
                                               {"box": [0, 0, 0, 2, 2, 2], "score": 0.4}]})
    for pred, mode in ((mixed, "voc"), (unlabelled, "nuscenes")):
        capsys.readouterr()
        assert main(["eval", "detection", "--mode", mode, "--pred", pred, "--gt", g]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "PredictionFormatError" in err and ".label'" in err
