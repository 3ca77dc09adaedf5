"""Scan2Cap benchmark: Hungarian matching on GIoU, >= thresholds, P/R/F1, DCmAP."""
import numpy as np
import pytest

from dense3d.eval import scan2cap, tod3cap
from dense3d.eval.formats import parse_box_predictions, parse_object_gt

GT = {
    "s1": [
        {"object_id": 0, "object_name": "chair", "box": [0, 0, 0, 2, 2, 2], "descriptions": ["a brown chair"]},
        {"object_id": 1, "object_name": "table", "box": [3, 0, 0, 2, 2, 2], "descriptions": ["a wooden table"]},
    ],
    "s2": [{"object_id": 0, "object_name": "door", "box": [0, 0, 0, 2, 2, 2], "descriptions": ["a white door"]}],
}
PRED = {
    "s1": [
        {"box": [0, 0, 0, 2, 2, 2], "caption": "a brown chair", "score": 0.9, "label": "chair"},
        # IoU 0.5 with the chair, but the Hungarian sum (1 - 0.4 > -0.2 + 0.5) gives it the table (IoU 0)
        {"box": [0, 0, 1, 2, 2, 4], "caption": "a chair", "score": 0.8, "label": "chair"},
    ],
    "s2": [
        {"box": [0, 0, 1, 2, 2, 4], "caption": "a white door", "score": 0.7, "label": "door"},  # IoU exactly 0.5
        {"box": [20, 0, 0, 1, 1, 1], "caption": "nothing", "score": 0.6, "label": "door"},  # unmatched
    ],
}


def test_hungarian_is_one_to_one_on_giou():
    pred, gt = parse_box_predictions("p", PRED), parse_object_gt("g", GT)
    pairs = scan2cap.hungarian_pairs(np.stack([p.box.aa for p in pred["s1"]]), np.stack([o.box.aa for o in gt["s1"]]))
    assert sorted(pairs) == [(0, 0, 1.0), (1, 1, 0.0)]


def test_f1_and_dcmap_by_hand(scorer):
    pred, gt = parse_box_predictions("p", PRED), parse_object_gt("g", GT)
    out = scan2cap.evaluate(pred, gt, ious=(0.25, 0.5), scorer=scorer)
    pairs = [("sos a brown chair eos", ["sos a brown chair eos"]), ("sos a chair eos", ["sos a wooden table eos"]),
             ("sos a white door eos", ["sos a white door eos"])]
    _, per = scorer.score_pairs(pairs)
    for m in ("CIDEr", "METEOR", "BLEU-4", "ROUGE-L"):
        s = per[m][0] + per[m][2]  # IoU 1 and IoU exactly 0.5 pass (>=); IoU 0 does not
        p, r = s / 4, s / 3
        assert out[f"{m}-P@0.5"] == pytest.approx(100 * p)
        assert out[f"{m}-R@0.5"] == pytest.approx(100 * r)
        assert out[f"{m}-F1@0.5"] == pytest.approx(100 * 2 * p * r / (p + r))
    # DCmAP: ranking 0.9 (IoU 1), 0.8 (IoU 0), 0.7 (IoU 0.5), 0.6 (unmatched); 3 GT objects
    m0, m2 = per["METEOR"][0], per["METEOR"][2]
    aps = []
    for t in (0.1, 0.2, 0.3, 0.4, 0.5):
        for mt in (0.15, 0.3, 0.45, 0.6, 0.75):
            first, third = m0 >= mt, m2 >= mt  # IoU 1 and 0.5 pass every IoU threshold
            if first and third:
                aps.append(1 / 3 * 1 + 1 / 3 * 2 / 3)  # TP FP TP FP
            elif first:
                aps.append(1 / 3)
            elif third:
                aps.append(1 / 3 * 1 / 3)  # FP FP TP: precision 1/3 at recall 1/3
            else:
                aps.append(0.0)
    assert out["DCmAP"] == pytest.approx(100 * np.mean(aps))
    assert out["predictions"] == 4 and out["objects"] == 3 and out["pairs"] == 3
    # mAP@0.5 (strict > in VOC detection): chair TP (IoU 1); door's IoU 0.5 box is not > 0.5
    assert out["mAP@0.5"] == pytest.approx(100 * np.mean([1.0, 0.0, 0.0]))


def test_per_object_scores_sum_to_the_recall_and_pair_up(scorer):
    # a scene with an object and no prediction first; in s1 prediction 0 is the table's, 1 the chair's
    gt_x = {"s0": [{"object_id": 7, "object_name": "bed", "box": [0, 0, 0, 2, 2, 2], "descriptions": ["a red bed"]}], **GT}
    pred_x = {"s1": [{"box": [3, 0, 0, 2, 2, 2], "caption": "a wooden table", "score": 0.9},
                     {"box": [0, 0, 0, 2, 2, 2.2], "caption": "a chair", "score": 0.8}],
              "s2": PRED["s2"]}
    pred, gt = parse_box_predictions("p", pred_x), parse_object_gt("g", gt_x)
    out = scan2cap.evaluate(pred, gt, ious=(0.25, 0.5), scorer=scorer)
    objects, scores = scan2cap.per_object_scores(pred, gt, k=0.5, metric="CIDEr", scorer=scorer)
    assert objects == [("s0", "7"), ("s1", "0"), ("s1", "1"), ("s2", "0")]
    # scored as the benchmark does: every object, the unmatched bed with "sos eos" (its references
    # count in CIDEr's IDF), in object order
    _, per = scorer.score_pairs([("sos eos", ["sos a red bed eos"]),
                                 ("sos a chair eos", ["sos a brown chair eos"]),
                                 ("sos a wooden table eos", ["sos a wooden table eos"]),
                                 ("sos a white door eos", ["sos a white door eos"])])
    assert scores[0] == 0.0  # no prediction in s0
    assert list(scores[1:]) == pytest.approx(per["CIDEr"][1:])
    assert 100 * scores.mean() == pytest.approx(out["CIDEr-R@0.5"])
    # B: the chair captioned right, the door's caption worse
    pred_b = parse_box_predictions("b", {"s1": [pred_x["s1"][0], dict(pred_x["s1"][1], caption="a brown chair")],
                                         "s2": [dict(PRED["s2"][0], caption="a chair")]})
    _, b = scan2cap.per_object_scores(pred_b, gt, k=0.5, metric="CIDEr", scorer=scorer)
    r = scan2cap.paired_difference(pred, pred_b, gt, k=0.5, metric="CIDEr", scorer=scorer)
    d = b - scores
    assert d[1] > 0 and d[3] < 0 and d[0] == 0  # the chair better, the door worse, the bed unmatched in both
    assert r["objects"] == 4 and r["B better"] == int((d > 0).sum()) and r["A better"] == int((d < 0).sum())
    assert r["B-A"] == pytest.approx(100 * d.mean()) and r["A"] == pytest.approx(out["CIDEr-R@0.5"])
    assert r["SE"] == pytest.approx(100 * d.std(ddof=1) / 2) and r["SE"] > 0
    with pytest.raises(ValueError, match="metric"):
        scan2cap.per_object_scores(pred, gt, metric="CIDEr-D")
    with pytest.raises(ValueError, match="at least 2"):
        scan2cap.paired_difference(pred, pred_b, {"s0": gt["s0"]}, scorer=scorer)


def test_paired_tool_reads_two_eval_folders_and_names_a_different_ground_truth(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("paired_scan2cap", Path(__file__).parents[2] / "tools" / "paired_scan2cap.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "ground_truth_boxes.json").write_text(json.dumps(GT))
        (d / "predictions_boxes.json").write_text(json.dumps(PRED))
        (d / "metrics.json").write_text(json.dumps({"boxes": {"scan2cap": {}}}))  # what dense3d eval wrote: Scan2Cap's
    assert tool.main([str(a), str(b), "--iou", "0.5", "--metric", "ROUGE-L", "--out", str(tmp_path / "r.json")]) == 0
    assert "3 objects, scan2cap ROUGE-L-R@0.5" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["B-A"] == 0.0
    (b / "ground_truth_boxes.json").write_text(json.dumps({"s1": GT["s1"]}))
    with pytest.raises(tool.PredictionFormatError, match="ground_truth_boxes.json"):
        tool.main([str(a), str(b)])
    assert tool.exit_status(lambda: tool.main([str(a), str(tmp_path / "nope")]), "t") == 2
    with pytest.raises(tool.PredictionFormatError, match="not a folder"):  # a file, not an eval folder
        tool.main([str(a), str(tmp_path / "r.json")])
    with pytest.raises(SystemExit):
        tool.main([str(a), str(a), "--iou", "0"])
    (a / "metrics.json").unlink()  # auto needs to know how the folders were scored
    with pytest.raises(tool.PredictionFormatError, match="metrics.json"):
        tool.main([str(a), str(a)])
    (a / "metrics.json").write_text(json.dumps({"boxes": []}))
    with pytest.raises(tool.PredictionFormatError, match="metrics.json.*boxes"):
        tool.main([str(a), str(a)])


def test_paired_tool_scores_tod3cap_folders_with_their_protocol(tmp_path, capsys):
    """A folder scored with TOD3Cap's corrected protocol is compared with it: its box filter
    (fewer objects than Scan2Cap counts), and its recall is the one dense3d eval wrote."""
    import importlib.util
    import json
    from pathlib import Path

    from tests.eval.test_tod3cap_protocol import PAIRED_GT, PAIRED_PRED

    spec = importlib.util.spec_from_file_location("paired_scan2cap", Path(__file__).parents[2] / "tools" / "paired_scan2cap.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    a = tmp_path / "a"
    a.mkdir()
    gt_file = {s: [{("descriptions" if k == "caption" else k): ([v] if k == "caption" else v) for k, v in o.items()}
                   for o in objs] for s, objs in PAIRED_GT.items()}  # as dense3d eval writes it
    (a / "ground_truth_boxes.json").write_text(json.dumps(gt_file))
    (a / "predictions_boxes.json").write_text(json.dumps({s: [dict(p, score=1.0) for p in v] for s, v in PAIRED_PRED.items()}))
    pred, gt = parse_box_predictions("p", PAIRED_PRED), parse_object_gt("g", PAIRED_GT)
    want = tod3cap.evaluate(pred, gt, ious=(0.25,), mode="corrected")["CIDEr-R@0.25"]
    (a / "metrics.json").write_text(json.dumps({"boxes": {"tod3cap_corrected": {"CIDEr-R@0.25": want}}}))
    assert tool.main([str(a), str(a), "--out", str(tmp_path / "r.json")]) == 0
    assert "4 objects, tod3cap CIDEr-R@0.25" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["A"] == pytest.approx(want)
    assert tool.main([str(a), str(a), "--protocol", "scan2cap"]) == 0  # asked for: every object with a caption
    assert "6 objects, scan2cap CIDEr-R@0.25" in capsys.readouterr().out
    b = tmp_path / "b"
    b.mkdir()
    for name in ("ground_truth_boxes.json", "predictions_boxes.json"):
        (b / name).write_text((a / name).read_text())
    (b / "metrics.json").write_text(json.dumps({"boxes": {"scan2cap": {}}}))  # scored with the other protocol
    with pytest.raises(tool.PredictionFormatError, match="b/metrics.json.*same protocol.*tod3cap.*got scan2cap"):
        tool.main([str(a), str(b)])


def test_cider_idf_comes_from_every_scored_object_as_the_benchmark_scores_its_corpus(scorer):
    # The benchmark's eval.py scores all GT objects at once (unmatched ones get "sos eos"), so the
    # references of an object no prediction reached still weigh in CIDEr's IDF.
    gt_x = {"s0": [{"object_id": 7, "object_name": "bed", "box": [0, 0, 0, 2, 2, 2], "descriptions": ["a brown bed"]}], **GT}
    pred_x = {"s1": [dict(PRED["s1"][0], caption="the brown chair"), PRED["s1"][1]],
              "s2": [dict(PRED["s2"][0], caption="a white wooden door"), PRED["s2"][1]]}
    pred, gt = parse_box_predictions("p", pred_x), parse_object_gt("g", gt_x)
    out = scan2cap.evaluate(pred, gt, ious=(0.5,), scorer=scorer)
    matched = [("sos the brown chair eos", ["sos a brown chair eos"]), ("sos a chair eos", ["sos a wooden table eos"]),
               ("sos a white wooden door eos", ["sos a white door eos"])]
    _, per = scorer.score_pairs([("sos eos", ["sos a brown bed eos"])] + matched)
    _, matched_only = scorer.score_pairs(matched)
    s = per["CIDEr"][1] + per["CIDEr"][3]  # the chair (IoU 1) and the door (IoU 0.5) pass
    assert out["CIDEr-R@0.5"] == pytest.approx(100 * s / 4) and out["CIDEr-P@0.5"] == pytest.approx(100 * s / 4)
    assert s != pytest.approx(matched_only["CIDEr"][0] + matched_only["CIDEr"][2])  # the IDF set matters here


def test_references_are_not_cut_at_30_tokens_as_the_benchmark_joins_every_token(scorer):
    long_desc = " ".join(f"w{i}" for i in range(40))
    gt = parse_object_gt("g", {"s": [{"object_id": 0, "object_name": "chair", "box": [0, 0, 0, 2, 2, 2], "descriptions": [long_desc]},
                                     {"object_id": 1, "object_name": "table", "box": [5, 0, 0, 2, 2, 2], "descriptions": ["a table"]}]})
    pred = parse_box_predictions("p", {"s": [{"box": [0, 0, 0, 2, 2, 2], "caption": long_desc, "score": 1.0},
                                             {"box": [5, 0, 0, 2, 2, 2], "caption": "a table", "score": 1.0}]})
    out = scan2cap.evaluate(pred, gt, ious=(0.5,), scorer=scorer)
    _, per = scorer.score_pairs([(f"sos {long_desc} eos", [f"sos {long_desc} eos"]), ("sos a table eos", ["sos a table eos"])])
    assert out["BLEU-4-R@0.5"] == pytest.approx(100 * sum(per["BLEU-4"]) / 2)
    assert out["BLEU-4-R@0.5"] == pytest.approx(100.0)  # the whole description matches the whole caption
