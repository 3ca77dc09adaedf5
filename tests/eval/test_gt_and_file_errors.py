"""Evaluation inputs that used to crash deep inside or change scores silently: unreadable
files, duplicate ScanRefer objects, TOD3Cap ground truth without labels or with negative point counts."""
import json

import pytest

from dense3d.cli import main
from dense3d.errors import PredictionFormatError
from dense3d.eval import tod3cap
from dense3d.eval.formats import parse_box_predictions, parse_object_gt, read_json


def test_unreadable_files_are_one_line_errors(tmp_path):
    folder = tmp_path / "adir"
    folder.mkdir()
    with pytest.raises(PredictionFormatError, match=r"adir: field '\(file\)': expected an existing JSON file, got a folder"):
        read_json(folder)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b'{"s": "\xff\xfe"}')
    with pytest.raises(PredictionFormatError, match=r"bin.json: field '\(byte 7\)': expected UTF-8 JSON text, got byte 0xff"):
        read_json(binary)
    with pytest.raises(PredictionFormatError, match=r"nope.json: field '\(file\)': expected an existing JSON file"):
        read_json(tmp_path / "nope.json")


def test_cli_names_an_unreadable_prediction_file(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    gt = tmp_path / "g.json"
    gt.write_text(json.dumps({"s1": [{"object_name": "chair", "box": [0, 0, 0, 1, 1, 1]}]}))
    assert main(["eval", "detection", "--pred", str(tmp_path / "adir"), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "PredictionFormatError" in err and "adir" in err


def test_duplicate_object_ids_in_a_scene_are_an_error():
    obj = {"object_name": "chair", "box": [0, 0, 0, 1, 1, 1], "descriptions": ["a chair"]}
    ok = parse_object_gt("g.json", {"s": [dict(obj, object_id=1), dict(obj, object_id=2)], "t": [dict(obj, object_id=1)]})
    assert [o.object_id for o in ok["s"]] == ["1", "2"]
    with pytest.raises(PredictionFormatError, match=r"g.json: field 's\[1\].object_id': expected an id unique in the scene.*got 1, also s\[0\]"):
        parse_object_gt("g.json", {"s": [dict(obj, object_id=1), dict(obj, object_id="1", object_name="table")]})


TOD_GT = {"tok": [{"label": "car", "box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a car .", "num_pts": 12},
                  {"label": "barrier", "box": [5, 5, 0, 0.5, 2, 1, 0], "caption": "a barrier .", "num_pts": 3}]}


def test_tod3cap_drops_ground_truth_of_other_classes_as_the_protocol_does():
    pred = parse_box_predictions("p.json", {"tok": [{"box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a car", "label": "car"}]})
    gt = parse_object_gt("gt.json", {"tok": [TOD_GT["tok"][0], dict(TOD_GT["tok"][1], label="animal")]})
    _, kept = tod3cap.filter_boxes(pred, gt, source="p.json")
    assert [o.name for o in kept["tok"]] == ["car"]


@pytest.mark.parametrize("change,field,got", [
    ({"label": None}, "label", "missing"),
    ({"num_pts": -5}, "num_pts", "-5"),
])
def test_bad_tod3cap_ground_truth_is_an_error(change, field, got):
    entry = {k: v for k, v in dict(TOD_GT["tok"][1], **change).items() if v is not None}
    gt = parse_object_gt("gt.json", {"tok": [TOD_GT["tok"][0], entry]}) if field == "label" else None
    pred = parse_box_predictions("p.json", {"tok": [{"box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a car", "label": "car"}]})
    if field == "num_pts":
        with pytest.raises(PredictionFormatError, match=rf"gt.json: field 'tok\[1\].num_pts': expected an integer >= 0, got {got}"):
            parse_object_gt("gt.json", {"tok": [TOD_GT["tok"][0], entry]})
        return
    with pytest.raises(PredictionFormatError, match=rf"gt.json: field 'tok\[1\].label': expected one of \[.*\], got {got}"):
        tod3cap.filter_boxes(pred, gt, source="p.json")
    _, kept = tod3cap.filter_boxes(pred, parse_object_gt("gt.json", TOD_GT), source="p.json")
    assert len(kept["tok"]) == 2


def test_cli_tod3cap_names_the_ground_truth_file(tmp_path, capsys):
    gt = tmp_path / "g_badlabel.json"
    gt.write_text(json.dumps({"tok": [{k: v for k, v in TOD_GT["tok"][0].items() if k != "label"}]}))
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"tok": [{"box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a car", "label": "car"}]}))
    assert main(["eval", "tod3cap", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "g_badlabel.json" in err and "tok[0].label" in err and "missing" in err
