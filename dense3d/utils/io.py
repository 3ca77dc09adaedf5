"""File writing that never leaves a half-written output behind."""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from dense3d.errors import ConfigError

__all__ = ["atomic_write", "atomic_write_json", "check_output_path", "strict_json"]

# The process's umask, read once at import (reading it means setting it, which is not
# thread-safe later on): mkstemp makes 0600 files, and a written output should get the
# permissions a plain open() gives it.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    If the body raises, the temporary file is removed and ``path`` is untouched (an
    older version stays as it was, a missing file stays missing). The file gets the
    permissions ``open(path, "w")`` would give it (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def strict_json(obj):
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, recursively through
    dicts, lists and tuples: strict JSON (RFC 8259) has no NaN, and ``json.dump`` would write
    the bare token ``NaN`` that jq, JavaScript and most JSON readers refuse. A metric that is
    undefined (e.g. the direction error of zero matched events) is ``null`` in our files."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """Write ``obj`` as strict JSON to ``path`` atomically (non-finite floats as null:
    :func:`strict_json`)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(strict_json(obj), f, indent=indent, allow_nan=False)


def check_output_path(path: str | os.PathLike, owner: str, flag: str = "--out", folder: bool = False) -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder where a file is
    to go (or a file where a folder is), or a path below an existing file. Returns the path.

    Raises:
        ConfigError(owner, flag, ...) naming the path.
    """
    path = Path(path)
    what = "a folder" if folder else "a file"
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(owner, flag, f"a path for {what} (it is {'a file' if folder else 'a folder'})", got=str(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(owner, flag, f"a path for {what} below folders (it is below the file {parent})", got=str(path))
            break
    return path
