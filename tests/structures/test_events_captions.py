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
