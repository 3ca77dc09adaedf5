"""atomic_write: all or nothing, with the permissions a plain open() gives."""
import json
import os
import stat

import pytest

from dense3d.utils.io import atomic_write, atomic_write_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert json.loads(path.read_text()) == {"a": 1}  # the old version stays
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary file left


def test_atomic_write_gives_plain_open_permissions(tmp_path):
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    atomic_write_json(tmp_path / "atomic.json", {})
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "atomic.json") == mode(tmp_path / "plain.txt")


def test_atomic_write_json_writes_strict_json(tmp_path):
    """NaN and infinities become null: `json.dump` wrote the bare token NaN, which strict JSON
    readers (jq, JavaScript, json.loads(parse_constant=...)) refuse."""
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"median": float("nan"), "rows": [1.5, float("inf"), (float("-inf"), 2)], "n": 3, "s": "NaN"})
    text = path.read_text()
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard token {c}")) == \
        {"median": None, "rows": [1.5, None, [None, 2]], "n": 3, "s": "NaN"}

