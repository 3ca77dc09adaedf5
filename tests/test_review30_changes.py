"""Review of today's changes outside the engine (audio encoder padding, caption scorer checks)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dense3d.models.encoders.audio.encoder import AudioEncoder
from tests.models.av_clips import SR, audio_batch as _audio_batch, noise as _noise


def test_audio_padding_stays_masked_under_ddp_sync_batch_norm():
    """trainer=ddp sets sync_batchnorm: Lightning turns every BatchNorm2d into a SyncBatchNorm,
    which is not a BatchNorm2d: the CNN blocks' BNs then ran over the padded frames and left
    them non-zero, so a short clip's last frames depended on its batch again."""
    torch.manual_seed(0)
    enc = AudioEncoder(num_channels=2, cnn_channels=(8, 16), time_pool=4, out_channels=16, max_lag=4)
    for bn in (m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)):  # trained-like running statistics
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(enc))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    short, long = _noise(2, SR // 2, 0), _noise(2, SR, 1)
    with torch.no_grad():
        alone = enc.eval()(_audio_batch([short])).features[0]
        beside = synced.eval()(_audio_batch([long, short])).features[1, : alone.shape[0]]
    torch.testing.assert_close(beside, alone, atol=1e-5, rtol=1e-5)
    # training: the BN statistics (running ones too) come from the real frames only, as without DDP
    batch = _audio_batch([long, short])
    enc.train()(batch)
    synced.train()(batch)
    for (name, a), (_, b) in zip(enc.named_buffers(), synced.named_buffers()):
        torch.testing.assert_close(b, a, msg=name)


def test_caption_scorer_refuses_references_given_as_one_string():
    """gts[k] as a bare string was split into its characters, each scored as a reference (no
    error); pycocoevalcap asserts a list of reference strings."""
    from dense3d.eval.caption_metrics import CaptionScorer

    with CaptionScorer(metrics=("BLEU", "ROUGE-L", "CIDEr")) as s:
        res = {1: ["a man walks"], 2: ["a dog barks"]}
        with pytest.raises(ValueError, match=r"gts\[1\]: expected a list of reference captions, got 'a man walks'"):
            s.score({1: "a man walks", 2: ["a dog barks"]}, res)
        with pytest.raises(ValueError, match=r"pair 0: expected a string candidate and a list of >= 1 reference strings, got 'a man walks'"):
            s.score_pairs([("a man walks", "a man walks")])
        with pytest.raises(ValueError, match=r"pair 1: .*got \[\['a', 'dog'\]\]"):
            s.score_pairs([("a man walks", ["a man walks"]), ("a dog barks", [["a", "dog"]])])
        assert s.score({1: ("a man walks",), 2: ["a dog barks", "a dog"]}, res)[0]["BLEU-1"] == pytest.approx(1.0)


def test_audio_frames_of_an_odd_fft_are_the_clips_own():
    """With an odd n_fft the STFT of S samples has (S - 1) // hop + 1 frames, not S // hop + 1:
    a 2000-sample clip (hop 100, n_fft 401) beside a longer one counted an 11th real frame its
    STFT does not have (masks, BN statistics, pooling), so its features differed by up to 0.19
    from the clip alone and its mask claimed 11 of the 10 frames it has alone."""
    torch.manual_seed(0)
    enc = AudioEncoder(num_channels=2, n_fft=401, hop_length=100, cnn_channels=(8, 16), time_pool=2, out_channels=16, max_lag=4).eval()
    for bn in (m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
    short, long = _noise(2, 2000, 0), _noise(2, 4000, 1)
    with torch.no_grad():
        alone = enc(_audio_batch([short]))
        beside = enc(_audio_batch([long, short]))
    T = alone.features.shape[1]
    assert T == enc.num_frames(2000) == 10 and alone.mask.sum() == 10 and beside.mask[1].sum() == 10
    torch.testing.assert_close(beside.features[1, :T], alone.features[0], atol=1e-5, rtol=1e-5)
    assert enc.stft_frames(torch.tensor([0, 99, 100, 101])).tolist() == [0, 1, 1, 2]  # (S - 1) // 100 + 1
    assert AudioEncoder(num_channels=2, max_lag=4).stft_frames(torch.tensor([0, 159, 160])).tolist() == [1, 1, 2]  # even: S // hop + 1
