"""Converters between the formats dense3d reads; every output is written atomically
(temporary file + rename: a failure leaves no partial file and an older output untouched)."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from dense3d.data.datasets.tod3cap import parse_caption_entry
from dense3d.data.readers import load_json, load_pickle
from dense3d.errors import AnnotationError, PointCloudError
from dense3d.utils.io import atomic_write

__all__ = ["add_ann_tokens", "convert_tod3cap_captions", "write_mp4", "write_points_bin", "write_wav"]


def convert_tod3cap_captions(src: str | os.PathLike, dst: str | os.PathLike,
                             caption_source: str = "final_caption") -> dict[str, int]:
    """Rewrite a TOD3Cap caption JSON so that every entry has a ``final_caption``: the caption
    :func:`~dense3d.data.datasets.tod3cap.parse_caption_entry` chooses with ``caption_source``
    (an existing ``final_caption``, TOD3Cap's evaluation template from the nested fields, or the
    flat ``*_caption`` strings composed). The other fields are kept. Every entry is checked
    before anything is written.

    Returns how many entries had each schema: ``{"final_caption": n, "template": m, "composed": k}``.
    """
    data = load_json(src)
    if not isinstance(data, dict):
        raise AnnotationError(src, "<root>", "an object keyed by sample_annotation token", got=type(data).__name__)
    out, counts = {}, {"final_caption": 0, "template": 0, "composed": 0}
    for token, entry in data.items():
        caps, schema = parse_caption_entry(entry, src, str(token), caption_source)
        counts[schema] += 1
        out[str(token)] = dict(entry, final_caption=caps[0] if len(caps) == 1 else caps)
    with atomic_write(dst, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    return counts


def add_ann_tokens(info_file: str | os.PathLike, sample_annotation_file: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Give each box of an mmdet3d v1.1 nuScenes info file its ``sample_annotation`` token
    (``instances[i]["ann_token"]``, the key TOD3Cap captions are looked up by).

    mmdet3d writes a sample's instances in the order of the nuScenes sample's ``anns``, which the
    devkit builds in the file order of ``sample_annotation.json``; this function relies on that
    and checks the counts agree for every sample. Returns the number of tokens written.
    """
    infos = load_pickle(info_file)
    anns = load_json(sample_annotation_file)
    if not isinstance(anns, list):
        raise AnnotationError(sample_annotation_file, "<root>", "the nuScenes sample_annotation table (a list)", got=type(anns).__name__)
    by_sample: dict[str, list[str]] = {}
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or "token" not in a or "sample_token" not in a:
            raise AnnotationError(sample_annotation_file, f"[{i}].sample_token", "token and sample_token fields", got="missing")
        by_sample.setdefault(str(a["sample_token"]), []).append(str(a["token"]))
    data_list = infos.get("data_list") if isinstance(infos, dict) else None
    if not isinstance(data_list, list):
        raise AnnotationError(info_file, "data_list", "a list of samples", got=type(data_list).__name__)
    written = 0
    for k, info in enumerate(data_list):
        if not isinstance(info, dict) or "token" not in info:
            raise AnnotationError(info_file, f"data_list[{k}].token", "a present field", got="missing")
        instances = info.get("instances", [])
        tokens = by_sample.get(str(info["token"]), [])
        if len(tokens) != len(instances):
            raise AnnotationError(
                info_file, f"data_list[{k}].instances", f"{len(tokens)} boxes (the sample's annotations in {Path(sample_annotation_file).name})", got=len(instances)
            )
        for inst, tok in zip(instances, tokens):
            inst["ann_token"] = tok
            written += 1
    with atomic_write(dst, "wb") as f:
        pickle.dump(infos, f)
    return written


def write_points_bin(path: str | os.PathLike, points: torch.Tensor | np.ndarray) -> Path:
    """Write (N, F) points as raw little-endian float32 (``.pcd.bin`` / mmdet3d ``.bin``)."""
    arr = np.asarray(points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else points, dtype="<f4")
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise PointCloudError(path, "points", "shape (N, 3 + C)", got=f"shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PointCloudError(path, "points", "finite values", got="nan or inf")
    with atomic_write(path, "wb") as f:
        f.write(np.ascontiguousarray(arr).tobytes())
    return Path(path)


def write_wav(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write (A, S) samples in [-1, 1] as a WAV file (soundfile)."""
    import soundfile as sf

    wave = np.asarray(waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else waveform, dtype=np.float32)
    if wave.ndim != 2 or not np.isfinite(wave).all():
        from dense3d.errors import AudioError

        raise AudioError(path, "waveform", "finite (channels, samples)", got=f"shape {wave.shape}")
    with atomic_write(path, "wb") as f:
        sf.write(f, wave.T, int(sample_rate), format="WAV", subtype=subtype)  # (A, S) -> (S, A)
    return Path(path)


def write_mp4(
    path: str | os.PathLike,
    frames: torch.Tensor,
    fps: float,
    waveform: torch.Tensor | None = None,
    sample_rate: int | None = None,
    codec: str = "libx264",
) -> Path:
    """Write (T, 3, H, W) frames in [0, 1] (H, W even) as an H.264 mp4 with PyAV, plus an AAC
    audio stream from ``waveform`` (A, S) when given."""
    import av
    from fractions import Fraction

    from dense3d.errors import VideoError

    if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[2] % 2 or frames.shape[3] % 2:
        raise VideoError(path, "frames", "(T, 3, H, W) with even H and W", got=f"shape {tuple(frames.shape)}")
    rgb = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (T, 3, H, W) -> (T, H, W, 3)
    rate = Fraction(fps).limit_denominator(1000)
    with atomic_write(path, "wb") as f:
        with av.open(f, mode="w", format="mp4") as out:
            vs = out.add_stream(codec, rate=rate)
            vs.width, vs.height, vs.pix_fmt = rgb.shape[2], rgb.shape[1], "yuv420p"
            aus = None
            if waveform is not None:
                layouts = {1: "mono", 2: "stereo", 4: "quad", 6: "5.1"}
                aus = out.add_stream("aac", rate=int(sample_rate), layout=layouts.get(waveform.shape[0], "mono"))
            for i, img in enumerate(rgb):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                frame.time_base = 1 / rate
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
            if aus is not None:
                wave = waveform.detach().to(torch.float32).cpu().numpy()  # (A, S) planar
                step = 1024  # AAC frame size
                for start in range(0, wave.shape[1], step):
                    chunk = np.ascontiguousarray(wave[:, start : start + step])
                    af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=aus.layout.name)
                    af.sample_rate, af.pts = int(sample_rate), start
                    for packet in aus.encode(af):
                        out.mux(packet)
                for packet in aus.encode():
                    out.mux(packet)
    return Path(path)
