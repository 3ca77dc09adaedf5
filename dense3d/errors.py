"""Errors for bad input: one class per kind, one line per message.

Every message names where the input came from (a file path, or a description such as
``"Boxes3D(tensor)"`` for in-memory input), the field, what was expected and, when it
helps, what was found::

    raise BoxError("infos.pkl", "data_list[3].instances[7].bbox_3d", "7 finite numbers", got="[1.0, nan, ...]")
    # BoxError: infos.pkl: field 'data_list[3].instances[7].bbox_3d': expected 7 finite numbers, got [1.0, nan, ...]

The command line prints these as one line and exits with status 2; a traceback from
deep inside the library is a bug, not an error message.
"""
from __future__ import annotations

import os
import select
import sys
from typing import Callable

__all__ = [
    "Dense3DError",
    "BoxError",
    "EventError",
    "PointCloudError",
    "ImageError",
    "CalibrationError",
    "AudioError",
    "VideoError",
    "AnnotationError",
    "SparseTensorError",
    "OpInputError",
    "ConfigError",
    "CheckpointError",
    "PredictionFormatError",
    "DependencyError",
    "exit_status",
    "print_error",
]


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class Dense3DError(ValueError):
    """Base class of every dense3d input error.

    Args:
        source: the file the input came from, or a short description of in-memory input.
        field: the field (key, column, argument) that is wrong.
        expected: what was expected, in words.
        got: what was found (optional; shortened to keep the message on one line).
    """

    def __init__(self, source: object, field: str, expected: str, got: object = None):
        self.source = str(source)
        self.field = field
        self.expected = expected
        self.got = got
        msg = f"{_one_line(self.source)}: field '{_one_line(field)}': expected {_one_line(expected)}"
        if got is not None:
            msg += f", got {_one_line(got)}"
        super().__init__(msg)


class BoxError(Dense3DError):
    """3D boxes with a wrong shape, non-finite values or negative / zero sizes."""


class EventError(Dense3DError):
    """Time spans with a wrong shape, non-finite values, or t1 < t0."""


class PointCloudError(Dense3DError):
    """Point clouds: truncated files, wrong feature count, NaN/inf points."""


class ImageError(Dense3DError):
    """Camera images: missing or unreadable files, wrong shapes."""


class CalibrationError(Dense3DError):
    """Camera or sensor calibration that is malformed or not a rigid transform."""


class AudioError(Dense3DError):
    """Audio: unreadable files, unexpected sample rate or channel count."""


class VideoError(Dense3DError):
    """Video: unreadable files, non-monotonic timestamps, wrong frame shapes."""


class AnnotationError(Dense3DError):
    """Annotation files (JSON, info pkl): missing fields, unknown classes, bad ids."""


class SparseTensorError(Dense3DError):
    """Sparse tensors: wrong dtypes, indices outside the spatial shape, duplicates, NaN features."""


class OpInputError(Dense3DError):
    """Inputs to a geometry or voxelization op with the wrong dtype, shape or values."""


class ConfigError(Dense3DError):
    """Hydra configs that do not compose or name a target outside dense3d/torch."""


class CheckpointError(Dense3DError):
    """Checkpoints that are missing, truncated, corrupted or do not fit the model."""


class PredictionFormatError(Dense3DError):
    """Prediction / ground-truth files given to the evaluation tools in a wrong format."""


class DependencyError(Dense3DError):
    """A required external program or package (Java, an optional wheel) is missing."""


def exit_status(main: Callable[[], int | None], prog: str) -> int:
    """Run a command-line ``main`` and return its exit status; bad input (a ``Dense3DError``)
    is printed as ``prog: ErrorClass: message`` on one line and gives status 2, no traceback; a
    closed stdout (piped into ``head``) ends it quietly with status 141.
    The ``dense3d`` command and the scripts in ``tools/`` end with ``sys.exit(exit_status(...))``
    (or through ``dense3d.cli.main``, as ``tools/create_data.py`` does; ``tools/train.py``, hydra's
    main, prints bad input in the same one line itself and ends through it for the closed
    stdout), except ``tools/check_cuda_compile.py`` (a build check), which imports nothing of dense3d."""
    try:
        return int(main() or 0)
    except Dense3DError as e:
        print_error(prog, e)
        return 2
    except BrokenPipeError:
        if not _stdout_reader_left():
            raise  # another pipe or socket broke (a loader worker, a DDP store): a real error
        # The reader of stdout left (``tools/caption_facts.py ... | head``): stop without a traceback.
        # Python's own recipe (the signal module's "Note on SIGPIPE"): stdout pointed at devnull, so
        # the flush at exit does not raise again. 141 = 128 + SIGPIPE, what a shell reports for a
        # writer the signal stopped (``set -o pipefail`` sees what it sees for C tools).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reader has closed it: poll reports an error on its write end."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), stdout without a descriptor
        return False


def print_error(prog: str, e: Dense3DError) -> None:
    """Print ``prog: ErrorClass: message`` to stderr in one write: under torchrun every rank
    shares the launcher's stderr, and ``print`` writes the text and its newline apart, so two
    ranks' lines could join into one (a pipe keeps a write under 4 KiB whole)."""
    sys.stderr.write(f"{prog}: {type(e).__name__}: {e}\n")
    sys.stderr.flush()
