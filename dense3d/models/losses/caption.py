"""Caption losses: teacher-forced cross-entropy and SCST with a CIDEr-D reward.

SCST (Rennie et al., 2017): sample a caption per region, score it with CIDEr-D against the
references, subtract the score of the test-time caption (the baseline) and raise the
log-likelihood of samples that beat it. CIDEr-D is pycocoevalcap's ``Cider`` (document
frequencies from the references of the batch scored).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["caption_cross_entropy", "weighted_mean_cross_entropy", "sequence_log_probs", "cider_d", "scst_loss"]


def caption_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens.

    Args:
        logits: (N, T, V) logits at every position; labels: (N, T) target ids at their own
            positions, -100 where no loss. Position t's logits predict token t + 1.
        weights: optional (N, T) weight of each labelled token (at the label's position); the
            loss is then the weighted mean.
    """
    V = logits.shape[-1]
    shift_logits = logits[:, :-1].reshape(-1, V).float()  # (N, T-1, V) -> (N*(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (N, T-1) -> (N*(T-1),)
    if weights is None:
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    return weighted_mean_cross_entropy(shift_logits, shift_labels, weights[:, 1:].reshape(-1))  # (N, T-1) -> (N*(T-1),)


def weighted_mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(M, V), (M,), (M,) -> sum(w * ce) / sum(w) over the labels that are not -100."""
    ce = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")  # (M,), 0 where ignored
    w = weights.to(ce.dtype) * (labels != -100)
    return (w * ce).sum() / w.sum().clamp(min=1e-12)


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, T, V), (N, T) -> (N,) summed log-probabilities of the labelled tokens.

    ``logits`` may hold -inf (tokens a decoding constraint bans, e.g. the n-gram block); an
    unlabelled position may then pick one (its label stands in as id 0), so it is dropped with
    ``where``, not multiplied by 0 (-inf * 0 is nan)."""
    logp = F.log_softmax(logits[:, :-1].float(), -1)  # (N, T-1, V)
    tgt = labels[:, 1:]  # (N, T-1)
    keep = tgt != -100
    tok = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, T-1)
    return torch.where(keep, tok, torch.zeros_like(tok)).sum(-1)


def cider_d(hypotheses: list[str], references: list[list[str]]) -> torch.Tensor:
    """(N,) CIDEr-D of each hypothesis against its references (pycocoevalcap)."""
    from pycocoevalcap.cider.cider import Cider

    if not hypotheses:
        return torch.zeros(0)
    gts = {i: [r.lower() for r in refs] or [""] for i, refs in enumerate(references)}
    res = {i: [h.lower() if h.strip() else "<empty>"] for i, h in enumerate(hypotheses)}
    _, scores = Cider().compute_score(gts, res)
    return torch.as_tensor(scores, dtype=torch.float32)


def scst_loss(sample_log_probs: torch.Tensor, sample_reward: torch.Tensor, baseline_reward: torch.Tensor,
              lengths: torch.Tensor) -> torch.Tensor:
    """Self-critical policy gradient: ``-mean((r - b) * log p(sample) / length)``.

    Args:
        sample_log_probs: (N,) summed log-probabilities of the sampled captions (with grad).
        sample_reward, baseline_reward: (N,) CIDEr-D of the samples and of the test-time (baseline) captions.
        lengths: (N,) tokens per sample (normalises long captions).
    """
    adv = (sample_reward - baseline_reward).to(sample_log_probs)
    return -(adv * sample_log_probs / lengths.clamp(min=1).to(sample_log_probs)).mean()
