"""FAVDBench clips (video + audio) with their fine-grained audible paragraphs.

File layout and the two JSON layouts accepted: ``docs/data_formats.md`` section 3.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

from dense3d.data.datasets.base import SampleDataset, select_sensors
from dense3d.data.datasets.media import check_frame_options, load_clip
from dense3d.data.readers import load_json
from dense3d.errors import AnnotationError
from dense3d.structures import Sample

__all__ = ["FAVDBenchDataset", "parse_favd_annotations", "split_sentences"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph after ``.``, ``!`` or ``?`` followed by white space."""
    return [s.strip() for s in _SENTENCE_END.split(paragraph.strip()) if s.strip()]


def _texts(value, source, field: str) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    raise AnnotationError(source, field, "a list of strings", got=type(value).__name__)


def parse_favd_annotations(data, source) -> dict[str, dict]:
    """Both accepted layouts -> ``{clip_id: {"summary", "visual", "audio", "paragraph", "schema",
    "mic_positions"}}`` (``visual``/``audio`` are None for the COCO layout)."""
    out: dict[str, dict] = {}
    coco = isinstance(data, dict) and "annotations" in data and isinstance(data["annotations"], list)
    if coco or isinstance(data, list):
        # {"annotations": [...]} (pycocoevalcap's reference file) or the bare list
        # [{"image_id", "caption"}, ...] that FAVDBench's Metrics/README.md calls its COCO format
        rows, prefix = (data["annotations"], "annotations") if coco else (data, "")
        for i, a in enumerate(rows):
            for key in ("image_id", "caption"):
                if not isinstance(a, dict) or key not in a:
                    raise AnnotationError(source, f"{prefix}[{i}].{key}", "a present field", got="missing")
            if not isinstance(a["caption"], str):
                raise AnnotationError(source, f"{prefix}[{i}].caption", "a paragraph string", got=type(a["caption"]).__name__)
            cid = str(a["image_id"])
            if cid in out:  # several references: the first is the paragraph, all kept
                out[cid]["references"].append(a["caption"].strip())
                continue
            sents = split_sentences(a["caption"])
            out[cid] = {
                "summary": sents[0] if sents else "",
                "visual": None,
                "audio": None,
                "paragraph": a["caption"].strip(),
                "references": [a["caption"].strip()],
                "schema": "coco",
                "mic_positions": None,
            }
        return out
    if not isinstance(data, dict):
        raise AnnotationError(source, "<root>", "{clip_id: {summary, visual, audio}} or a COCO caption file", got=type(data).__name__)
    for cid, e in data.items():
        for key in ("summary", "visual", "audio"):
            if not isinstance(e, dict) or key not in e:
                raise AnnotationError(source, f"{cid}.{key}", "a present field", got="missing")
        if not isinstance(e["summary"], str):
            raise AnnotationError(source, f"{cid}.summary", "a sentence", got=type(e["summary"]).__name__)
        visual = _texts(e["visual"], source, f"{cid}.visual")
        audio = _texts(e["audio"], source, f"{cid}.audio")
        paragraph = " ".join(s for s in [e["summary"].strip(), *visual, *audio] if s)
        out[str(cid)] = {
            "summary": e["summary"].strip(),
            "visual": visual,
            "audio": audio,
            "paragraph": paragraph,
            "references": [paragraph],
            "schema": "dense3d",
            "mic_positions": e.get("mic_positions"),
        }
    return out


class FAVDBenchDataset(SampleDataset):
    """Audible video clips with a paragraph each (summary, visual sentences, audio sentences).

    Args:
        annotation_file: paragraph JSON (``{split}`` replaced), in either layout of the docs.
        media_dir: folder of ``{clip_id}.mp4``.
        split: ``"train"``, ``"val"``, ``"test"``.
        audio_dir: folder of ``{clip_id}.{wav,flac,mp3}`` (default ``media_dir``); without such a
            file the mp4's audio stream is decoded.
        sensors: any of ``audio``, ``video``.
        sample_rate: the audio rate expected (another raises ``AudioError``); None accepts any.
        fps: keep video frames at most this often (None: every frame).
        max_frames: keep at most this many frames.
        transforms: a callable ``Sample -> Sample``.
        spread_frames: spread the ``max_frames`` over the whole clip (FAVDBench's own 32 frames:
            ``max_frames / duration`` frames a second, ``fps`` the most), not the first ones.

    Items: ``Sample`` with ``audio``, ``video``, ``paragraph`` and ``meta`` keys ``summary``,
    ``visual_sentences``, ``audio_sentences`` (None for the COCO layout), ``references``,
    ``paragraph_schema`` (``"dense3d"`` or ``"coco"``).
    """

    SENSORS = ("audio", "video")  # the sensors this data set has (a run's sensors.names may ask for more)

    def __init__(
        self,
        annotation_file: str,
        media_dir: str,
        split: str = "train",
        audio_dir: str | None = None,
        sensors: Sequence[str] = ("audio", "video"),
        sample_rate: int | None = 16000,
        fps: float | None = 8.0,
        max_frames: int | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        spread_frames: bool = False,
    ):
        super().__init__(transforms)
        self.split = split
        self.annotation_file = Path(str(annotation_file).format(split=split))
        self.media_dir = Path(str(media_dir).format(split=split))
        self.audio_dir = Path(str(audio_dir).format(split=split)) if audio_dir else None
        self.sensors = select_sensors(sensors, self.SENSORS, type(self).__name__)
        self.sample_rate = int(sample_rate) if sample_rate is not None else None
        self.fps, self.max_frames = check_frame_options(type(self).__name__, fps, max_frames, spread_frames)
        self.spread_frames = spread_frames

    def _build_index(self) -> list:
        anns = parse_favd_annotations(load_json(self.annotation_file), self.annotation_file)
        return sorted(anns.items())

    def _load(self, entry) -> Sample:
        cid, a = entry
        audio, video = load_clip(
            self.media_dir, self.audio_dir, cid, self.sensors, self.sample_rate, self.fps, self.max_frames,
            mic_positions=a["mic_positions"], annotation_source=self.annotation_file, spread_frames=self.spread_frames,
        )
        meta = {
            "summary": a["summary"],
            "visual_sentences": a["visual"],
            "audio_sentences": a["audio"],
            "references": a["references"],
            "paragraph_schema": a["schema"],
        }
        return Sample(sample_id=cid, audio=audio, video=video, paragraph=a["paragraph"], meta=meta)
