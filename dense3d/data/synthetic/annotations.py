"""Reading a generated set's ``synthetic_annotations.json``: every object's facts as the generator
drew them (class, colour, place, relation targets), the ground truth that ``tools/`` and the fact
checks compare captions against. One reader, so a missing, malformed or wrong-kind file gives the
same one-line error wherever it is read.
"""
from __future__ import annotations

from pathlib import Path

from dense3d.data.readers import load_json
from dense3d.data.synthetic.common import KINDS
from dense3d.errors import AnnotationError

__all__ = ["ANNOTATIONS_FILE", "load_synthetic_annotations"]

ANNOTATIONS_FILE = "synthetic_annotations.json"


def load_synthetic_annotations(root: str | Path, kind: str | None = None) -> dict:
    """``{"kind", "scenes": [{"scene_id", "split", "objects", ...}]}`` of the set in ``root``.

    Args:
        root: a folder written by ``dense3d convert synth``.
        kind: the kind the caller needs (``"outdoor"``, ``"indoor"``, ``"av"``); None: any.
    Raises:
        AnnotationError naming the file and field: missing or malformed file, an unknown or
        unexpected ``kind``, ``scenes`` not a list of scenes with ``split`` and ``objects``.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"load_synthetic_annotations: kind must be one of {', '.join(KINDS)} or None, got {kind!r}")
    path = Path(root) / ANNOTATIONS_FILE
    if not path.is_file():
        raise AnnotationError(path, "<file>", f"a folder written by `dense3d convert synth --kind {kind or '|'.join(KINDS)}`",
                              got="missing file")
    ann = load_json(path)
    if not isinstance(ann, dict):
        raise AnnotationError(path, "<root>", "an object with 'kind' and 'scenes'", got=type(ann).__name__)
    if ann.get("kind") not in KINDS:
        raise AnnotationError(path, "kind", f"one of {', '.join(KINDS)}", got=ann.get("kind"))
    if kind is not None and ann["kind"] != kind:
        raise AnnotationError(path, "kind", repr(kind), got=ann["kind"])
    scenes = ann.get("scenes")
    if not isinstance(scenes, list):
        raise AnnotationError(path, "scenes", "a list of scenes", got=type(scenes).__name__)
    for n, s in enumerate(scenes):
        if not isinstance(s, dict) or "scene_id" not in s or "split" not in s or not isinstance(s.get("objects"), list):
            raise AnnotationError(path, f"scenes[{n}]", "a scene with 'scene_id', 'split' and an 'objects' list")
    return ann
