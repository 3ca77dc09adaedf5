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
    # by name: indices outside the data's names, and data sharing no class with the head
    wrapped = EventAnnotations(Events(torch.tensor([[0.0, 1.0]] * 2)), torch.tensor([0, -2]), ("tone", "other", "horn"))
    with pytest.raises(AnnotationError, match=r"-1\.\.2 \(the data's class names\), got -2"):
        det.head_labels(wrapped, "clip0", 0)
    other = EventAnnotations(Events(torch.tensor([[0.0, 1.0]])), torch.tensor([0]), ("bark", "meow"))
    with pytest.raises(ConfigError, match=r"field 'event_head.class_names': expected classes shared with the data's"):
        det.head_labels(other, "clip0", 0)
    assert _detector(class_names=["event"]).head_labels(other, "clip0", 0).tolist() == [-1]  # one class: any event


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


def test_event_records_of_unlabelled_data_score_without_an_index_error():
    """``dense3d eval --checkpoint`` on ActivityNet-style clips: the ground truth's labels are
    -1 with no class names (names[-1] raised, or named the last class)."""
    from dense3d.engine.evaluate import event_records
    from dense3d.structures import DenseCaption

    batch = av_batch([(0.5, 0.4, 1.2, 0), (2.0, 1.0, 1.8, 1)], size=32)
    batch.samples[0].events.labels[:] = -1
    batch.samples[0].events.class_names = ()
    caps = [[DenseCaption("event", (0.4, 1.2), 0.9, "siren", "a siren wails", {})], []]
    pred, gt = event_records(batch.samples, caps)
    assert gt["clip0"]["labels"] == [None] and gt["clip1"]["labels"] == ["other"]
    assert pred["clip0"][0]["label"] == "siren" and pred["clip1"] == []


def test_event_head_and_loss_keep_float64_and_run_in_bfloat16():
    """float64 models stay float64 through the float32 heads and the class loss; a model
    converted whole to bfloat16 still runs (its heads in bfloat16)."""
    import math

    torch.manual_seed(0)
    head = EventHead(8, num_classes=2, num_queries=3, num_layers=1, num_heads=2, dropout=0.0, two_stage=True).eval()
    memory, times, mask = torch.randn(1, 6, 8), torch.linspace(0, 5, 6)[None], torch.ones(1, 6, dtype=torch.bool)
    with torch.no_grad():
        pred = head.double()(memory.double(), times.double(), mask)
        assert pred.spans.dtype == pred.logits.dtype == torch.float64
        assert event_class_nll(pred.logits[0], torch.tensor([0, -1, 2])).dtype == torch.float64
        plain = EventHead(8, num_classes=2, num_queries=3, num_layers=1, num_heads=2, dropout=0.0).eval()
        low = plain.to(torch.bfloat16)(memory.to(torch.bfloat16), times, mask)
        # two-stage: its float32 reference spans met the bfloat16 query_length Linear (a dtype error)
        low2 = head.to(torch.bfloat16)(memory.to(torch.bfloat16), times, mask)
    assert low.spans.dtype == torch.bfloat16 and all(math.isfinite(v) for v in low.spans.float().flatten().tolist())
    assert low2.logits.dtype == torch.bfloat16 and all(math.isfinite(v) for v in low2.spans.float().flatten().tolist())
