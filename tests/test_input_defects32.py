"""Three user-facing input defects: a truncated WAV read silently, ``hydra.run.dir`` accepted
and unused, a one-voxel training batch failing deep inside BatchNorm1d."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SR = 16000


# ------------------------------------------------------------------ 1. truncated WAV
def _stereo_noise(frames: int, seed: int = 0) -> np.ndarray:
    return (0.5 * (np.random.default_rng(seed).random((frames, 2)) * 2 - 1)).astype(np.float32)  # (S, A)


def test_truncated_wav_is_a_one_line_error_naming_the_file(tmp_path):
    """libsndfile reads a WAV whose data chunk promises more bytes than the file holds without an
    error: it shortens the chunk to what is there. A copy cut short by 1000 bytes (250 frames of
    a 2 s stereo clip) passed the dense-events "at least half of the duration" check and loaded as
    a 1.98 s clip. Now the reader compares the frames read with the header's data chunk."""
    import soundfile as sf

    from dense3d.data.datasets import DenseEventsDataset
    from dense3d.errors import AudioError

    wav = tmp_path / "clip.wav"
    sf.write(str(wav), _stereo_noise(2 * SR), SR, subtype="PCM_16")
    with open(wav, "r+b") as f:
        f.truncate(wav.stat().st_size - 1000)
    ann = tmp_path / "ev_val.json"
    ann.write_text(json.dumps({"clip": {"duration": 2.0, "timestamps": [[0.5, 1.0]], "sentences": ["A horn."]}}))
    ds = DenseEventsDataset(str(tmp_path / "ev_{split}.json"), str(tmp_path), split="val", sensors=["audio"])
    with pytest.raises(AudioError, match=r"clip.wav: field 'data chunk': expected 32000 frames as the WAV header declares, "
                                         r"got 31750 frames \(the file ends early: a truncated copy\?\)$") as e:
        ds[0]
    assert "\n" not in str(e.value) and str(wav) in str(e.value)


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_24"), ("WAV", "ULAW"), ("WAVEX", "FLOAT"), ("WAVEX", "PCM_16")])
def test_truncated_wav_of_other_codings(tmp_path, fmt, subtype):
    """The same for 24-bit, mu-law and WAVE_FORMAT_EXTENSIBLE files, cut by one byte."""
    import soundfile as sf

    from dense3d.data.readers import read_audio_file
    from dense3d.errors import AudioError

    wav = tmp_path / "cut.wav"
    sf.write(str(wav), _stereo_noise(1000), SR, format=fmt, subtype=subtype)
    wav.write_bytes(wav.read_bytes()[:-1])
    with pytest.raises(AudioError, match=r"cut.wav: field 'data chunk': expected 1000 frames as the WAV header declares, got 999 frames"):
        read_audio_file(wav)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM"])
@pytest.mark.parametrize("frames", [1, 4001])
def test_whole_wav_files_read_as_before(tmp_path, subtype, frames):
    """Whole files of every WAV coding (odd byte counts with a pad byte, block codings, WAVEX,
    RF64) and FLAC / MP3 read exactly what soundfile reads."""
    import soundfile as sf

    from dense3d.data.readers import read_audio_file

    for fmt in [f for f in ("WAV", "WAVEX", "RF64") if sf.check_format(f, subtype)]:
        path = tmp_path / f"{fmt}_{subtype}.wav"
        sf.write(str(path), _stereo_noise(frames, seed=frames), SR, format=fmt, subtype=subtype)
        wave, rate = read_audio_file(path)
        expected, _ = sf.read(str(path), dtype="float32", always_2d=True)  # (S, A)
        assert rate == SR and torch.equal(wave, torch.from_numpy(expected.T.copy())), (fmt, subtype)
    if subtype == "PCM_16":
        for fmt in ("FLAC", "MP3"):
            path = tmp_path / f"clip.{fmt.lower()}"
            sf.write(str(path), _stereo_noise(max(frames, 1152)), SR, format=fmt)
            wave, _ = read_audio_file(path)
            expected, _ = sf.read(str(path), dtype="float32", always_2d=True)
            assert torch.equal(wave, torch.from_numpy(expected.T.copy())), fmt


# ------------------------------------------------------------------ 2. hydra.run.dir
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override", ["hydra.run.dir=RUN", "++hydra.run.dir=RUN", "hydra.run={dir:RUN}"])
def test_dense3d_train_refuses_hydra_run_dir(override, tmp_path, capsys):
    """`dense3d train hydra.run.dir=/x` composed and trained into paths.output_dir: hydra.run.dir
    is read by nothing (configs/train.yaml keeps the working directory). Now one line saying to
    use paths.output_dir, before anything is built or written."""
    from dense3d.cli import main

    run = tmp_path / "x"
    override = override.replace("RUN", str(run))
    # no experiment: without the check this fails fast on the missing data config, not trains
    assert main(["train", override, f"paths.output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dense3d train: ConfigError: configs/train.yaml: field 'override {override}': expected paths.output_dir=... "
                          "for the run folder (hydra.run.dir is not used"), err
    assert len(err.splitlines()) == 1 and not run.exists() and not (tmp_path / "out").exists()


def test_tools_train_refuses_hydra_run_dir_and_keeps_the_sweep_dir(tmp_path):
    """tools/train.py the same (hydra made the unused folder, then the run went to
    paths.output_dir). A sweep's hydra.sweep.dir is used (each job trains into
    hydra.sweep.dir/<job number>) and the hydra.run.dir Lightning's DDP launcher adds to its
    child processes is the parent's: both still pass the command-line check."""
    from dense3d.engine.train import check_group_choices

    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), f"hydra.run.dir={tmp_path / 'x'}",
                        f"paths.output_dir={tmp_path / 'out'}"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"tools/train.py: ConfigError: configs/train.yaml: field 'override hydra.run.dir={tmp_path / 'x'}'")
    assert "paths.output_dir=" in lines[0] and not (tmp_path / "x").exists() and not (tmp_path / "out").exists()
    check_group_choices(["-m", "experiment=demo", "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}"])
    check_group_choices(["experiment=demo", 'hydra.run.dir="."', "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"])


# ------------------------------------------------------------------ 3. one-voxel training batch
def _indoor_lidar_encoder():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    return instantiate(OmegaConf.load(REPO / "configs" / "model" / "encoder" / "lidar_indoor.yaml"))


def _batch(xyz):
    """One sample's points (x, y, z, r, g, b) as a Batch (column 0: the sample index)."""
    from dense3d.structures.sample import Batch

    pts = torch.tensor([[0.0, *p, 0.5, 0.4, 0.3] for p in xyz])
    return Batch(samples=[None], points=pts)


@pytest.mark.parametrize("xyz", [[(1.05, 1.05, 1.05)], [(1.01, 1.02, 1.03), (1.04, 1.05, 1.06), (1.07, 1.01, 1.02)]],
                         ids=["one point", "three points"])
def test_one_voxel_training_batch_is_a_one_line_error(xyz):
    """A scene cropped to one occupied voxel, batch size 1, in training: the voxel encoder's
    BatchNorm1d raised torch's "Expected more than 1 value per channel when training" from deep
    inside (mmdet3d's DynamicVFE and SECOND fail the same way: batch statistics of one row are
    undefined). Now a one-line PointCloudError naming the cause; in eval mode (running
    statistics) the same batch encodes as before."""
    from dense3d.errors import PointCloudError

    enc = _indoor_lidar_encoder().train()
    with pytest.raises(PointCloudError, match=r"^Batch: field 'points': expected at least 2 occupied voxels in a training batch "
                                              rf"\(BatchNorm1d .*got 1 voxel from {len(xyz)} point\(s\) in point_range, 1 sample\(s\)$") as e:
        enc(_batch(xyz))
    assert "\n" not in str(e.value)
    with torch.no_grad():
        out = enc.eval()(_batch(xyz))
    assert out.shape == (1, enc.out_channels, 24, 24) and bool(torch.isfinite(out).all())


def test_voxels_merged_into_one_site_by_a_strided_conv_is_a_one_line_error():
    """Two voxels at x = 94 and 95 of the 96-wide grid (y, z even) are one site after the first
    stride-2 sparse conv: its BatchNorm1d raised the same deep error. Now a one-line
    SparseTensorError; two voxels that stay two sites train."""
    from dense3d.errors import SparseTensorError

    enc = _indoor_lidar_encoder().train()
    with pytest.raises(SparseTensorError, match=r"^SparseSequential: field 'features': expected at least 2 active sites for BatchNorm1d "
                                                r"in training .*got 1 site at \[b, z, y, x\] = \[0, 5, 5, 47\] of spatial shape \[16, 48, 48\]$"):
        enc(_batch([(9.05, 0.65, 0.85), (9.15, 0.65, 0.85)]))
    out = enc(_batch([(1.05, 1.05, 1.05), (1.15, 1.05, 1.05)]))  # x = 14 and 15: sites 7 and 8 after the stride
    assert out.shape == (1, enc.out_channels, 24, 24) and bool(torch.isfinite(out).all())
