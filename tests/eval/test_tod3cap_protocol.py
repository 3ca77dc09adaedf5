"""TOD3Cap compatible (size-only IoU, kept fraction) vs corrected (rotated IoU, Hungarian)."""
import pytest

from dense3d.errors import PredictionFormatError
from dense3d.eval import tod3cap
from dense3d.eval.formats import parse_box_predictions, parse_object_gt

GT = {"s": [
    {"label": "car", "box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a parked car .", "num_pts": 12},
    {"label": "pedestrian", "box": [5, 5, 0, 0.5, 0.5, 1.8, 0], "caption": None, "num_pts": 3},
    {"label": "car", "box": [60, 0, 0, 4, 2, 1.5, 0], "caption": "far away", "num_pts": 3},  # beyond 50 m
    {"label": "car", "box": [0, 20, 0, 4, 2, 1.5, 0], "caption": "no points", "num_pts": 0},  # dropped
]}
PRED = {
    "s": [
        {"box": [-20, 3, 0, 4, 2, 1.5, 1.0], "caption": "a car , parked .", "label": "car"},  # same size, elsewhere
        {"box": [5, 5, 0, 0.5, 0.5, 1.8, 0], "caption": "a person walking", "label": "pedestrian"},
        {"box": [10, 0, 0, 2, 1, 0.75, 0], "caption": "a small car", "label": "car"},  # scale IoU 0.125
        {"box": [55, 0, 0, 4, 2, 1.5, 0], "caption": "filtered", "label": "car"},  # beyond 50 m
        {"box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a parked car", "label": "car"},  # exact
    ],
    "other": [{"box": [0, 0, 0, 1, 1, 1, 0], "caption": "x", "label": "car"}],
}


def _data():
    return parse_box_predictions("p", PRED), parse_object_gt("g", GT)


def test_compatible_reproduces_get_text_results(scorer):
    pred, gt = _data()
    out = tod3cap.evaluate(pred, gt, ious=(0.25, 0.5), mode="compatible", scorer=scorer)
    assert out["records"] == 4 and out["kept@0.25"] == 3 and out["kept@0.5"] == 3
    kept = [("a car parked", ["a parked car"]),  # centre and yaw ignored; only standalone , and . removed
            ("a person walking", ["The object is ignored."]),  # matched GT without caption
            ("a parked car", ["a parked car"])]
    corpus, _ = scorer.score_pairs(kept)
    for m in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L"):
        assert out[f"{m}@0.5"] == pytest.approx(100 * corpus[m] * 3 / 4)
    assert out["unknown_scenes"] == ["other"]


def test_corrected_uses_rotated_iou_one_to_one(scorer):
    pred, gt = _data()
    out = tod3cap.evaluate(pred, gt, ious=(0.25, 0.5), mode="corrected", scorer=scorer)
    # captioned GT in range: the car at x=10 only; 4 predictions in range; Hungarian gives it the exact box
    _, per = scorer.score_pairs([("a parked car", ["a parked car"])])
    p, r = per["METEOR"][0] / 4, per["METEOR"][0] / 1
    assert out["pairs"] == 1
    assert out["METEOR-P@0.5"] == pytest.approx(100 * p) and out["METEOR-R@0.5"] == pytest.approx(100 * r)
    assert out["METEOR-F1@0.5/bev"] == pytest.approx(100 * 2 * p * r / (p + r))


def test_too_many_predictions_and_unknown_label_are_errors(scorer):
    _, gt = _data()
    many = parse_box_predictions("p", {"s": [{"box": [1, 1, 0, 1, 1, 1, 0], "caption": "c", "label": "car"}] * 501})
    with pytest.raises(PredictionFormatError, match="at most 500"):
        tod3cap.evaluate(many, gt, scorer=scorer)
    bad = parse_box_predictions("p", {"s": [{"box": [1, 1, 0, 1, 1, 1, 0], "caption": "c", "label": "spaceship"}]})
    with pytest.raises(PredictionFormatError, match="label"):
        tod3cap.evaluate(bad, gt, scorer=scorer)
