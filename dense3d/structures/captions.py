"""The output record of dense3d: one caption per region (a 3D box or a time span)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from dense3d.errors import BoxError, EventError, PredictionFormatError

__all__ = ["DenseCaption"]


@dataclass
class DenseCaption:
    """One described region.

    Attributes:
        kind: ``"box"`` (a 3D box) or ``"event"`` (a time span).
        region: the box ``(x, y, z, dx, dy, dz, yaw)`` in dense3d's convention (see
            ``dense3d.structures.boxes``) or the span ``(t0, t1)`` in seconds, ``0 <= t0 <= t1``.
        score: confidence of the region in [0, 1] (a probability, not a logit; 1 for GT regions).
        label: class name of the region (``"car"``, ``"horn"``, ...).
        text: the caption.
        extra: anything else worth keeping (e.g. ``{"azimuth": 0.3}`` for events,
            ``{"source_box": 4}`` for an event grounded to a box of the same scene).
    """

    kind: Literal["box", "event"]
    region: tuple[float, ...]
    score: float
    label: str
    text: str
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        src = f"DenseCaption({self.label!r})"
        try:
            self.region = tuple(float(v) for v in self.region)
        except (TypeError, ValueError):  # None, a number, strings: not a list of numbers
            err = EventError if self.kind == "event" else BoxError
            raise err(src, "region", "a list of numbers", got=repr(self.region)) from None
        if self.kind == "box":
            if len(self.region) != 7 or not all(math.isfinite(v) for v in self.region):
                raise BoxError(src, "region", "7 finite numbers (x, y, z, dx, dy, dz, yaw)", got=list(self.region))
            if min(self.region[3:6]) < 0:
                raise BoxError(src, "region.size", "dx, dy, dz >= 0", got=list(self.region[3:6]))
        elif self.kind == "event":
            if len(self.region) != 2 or not all(math.isfinite(v) for v in self.region):
                raise EventError(src, "region", "2 finite numbers (t0, t1)", got=list(self.region))
            if self.region[1] < self.region[0]:
                raise EventError(src, "region", "t1 >= t0", got=list(self.region))
            if self.region[0] < 0:  # seconds from the clip's start, as Events requires
                raise EventError(src, "region", "t0 >= 0", got=list(self.region))
        else:
            raise PredictionFormatError(src, "kind", "'box' or 'event'", got=repr(self.kind))
        try:
            score = float(self.score)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise PredictionFormatError(src, "score", "a finite number", got=repr(self.score))
        if not 0.0 <= score <= 1.0:  # a confidence: a logit passed as the score is caught here
            raise PredictionFormatError(src, "score", "a confidence in [0, 1]", got=score)
        self.score = score

    def to_dict(self) -> dict:
        """A JSON-ready dict (the evaluation tools' per-region prediction record)."""
        d = {"kind": self.kind, "score": self.score, "label": self.label, "caption": self.text}
        if self.kind == "box":
            d["box"] = list(self.region)
        else:
            d["timestamp"] = list(self.region)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "DenseCaption":
        for key in ("score", "label", "caption"):
            if key not in d:
                raise PredictionFormatError(source, key, "present")
        if "box" in d:
            return cls("box", d["box"], d["score"], d["label"], d["caption"], d.get("extra", {}))
        if "timestamp" in d:
            return cls("event", d["timestamp"], d["score"], d["label"], d["caption"], d.get("extra", {}))
        raise PredictionFormatError(source, "box|timestamp", "one of the two keys")
