"""Review 30 of dense3d.eval against the official evaluators: each test pins one defect found."""
import pytest

from dense3d.eval import events
from tests.eval.event_refs import GT1, GT2

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


def test_soda_c_default_averages_one_run_per_reference_file_as_pdvc_reports_it(scorer):
    # PDVC's eval_soda runs SODA once per reference file and averages P, R and F1 over the files;
    # merging the files doubles the references of v1 (its recall halves) and is not PDVC's number
    per_file = [events.soda_c(PRED, [g], missing="zero", scorer=scorer) for g in (GT1, GT2)]
    avg = events.soda_c(PRED, [GT1, GT2], scorer=scorer)  # the default
    for k in ("SODA_c", "SODA_c-P", "SODA_c-R"):
        assert avg[k] == pytest.approx((per_file[0][k] + per_file[1][k]) / 2)
    assert avg["SODA_c-videos"] == 2
    merged = events.soda_c(PRED, [GT1, GT2], refs="merged", scorer=scorer)
    assert merged["SODA_c"] != pytest.approx(avg["SODA_c"])
    # one reference file: every mode is the same number
    one = {r: events.soda_c(PRED, [GT1], refs=r, scorer=scorer)["SODA_c"] for r in events.SODA_REFS}
    assert one["average"] == pytest.approx(one["merged"]) == pytest.approx(one["separate"])
    # evaluate() and the CLI default to it
    full = events.evaluate(PRED, [GT1, GT2], tious=(0.5,), scorer=scorer)
    assert full["SODA_c"] == pytest.approx(avg["SODA_c"])
    from dense3d.eval.cli import build_parser

    args = build_parser().parse_args(["events", "--pred", "p.json", "--gt", "a.json", "b.json"])
    assert args.soda_refs == "average"


@pytest.mark.parametrize("proto", ["scanrefer", "scan2cap"])
def test_ground_truth_without_any_description_is_an_error_not_an_empty_table(tmp_path, capsys, proto):
    # references under 'caption' (TOD3Cap's key) are not ScanRefer descriptions: every object was
    # skipped, the table held no caption metric (scanrefer) or zeros (scan2cap), and the exit was 0
    import json

    from dense3d.errors import exit_status
    from dense3d.eval.cli import main

    gt, pred = tmp_path / "gt.json", tmp_path / "pred.json"
    gt.write_text(json.dumps({"s": [{"object_id": 1, "object_name": "chair", "box": [0, 0, 0, 1, 1, 1],
                                     "caption": "a brown chair"}]}))
    pred.write_text(json.dumps({"s": [{"box": [0, 0, 0, 1, 1, 1], "caption": "a chair", "score": 1.0}]}))
    assert exit_status(lambda: main([proto, "--pred", str(pred), "--gt", str(gt)]), "dense3d eval") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "PredictionFormatError" in err and str(gt) in err and "'descriptions'" in err and "none among 1 objects" in err


def test_score_refuses_several_candidates_per_key_as_pycocoevalcap_does():
    from dense3d.eval.caption_metrics import CaptionScorer

    with CaptionScorer(metrics=("BLEU",)) as s:
        gts = {1: ["a man walks"], 2: ["a dog barks"]}
        with pytest.raises(ValueError, match="exactly one candidate"):
            s.score(gts, {1: ["a man walks", "a cat sleeps"], 2: ["a dog barks"]})  # the second was dropped silently
        with pytest.raises(ValueError, match="exactly one candidate"):
            s.score(gts, {1: "a man walks", 2: ["a dog barks"]})  # a bare string: its first letter was the caption
        assert s.score(gts, {1: ["a man walks"], 2: ["a dog barks"]})[0]["BLEU-1"] == pytest.approx(1.0)


def test_events_prediction_file_without_results_says_so():
    from dense3d.errors import PredictionFormatError
    from dense3d.eval.formats import parse_event_predictions

    # a 3D box prediction file given to `dense3d eval events`: the message said "got NoneType"
    with pytest.raises(PredictionFormatError, match=r"field 'results'.*got no 'results' key \(top-level keys: scene0011_00\)"):
        parse_event_predictions("p.json", {"scene0011_00": [{"box": [0, 0, 0, 1, 1, 1], "caption": "x"}]})
    with pytest.raises(PredictionFormatError, match="got list"):
        parse_event_predictions("p.json", {"results": []})


def test_ptb_tokenizer_in_a_read_only_install_is_a_one_line_error(monkeypatch):
    # pycocoevalcap writes its temporary file beside its jar: in a read-only site-packages the
    # PermissionError came from deep inside pycocoevalcap (tests run as root, so the refusal is injected)
    import tempfile

    from dense3d.errors import DependencyError
    from dense3d.eval.caption_metrics import ptb_tokenize

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(DependencyError, match=r"PTBTokenizer.*expected a writable folder .*pycocoevalcap.*PermissionError: Permission denied"):
        ptb_tokenize({0: ["A man walks."]})
