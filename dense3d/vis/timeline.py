"""Timelines of audio-visual clips: spectrogram, ground-truth and predicted events, captions."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dense3d.structures import Events
from dense3d.utils.io import atomic_write

__all__ = ["plot_timeline"]


def plot_timeline(
    waveform: np.ndarray,
    sample_rate: int,
    gt: tuple[Events, Sequence[str]] | None,
    pred: tuple[Events, Sequence[str]] | None,
    out_png: str | Path,
    title: str = "",
) -> Path:
    """Plot the log-mel spectrogram of the first channel of (A, S) ``waveform`` with the GT
    events (green) and predicted events (red) as bars labelled with their captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torchaudio

    wav = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
    wav = wav[0] if wav.dim() == 2 else wav  # (S,)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=64)(wav)
    logmel = torch.log(mel + 1e-6).numpy()  # (n_mels, frames)
    duration = wav.shape[0] / sample_rate

    rows = [r for r in (("ground truth", gt, "tab:green"), ("predicted", pred, "tab:red")) if r[1] is not None]
    fig, axes = plt.subplots(1 + len(rows), 1, figsize=(12, 3 + 1.6 * len(rows)), dpi=100, sharex=True,
                             gridspec_kw={"height_ratios": [2] + [1] * len(rows)})
    axes = np.atleast_1d(axes)
    axes[0].imshow(logmel, origin="lower", aspect="auto", extent=[0, duration, 0, logmel.shape[0]], cmap="magma")
    axes[0].set_ylabel("mel bin")
    axes[0].set_title(title)
    for ax, (name, (events, captions), color) in zip(axes[1:], rows):
        spans = events.tensor.detach().cpu().numpy()
        for k, (t0, t1) in enumerate(spans):
            y = k % 4
            ax.barh(y, max(t1 - t0, 0.02), left=t0, height=0.8, color=color, alpha=0.6)
            if k < len(captions):
                ax.text(t0, y, " " + captions[k], va="center", fontsize=7)
        ax.set_ylim(-0.6, 3.6)
        ax.set_yticks([])
        ax.set_ylabel(name)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, duration)
    out_png = Path(out_png)
    with atomic_write(out_png, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight")
    plt.close(fig)
    return out_png
