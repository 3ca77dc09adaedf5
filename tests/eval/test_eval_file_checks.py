"""Evaluation inputs the second probe found accepted silently or refused with a misleading line:
negative event starts and durations, negative ego distances, non-integer ScanNet object ids, and
event predictions given where 3D boxes are read (dense3d eval, dense3d vis)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dense3d.cli import main
from dense3d.errors import PredictionFormatError
from dense3d.eval import scan2cap, scanrefer
from dense3d.eval.formats import parse_box_predictions, parse_event_gt, parse_event_predictions, parse_object_gt

EV = {"timestamp": [1.0, 8.5], "sentence": "a door opens", "score": 0.8}
GT_EV = {"duration": 30.0, "timestamps": [[0.0, 10.0]], "sentences": ["A door opens."]}


def test_event_predictions_with_a_negative_start_are_an_error():
    with pytest.raises(PredictionFormatError, match=r"p.json: field 'results.v\[1\].timestamp': expected a start t0 >= 0.*got \[-3.0, 2.0\]"):
        parse_event_predictions("p.json", {"results": {"v": [EV, dict(EV, timestamp=[-3, 2])]}})


def test_event_predictions_may_end_past_the_duration():
    # real PDVC outputs run slightly past a video's end: kept, as the protocol scores them
    out = parse_event_predictions("p.json", {"results": {"v": [dict(EV, timestamp=[25, 500])]}})
    assert out["v"][0]["timestamp"] == (25.0, 500.0)
    gt = parse_event_gt("g.json", {"v": dict(GT_EV, timestamps=[[25, 31]])})
    assert gt["v"]["timestamps"] == [(25.0, 31.0)]


@pytest.mark.parametrize("change,field,expected", [
    ({"timestamps": [[-3, 2]]}, "v.timestamps[0]", "a start t0 >= 0"),
    ({"duration": -30}, "v.duration", "a number of seconds > 0, got -30"),
    ({"duration": 0}, "v.duration", "a number of seconds > 0, got 0"),
    ({"duration": "30"}, "v.duration", "a number of seconds > 0, got '30'"),
    ({"duration": True}, "v.duration", "a number of seconds > 0, got True"),
    ({"duration": float("nan")}, "v.duration", "a number of seconds > 0, got nan"),
])
def test_bad_event_ground_truth_is_an_error(change, field, expected):
    with pytest.raises(PredictionFormatError, match=re.escape(f"g.json: field '{field}': expected {expected}")):
        parse_event_gt("g.json", {"v": dict(GT_EV, **change)})


def test_event_ground_truth_without_duration_is_fine():
    gt = {k: v for k, v in GT_EV.items() if k != "duration"}
    assert parse_event_gt("g.json", {"v": gt})["v"]["sentences"] == ["A door opens."]
    assert parse_event_gt("g.json", {"v": dict(gt, duration=None)})["v"]["timestamps"] == [(0.0, 10.0)]


def test_cli_events_refuses_a_negative_start_in_one_line(tmp_path, capsys):
    pred, gt = tmp_path / "p.json", tmp_path / "g.json"
    pred.write_text(json.dumps({"results": {"v": [dict(EV, timestamp=[-3, 2])]}}))
    gt.write_text(json.dumps({"v": GT_EV}))
    assert main(["eval", "events", "--pred", str(pred), "--gt", str(gt), "--no-soda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "p.json: field 'results.v[0].timestamp': expected a start t0 >= 0" in err


TOD = {"label": "car", "box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a car .", "num_pts": 12}


@pytest.mark.parametrize("ego", [-3, -0.1])
def test_negative_ego_dist_is_an_error(ego):
    with pytest.raises(PredictionFormatError, match=rf"gt.json: field 'tok\[0\].ego_dist': expected a distance >= 0 \(metres\), got {ego}"):
        parse_object_gt("gt.json", {"tok": [dict(TOD, ego_dist=ego)]})
    assert parse_object_gt("gt.json", {"tok": [dict(TOD, ego_dist=0)]})["tok"][0].ego_dist == 0.0


OBJ = {"object_name": "chair", "box": [0, 0, 0, 1, 1, 1], "descriptions": ["a brown chair"]}
PRED = {"s": [{"box": [0, 0, 0, 1, 1, 1], "caption": "a brown chair", "score": 1.0}]}


@pytest.mark.parametrize("oid", [None, [3], {"id": 3}, 3.0, False])
def test_object_ids_of_other_types_are_an_error(oid):
    with pytest.raises(PredictionFormatError, match=r"g.json: field 's\[0\].object_id': expected an integer or a string"):
        parse_object_gt("g.json", {"s": [dict(OBJ, object_id=oid)]})


@pytest.mark.parametrize("protocol", [scan2cap, scanrefer])
def test_scannet_protocols_need_integer_object_ids(protocol):
    # ScanRefer's JSON writes the ScanNet object id as a string of digits; the official code int()s it
    for ok in (3, "3"):
        gt = parse_object_gt("g.json", {"s": [dict(OBJ, object_id=ok)]})
        assert gt["s"][0].object_id == "3"
    gt = parse_object_gt("g.json", {"s": [dict(OBJ, object_id=1), dict(OBJ, object_id="x")]})
    name = protocol.__name__.rsplit(".", 1)[1]
    with pytest.raises(PredictionFormatError, match=rf"g.json: field 's\[1\].object_id': expected an integer id >= 0 for {name}.*got 'x'"):
        protocol.evaluate(parse_box_predictions("p.json", PRED), gt)


def test_object_ids_of_other_protocols_may_be_tokens():
    gt = parse_object_gt("g.json", {"tok": [dict(TOD, object_id="a7f3c0de")]})  # a nuScenes annotation token
    assert gt["tok"][0].object_id == "a7f3c0de"


PREDICT_EVENTS = {"boxes": {"av00002": []},
                  "events": {"results": {"av00002": [{"timestamp": [3.1, 10.0], "sentence": "", "score": 0.24}]}}}


@pytest.mark.parametrize("data,field,got", [
    (PREDICT_EVENTS, "events", "an object with 'boxes' and 'events'"),
    ({"version": "VERSION 1.0", "results": PREDICT_EVENTS["events"]["results"]}, "results", "an object with 'results'"),
])
def test_event_predictions_read_as_boxes_say_what_they_are(data, field, got):
    with pytest.raises(PredictionFormatError, match=rf"p.json: field '{field}': expected 3D box predictions .*event predictions "
                                                    rf"\(time spans\), which `dense3d eval events` scores, got {got}"):
        parse_box_predictions("p.json", data)


def test_dense3d_predict_output_of_an_events_run_is_read_by_the_events_parser():
    assert parse_event_predictions("p.json", PREDICT_EVENTS)["av00002"][0]["timestamp"] == (3.1, 10.0)


def test_cli_box_protocol_given_event_predictions(tmp_path, capsys):
    pred, gt = tmp_path / "pred_av.json", tmp_path / "g.json"
    pred.write_text(json.dumps(PREDICT_EVENTS))
    gt.write_text(json.dumps({"av00002": [TOD]}))
    assert main(["eval", "tod3cap", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pred_av.json: field 'events'" in err and "`dense3d eval events` scores" in err


def test_vis_given_event_predictions_says_it_draws_boxes(tmp_path, capsys):
    points, pred = tmp_path / "scan.bin", tmp_path / "pred_av.json"
    np.zeros((10, 6), np.float32).tofile(points)
    pred.write_text(json.dumps(PREDICT_EVENTS))
    assert main(["vis", "--points", str(points), "--pred", str(pred), "--scene", "av00002", "--out", str(tmp_path / "v.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(dense3d vis draws 3D boxes); this file holds event predictions" in err
    assert "expected a list of predictions" not in err
    assert not (tmp_path / "v.png").exists()
