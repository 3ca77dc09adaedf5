import pytest
import torch

from dense3d.errors import BoxError, EventError, PredictionFormatError
from dense3d.structures import DenseCaption, Events


def test_events_properties_and_iou():
    e = Events([[0.0, 2.0], [1.0, 3.0], [5.0, 5.0]])
    torch.testing.assert_close(e.lengths, torch.tensor([2.0, 2.0, 0.0]))
    torch.testing.assert_close(e.centers, torch.tensor([1.0, 2.0, 5.0]))
    iou = e.pairwise_iou(Events([[0.0, 2.0]]))
    torch.testing.assert_close(iou[:, 0], torch.tensor([1.0, 1 / 3, 0.0]))
    back = Events.from_center_length(e.to_center_length())
    torch.testing.assert_close(back.tensor, e.tensor)


@pytest.mark.parametrize(
    "bad,match",
    [([[2.0, 1.0]], "t1 >= t0"), ([[0.0, float("nan")]], "finite"), ([[0.0, 1.0, 2.0]], "shape"), ([[-1.0, 1.0]], "t0 >= 0")],
)
def test_bad_events(bad, match):
    with pytest.raises(EventError, match=match) as e:
        Events(bad, source="gt.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("gt.json: field ")


def test_events_past_duration():
    with pytest.raises(EventError, match="duration"):
        Events([[0.0, 11.0]], duration=10.0)


def test_dense_caption_round_trip_and_errors():
    c = DenseCaption("box", (1, 2, 3, 1, 1, 1, 0), 0.9, "car", "a red car")
    assert DenseCaption.from_dict(c.to_dict()) == c
    ev = DenseCaption("event", (1.0, 2.5), 0.5, "horn", "a horn honks twice", {"azimuth": 0.3})
    assert DenseCaption.from_dict(ev.to_dict()) == ev
    with pytest.raises(BoxError):
        DenseCaption("box", (1, 2, 3, 1, -1, 1, 0), 0.9, "car", "x")
    with pytest.raises(EventError):
        DenseCaption("event", (3.0, 2.0), 0.9, "horn", "x")
    with pytest.raises(PredictionFormatError):
        DenseCaption.from_dict({"score": 1.0, "label": "car"}, source="pred.json")


def test_dense_caption_score_outside_0_1_and_negative_start_are_one_line_errors():
    # a logit passed as the score, or an event starting before the clip, was accepted
    for score in (1.2, -0.1, 3.5):
        with pytest.raises(PredictionFormatError, match=r"field 'score': expected a confidence in \[0, 1\]") as e:
            DenseCaption("box", (1, 2, 3, 1, 1, 1, 0), score, "car", "x")
        assert "\n" not in str(e.value)
    with pytest.raises(EventError, match="t0 >= 0") as e:
        DenseCaption("event", (-0.5, 2.0), 0.5, "horn", "x")
    assert "\n" not in str(e.value)
    with pytest.raises(EventError, match="t0 >= 0"):
        DenseCaption.from_dict({"timestamp": [-1e-3, 1.0], "score": 0.5, "label": "horn", "caption": "x"}, source="preds.json")
    # the ends are fine: a GT region has score 1, an event may start at 0 and have no length
    assert DenseCaption("box", (1, 2, 3, 1, 1, 1, 0), 1.0, "car", "x").score == 1.0
    assert DenseCaption("box", (1, 2, 3, 1, 1, 1, 0), 0.0, "car", "x").score == 0.0
    assert DenseCaption("event", (0.0, 0.0), 0.5, "horn", "x").region == (0.0, 0.0)


@pytest.mark.parametrize(
    "record, error",
    [
        ({"box": None, "score": 0.5, "label": "car", "caption": "x"}, BoxError),
        ({"box": 3.0, "score": 0.5, "label": "car", "caption": "x"}, BoxError),
        ({"box": ["a"] * 7, "score": 0.5, "label": "car", "caption": "x"}, BoxError),
        ({"timestamp": [None, 2], "score": 0.5, "label": "horn", "caption": "x"}, EventError),
        ({"box": [0] * 7, "score": "high", "label": "car", "caption": "x"}, PredictionFormatError),
        ({"box": [0] * 7, "score": None, "label": "car", "caption": "x"}, PredictionFormatError),
    ],
)
def test_dense_caption_records_of_wrong_types_are_one_line_errors(record, error):
    with pytest.raises(error):
        DenseCaption.from_dict(record, source="preds.json")
