import numpy as np
import pytest

from dense3d.eval import detection
from dense3d.eval.formats import parse_box_predictions, parse_object_gt


def test_voc_ap_by_hand():
    gt = parse_object_gt("g", {"s": [{"object_name": "chair", "box": [0, 0, 0, 2, 2, 2]},
                                     {"object_name": "chair", "box": [5, 0, 0, 2, 2, 2]}]})
    pred = parse_box_predictions("p", {"s": [
        {"box": [0, 0, 0, 2, 2, 2], "score": 0.9, "label": "chair"},  # TP
        {"box": [0, 0, 0, 2, 2, 2], "score": 0.8, "label": "chair"},  # same GT again: FP
        {"box": [5, 0, 1, 2, 2, 4], "score": 0.7, "label": "chair"},  # IoU exactly 0.5
        {"box": [5, 0, 0, 2, 2, 2], "score": 0.5, "label": "table"},  # class without GT: ignored
    ]}, need_caption=False)
    out = detection.evaluate_voc(pred, gt, ious=(0.25, 0.5))
    assert out["AP@0.25/chair"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3))
    assert out["AP@0.5/chair"] == pytest.approx(100 * 0.5)  # 0.5 is not > 0.5
    assert out["mAP@0.5"] == out["AP@0.5/chair"] and out["AR@0.25"] == pytest.approx(100.0)


def test_nuscenes_centre_distance_ap_by_hand():
    gt = parse_object_gt("g", {"a": [{"label": "car", "box": [0, 0, 0, 4, 2, 1.5, 0]}]})
    perfect = parse_box_predictions("p", {"a": [{"box": [0.3, 0, 0, 4, 2, 1.5, 1.0], "score": 0.9, "label": "car"}]}, need_caption=False)
    assert detection.evaluate_nuscenes(perfect, gt)["mAP"] == pytest.approx(100.0)
    fp_first = parse_box_predictions("p", {"a": [{"box": [10, 0, 0, 4, 2, 1.5, 0], "score": 0.95, "label": "car"},
                                                 {"box": [0.7, 0, 0, 4, 2, 1.5, 0], "score": 0.9, "label": "car"}]}, need_caption=False)
    out = detection.evaluate_nuscenes(fp_first, gt)
    r = np.linspace(0, 1, 101)[11:]
    ap_match = np.mean(np.clip(0.5 * r - 0.1, 0, None)) / 0.9  # precision = r / 2 along the interpolation
    assert out["AP@0.5m/car"] == 0.0  # 0.7 m is not < 0.5 m
    assert out["AP@1m/car"] == pytest.approx(100 * ap_match)
    assert out["mAP"] == pytest.approx(100 * ap_match * 3 / 4)
