import os

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from dense3d.errors import DependencyError
from dense3d.eval.caption_metrics import CaptionScorer, ptb_tokenize

GTS = {
    "a": ["sos a brown chair is next to the table eos", "sos this chair is brown eos"],
    "b": ["sos the white door is on the left wall eos"],
    "c": ["sos a long couch faces the tv eos", "sos the couch is grey eos", "sos it is a couch eos"],
    "d": ["sos a small trash can eos"],
}
RES = {"a": ["sos a brown chair near a table eos"], "b": ["sos eos"], "c": ["sos the grey couch faces the tv eos"], "d": ["sos a trash can eos"]}


def test_scorers_equal_pycocoevalcap_called_directly(scorer):
    corpus, per = scorer.score(GTS, RES)
    bleu, bleus = Bleu(4).compute_score(GTS, RES, verbose=0)
    cider, ciders = Cider().compute_score(GTS, RES)
    rouge, rouges = Rouge().compute_score(GTS, RES)
    m = scorer.meteor._m  # pycocoevalcap's own Meteor object (one Java process per session)
    assert isinstance(m, Meteor)
    meteor, meteors = m.compute_score(GTS, RES)
    for n in range(4):
        assert corpus[f"BLEU-{n + 1}"] == bleu[n]
        assert per[f"BLEU-{n + 1}"] == [float(x) for x in bleus[n]]
    assert corpus["CIDEr"] == cider and per["CIDEr"] == [float(x) for x in ciders]
    assert corpus["ROUGE-L"] == rouge and per["ROUGE-L"] == [float(x) for x in rouges]
    assert corpus["METEOR"] == meteor and per["METEOR"] == meteors
    # cached per-pair statistics give the same numbers on a second call and on a subset
    again, _ = scorer.score(GTS, RES)
    assert again == corpus
    sub = {k: GTS[k] for k in ("a", "c")}
    sub_res = {k: RES[k] for k in ("a", "c")}
    assert scorer.score(sub, sub_res)[0]["METEOR"] == m.compute_score(sub, sub_res)[0]
    assert scorer.score(sub, sub_res)[0]["CIDEr"] == Cider().compute_score(sub, sub_res)[0]


def test_cider_of_a_single_item_is_zero(scorer):
    # IDF from the evaluated references: with one item every n-gram has df = 1 = #items.
    corpus, _ = scorer.score({"x": ["sos a chair eos"]}, {"x": ["sos a chair eos"]})
    assert corpus["CIDEr"] == 0.0
    assert corpus["BLEU-1"] == pytest.approx(1.0)


def test_missing_java_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DependencyError, match="default-jre-headless"):
        CaptionScorer()
    with pytest.raises(DependencyError, match="default-jre-headless"):
        ptb_tokenize({"a": ["x"]})
    # BLEU / ROUGE / CIDEr alone need no Java
    s = CaptionScorer(metrics=("BLEU", "ROUGE-L", "CIDEr"))
    assert "METEOR" not in s.score(GTS, RES)[0]


def test_ptb_tokenize_lowercases_strips_punctuation_and_keeps_empty():
    out = ptb_tokenize({1: ["A Man, walking!", ""], 2: ["two\nlines here."], 3: []})
    assert out == {1: ["a man walking", ""], 2: ["two lines here"], 3: []}
