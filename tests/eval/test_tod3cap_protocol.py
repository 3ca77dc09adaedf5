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


PAIRED_GT = {
    "a": [
        {"label": "car", "box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a red car parked, in front of the ego car.", "num_pts": 9},
        {"label": "truck", "box": [0, 12, 0, 8, 3, 3, 0], "caption": "a white truck moving, far away.", "num_pts": 5},
        {"label": "car", "box": [70, 0, 0, 4, 2, 1.5, 0], "caption": "beyond the class range", "num_pts": 5},
        {"label": "car", "box": [0, -9, 0, 4, 2, 1.5, 0], "caption": "a car with no points", "num_pts": 0},
    ],
    "b": [
        {"label": "barrier", "box": [3, 3, 0, 2, 0.5, 1, 0], "caption": "a gray barrier placed, close.", "num_pts": 4},
        {"label": "pedestrian", "box": [-6, 2, 0, 0.6, 0.6, 1.8, 0], "caption": "a pedestrian walking, behind.", "num_pts": 3},
    ],
}
PAIRED_PRED = {
    "a": [
        {"box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a red car parked, in front of the ego car.", "label": "car"},
        {"box": [0, 13.5, 0, 8, 3, 3, 0], "caption": "a white truck parked, far away.", "label": "truck"},  # IoU 0.45
        {"box": [70, 0, 0, 4, 2, 1.5, 0], "caption": "beyond the class range", "label": "car"},
    ],
    "b": [{"box": [3, 3, 0, 2, 0.5, 1, 0], "caption": "a gray barrier placed , close .", "label": "barrier"}],  # the walker: unmatched
}


def test_per_object_scores_are_the_corrected_recall_object_by_object(scorer):
    """The mean of each captioned GT box's share is the corrected protocol's recall at each IoU
    (the benchmark's box filter, rotated IoU, TOD3Cap's cleaning, one IDF over the matched pairs),
    and a paired difference moves only the object whose caption changed."""
    pred, gt = parse_box_predictions("p", PAIRED_PRED), parse_object_gt("g", PAIRED_GT)
    out = tod3cap.evaluate(pred, gt, ious=(0.25, 0.5), mode="corrected", scorer=scorer)
    for k in (0.25, 0.5):
        objects, scores = tod3cap.per_object_scores(pred, gt, k=k, scorer=scorer)
        assert len(objects) == 4  # the car beyond 50 m and the one without points are not scored
        assert 100 * scores.mean() == pytest.approx(out[f"CIDEr-R@{k:g}"])
        assert scores[3] == 0  # the walker: no prediction
        assert (scores[1] > 0) == (k == 0.25)  # the truck's box passes 0.25, not 0.5
    _, meteor = tod3cap.per_object_scores(pred, gt, k=0.25, metric="METEOR", scorer=scorer)
    assert 100 * meteor.mean() == pytest.approx(out["METEOR-R@0.25"])

    changed = {**PAIRED_PRED, "a": [dict(PAIRED_PRED["a"][0], caption="a red car moving, behind the ego car.")]
               + PAIRED_PRED["a"][1:]}
    pred_b = parse_box_predictions("p", changed)
    _, a = tod3cap.per_object_scores(pred, gt, scorer=scorer)
    _, b = tod3cap.per_object_scores(pred_b, gt, scorer=scorer)
    r = tod3cap.paired_difference(pred, pred_b, gt, scorer=scorer)
    assert r["objects"] == 4 and r["B better"] == 0 and r["A better"] >= 1 and b[0] < a[0]
    assert r["B-A"] == pytest.approx(100 * (b - a).mean()) and r["A"] == pytest.approx(out["CIDEr-R@0.25"])
    with pytest.raises(ValueError, match="metric"):
        tod3cap.per_object_scores(pred, gt, metric="BLEU-1", scorer=scorer)
    with pytest.raises(ValueError, match="at least 2"):
        tod3cap.paired_difference(pred, pred, parse_object_gt("g", {"b": PAIRED_GT["b"][:1]}), scorer=scorer)
