"""dense3d.utils.progress: counting, what the rich bar and the plain lines show, silence, and
evaluations that return the same numbers with progress on and off."""
import io

import pytest
from rich.console import Console

from dense3d.utils.progress import ENV_VAR, ensure_progress, progress_bar, progress_mode


def _console(terminal: bool = True) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=160), buf


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_bar_counts_advances_and_shows_description_and_totals():
    console, buf = _console()
    with progress_bar("captioning val scenes", total=4, unit="scenes", console=console, transient=False) as bar:
        assert bar.mode == "bar"
        bar.advance(3)
        bar.add_total(2)  # work found on the way
        for _ in range(3):
            bar.advance()
    assert (bar.completed, bar.total) == (6, 6)
    text = buf.getvalue()
    assert "captioning val scenes" in text and "6/6" in text and "scenes/s" in text  # rate of a loop
    console, buf = _console()
    with progress_bar("eval", unit="stages", console=console, transient=False) as bar:
        bar.add_total(2)
        bar.update("CIDEr")
        bar.advance()
        bar.update("METEOR (Java)")
        bar.advance()
    text = buf.getvalue()
    assert "eval: METEOR (Java)" in text and "2/2" in text and "stages/s" not in text  # staged: no rate
    console, buf = _console()
    with progress_bar("transient", total=1, console=console) as bar:  # the default: erased at the end
        bar.advance()
    assert buf.getvalue().endswith("\x1b[1A\x1b[2K")  # the last frame erased (cursor up, clear line)


def test_lines_when_not_a_terminal_one_per_stage_and_a_summary():
    console, buf = _console(terminal=False)
    with progress_bar("eval tod3cap (corrected)", unit="stages", console=console) as bar:
        bar.add_total(3)
        for stage in ("matching scenes", "CIDEr", "METEOR (Java)"):
            bar.update(stage)
            bar.advance()
    lines = buf.getvalue().splitlines()
    assert bar.mode == "lines" and len(lines) == 4
    assert lines[0].startswith("eval tod3cap (corrected): matching scenes - 1/3 stages, ")
    assert lines[2].startswith("eval tod3cap (corrected): METEOR (Java) - 3/3 stages, ")
    assert lines[3].startswith("eval tod3cap (corrected): 3/3 stages in ")
    assert "\x1b" not in buf.getvalue()  # plain text for CI logs


def test_env_var_forces_lines_or_silence(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "log")
    console, buf = _console()
    with progress_bar("generating", total=2, unit="scenes", console=console) as bar:
        bar.advance(2)
    assert bar.mode == "lines" and buf.getvalue().startswith("generating: 2/2 scenes in ")
    monkeypatch.setenv(ENV_VAR, "0")
    for terminal in (True, False):
        console, buf = _console(terminal)
        with progress_bar("generating", total=2, console=console) as bar:
            bar.update("outdoor")
            bar.advance(2)
        assert bar.mode == "off" and buf.getvalue() == "" and bar.completed == 2
    assert progress_mode() == "off"


def test_silent_when_disabled_and_for_library_calls(capsys):
    console, buf = _console()
    with progress_bar("x", total=3, console=console, disable=True) as bar:
        bar.update("a stage")
        bar.advance(3)
    assert bar.mode == "off" and buf.getvalue() == "" and bar.completed == 3
    with progress_bar("y", total=1, disable=True) as bar:  # default stderr console, never built
        bar.advance()
    silent = ensure_progress(None)
    silent.update("stage", total=5)
    silent.advance(5)
    assert (silent.mode, silent.completed, silent.total) == ("off", 5, 5)
    assert capsys.readouterr() == ("", "")


def test_a_failing_block_prints_no_summary_and_raises():
    console, buf = _console(terminal=False)
    with pytest.raises(KeyError):
        with progress_bar("eval", total=2, console=console) as bar:
            bar.advance()
            raise KeyError("boom")
    assert buf.getvalue() == ""
    console, buf = _console()
    with pytest.raises(KeyError):
        with progress_bar("eval", total=2, console=console):
            raise KeyError("boom")


# ------------------------------------------------------------------ evaluations, progress on / off
BOX_GT = {
    "s": [
        {"label": "car", "box": [10, 0, 0, 4, 2, 1.5, 0], "caption": "a parked car .", "num_pts": 12},
        {"label": "pedestrian", "box": [5, 5, 0, 0.5, 0.5, 1.8, 0], "caption": "a man walking", "num_pts": 3},
        {"label": "car", "box": [0, 20, 0, 4, 2, 1.5, 0.3], "caption": "a red car turning", "num_pts": 5},
    ],
    "t": [{"label": "truck", "box": [-8, 3, 0, 8, 2.5, 3, 0], "caption": "a white truck", "num_pts": 20}],
}
BOX_PRED = {
    "s": [
        {"box": [10.2, 0, 0, 4, 2, 1.5, 0], "caption": "a car parked", "label": "car", "score": 0.9},
        {"box": [5, 5.1, 0, 0.5, 0.5, 1.8, 0], "caption": "a person walking", "label": "pedestrian", "score": 0.8},
        {"box": [0, 21, 0, 4, 2, 1.5, 0], "caption": "a car", "label": "car", "score": 0.4},
    ],
    "t": [{"box": [-8, 3, 0, 7, 2.5, 3, 0], "caption": "a truck", "label": "truck", "score": 0.7}],
}
SCANREFER_GT = {"s1": [
    {"object_id": 0, "object_name": "chair", "box": [0, 0, 0, 2, 2, 2], "descriptions": [["a", "brown", "chair"], ["a", "chair"]]},
    {"object_id": 1, "object_name": "table", "box": [3, 0, 0, 2, 2, 1], "descriptions": [["a", "wooden", "table"]]},
]}
SCANREFER_PRED = {"s1": [{"box": [0.1, 0, 0, 2, 2, 2], "caption": "a chair", "score": 0.9},
                         {"box": [3, 0.5, 0, 2, 2, 1], "caption": "a table", "score": 0.6}]}
EVENTS_GT = {"v1": {"timestamps": [(0, 10), (10, 20)], "sentences": ["A man opens the door.", "He walks out."]},
             "v2": {"timestamps": [(0, 5)], "sentences": ["A dog barks."]}}
EVENTS_PRED = {"v1": [{"timestamp": (0, 9), "sentence": "A man opens a door.", "score": 0.9},
                      {"timestamp": (11, 20), "sentence": "He leaves.", "score": 0.5}],
               "v2": [{"timestamp": (0, 4), "sentence": "A dog is barking.", "score": 0.7}]}


@pytest.fixture(scope="module")
def scorer():
    from dense3d.eval.caption_metrics import CaptionScorer

    with CaptionScorer() as s:
        yield s


def _protocols(scorer):
    from dense3d.eval import detection, events, favd, scan2cap, scanrefer, tod3cap
    from dense3d.eval.formats import parse_box_predictions, parse_object_gt

    p, g = parse_box_predictions("p", BOX_PRED, need_score=True), parse_object_gt("g", BOX_GT)
    sp, sg = parse_box_predictions("p", SCANREFER_PRED, need_score=True), parse_object_gt("g", SCANREFER_GT)
    return {
        "tod3cap corrected": lambda pr: tod3cap.evaluate(p, g, mode="corrected", scorer=scorer, progress=pr),
        "tod3cap compatible": lambda pr: tod3cap.evaluate(p, g, mode="compatible", scorer=scorer, progress=pr),
        "nuscenes": lambda pr: detection.evaluate_nuscenes(p, g, progress=pr),
        "voc": lambda pr: detection.evaluate_voc(sp, sg, progress=pr),
        "scanrefer": lambda pr: scanrefer.evaluate(sp, sg, scorer=scorer, progress=pr),
        "scan2cap": lambda pr: scan2cap.evaluate(sp, sg, scorer=scorer, progress=pr),
        "events": lambda pr: events.evaluate(EVENTS_PRED, [EVENTS_GT], tious=(0.3, 0.5), scorer=scorer, progress=pr),
        "favd": lambda pr: favd.evaluate({"c": ["a man talks while a dog barks ."]},
                                         {"c": ["a man is talking and a dog barks loudly ."]}, entity=False, scorer=scorer, progress=pr),
    }


def test_evaluations_return_the_same_numbers_with_progress_on_and_off(scorer):
    for name, run in _protocols(scorer).items():
        off = run(None)
        console, buf = _console()
        with progress_bar(f"eval {name}", unit="stages", console=console, transient=False) as bar:
            on = run(bar)
        assert on == off, name
        assert bar.total and bar.completed == bar.total, (name, bar.completed, bar.total)  # every announced stage done
        assert f"eval {name}" in buf.getvalue() and f"{bar.total}/{bar.total}" in buf.getvalue()
    with progress_bar("eval", unit="stages", console=_console()[0]) as bar:
        _protocols(scorer)["scanrefer"](bar)
    # matching + (CIDEr, BLEU, ROUGE-L) at 0.25 and 0.5 + METEOR
    assert bar.total == 1 + 3 * 2 + 1 and bar.description == "METEOR (Java)"
