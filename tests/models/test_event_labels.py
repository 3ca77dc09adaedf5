"""Event labels: unlabelled events (-1) train "an event" of any class, labels map onto the head's
classes by name, out-of-range labels are a one-line error, and event records name their class."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dense3d.errors import AnnotationError, ConfigError, VideoError
from dense3d.models.encoders.audio.encoder import AudioEncoder
from dense3d.models.encoders.camera.backbone import ResNetBackbone
from dense3d.models.encoders.video.encoder import VideoEncoder
from dense3d.models.fusion.temporal_fuser import TemporalFuser
from dense3d.models.losses.event_loss import EventSetLoss, event_class_nll
from dense3d.models.proposals.events.detector import EventDetector
from dense3d.models.proposals.events.event_head import EventHead
from dense3d.models.proposals.events.matcher import HungarianEventMatcher
from dense3d.structures import EventAnnotations, Events
from tests.models.av_clips import SR, av_batch


def _detector(class_names=None, num_classes=None, two_stage=True):
    torch.manual_seed(0)
    audio = AudioEncoder(num_channels=4, sample_rate=SR, cnn_channels=(8, 16), time_pool=4, out_channels=16, max_lag=8)
    video = VideoEncoder(ResNetBackbone(18, out_indices=(1,)), out_channels=16)
    fuser = TemporalFuser(16, 16, d_model=16, num_layers=1, num_heads=2, dropout=0.0)
    head = EventHead(16, num_classes=num_classes, class_names=class_names, num_queries=4, num_layers=1, num_heads=2,
                     dropout=0.0, max_events=3, span_tokens=2, two_stage=two_stage)
    return EventDetector(fuser, head, audio_encoder=audio, video_encoder=video, loss=EventSetLoss(HungarianEventMatcher()))


def test_event_class_nll_equals_cross_entropy_on_labels_and_any_event_on_unlabelled():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)  # 3 classes + "no event"
    target = torch.tensor([0, 2, 3, 1, 3, 0])
    weight = torch.tensor([1.0, 1.0, 1.0, 0.1])
    assert torch.allclose(event_class_nll(logits, target, weight), F.cross_entropy(logits, target, weight=weight))
    assert torch.allclose(event_class_nll(logits, target), F.cross_entropy(logits, target))
    # -1: -log(1 - p(no event)), weighing 1 in the weighted mean
    unknown = torch.tensor([-1, 3])
    p = logits[:2].softmax(-1)
    expected = (-(1 - p[0, 3]).log() - 0.1 * p[1, 3].log()) / 1.1
    assert torch.allclose(event_class_nll(logits[:2], unknown, weight), expected)
    # its gradient lowers "no event" and leaves the split among the classes free
    x = logits[:1].clone().requires_grad_(True)
    event_class_nll(x, torch.tensor([-1])).backward()
    assert x.grad[0, 3] > 0 and torch.allclose(x.grad[0, :3].sum(), -x.grad[0, 3])


def test_matcher_treats_an_unlabelled_event_as_any_class():
    """Two queries on the same span: one sure of class 1, one sure of "no event". A labelled
    event of class 0 would prefer neither; an unlabelled one takes the class-1 query."""
    m = HungarianEventMatcher(cost_class=1.0, cost_span=5.0, cost_tiou=2.0)
    logits = torch.tensor([[0.0, 0.0, 10.0], [0.0, 10.0, 0.0]])  # query 0: no event; query 1: class 1
    spans = torch.tensor([[0.5, 0.2], [0.5, 0.2]])
    qi, gi = m(logits, spans, torch.tensor([-1]), torch.tensor([[0.5, 0.2]]))
    assert qi.tolist() == [1] and gi.tolist() == [0]


def test_unlabelled_events_train_the_detector():
    """ActivityNet-style clips without labels (-1) gave an IndexError deep in the loss; now every
    term is finite and the class head learns to say "an event" where one is."""
    batch = av_batch([(0.5, 0.4, 1.2, 0), (2.0, 1.0, 1.8, 1)], size=32)
    for s in batch.samples:
        s.events.labels[:] = -1
    det = _detector(num_classes=1)
    out = det(batch)
    losses = det.loss(out, batch)
    assert all(torch.isfinite(v) for v in losses.values()) and {"class", "frame_class"} <= set(losses)
    losses["total"].backward()
    assert det.event_head.class_head.weight.grad.abs().sum() > 0


def test_labels_map_onto_the_head_classes_by_name():
    det = _detector(class_names=["other", "siren", "tone"])
    ev = EventAnnotations(Events(torch.tensor([[0.0, 1.0]] * 4)), torch.tensor([0, 1, 2, -1]), ("tone", "other", "horn"))
    assert det.head_labels(ev, "clip0", 0).tolist() == [2, 0, -1, -1]  # "horn": not a head class -> any class
    # without names on the head, the data's indices must fit its classes
    plain = _detector(num_classes=2)
    with pytest.raises(AnnotationError, match=r"clip0: field 'samples\[0\]\.events\.labels'.*-1\.\.1.*got 2"):
        plain.head_labels(ev, "clip0", 0)
    batch = av_batch([(0.5, 0.4, 1.2, 1)], size=32)
    assert plain.head_labels(batch.samples[0].events, "clip0", 0).tolist() == [1]


def test_event_head_class_names_and_num_classes_agree():
    assert EventHead(8, class_names=["a", "b", "c"], num_queries=2, num_layers=1, num_heads=2).num_classes == 3
    assert EventHead(8, num_classes=2, num_queries=2, num_layers=1, num_heads=2).class_names is None
    with pytest.raises(ConfigError, match="num_classes"):
        EventHead(8, num_classes=2, class_names=["a", "b", "c"], num_queries=2, num_layers=1, num_heads=2)
    with pytest.raises(ConfigError, match="num_classes"):
        EventHead(8, num_queries=2, num_layers=1, num_heads=2)


def test_integer_video_is_a_one_line_error():
    batch = av_batch([(0.5, 0.4, 1.2, 0)], size=32)
    batch.video = (batch.video * 255).to(torch.uint8)
    with pytest.raises(VideoError, match="field 'video'.*float frames.*uint8"):
        _detector(num_classes=2)(batch)


def test_event_records_name_their_class():
    """Predicted events carry the head's class names (they said "3" for a siren before)."""
    from dense3d.models.dense_captioner import DenseCaptioner

    model = DenseCaptioner(event_detector=_detector(class_names=["tone", "other"])).eval()
    batch = av_batch([(0.5, 0.4, 1.2, 0)], size=32)
    with torch.no_grad():
        records = model.predict(batch)[0]
    assert records and all(r.kind == "event" and r.label in ("tone", "other") for r in records)
