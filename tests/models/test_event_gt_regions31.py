"""Captioning ground-truth event spans ("captioning with ground-truth proposals", as PDVC and
densevid_eval report it): ``DenseCaptioner.predict(batch, regions='gt')`` on an events model,
the region of a GT span (``EventHead.span_regions``: read from the fused sequence as a proposal's
is), training on GT spans (``event_caption_regions='gt'``) and ``dense3d eval --checkpoint RUN
--regions gt`` on an events run. Before, GT regions were boxes only: an events model captioned
nothing of its ground truth and the run was refused with one line."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dense3d.cli import main
from dense3d.errors import ConfigError
from dense3d.models.captioner.qformer import RelationQFormer
from dense3d.models.captioner.region_captioner import RegionCaptioner
from dense3d.models.context.bica import BiCADecoder
from dense3d.models.dense_captioner import DenseCaptioner
from dense3d.models.encoders.audio.encoder import AudioEncoder
from dense3d.models.fusion.temporal_fuser import TemporalFuser
from dense3d.models.losses.event_loss import EventSetLoss
from dense3d.models.proposals.events.detector import EventDetector
from dense3d.models.proposals.events.event_head import EventHead
from dense3d.models.proposals.events.matcher import HungarianEventMatcher
from dense3d.structures import Batch, Events
from tests.models.av_clips import SR, av_batch

D = 32


def _detector(two_stage: bool, seed: int = 0) -> EventDetector:
    torch.manual_seed(seed)
    audio = AudioEncoder(num_channels=4, sample_rate=SR, cnn_channels=(8, 16), time_pool=4, out_channels=D, max_lag=8)
    fuser = TemporalFuser(D, 0, d_model=D, num_layers=1, num_heads=2, dropout=0.0)
    head = EventHead(D, class_names=["tone", "other"], num_queries=4, num_layers=1, num_heads=2, dropout=0.0, max_events=3, span_tokens=4,
                     two_stage=two_stage)
    return EventDetector(fuser, head, audio_encoder=audio, loss=EventSetLoss(HungarianEventMatcher(cost_azimuth=1.0)))


def _captioner(**options) -> RegionCaptioner:
    from dense3d.models.captioner.decoder import tiny_llama_decoder
    from dense3d.models.captioner.llama_adapter import LlamaAdapter

    decoder = tiny_llama_decoder(words=["describe the sound.", "a the horn siren tone beeps rings near far left right"],
                                 hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    return RegionCaptioner(
        decoder=decoder,
        adapter=LlamaAdapter(hidden_size=32, num_heads=4, num_layers=2, prompt_len=4),
        qformer=RelationQFormer(d_model=32, n_heads=4, n_layers=1, num_queries=4, num_neighbours=2, region_dim=32, out_dim=32,
                                token_dim=D),
        bica=BiCADecoder(d_model=32, n_heads=4, n_layers=1, region_dim=D, context_dim=D),
        max_caption_tokens=8, max_new_tokens=5, cache_frozen_layers_mb=0, **options,
    )


def _clips() -> Batch:
    """Two 4 s clips; clip 0 gets a second annotated event, clip 1 keeps one."""
    batch = av_batch([(0.5, 1.0, 1.5, 0), (1.0, 0.2, 0.6, 1)], duration=4.0, with_video=False)
    batch.samples[0].events = dataclasses.replace(batch.samples[0].events, events=Events(torch.tensor([[1.0, 1.5], [2.5, 3.5]])),
                                                  labels=torch.tensor([0, 1]), azimuth=torch.tensor([0.5, 0.5]))
    for s in batch.samples:
        s.events.captions = [["a tone beeps near"] for _ in range(len(s.events))]
    return batch


@pytest.mark.parametrize("two_stage", [False, True])
def test_predict_gt_captions_every_gt_event_on_its_span(two_stage):
    """One DenseCaption per annotated event, with its span, its class and score 1. Before, an
    events model with regions='gt' captioned no event at all."""
    model = DenseCaptioner(_captioner(), event_detector=_detector(two_stage)).eval()
    batch = _clips()
    out = model.predict(batch, regions="gt")
    assert [len(caps) for caps in out] == [2, 1]
    for caps, s in zip(out, batch.samples):
        assert [c.kind for c in caps] == ["event"] * len(s.events)
        assert [t for c in caps for t in c.region] == pytest.approx(s.events.events.tensor.flatten().tolist())
        assert [c.label for c in caps] == [s.events.class_names[k] for k in s.events.labels.tolist()]
        assert all(c.score == 1.0 and isinstance(c.text, str) and "azimuth" in c.extra for c in caps)
    # the proposals path is unchanged: the detector's own spans
    assert all(c.kind == "event" for caps in model.predict(batch) for c in caps)


def test_gt_span_region_reads_the_sequence_inside_the_span_only():
    """The region of a GT span is read from the fused sequence inside it (span tokens sampled as a
    proposal's; with learned queries its features pool them): changing the sequence inside the
    span changes it, changing it far outside does not."""
    torch.manual_seed(0)
    T = 40
    times = (0.05 + 0.1 * torch.arange(T, dtype=torch.float32))[None]  # (1, T) frame centres, 4 s
    mask = torch.ones(1, T, dtype=torch.bool)
    memory = torch.randn(1, T, D)
    spans, labels, real = torch.tensor([[[1.0, 1.5]]]), torch.tensor([[0]]), torch.tensor([[True]])
    head = EventHead(D, num_classes=2, num_queries=4, num_layers=1, num_heads=2, dropout=0.0, span_tokens=4).eval()
    read = lambda m: head.span_regions(m, times, mask, torch.tensor([4.0]), spans, labels, real)  # noqa: E731
    base = read(memory)
    inside, outside = memory.clone(), memory.clone()
    inside[:, 11:14] += 1.0  # 1.1-1.4 s
    outside[:, 30:] += 1.0  # 3.0-4.0 s
    for changed, moves in ((inside, True), (outside, False)):
        r = read(changed)
        assert (not torch.allclose(r.tokens, base.tokens)) is moves
        assert (not torch.allclose(r.features, base.features)) is moves
    assert base.geometry.tolist() == [[[1.0, 1.5]]] and base.scores.tolist() == [[1.0]]


@pytest.mark.parametrize("two_stage", [False, True])
def test_gt_span_region_follows_the_audio_inside_the_span(two_stage):
    """Through the encoders: noise added to the audio inside a GT span moves its region (features
    and tokens) far more than the same noise far outside the span (there only the fuser's
    attention carries it over, as it does for a proposal)."""
    det = _detector(two_stage).eval()
    batch = av_batch([(0.5, 1.0, 1.5, 0)], duration=4.0, with_video=False)

    def region(b):
        with torch.no_grad():
            return det.gt_regions(det(b), b)

    base = region(batch)
    g = torch.Generator().manual_seed(1)
    changes = []
    for a, z in ((int(1.1 * SR), int(1.4 * SR)), (int(3.2 * SR), int(3.5 * SR))):  # inside; far outside
        b = copy.deepcopy(batch)
        b.audio[0, :, a:z] += 0.3 * torch.randn(4, z - a, generator=g)
        r = region(b)
        changes.append([(r.features - base.features).abs().max().item(), (r.tokens - base.tokens).abs().max().item()])
    (f_in, t_in), (f_out, t_out) = changes
    assert f_in > 3 * f_out and t_in > 3 * t_out, changes


def test_predict_gt_on_a_batch_without_events_is_one_line():
    model = DenseCaptioner(_captioner(), event_detector=_detector(False)).eval()
    batch = _clips()
    batch.samples[1].events = None
    with pytest.raises(ConfigError) as e:
        model.predict(batch, regions="gt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("DenseCaptioner.predict: field 'sample 'clip1'.events': expected ground-truth events"), msg
    assert "regions='proposals'" in msg and msg.endswith("got None")


def test_training_on_gt_spans_captions_each_gt_event():
    """event_caption_regions='gt': the caption loss reads the GT spans with their captions; the
    default (proposals matched to ground truth) is unchanged. With a random detector no proposal
    matches the GT at tIoU 0.3, so only GT spans give a caption loss here."""
    torch.manual_seed(0)
    batch = _clips()
    gt = DenseCaptioner(_captioner(), event_detector=_detector(True), event_caption_regions="gt", match_iou=0.99)
    gt.event_detector.requires_grad_(False)
    losses = gt(batch)
    assert losses["caption"].item() > 0 and losses["caption"].requires_grad
    with pytest.raises(ConfigError, match="event_caption_regions"):
        DenseCaptioner(_captioner(), event_detector=_detector(True), event_caption_regions="boxes")
    default = DenseCaptioner(_captioner(), event_detector=_detector(True), match_iou=0.99)
    assert default.event_caption_regions == "proposals"


def test_eval_checkpoint_regions_gt_on_an_events_run_scores_gt_span_captions(tmp_path):
    """`dense3d eval --checkpoint RUN --regions gt` on a (tiny, one-step) events captioning run:
    every GT event is captioned on its span, the files are the proposals' formats, and the
    dense-events caption metrics are scored. Before, it was refused with one line."""
    from dense3d.data.synthetic import generate_default

    synthetic_root = Path("data/synthetic/default")
    generate_default(synthetic_root)  # the demo's synthetic set (as tests/engine/conftest.py's fixture)
    run = tmp_path / "run"
    tiny = ["model/captioner=tiny", "model.captioner.bica.region_dim=256", "model.captioner.bica.context_dim=256",
            "model.captioner.adapter.num_layers=2"]
    assert main(["train", "experiment=captioning_events", f"paths.synthetic_dir={synthetic_root}", f"paths.output_dir={run}",
                 "logger=csv", "trainer.max_steps=1", *tiny]) == 0
    out = tmp_path / "gt"
    assert main(["eval", "--checkpoint", str(run), "--regions", "gt", "--limit", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["regions"] == "gt" and metrics["samples"] == 2
    ev = metrics["events"]
    assert "Recall@0.5" not in ev  # 100 by construction on GT spans
    assert ev["gt_events"] > 0 and ev["matched@0.5"] == ev["gt_events"]
    assert {"METEOR", "CIDEr", "SODA_c"} <= set(ev["captions"]) and ev["captions"]["METEOR"] >= 0
    pred = json.loads((out / "predictions_events.json").read_text())["results"]
    gt = json.loads((out / "ground_truth_events.json").read_text())
    assert set(pred) == set(gt) and len(pred) == 2
    for clip, g in gt.items():
        assert [t for r in pred[clip] for t in r["timestamp"]] == pytest.approx([t for span in g["timestamps"] for t in span])
        assert [r["label"] for r in pred[clip]] == g["labels"]
        assert all(r["sentence"] for r in pred[clip])
    # the files are read by the protocol evaluator as they are
    assert main(["eval", "events", "--pred", str(out / "predictions_events.json"), "--gt", str(out / "ground_truth_events.json"),
                 "--no-soda"]) == 0


def test_the_relation_heads_loss_is_weighted_and_its_accuracy_logged_beside_scsts_rewards():
    """DenseCaptioner with a captioner's relation head: the term "relation" is relation_weight times
    the head's loss, and its accuracy reaches step_metrics beside SCST's rewards (not replaced)."""
    torch.manual_seed(0)
    batch = _clips()
    batch.samples[0].events.captions = [["a tone beeps after the other"], ["a tone beeps near"]]
    captioner = _captioner(class_names={"event": ["tone", "other"]}, relation_phrases={"before": ["before"], "after": ["after"]})
    model = DenseCaptioner(captioner, event_detector=_detector(True), event_caption_regions="gt", relation_weight=0.25,
                           scst_weight=1.0)
    model.event_detector.requires_grad_(False)
    torch.manual_seed(1)
    losses = model(batch)
    assert model.loss_weight("relation") == 0.25
    assert losses["relation"].requires_grad and losses["relation"].item() > 0
    assert {"relation_accuracy", "scst_reward_sample"} <= set(model.step_metrics)
    torch.manual_seed(1)
    regions, caps, _ = model._gt_event_regions(model.event_detector(batch), batch, "test")
    head = captioner._relation_loss([regions], captioner.encode([regions], [model._event_context(model.event_detector(batch))]), [caps])
    assert int(head["num_relation_terms"]) == 3  # after, none, none
    torch.testing.assert_close(losses["relation"], 0.25 * head["loss_relation"])
