"""Dense events: densevid_eval semantics, garbage modes, SODA_c alignment."""
import numpy as np
import pytest

from dense3d.eval import events
from dense3d.eval.caption_metrics import ptb_tokenize
from tests.eval.event_refs import GT1, GT2

PRED = {
    "v1": [{"timestamp": (30, 40), "sentence": "Nothing happens here.", "score": 0.1},
           {"timestamp": (0, 10), "sentence": "A man opens the door.", "score": 0.9}],
    "v3": [{"timestamp": (0, 1), "sentence": "x", "score": 0.0}],
}
# v2 has no predictions: it scores 0 and counts.


def test_tiou_formula():
    assert events.tiou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert events.tiou((0, 1), (2, 3)) == 0.0
    assert events.tiou((0, 20), (0, 10)) < 0.5  # exactly 0.5 on paper, the +1e-8 makes it fail >= 0.5


def test_proposal_precision_recall_strict_and_best_reference_file():
    p, r = events.proposal_precision_recall(PRED, [GT1, GT2], 0.5)
    # v1: file 1 covers 1 of 2 events, file 2 1 of 1 -> recall 1; precision 1/2 (prediction 2 of 2 covers)
    # v2: no predictions -> 0, 0
    assert (p, r) == pytest.approx(((0.5 + 0) / 2, (1.0 + 0) / 2))


def test_caption_metrics_by_hand_pairs(scorer):
    out = events.evaluate(PRED, [GT1, GT2], tious=(0.5, 0.9), mode="2018", scorer=scorer, soda=False)
    sents = ["Nothing happens here.", "A man opens the door.", "A man opens a door.", events.GARBAGE_2018]
    tok = {s: ptb_tokenize({0: [s]})[0][0] for s in sents}
    pairs = {  # v1 pairs per threshold; v2 has none (0 for every metric, still counted)
        0.5: [(tok["Nothing happens here."], [tok[events.GARBAGE_2018]]),
              (tok["A man opens the door."], [tok["A man opens the door."]]),
              (tok["A man opens the door."], [tok["A man opens a door."]])],  # tIoU 10/12 >= 0.5
        0.9: [(tok["Nothing happens here."], [tok[events.GARBAGE_2018]]),
              (tok["A man opens the door."], [tok["A man opens the door."]])],
    }
    for t, ps in pairs.items():
        corpus, _ = scorer.score_pairs(ps)
        for m in ("METEOR", "CIDEr", "BLEU-4", "ROUGE-L"):
            assert out[f"{m}@{t:g}"] == pytest.approx(100 * corpus[m] / 2)
    assert out["METEOR"] == pytest.approx((out["METEOR@0.5"] + out["METEOR@0.9"]) / 2)
    assert out["videos"] == 2 and out["unknown_videos"] == ["v3"]


def test_garbage_2021_is_seeded(scorer):
    a = events.evaluate(PRED, [GT1], tious=(0.5,), mode="2021", seed=3, scorer=scorer, soda=False)
    b = events.evaluate(PRED, [GT1], tious=(0.5,), mode="2021", seed=3, scorer=scorer, soda=False)
    old = events.evaluate(PRED, [GT1], tious=(0.5,), mode="2018", scorer=scorer, soda=False)
    assert a == b
    # one 10-20-letter garbage word vs the tokens of "abc123!@#": METEOR's corpus recall differs
    assert a["METEOR@0.5"] != old["METEOR@0.5"]


def test_soda_alignment_keeps_order():
    S = np.array([[0.1, 0.9], [0.8, 0.1]])
    assert events.soda_align(S) == pytest.approx(0.9)  # crossing pairs (1.7) are not allowed
    assert events.soda_align(np.array([[0.5, 0.2], [0.1, 0.4]])) == pytest.approx(0.9)
    assert events.soda_align(np.zeros((0, 3))) == 0.0


def test_soda_c_sorts_by_start_and_handles_missing_videos(scorer):
    tok = {s: ptb_tokenize({0: [s]})[0][0] for s in ["Nothing happens here.", "A man opens the door.", "A man opens a door.", "He walks out."]}
    out = events.soda_c(PRED, [GT1, GT2], refs="merged", missing="zero", scorer=scorer)
    # v1 preds sorted by start: (0,10) "A man opens the door.", (30,40); refs merged and sorted:
    # (0,10) opens the door, (0,12) opens a door, (10,20) walks out
    preds = ["A man opens the door.", "Nothing happens here."]
    pspans = [(0, 10), (30, 40)]
    refs = ["A man opens the door.", "A man opens a door.", "He walks out."]
    rspans = [(0, 10), (0, 12), (10, 20)]
    pairs = [(tok[p], [tok[r]]) for p in preds for r in refs]
    met = np.array(scorer.meteor.score(pairs)[1]).reshape(2, 3)
    S = np.array([[events.tiou(a, b) for b in rspans] for a in pspans]) * met
    best = events.soda_align(S)
    p, r = best / 2, best / 3
    f = 2 * p * r / (p + r)
    assert out["SODA_c"] == pytest.approx(100 * f / 2)  # v2 (no predictions) counts as 0
    compat = events.soda_c(PRED, [GT1, GT2], refs="merged", missing="compatible", scorer=scorer)
    assert compat["SODA_c"] == pytest.approx(100 * f) and compat["SODA_c-videos"] == 1
    sep = events.soda_c(PRED, [GT1, GT2], refs="separate", missing="compatible", scorer=scorer)
    assert sep["SODA_c-videos"] == 1 and sep["SODA_c"] != compat["SODA_c"]


def test_soda_c_separate_takes_the_best_f1_reference_file(scorer):
    # SODA's --multi_reference: per video, the reference file with the best F1 (not the mean)
    one = [events.soda_c(PRED, [g], refs="merged", missing="compatible", scorer=scorer) for g in (GT1, GT2)]
    sep = events.soda_c(PRED, [GT1, GT2], refs="separate", missing="compatible", scorer=scorer)
    best = max(one, key=lambda r: r["SODA_c"])
    assert one[0]["SODA_c"] != pytest.approx(one[1]["SODA_c"])  # the two files disagree
    for k in ("SODA_c", "SODA_c-P", "SODA_c-R"):
        assert sep[k] == pytest.approx(best[k])
