"""Dense event captioning: ActivityNet Captions evaluator semantics (``densevid_eval``) and SODA_c.

Captioning (:func:`evaluate`), as the ActivityNet Captions evaluator computes it:

* tIoU = intersection / (min(union span, len1 + len2) + 1e-8);
* at most ``max_proposals`` (1000) predictions per video, the first ones in file order;
* every sentence goes through pycocoevalcap's ``PTBTokenizer`` (Java); non-ASCII characters
  are replaced by spaces first, as the evaluator does;
* at each tIoU threshold t in {0.3, 0.5, 0.7, 0.9}, every prediction is paired with every GT
  event of every reference file whose tIoU is **>= t** (many-to-many); a prediction with no
  such event is paired with a garbage reference: the fixed string ``"abc123!@#"`` in the
  ``"2018"`` mode, a fresh random 10-20-letter lowercase string in the ``"2021"`` mode (drawn
  from ``random.Random(seed)``, so runs repeat);
* each video is scored over its own pairs (so CIDEr's IDF is per video); videos without
  predictions score 0 and count; mean over videos, then over thresholds;
* proposal precision / recall: a pair counts when tIoU is strictly **> t**; per video the
  best reference file; mean over videos, then over thresholds.

SODA_c (:func:`soda_c`), written from the paper (Fujita et al., ECCV 2020) -- its reference code's
licence forbids copying it: predictions and references are sorted by start time;
``S[i, j] = tIoU(i, j) * METEOR(pred i, ref j)``; the best order-preserving alignment is
``dp[i, j] = max(dp[i-1, j], dp[i, j-1], dp[i-1, j-1] + S[i, j])``; P = best / #pred,
R = best / #ref, F1 = 2PR / (P + R); macro average over videos. Several reference files are
scored one file at a time and P, R, F1 averaged over the files (``refs="average"``, the default:
what PDVC's ``eval_soda`` reports -- one SODA run per reference file, then the mean), merged per
video into one sorted reference set (``refs="merged"``, the reference code's default when given
several files), or scored separately, each video taking the reference file with the best F1
(``refs="separate"``, the reference code's ``--multi_reference``). The reference code silently
drops videos missing from the predictions (``missing="compatible"``); the default
``missing="zero"`` counts them as 0.
"""
from __future__ import annotations

import random
import string
from typing import Sequence

import numpy as np

from dense3d.eval.caption_metrics import CaptionScorer, ptb_tokenize
from dense3d.eval.formats import unknown_scenes
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = ["tiou", "evaluate", "proposal_precision_recall", "soda_c", "soda_align", "GARBAGE_2018", "TIOUS", "SODA_REFS"]

TIOUS = (0.3, 0.5, 0.7, 0.9)
SODA_REFS = ("average", "merged", "separate")  # several reference files in SODA_c; the first is the default
GARBAGE_2018 = "abc123!@#"
_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def tiou(a: Sequence[float], b: Sequence[float]) -> float:
    """densevid_eval's tIoU: ``inter / (min(max_end - min_start, len_a + len_b) + 1e-8)``."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), (a[1] - a[0]) + (b[1] - b[0]))
    return inter / (union + 1e-8)


def _remove_nonascii(text: str) -> str:
    """densevid_eval's ``remove_nonascii``: every non-ASCII character becomes a space (so
    ``"man\u2019s"`` -> ``"man s"`` and a no-break space still separates words)."""
    return "".join(ch if ord(ch) < 128 else " " for ch in text)


def _video_ids(gts: Sequence[dict]) -> list[str]:
    seen, out = set(), []
    for g in gts:
        for v in g:
            if v not in seen:
                seen.add(v)
                out.append(v)
    return out


def _truncate(pred: dict[str, list[dict]], max_proposals: int) -> dict[str, list[dict]]:
    return {v: evs[:max_proposals] for v, evs in pred.items()}


def proposal_precision_recall(pred: dict[str, list[dict]], gts: Sequence[dict], t: float) -> tuple[float, float]:
    """Mean over GT videos of the best-reference-file precision and recall at tIoU > t."""
    vids = _video_ids(gts)
    precision, recall = [], []
    for v in vids:
        best_p = best_r = 0.0
        for g in gts:
            if v not in g:
                continue
            refs = g[v]["timestamps"]
            ref_cov, pred_cov = set(), set()
            evs = pred.get(v, [])
            for pi, e in enumerate(evs):
                for ri, r in enumerate(refs):
                    if tiou(e["timestamp"], r) > t:
                        ref_cov.add(ri)
                        pred_cov.add(pi)
            if evs:
                best_p = max(best_p, len(pred_cov) / len(evs))
            if refs:
                best_r = max(best_r, len(ref_cov) / len(refs))
        precision.append(best_p)
        recall.append(best_r)
    n = max(len(vids), 1)
    return sum(precision) / n, sum(recall) / n


def _tokenized(pred: dict[str, list[dict]], gts: Sequence[dict], extra: Sequence[str] = ()) -> dict[str, str]:
    """PTB-tokenise every distinct sentence once (the tokenizer works line by line)."""
    sents = {_remove_nonascii(e["sentence"]) for evs in pred.values() for e in evs}
    sents |= {_remove_nonascii(s) for g in gts for rec in g.values() for s in rec["sentences"]}
    sents |= set(extra)
    keys = sorted(sents)
    tok = ptb_tokenize({i: [s] for i, s in enumerate(keys)})
    return {s: tok[i][0] for i, s in enumerate(keys)}


def evaluate(
    pred: dict[str, list[dict]],
    gts: Sequence[dict],
    tious: Sequence[float] = TIOUS,
    max_proposals: int = 1000,
    mode: str = "2018",
    seed: int = 0,
    scorer: CaptionScorer | None = None,
    soda: bool = True,
    soda_refs: str = "average",
    soda_missing: str = "zero",
    progress: ProgressBar | None = None,
) -> dict:
    """Caption metrics per tIoU and averaged (``"METEOR"``, ``"CIDEr@0.5"``, ...), proposal
    ``"Precision"`` / ``"Recall"``, and ``"SODA_c"`` (all x100). ``progress``: stages (pairing,
    tokenizing, captions per tIoU, proposals, SODA_c), see :mod:`dense3d.utils.progress`."""
    if mode not in ("2018", "2021"):
        raise ValueError(f"mode must be '2018' or '2021', got {mode!r}")
    bar = ensure_progress(progress)
    bar.add_total(3 + len(tious) + int(soda))
    bar.update("pairing events")
    pred = _truncate(pred, max_proposals)
    vids = _video_ids(gts)
    rng = random.Random(seed)
    own = scorer is None
    scorer = scorer or CaptionScorer()
    result: dict = {}
    try:
        # Build every threshold's pairs first (garbage strings drawn in a fixed order), then
        # PTB-tokenise all sentences in one Java call.
        per_t_pairs: dict[float, dict[str, list[tuple[str, str]]]] = {}
        garbage: list[str] = []
        for t in tious:
            vp: dict[str, list[tuple[str, str]]] = {}
            for v in vids:
                pairs = []
                for e in pred.get(v, []):
                    hyp = _remove_nonascii(e["sentence"])
                    added = False
                    for g in gts:
                        if v not in g:
                            continue
                        for ts, s in zip(g[v]["timestamps"], g[v]["sentences"]):
                            if tiou(e["timestamp"], ts) >= t:
                                pairs.append((hyp, _remove_nonascii(s)))
                                added = True
                    if not added:
                        if mode == "2018":
                            ref = GARBAGE_2018
                        else:
                            ref = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(10, 20)))
                        garbage.append(ref)
                        pairs.append((hyp, ref))
                vp[v] = pairs
            per_t_pairs[t] = vp
        bar.advance()
        bar.update("PTB tokenizer (Java)")
        tok = _tokenized(pred, gts, extra=[GARBAGE_2018, *garbage])
        bar.advance()
        for t in tious:
            bar.update(f"captions @tIoU {t:g}")
            sums = {m: 0.0 for m in _METRICS}
            for v in vids:
                pairs = [(tok[h], [tok[r]]) for h, r in per_t_pairs[t][v]]
                if not pairs:
                    continue  # no predictions: this video scores 0 and still counts
                corpus, _ = scorer.score_pairs(pairs)
                for m in _METRICS:
                    sums[m] += corpus.get(m, 0.0)
            for m in _METRICS:
                result[f"{m}@{t:g}"] = 100.0 * sums[m] / max(len(vids), 1)
            bar.advance()
        for m in _METRICS:
            result[m] = float(np.mean([result[f"{m}@{t:g}"] for t in tious]))
        bar.update("proposal precision / recall")
        ps, rs = [], []
        for t in tious:
            p, r = proposal_precision_recall(pred, gts, t)
            result[f"Precision@{t:g}"], result[f"Recall@{t:g}"] = 100 * p, 100 * r
            ps.append(p)
            rs.append(r)
        result["Precision"], result["Recall"] = 100 * float(np.mean(ps)), 100 * float(np.mean(rs))
        bar.advance()
        if soda:
            bar.update("SODA_c (METEOR, Java)")
            result.update(soda_c(pred, gts, refs=soda_refs, missing=soda_missing, scorer=scorer, tokenized=tok))
            bar.advance()
    finally:
        if own:
            scorer.close()
    result["videos"] = len(vids)
    result["unknown_videos"] = unknown_scenes(pred, vids)
    return result


def soda_align(S: np.ndarray) -> float:
    """Best total score of an order-preserving one-to-one alignment of rows to columns."""
    n, m = S.shape
    dp = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            dp[i, j] = max(dp[i - 1, j], dp[i, j - 1], dp[i - 1, j - 1] + S[i - 1, j - 1])
    return float(dp[n, m])


def soda_c(
    pred: dict[str, list[dict]],
    gts: Sequence[dict],
    refs: str = "average",
    missing: str = "zero",
    scorer: CaptionScorer | None = None,
    tokenized: dict[str, str] | None = None,
) -> dict:
    """SODA_c precision / recall / F1 (x100): ``{"SODA_c": F1, "SODA_c-P", "SODA_c-R", "SODA_c-videos"}``.
    ``refs``: ``"average"`` (PDVC), ``"merged"`` or ``"separate"`` (module docstring)."""
    if refs not in SODA_REFS:
        raise ValueError(f"refs must be one of {', '.join(SODA_REFS)}, got {refs!r}")
    if missing not in ("zero", "compatible"):
        raise ValueError(f"missing must be 'zero' or 'compatible', got {missing!r}")
    vids = _video_ids(gts)
    if missing == "compatible":
        vids = [v for v in vids if v in pred]
    tok = tokenized or _tokenized(pred, gts)
    own = scorer is None
    scorer = scorer or CaptionScorer(metrics=("METEOR",))
    # (video, reference file or -1 when merged, reference set) problems; each reference set:
    # sorted (timestamps, sentences)
    problems: list[tuple[str, int, list, list]] = []
    for v in vids:
        evs = sorted(pred.get(v, []), key=lambda e: e["timestamp"][0])  # stable on ties
        sets = []
        if refs == "merged":
            items = [(ts, s) for g in gts if v in g for ts, s in zip(g[v]["timestamps"], g[v]["sentences"])]
            sets.append((-1, items))
        else:
            sets += [(fi, list(zip(g[v]["timestamps"], g[v]["sentences"]))) for fi, g in enumerate(gts) if v in g]
        for fi, items in sets:
            problems.append((v, fi, evs, sorted(items, key=lambda x: x[0][0])))
    pairs, index = [], []
    for pi, (_, _, evs, items) in enumerate(problems):
        for i, e in enumerate(evs):
            for j, (_, s) in enumerate(items):
                pairs.append((tok[_remove_nonascii(e["sentence"])], [tok[_remove_nonascii(s)]]))
                index.append((pi, i, j))
    try:
        meteor = scorer.meteor.score(pairs)[1] if pairs else []
    finally:
        if own:
            scorer.close()
    S_all = [np.zeros((len(evs), len(items))) for _, _, evs, items in problems]
    for (pi, i, j), m in zip(index, meteor):
        _, _, evs, items = problems[pi]
        S_all[pi][i, j] = tiou(evs[i]["timestamp"], items[j][0]) * m
    prf: list[tuple[float, float, float]] = []  # per problem
    for (_, _, evs, items), S in zip(problems, S_all):
        best = soda_align(S) if S.size else 0.0
        p = best / len(evs) if evs else 0.0
        r = best / len(items) if items else 0.0
        prf.append((p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0))
    if refs == "average":
        # PDVC's eval_soda: one SODA run per reference file (macro average over that file's
        # videos), then P, R and F1 each averaged over the files that have videos
        per_file = [[x for (_, fi, _, _), x in zip(problems, prf) if fi == f] for f in range(len(gts))]
        means = [np.mean(np.array(rows), axis=0) for rows in per_file if rows]  # (3,) each
        P, R, F = (float(np.mean([m[c] for m in means])) if means else 0.0 for c in range(3))
        n_videos = len({v for v, _, _, _ in problems})
        return {"SODA_c": 100 * F, "SODA_c-P": 100 * P, "SODA_c-R": 100 * R, "SODA_c-videos": n_videos}
    per_video: dict[str, list[tuple[float, float, float]]] = {v: [] for v in vids}
    for (v, _, _, _), x in zip(problems, prf):
        per_video[v].append(x)
    # several reference sets of a video (refs="separate"): the one with the best F1 (the first
    # on ties), its P and R with it -- what the reference code's --multi_reference does
    chosen = [max(per_video[v], key=lambda x: x[2]) for v in vids if per_video[v]]
    P, R, F = [x[0] for x in chosen], [x[1] for x in chosen], [x[2] for x in chosen]
    n = max(len(F), 1)
    return {"SODA_c": 100 * sum(F) / n, "SODA_c-P": 100 * sum(P) / n, "SODA_c-R": 100 * sum(R) / n, "SODA_c-videos": len(F)}
