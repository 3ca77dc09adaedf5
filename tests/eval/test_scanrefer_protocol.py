"""ScanRefer m@kIoU (Vote2Cap-DETR protocol) on a hand-built scene."""
import pytest

from dense3d.eval import scanrefer
from dense3d.eval.formats import parse_box_predictions, parse_object_gt

LONG = [f"w{i}" for i in range(35)]
GT = {
    "s1": [
        {"object_id": 0, "object_name": "chair", "box": [0, 0, 0, 2, 2, 2], "descriptions": [LONG, ["a", "brown", "chair"]]},
        {"object_id": 1, "object_name": "unknown", "box": [3, 0, 0, 2, 2, 2]},  # not in ScanRefer: not scored
        {"object_id": 2, "object_name": "door", "box": [0, 10, 0, 2, 2, 2], "descriptions": ["the white door"]},
    ],
    "s2": [{"object_id": 0, "object_name": "table", "box": [0, 0, 0, 1, 1, 1], "descriptions": [["a", "table"]]}],
}
PRED = {
    "s1": [
        # spans chair (IoU 0.304) and the unscored object (0.364): its best GT is the other object
        {"box": [1.6, 0, 0, 4, 2, 2], "caption": "spans both"},
        # IoU exactly 0.25 with the door: not > 0.25
        {"box": [0, 11.2, 0, 2, 2, 2], "caption": "edge door"},
        {"box": [0, 0, 0, 2, 2, 2], "caption": "first chair"},  # IoU 1, first of a tie
        {"box": [0, 0, 0, 2, 2, 2], "caption": "second chair"},  # IoU 1, loses the tie
        {"box": [0, 10.8, 0, 2, 2, 2], "caption": "door at quarter"},  # IoU 0.4286 with the door
    ],
    "ghost": [{"box": [0, 0, 0, 1, 1, 1], "caption": "x"}],
}
# s2 has no predictions at all: its table gets the placeholder.


def _data():
    return parse_box_predictions("pred.json", PRED), parse_object_gt("gt.json", GT)


def test_matching_rules():
    pred, gt = _data()
    m = scanrefer.match(pred["s1"], gt["s1"], (0.25, 0.5))
    # gt index -> (prediction index, IoU); IoUs by hand (Vote2Cap-DETR adds 1e-8 to the union)
    assert m[0.25].keys() == {0, 1, 2}
    assert m[0.25][0] == (2, pytest.approx(8 / (8 + 1e-8), abs=1e-15))  # tie on IoU 1: first in file order
    assert m[0.25][1] == (0, pytest.approx(6.4 / 17.6))  # best GT of the spanning box: the unscored object
    assert m[0.25][2] == (4, pytest.approx(4.8 / 11.2))  # IoU exactly 0.25 (prediction 1) does not count
    assert m[0.5].keys() == {0} and m[0.5][0][0] == 2
    # alone, the spanning box (IoU 0.304 > 0.25 with the chair) still does not cover the chair
    alone = scanrefer.match(pred["s1"][:1], gt["s1"], (0.25,))
    assert alone[0.25] == {1: (0, pytest.approx(6.4 / 17.6))}


def test_scores_equal_hand_built_pairs(scorer):
    pred, gt = _data()
    out = scanrefer.evaluate(pred, gt, ious=(0.25, 0.5), scorer=scorer)
    refs_chair = ["sos " + " ".join(LONG[:30]) + " eos", "sos a brown chair eos"]
    refs_door = ["sos the white door eos"]
    refs_table = ["sos a table eos"]
    # keys sorted: s1|0|chair, s1|2|door, s2|0|table
    exp25 = [("sos first chair eos", refs_chair), ("sos door at quarter eos", refs_door), ("sos eos", refs_table)]
    exp50 = [("sos first chair eos", refs_chair), ("sos eos", refs_door), ("sos eos", refs_table)]
    for k, pairs in ((0.25, exp25), (0.5, exp50)):
        corpus, _ = scorer.score_pairs(pairs)
        for name in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L"):
            assert out[f"{name}@{k:g}"] == pytest.approx(100 * corpus[name], abs=1e-12)
    assert out["matched@0.25"] == 2 and out["matched@0.5"] == 1 and out["objects"] == 3
    assert out["unknown_scenes"] == ["ghost"]


def test_empty_predictions_score_the_placeholder(scorer):
    _, gt = _data()
    out = scanrefer.evaluate({}, gt, ious=(0.5,), scorer=scorer)
    refs = [["sos " + " ".join(LONG[:30]) + " eos", "sos a brown chair eos"], ["sos the white door eos"], ["sos a table eos"]]
    corpus, _ = scorer.score_pairs([("sos eos", r) for r in refs])
    assert out["matched@0.5"] == 0
    assert out["METEOR@0.5"] == pytest.approx(100 * corpus["METEOR"])
    assert out["CIDEr@0.5"] == pytest.approx(100 * corpus["CIDEr"])
