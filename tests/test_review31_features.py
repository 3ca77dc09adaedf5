"""Review of today's two features: ground-truth-span event captioning (63efc95) and joint scenes
(b5ad031). Each test here failed before the fix it names."""
from __future__ import annotations

import math

import pytest
import torch

from dense3d.data.datasets import DenseEventsDataset, JointScenesDataset, TOD3CapDataset
from dense3d.data.synthetic import SynthConfig, generate
from dense3d.data.transforms import Compose, GlobalFlip, GlobalRotate, GlobalScale


# ----------------------------------------------------------------------------- joint scenes
@pytest.fixture(scope="module")
def joint_folder(tmp_path_factory):
    """4 joint scenes of seed 0 (train: 2)."""
    folder = tmp_path_factory.mktemp("synth") / "joint"
    generate(SynthConfig(kind="joint", scenes=4, seed=0), folder)
    return folder


def _joint(folder, scene_transforms=None, transforms=None) -> JointScenesDataset:
    scenes = TOD3CapDataset(info_file=str(folder / "nuscenes_infos_{split}.pkl"), data_root=str(folder), split="train",
                            caption_file=str(folder / "tod3cap_captions_{split}.json"), caption_source="final_caption",
                            sweeps=0, data_prefix=None, sensors=("lidar",), transforms=scene_transforms)
    recordings = DenseEventsDataset(annotation_file=str(folder / "dense_events_{split}.json"), media_dir=str(folder / "audio"),
                                    split="train", sensors=("audio",))
    return JointScenesDataset(scenes, recordings, transforms=transforms)


def _azimuth_errors_deg(sample) -> list[float]:
    """Per boxed event: the angle between its azimuth and its source box's direction from the
    array centre, both in the ego frame of the (augmented) scene (lidar2ego of the sample)."""
    e2l = sample.meta["lidar2ego"].double()
    mic = sample.audio.mic_positions.double().mean(0)  # (3,) the array's centre, ego frame
    out = []
    for k, az in zip(sample.events.source_box.tolist(), sample.events.azimuth.tolist()):
        if k < 0:
            continue
        centre = e2l[:3, :3] @ sample.boxes.boxes.tensor[k, :3].double() + e2l[:3, 3]  # LiDAR -> ego
        box_az = math.atan2(float(centre[1] - mic[1]), float(centre[0] - mic[0]))
        out.append(math.degrees(abs((box_az - az + math.pi) % (2 * math.pi) - math.pi)))
    return out


@pytest.mark.parametrize("where", ["scene", "joined"])
@pytest.mark.parametrize("name, step", [
    ("flip_y", GlobalFlip(flip_y_prob=1.0)),
    ("flip_x", GlobalFlip(flip_y_prob=0.0, flip_x_prob=1.0)),
    ("rotate", GlobalRotate(angle_range=(1.0, 1.0))),
    ("scale", GlobalScale(scale_range=(1.05, 1.05))),
])
def test_joint_event_azimuths_follow_the_boxes_through_flips_and_rotations(joint_folder, where, name, step):
    """The events' azimuths (ego frame) were left alone by the scene's augmentations and mirrored
    as LiDAR-frame angles by the joined ones (flips: 155-180 deg off their source boxes; a
    rotation of the scene: 57 deg; the joined GlobalScale scaled the array, whose delays the
    recording does not have)."""
    plain = _joint(joint_folder)[0]
    assert max(_azimuth_errors_deg(plain)) < 0.01  # the written azimuths are the boxes' directions
    data = _joint(joint_folder, scene_transforms=Compose({name: step})) if where == "scene" else _joint(joint_folder, transforms=step)
    s = data[0]
    assert not torch.allclose(s.boxes.boxes.tensor[:, :2], plain.boxes.boxes.tensor[:, :2])  # the scene did move
    errors = _azimuth_errors_deg(s)
    assert errors and max(errors) < 0.01, errors
    # the microphones moved with the scene, mirrored or turned but not scaled: the recording's
    # inter-microphone delays are those of the written array
    d_plain = torch.cdist(plain.audio.mic_positions.double(), plain.audio.mic_positions.double())
    d = torch.cdist(s.audio.mic_positions.double(), s.audio.mic_positions.double())
    assert torch.allclose(d, d_plain, atol=1e-5)


# ----------------------------------------------------------------------------- GT-span events
def _reordered(sample, perm):
    import dataclasses

    from dense3d.structures import Events

    ev = sample.events
    new = dataclasses.replace(ev, events=Events(ev.events.tensor[perm]), labels=ev.labels[perm], azimuth=ev.azimuth[perm])
    new.captions = [ev.captions[i] for i in perm.tolist()]
    return dataclasses.replace(sample, events=new)


@pytest.mark.parametrize("num_events", [2, 6])
def test_two_stage_gt_span_features_do_not_depend_on_the_annotation_order(num_events):
    """A two_stage head put the k-th annotated span in query slot k (mod Q): the same event's
    region changed with where the annotation listed it (reversing 2 events moved the features
    by 1.6), and with more events than queries (6 > Q = 4) two spans shared a slot in one pass.
    Slots now follow the dense head's ranking of the spans, as forward's references do."""
    import dataclasses

    from dense3d.data import collate
    from dense3d.structures import Events
    from tests.models.test_event_gt_regions31 import _clips, _detector

    det = _detector(two_stage=True).eval()
    assert det.event_head.num_queries == 4
    s0 = _clips().samples[0]
    spans = torch.tensor([[0.1, 0.4], [0.5, 0.9], [1.0, 1.5], [1.6, 2.0], [2.1, 2.6], [2.8, 3.5]])[:num_events]
    ev = dataclasses.replace(s0.events, events=Events(spans), labels=torch.zeros(num_events, dtype=torch.long),
                             azimuth=torch.zeros(num_events))
    ev.captions = [[f"event {i}"] for i in range(num_events)]
    s0 = dataclasses.replace(s0, events=ev)
    perm = torch.arange(num_events).flip(0)
    with torch.no_grad():
        a = collate([s0])
        r = det.gt_regions(det(a), a)
        b = collate([_reordered(s0, perm)])
        r2 = det.gt_regions(det(b), b)
    assert r.mask.all() and r2.mask.all()
    assert torch.allclose(r.geometry[0], r2.geometry[0][perm.argsort()])
    assert torch.allclose(r.features[0], r2.features[0][perm.argsort()], atol=1e-5), \
        (r.features[0] - r2.features[0][perm.argsort()]).abs().max()


def test_eval_with_gt_spans_leaves_the_proposal_precision_recall_out_of_the_caption_metrics_too():
    """docs/eval.md: with --regions gt, proposal precision / recall (100 by construction) are left
    out of metrics.json; densevid_eval's caption block still carried Precision@t / Recall@t = 100.
    A clip without events is scored as densevid_eval scores it (a video without a match: 0)."""
    from dense3d.engine.evaluate import _event_metrics

    pred = {"a": [{"timestamp": [1.0, 2.0], "sentence": "a horn honks", "score": 1.0, "label": "horn", "azimuth": 0.1}],
            "b": []}
    gt = {"a": {"timestamps": [[1.0, 2.0]], "sentences": ["a horn honks"], "labels": ["horn"], "azimuth": [0.1]},
          "b": {"timestamps": [], "sentences": [], "labels": [], "azimuth": []}}
    m = _event_metrics(pred, gt, captions=True, gt_regions=True)
    assert not [k for k in m["captions"] if k.startswith(("Precision", "Recall"))], sorted(m["captions"])
    assert not [k for k in m if k.startswith(("Precision", "Recall", "class_accuracy"))]
    # densevid_eval averages over the ground truth's videos, one without events (no match) at 0
    assert m["captions"]["METEOR@0.5"] == pytest.approx(50.0) and m["gt_events"] == 1 and m["matched@0.5"] == 1


def test_two_stage_gt_spans_read_at_one_frame_do_not_depend_on_the_annotation_order():
    """Spans whose centres share a frame tie on the dense head's score: the tie is broken by
    the span itself (centre, length), not by where the annotation lists it."""
    import dataclasses

    from dense3d.data import collate
    from dense3d.structures import Events
    from tests.models.test_event_gt_regions31 import _clips, _detector

    det = _detector(two_stage=True).eval()
    s0 = _clips().samples[0]
    spans = torch.tensor([[1.0, 2.0], [1.2, 1.8], [1.4, 1.6], [0.1, 0.3]])  # three centred at 1.5 s
    ev = dataclasses.replace(s0.events, events=Events(spans), labels=torch.zeros(4, dtype=torch.long), azimuth=torch.zeros(4))
    ev.captions = [[f"event {i}"] for i in range(4)]
    s0 = dataclasses.replace(s0, events=ev)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a = collate([s0])
        r = det.gt_regions(det(a), a)
        b = collate([_reordered(s0, perm)])
        r2 = det.gt_regions(det(b), b)
    assert torch.allclose(r.features[0], r2.features[0][perm.argsort()], atol=1e-5)


def test_two_stage_gt_span_features_do_not_depend_on_the_other_clips_of_the_batch():
    """Padding: a clip of 6 events (more than the Q = 4 queries: two decoder passes) batched with a
    clip of one event reads the same regions as each clip alone."""
    import dataclasses

    from dense3d.data import collate
    from dense3d.structures import Events
    from tests.models.test_event_gt_regions31 import _clips, _detector

    det = _detector(two_stage=True).eval()
    s0, s1 = _clips().samples
    spans = torch.tensor([[0.1, 0.4], [0.5, 0.9], [1.0, 1.5], [1.6, 2.0], [2.1, 2.6], [2.8, 3.5]])
    ev = dataclasses.replace(s0.events, events=Events(spans), labels=torch.zeros(6, dtype=torch.long), azimuth=torch.zeros(6))
    ev.captions = [[f"event {i}"] for i in range(6)]
    s0 = dataclasses.replace(s0, events=ev)
    with torch.no_grad():
        both = collate([s1, s0])
        r = det.gt_regions(det(both), both)
        alone = [det.gt_regions(det(b), b) for b in (collate([s1]), collate([s0]))]
    assert r.mask.sum(1).tolist() == [1, 6]
    assert torch.allclose(r.features[0, :1], alone[0].features[0], atol=1e-5)
    assert torch.allclose(r.features[1], alone[1].features[0], atol=1e-5)
    assert torch.allclose(r.extra["azimuth"][1], alone[1].extra["azimuth"][0], atol=1e-5)


def test_captioning_joint_reads_gt_spans_through_queries_as_its_captioner_trains_on():
    """experiment=captioning_joint trained its captioner on the event proposals (query outputs) of
    a learned-query head, whose GT span region (`dense3d predict --regions gt`, docs/synthetic.md)
    is the pooled span tokens: features the captioner never saw. Its head is now
    captioning_events' two-stage one, which reads a GT span through a query placed on it."""
    import os

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    with initialize_config_dir(config_dir=configs, version_base=None):
        cfg = compose("train", overrides=["experiment=captioning_joint"])
    det = instantiate(cfg.model.event_detector)
    assert det.video_encoder is None and det.sequence_channels == 64
    assert det.event_head.two_stage and det.event_head.direction_readout
    assert det.audio_encoder.directions == 72


def test_joint_source_box_without_source_token_follows_the_boxes_a_scene_filter_keeps(joint_folder, tmp_path):
    """An events JSON with source_box (indices into the info's instances) but no source_token
    kept the written indices after the scene's ObjectRangeFilter dropped boxes: events pointed at
    another box, or past the last one (11 of 10 boxes). They now follow the instances' ids."""
    import json
    import shutil

    from dense3d.data.transforms import ObjectRangeFilter

    folder = tmp_path / "joint"
    shutil.copytree(joint_folder, folder)
    written = json.loads((folder / "dense_events_train.json").read_text())
    stripped = {k: {f: v for f, v in e.items() if f != "source_token"} for k, e in written.items()}
    (folder / "dense_events_train.json").write_text(json.dumps(stripped))
    keep_front = Compose({"front": ObjectRangeFilter([-60.0, 0.0, -5.0, 60.0, 60.0, 5.0])})
    for transforms in (None, keep_front):
        data = _joint(folder, scene_transforms=transforms)
        dropped = 0
        for i in range(len(data)):
            s = data[i]
            tokens = written[s.sample_id]["source_token"]
            ids = list(s.boxes.object_ids)
            assert all(-1 <= k < len(ids) for k in s.events.source_box.tolist())
            got = [ids[k] if k >= 0 else "" for k in s.events.source_box.tolist()]
            assert got == [t if t in ids else "" for t in tokens]
            dropped += sum(t != "" and t not in ids for t in tokens)
        assert (dropped > 0) == (transforms is not None)  # the filter did drop emitting boxes


def test_joint_source_box_past_the_instances_is_one_line(joint_folder, tmp_path):
    import json
    import shutil

    from dense3d.errors import AnnotationError

    folder = tmp_path / "joint"
    shutil.copytree(joint_folder, folder)
    written = json.loads((folder / "dense_events_train.json").read_text())
    for e in written.values():
        e.pop("source_token")
        e["source_box"] = [99] * len(e["source_box"])
    (folder / "dense_events_train.json").write_text(json.dumps(written))
    with pytest.raises(AnnotationError) as err:
        _joint(folder)[0]
    assert "dense_events_train.json" in str(err.value) and "source_box" in str(err.value) and "\n" not in str(err.value)
