"""FAVDBench: paragraph metrics, EntityScore (offline NLTK tagger, shipped MiniLM), AudioScore."""
import math

import numpy as np
import pytest
import torch

from dense3d.eval import favd
from dense3d.eval.caption_metrics import ptb_tokenize


@pytest.fixture(scope="module")
def minilm():
    return favd.MiniLMEncoder()


def test_nouns_are_tagged_stemmed_and_deduplicated():
    # "speaks." at a sentence end is split as Punkt + Treebank would; "microphones" -> "microphon"
    assert favd.nouns("on stage a man speaks. the man holds two microphones and a microphone.") == ["man", "microphon", "stage"]
    assert favd.nouns("it is very quickly.") == []


def test_entity_score_by_hand(minilm):
    pred, ref = ["guitar", "man"], ["dog", "guitar", "man", "park"]
    es = favd.entity_score(pred, ref, minilm)
    recall = 2 / 4 + 1e-4  # the anchor adds 1e-4
    comp = 1.0  # each predicted noun finds itself: (cos + 1) / 2 = 1
    assert es == pytest.approx(2 * comp * recall / (comp + recall), abs=1e-6)
    assert favd.entity_score([], ref, minilm) is None and favd.entity_score(pred, [], minilm) is None


def test_audio_score_scale_and_trilip_head(tmp_path):
    assert favd.audio_score_scale(np.array([100.0]))[0] == pytest.approx(100.0)
    b = 0.693179
    assert favd.audio_score_scale(np.array([50.0]))[0] == pytest.approx(100 * math.exp(-b) / math.exp(-b * math.exp(-10)))
    # a TriLip checkpoint holding only the head (random weights, DataParallel prefix)
    torch.manual_seed(0)
    state = {}
    for n in ("vis_scaler", "txt_scaler", "aud_scaler"):
        ffn = {"w_1.weight": torch.randn(2048, 512) * 0.01, "w_1.bias": torch.zeros(2048), "w_2.weight": torch.randn(512, 2048) * 0.01,
               "w_2.bias": torch.zeros(512), "layer_norm.weight": torch.ones(512), "layer_norm.bias": torch.zeros(512)}
        state.update({f"module.{n}.{k}": v for k, v in ffn.items()})
    state["module.logit_scale1"] = torch.tensor(100.0)
    state["module.logit_scale2"] = torch.tensor(100.0)
    torch.save({"model": state}, tmp_path / "TriLip.bin")
    feats = torch.randn(2, 512)
    head = favd.TriLipHead(tmp_path / "TriLip.bin", lambda x: x, lambda x: x, lambda x: x[:, None, :].repeat(1, 3, 1))
    s = head.scores(feats, feats, feats)
    v = head.scalers["vis_scaler"](feats)
    t = head.scalers["txt_scaler"](feats)
    a = head.scalers["aud_scaler"](feats)
    logit = (100 * ((v * t).sum(-1) + 1) / 2 + 100 * ((a * t).sum(-1) + 1) / 2) / 2
    assert s == pytest.approx(favd.audio_score_scale(logit.detach().double().numpy()))


def test_evaluate_reports_audio_unavailable_and_missing(scorer, minilm):
    pred = {"c1": ["A man plays a guitar in a park."], "extra": ["x"]}
    refs = {"c1": ["A man is playing the guitar in a park while a dog runs."], "c2": ["A bird sings."]}
    out = favd.evaluate({k: v for k, v in pred.items()}, refs, encoder=minilm, scorer=scorer)
    tok = ptb_tokenize({0: [pred["c1"][0]], 1: refs["c1"], 2: refs["c2"]})
    corpus, _ = scorer.score_pairs([(tok[0][0], tok[1]), ("", tok[2])])
    assert out["METEOR"] == pytest.approx(100 * corpus["METEOR"]) and out["CIDEr"] == pytest.approx(100 * corpus["CIDEr"])
    assert out["AudioScore"].startswith("unavailable")
    assert out["missing_clips"] == ["c2"] and out["unknown_clips"] == ["extra"] and out["EntityScore-clips"] == 1
    assert 0 < out["EntityScore"] <= 100


def test_audio_score_says_which_clips_it_left_out(scorer):
    refs = {"c1": ["A man plays a guitar."], "c2": ["A bird sings."]}
    pred = {"c1": ["A man plays a guitar."], "c2": ["A bird sings."]}
    out = favd.evaluate(pred, refs, entity=False, audio_scores={"c1": 80.0, "other": 10.0}, scorer=scorer)
    assert out["AudioScore"] == pytest.approx(80.0)
    assert out["AudioScore-clips"] == 1 and out["audio_missing_clips"] == ["c2"]
