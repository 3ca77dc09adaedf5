"""Review 30 of dense3d.eval against the official evaluators: each test pins one defect found."""
import pytest

from dense3d.eval import events

GT1 = {"v1": {"timestamps": [(0, 10), (10, 20)], "sentences": ["A man opens the door.", "He walks out."]},
       "v2": {"timestamps": [(0, 5)], "sentences": ["A dog barks."]}}
GT2 = {"v1": {"timestamps": [(0, 12)], "sentences": ["A man opens a door."]}}
PRED = {
    "v1": [{"timestamp": (30, 40), "sentence": "Nothing happens here.", "score": 0.1},
           {"timestamp": (0, 10), "sentence": "A man opens the door.", "score": 0.9}],
    "v2": [{"timestamp": (0, 5), "sentence": "A dog barks loudly.", "score": 0.5}],
}


def test_non_ascii_characters_become_spaces_as_densevid_eval_does(scorer):
    # densevid_eval's remove_nonascii maps every non-ASCII character to ' ': a no-break space or a
    # typographic apostrophe still separates words, it does not glue them together
    assert events._remove_nonascii("a man\u00a0walks") == "a man walks"
    assert events._remove_nonascii("the man\u2019s dog") == "the man s dog"
    gt = [{"v": {"timestamps": [(0, 10)], "sentences": ["a man walks the dog"]}}]
    pred = {"v": [{"timestamp": (0, 10), "sentence": "a man\u00a0walks the dog", "score": 1.0}]}
    out = events.evaluate(pred, gt, tious=(0.5,), scorer=scorer, soda=False)
    assert out["BLEU-1@0.5"] == pytest.approx(100.0, abs=1e-4)  # "manwalks" would miss two unigrams
