"""The commands, flags and hydra overrides the user-facing docs quote still work.

The docs (README.md, docs/*.md, configs/README.md, benchmarks/README.md) quote ``dense3d ...``
command lines and ``key=value`` overrides; configs and flags change under them. These tests
extract every quoted command and override from the markdown and check, without training:

* every ``--flag`` of a quoted ``dense3d`` command is an option of that sub-command's parser;
* every concrete command (no placeholders) parses with the parser the command line uses;
* the overrides of quoted ``dense3d train`` / ``dense3d demo`` commands compose with
  ``configs/train.yaml`` (as ``dense3d train`` composes them), and those of ``dense3d predict`` /
  ``dense3d eval --checkpoint`` name keys of the run's config;
* every override quoted in prose (a backtick span of ``key=value`` words rooted in the train
  config) composes with the train config or with one of the experiments;
* docs/results.md's bash recipes, expanded by bash itself (their ``C=...`` variables and arrays),
  compose, except those run on another commit (a block that says ``git checkout <commit>``).

Each test asserts it found a minimum number of items, so it cannot pass on an empty extraction.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dense3d.cli import build_parser
from dense3d.engine.train import compose_config
from dense3d.errors import Dense3DError

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if p.name != "results.md"),
             "configs/README.md", "benchmarks/README.md"]
SUBCOMMANDS = ("demo", "train", "predict", "eval", "vis", "convert")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]*>|\[--|\||^/$")


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1).strip(), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, flags=re.S | re.M)]


def _inline_spans(text: str) -> list[str]:
    """Backtick spans of the prose (fenced blocks left out; a span may wrap a line)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [m.group(1) for m in re.finditer(r"`([^`]+)`", prose)]


def _dense3d_argv(line: str) -> list[str] | None:
    """The arguments after ``dense3d`` of a quoted command line (comment cut), or None."""
    line = re.sub(r"^\s*(\$\s*)?(\.venv/bin/)?", "", line.replace("\\\n", " ").replace("\n", " "))
    line = line.replace("python -m dense3d.cli ", "dense3d ")
    if not line.startswith("dense3d "):
        return None
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    if len(words) < 2 or words[1] not in SUBCOMMANDS:
        return None
    return words[1:]


def documented_commands() -> list[tuple[str, list[str], str]]:
    """(doc, argv after ``dense3d``, the quoted text) of every command the user docs quote."""
    out = []
    for doc in USER_DOCS:
        text = (ROOT / doc).read_text()
        lines = [line for _, body in _code_blocks(text) for line in body.replace("\\\n", " ").splitlines()]
        for quoted in lines + _inline_spans(text):
            argv = _dense3d_argv(quoted)
            if argv is not None:
                out.append((doc, argv, quoted.strip()))
    return out


@functools.lru_cache(maxsize=None)
def _parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser each command line ends up in, by sub-command (``eval`` has two)."""
    from dense3d.engine.visualize import main as vis_main  # noqa: F401  (its parser is built inside main)
    from dense3d.eval.cli import build_parser as eval_parser

    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    parsers = dict(sub.choices)
    conv = next(a for a in parsers["convert"]._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in conv.choices.items():
        parsers[f"convert {name}"] = p
    parsers["eval"] = eval_parser()
    return parsers


def _help_options(argv: list[str]) -> set[str]:
    """Option strings in the ``--help`` of a command whose parser is built inside its function
    (``dense3d vis``, ``dense3d eval --checkpoint``)."""
    from dense3d.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", out.getvalue()))


def _options(argv: list[str]) -> tuple[str, set[str]]:
    if argv[0] == "convert" and len(argv) > 1 and not argv[1].startswith("-"):
        name = f"convert {argv[1]}"
    elif argv[0] == "eval" and "--checkpoint" in argv:
        return "eval --checkpoint", _help_options(["eval", "--checkpoint", "x"])
    elif argv[0] == "vis":
        return "vis", _help_options(["vis"])
    else:
        name = argv[0]
    p = _parsers()[name]
    return name, {o for a in p._actions for o in a.option_strings}


def _flags(argv: list[str]) -> list[str]:
    return [w.split("=")[0] for w in argv if w.startswith("--")]


def test_documented_flags_exist():
    commands = documented_commands()
    checked = 0
    bad = []
    for doc, argv, quoted in commands:
        name, known = _options(argv)
        for flag in _flags(argv):
            checked += 1
            if flag not in known:
                bad.append(f"{doc}: `{quoted}`: dense3d {name} has no option {flag}")
    assert len(commands) >= 20 and checked >= 30, (len(commands), checked)
    assert not bad, "\n".join(bad)


def _concrete(argv: list[str]) -> bool:
    """A whole command: no placeholders, not just a sub-command's name (``dense3d eval``)."""
    if any(PLACEHOLDER.search(w) for w in argv) or len(argv) < 3:
        return False
    return not argv[-1].startswith("--")  # `dense3d eval --checkpoint`: a mention of a flag


def _parse(argv: list[str]) -> argparse.Namespace | None:
    """Parse like ``dense3d`` does, up to the parser of the sub-command that runs."""
    from dense3d.cli import parse_args

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = parse_args(argv)
            if argv[0] == "eval" and "--checkpoint" not in argv:
                _parsers()["eval"].parse_args(args.rest)
        except SystemExit:
            raise AssertionError(err.getvalue().strip().splitlines()[-1]) from None
    return args


def _base_for(argv: list[str]) -> list[str]:
    """The config a run named in ``--checkpoint outputs/<name>`` was trained with, when <name>
    is an experiment (else the demo, what README's examples use)."""
    ckpt = argv[argv.index("--checkpoint") + 1] if "--checkpoint" in argv else ""
    name = Path(ckpt).name
    return [f"experiment={name if name in EXPERIMENTS else 'demo'}"]


def _check_run_overrides(overrides: list[str], base: list[str]) -> None:
    """``dense3d predict`` / ``eval --checkpoint`` change keys the run's config has
    (``+key`` adds one): dense3d.api.load's rule."""
    cfg = compose_config(base)
    for item in overrides:
        key, sep, _ = item.removeprefix("+").partition("=")
        assert sep, f"{item}: not KEY=VALUE"
        if not item.startswith("+"):
            assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{item}: no key {key} in {base}"


def test_documented_commands_parse_and_compose():
    commands = [(doc, argv, q) for doc, argv, q in documented_commands() if _concrete(argv)]
    composed = 0
    bad = []
    for doc, argv, quoted in commands:
        try:
            args = _parse(argv)
            if argv[0] in ("train", "demo"):
                compose_config((["experiment=demo"] if argv[0] == "demo" else []) + list(args.overrides))
                composed += 1
            elif argv[0] == "predict" or (argv[0] == "eval" and "--checkpoint" in argv):
                overrides = args.overrides if argv[0] == "predict" else [w for w in argv if "=" in w and not w.startswith("-")]
                _check_run_overrides(overrides, _base_for(argv))
                composed += 1
        except (AssertionError, Dense3DError) as e:
            bad.append(f"{doc}: `{quoted}`: {e}")
    assert len(commands) >= 15 and composed >= 6, (len(commands), composed)
    assert not bad, "\n".join(bad)


@functools.lru_cache(maxsize=None)
def _roots() -> frozenset[str]:
    """Top-level keys and groups of the train config (any experiment)."""
    keys = set()
    for exp in EXPERIMENTS:
        keys |= set(compose_config([f"experiment={exp}"]).keys())
    return frozenset(keys | {"experiment", "debug"})


def _override_key(word: str) -> str | None:
    m = re.fullmatch(r"[+~]{0,2}([A-Za-z_][\w.@/]*)(=.*)?", word)
    if not m or (m.group(2) is None and not word.startswith("~")):
        return None
    return m.group(1)


def documented_overrides() -> list[tuple[str, list[str]]]:
    """(doc, words) of every prose span made only of hydra overrides of the train config."""
    out = []
    for doc in USER_DOCS:
        for span in _inline_spans((ROOT / doc).read_text()):
            try:
                words = shlex.split(span.replace("\n", " "))
            except ValueError:
                continue
            keys = [_override_key(w) for w in words]
            if words and all(k is not None and k.split(".")[0].split("/")[0] in _roots() for k in keys) \
                    and not any(PLACEHOLDER.search(w) or w.endswith("=...") for w in words):
                out.append((doc, words))
    return out


def _composes_somewhere(words: list[str]) -> str | None:
    """None when the overrides compose with the train config or one experiment; else the error."""
    first = None
    for base in ([], *([f"experiment={e}"] for e in EXPERIMENTS)):
        if any(w.startswith("experiment=") for w in words) and base:
            break
        try:
            compose_config(base + words)
            return None
        except Dense3DError as e:
            first = first or str(e)
    return first


def test_documented_overrides_compose():
    spans = documented_overrides()
    bad = [f"{doc}: `{' '.join(words)}`: {err}" for doc, words in spans if (err := _composes_somewhere(words))]
    assert len(spans) >= 10, spans
    assert not bad, "\n".join(bad)


def _results_recipes() -> list[tuple[int, list[str]]]:
    """(block number, argv) of every ``dense3d`` command of docs/results.md's bash blocks, as bash
    expands them (the blocks share variables, as one shell session); commands run while another
    commit is checked out (``git checkout <commit>`` ... ``git checkout main``) are left out."""
    text = (ROOT / "docs" / "results.md").read_text()
    script = ["set -f", "dense3d() { printf '%s\\x1f' \"$@\"; printf '\\n'; }",
              "python() { :; }", "git() { [ \"$1\" = checkout ] && echo \"CHECKOUT $2\"; true; }"]
    for i, (lang, body) in enumerate(_code_blocks(text)):
        if lang == "bash":
            script += [f"echo BLOCK {i}", body]
    run = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(script)], capture_output=True, text=True,
                         timeout=30, cwd="/")
    assert run.returncode == 0, run.stderr
    out, block, commit = [], -1, "main"
    for line in run.stdout.splitlines():
        if line.startswith("BLOCK "):
            block = int(line.split()[1])
        elif line.startswith("CHECKOUT "):
            commit = line.split()[1]
        elif commit == "main":
            out.append((block, line.split("\x1f")[:-1]))
    return out


def test_results_recipes_compose():
    recipes = _results_recipes()
    bad = []
    seen = set()
    checked = 0
    for block, argv in recipes:
        # commands that differ only in scalar values of one key compose alike: one of them is enough
        shape = tuple(re.sub(r"^(task_name|seed|init_from|trainer\.max_steps|optim\.lr)=.*", r"\1=", w) for w in argv)
        if argv[0] not in ("train", "convert") or shape in seen:
            continue
        seen.add(shape)
        try:
            args = _parse(argv)
            if argv[0] == "train":
                compose_config(list(args.overrides))
            checked += 1
        except (AssertionError, Dense3DError) as e:
            bad.append(f"docs/results.md block {block}: dense3d {' '.join(argv)}: {e}")
    assert checked >= 20, checked
    assert not bad, "\n".join(bad)


def _resolves(path: str) -> bool:
    """``dense3d.a.b.C.d``: the longest importable module prefix, then attributes."""
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_documented_dense3d_names_resolve():
    """Every ``dense3d.x.y`` the prose quotes is a module, or an attribute of one."""
    names = [(doc, m.group(0)) for doc in USER_DOCS for span in _inline_spans((ROOT / doc).read_text())
             for m in re.finditer(r"\bdense3d(\.[A-Za-z_]\w*)+", span)]
    bad = [f"{doc}: {name}" for doc, name in names if not _resolves(name)]
    assert len(names) >= 30, names
    assert not bad, "\n".join(bad)


def _expand_braces(path: str) -> list[str]:
    """``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py`` (nested braces too)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand_braces(path[:m.start()] + alt + path[m.end():])]


def test_documented_repo_paths_exist():
    """Every repository path the docs quote (``dense3d/...``, ``configs/...``, ``tools/...``, ...)
    exists; ``{a,b}`` alternatives are each checked, a config option may leave out ``.yaml``."""
    pattern = re.compile(r"(?<![\w/.$])((?:dense3d|configs|tools|benchmarks|tests|docs|requirements)/[\w./{},-]*[\w}])")
    paths = []
    for doc in [*USER_DOCS, "docs/results.md"]:
        for span in _inline_spans((ROOT / doc).read_text()):
            for m in pattern.finditer(span):
                if span[m.end():m.end() + 1] in ("<", "*"):
                    continue  # a pattern (benchmarks/bm_<name>.py, tests/*.py), not a path
                if not m.group(1).startswith("configs/local"):  # git-ignored: the user's own
                    paths += [(doc, p) for p in _expand_braces(m.group(1))]
    bad = [f"{doc}: {p}" for doc, p in paths if not any((ROOT / (p + ext)).exists() for ext in ("", ".py", ".yaml"))]
    assert len(paths) >= 100, len(paths)
    assert not bad, "\n".join(bad)


HYDRA_FLAGS = {"--cfg", "--package", "--multirun", "--config-name", "--config-path", "--help", "--info", "--resolve"}


def test_documented_script_flags_exist():
    """Every ``--flag`` quoted after ``tools/<x>.py`` or ``benchmarks/bm_<x>.py`` is an option the
    script declares (hydra's own flags for the hydra entry points tools/train.py and tools/test.py)."""
    found, bad = 0, []
    for doc in [*USER_DOCS, "docs/results.md"]:
        text = (ROOT / doc).read_text()
        lines = [line for _, body in _code_blocks(text) for line in body.replace("\\\n", " ").splitlines()]
        for line in lines + _inline_spans(text):
            for m in re.finditer(r"((?:tools|benchmarks)/\w+\.py)([^`#;|]*)", line):
                script = ROOT / m.group(1)
                source = script.read_text() if script.exists() else ""
                hydra = "@hydra.main" in source
                for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(2)):
                    found += 1
                    if f'"{flag}"' not in source and f"'{flag}'" not in source and not (hydra and flag in HYDRA_FLAGS):
                        bad.append(f"{doc}: {m.group(1)} has no option {flag}: `{line.strip()}`")
    assert found >= 20, found
    assert not bad, "\n".join(bad)
