"""Fit a captioning run's motion hint (its classifier of the motion word a box's caption states)
or relation hint (of the relation it states) on every ground-truth box of a split, and write the
run with it as a new run folder.

The motion hint (``model.captioner.motion_phrases``, ``dense3d/models/captioner/motion_hint.py``)
reads only a box's class and geometry, not the sensors: its classifier does not need the LLM,
the Q-Former or the detector to learn. Inside training it sees the few boxes of each batch whose
drawn caption states a motion word (about 10 a step outdoors). This tool fits it on all of a
split's boxes at once (every reference that states one, as ``loss_motion`` reads them), in
seconds once the boxes are read (about 40 ms a scene), and reports its accuracy on held-out
scenes before and after (outdoors, 5,220 scenes: 70.8 % as 400 training steps left it, 73.7 %
fitted). The new run folder holds the run's config (with the overrides), every weight (the rest
unchanged) and its training step: a run to evaluate or predict with, or to start another from
(``init_from``), not to resume (no optimizer state). With ``+model.captioner.motion_fusion=1.0`` the
new run's generation lets the fitted classifier choose the motion word where the LLM states one
(``ClassifierFusion``).

A run trained without the hint gets one with ``+model.captioner.motion_phrases=...``: the
hint's weights are the only ones the checkpoint may lack (its map onto the visual tokens stays
at zero, so captions change only through fusion). A run whose map was trained reads the
classifier's answer in its visual tokens, so refitting changes what its LLM reads (outdoors that
cost 9 CIDEr against fusion with the classifier it trained; docs/results.md, session 47): the
tool refuses such a run unless ``--refit-trained-map`` says that is meant.

    python tools/fit_hint.py outputs/RUN --out outputs/RUN_motion \\
        data.train.data_root=data_extra/outdoor_all2 ... +model.captioner.motion_fusion=1.0

``--hint relation`` fits the relation hint (``model.captioner.relation_input`` with
``relation_hint_tokens=false``: it reads the pair features of each box's nearest neighbours among
the ground-truth boxes, no sensor feature) on the relation every caption states, or "none", as
``loss_relation`` labels them. A run without one gets it with
``+model.captioner.relation_phrases=... +model.captioner.relation_input=true
+model.captioner.relation_hint_tokens=false``, and with ``+model.captioner.relation_fusion=1.0``
its generation lets the classifier choose the relation where the LLM begins one.

Prints the held-out accuracy before and after, and that of the commonest answer per class;
writes ``fit_hint.json`` with them into the new run folder.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from dense3d.errors import ConfigError, exit_status
from dense3d.utils.argtypes import positive_float, positive_int
from dense3d.utils.io import atomic_write_json, check_output_path

PROG = "tools/fit_hint.py"


def scene_boxes(loaded, split: str, limit: int | None):
    """Per scene of ``split`` (the first ``limit``) with ground-truth boxes: its index, the boxes'
    (R,) class indices, (R, 7) boxes and R lists of reference captions."""
    from dense3d.models.proposals.boxes.detector import head_labels
    from dense3d.utils.progress import progress_bar

    detector = loaded.model.box_detector
    data = loaded.dataset(split)
    n = len(data) if limit is None else min(limit, len(data))
    with progress_bar(f"reading the {split} scenes' boxes", n, "scenes") as bar:
        for i in range(n):
            s = data[i]
            bar.advance(1)
            if s.boxes is None or len(s.boxes) == 0:
                continue
            R = len(s.boxes)
            yield (i, head_labels(s.boxes, detector.class_names), s.boxes.boxes.tensor[:, :7].float(),
                   list(s.boxes.captions[:R]) + [[]] * (R - len(s.boxes.captions)))


def motion_rows(loaded, split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) class indices, (N, 7) boxes and (N,) motion-word indices of every reference caption of
    every ground-truth box of ``split`` that states a motion word, and (N,) its scene's index."""
    from dense3d.models.losses.mention import IGNORE, named_phrase

    captioner = loaded.model.captioner
    labels, boxes, words, scenes = [], [], [], []
    for i, lab, geo, captions in scene_boxes(loaded, split, limit):
        for k, refs in enumerate(captions):
            for caption in refs:
                w = named_phrase(caption, captioner.motion_phrases)
                if w != IGNORE:
                    labels.append(lab[k])
                    boxes.append(geo[k])
                    words.append(w)
                    scenes.append(i)
    if not words:
        raise ConfigError(PROG, f"data.{split}", "captions that state a motion word of model.captioner.motion_phrases",
                          got=f"none in the {split} scenes read")
    return (torch.stack(labels), torch.stack(boxes), torch.tensor(words), torch.tensor(scenes))


def relation_rows(loaded, split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, k, P) pair features of each captioned ground-truth box of ``split`` with its k nearest
    neighbours among the scene's ground-truth boxes (as the relation hint reads them when captioning
    those boxes), (N, k) their validity, (N,) the relation each reference caption states
    (``len(relation_phrases)``: none), (N,) the box's class index and (N,) its scene's index."""
    from dense3d.models.captioner.relation_hint import RelationHint
    from dense3d.models.losses.mention import named_relation
    from dense3d.structures.sample import RegionFeatures

    captioner = loaded.model.captioner
    qf, words = captioner.qformer, captioner._mention_words("box")
    pairs, valids, rels, labels, scenes = [], [], [], [], []
    for i, lab, geo, captions in scene_boxes(loaded, split, limit):
        R = len(lab)
        regions = RegionFeatures("box", torch.zeros(1, R, 1), geo[None], torch.ones(1, R), lab[None],
                                 torch.ones(1, R, dtype=torch.bool))  # as the captioner reads ground-truth boxes
        _, valid, pair = RelationHint.pair_features(regions, qf)  # (1, R, k), (1, R, k, P)
        for k, refs in enumerate(captions):
            for caption in refs:
                pairs.append(pair[0, k])
                valids.append(valid[0, k])
                rels.append(named_relation(caption, captioner.relation_phrases, words))
                labels.append(lab[k])
                scenes.append(i)
    if not rels:
        raise ConfigError(PROG, f"data.{split}", "ground-truth boxes with captions", got=f"none in the {split} scenes read")
    return (torch.stack(pairs), torch.stack(valids), torch.tensor(rels), torch.stack(labels), torch.tensor(scenes))


def check_untrained_map(hint, part: str, allowed: bool) -> None:
    """A ConfigError unless ``hint``'s map onto the visual tokens is still zero (refitting a hint
    whose map was trained changes what the LLM reads) or ``allowed`` (``--refit-trained-map``)."""
    if not allowed and any(bool((t != 0).any()) for t in hint.embed.parameters()):
        raise ConfigError(PROG, f"model.captioner.{part}.embed",
                          "a hint whose map onto the visual tokens is still zero (refitting a trained one changes what "
                          "the LLM reads; --refit-trained-map if that is meant)", got="a trained map")


def accuracy(classify, x, y: torch.Tensor) -> float:
    """% of rows whose argmax of ``classify(x)`` is ``y``."""
    with torch.no_grad():
        return 100.0 * float((classify(x).argmax(-1) == y).float().mean()) if len(y) else float("nan")


def fit(hint, classify, params: list, x, y: torch.Tensor, steps: int, lr: float, batch: int, seed: int) -> None:
    """Adam on ``params`` alone (``classify(x)``: the hint's logits of rows ``x``, a tensor or a
    tuple of tensors with one row per label), minibatches of ``batch`` rows, cosine from ``lr``
    (the weights' own step: divided by the hint's ``lr_scale`` for the stored parameters) to 0."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr / hint.lr_scale)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    hint.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (min(batch, len(y)),), generator=g)
        loss = F.cross_entropy(classify(_take(x, idx)).float(), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    hint.eval()


def _take(x, idx):
    """Rows ``idx`` of a tensor, or of each tensor of a tuple."""
    return tuple(t[idx] for t in x) if isinstance(x, tuple) else x[idx]


def write_run(loaded, out: Path, summary: dict) -> None:
    """``out``: the run's config (with the overrides), the model's weights as
    ``checkpoints/last.ckpt`` (its training step kept) and ``summary``; all or nothing."""
    from omegaconf import OmegaConf

    from dense3d.engine.checkpoint import save_checkpoint

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {f"model.{k}": v for k, v in loaded.model.state_dict().items()}
        save_checkpoint({"state_dict": state, "global_step": loaded.step}, tmp / "checkpoints" / "last.ckpt")
        OmegaConf.save(loaded.config, tmp / "config.yaml")
        atomic_write_json(tmp / "fit_hint.json", summary)
        if out.exists():  # an empty folder (check_output_path refused anything else)
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a captioning run folder or checkpoint folder (dense3d train ...)")
    p.add_argument("--out", type=Path, required=True, help="the new run folder (must not exist, or be empty)")
    p.add_argument("--hint", choices=("motion", "relation"), default="motion", help="which hint to fit (default: motion)")
    p.add_argument("--split", default="train", help="the split whose boxes it fits on")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N scenes of the split")
    p.add_argument("--held-out", type=positive_float, default=0.1, help="fraction of the scenes (the last ones) held out")
    p.add_argument("--steps", type=positive_int, default=3000)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--batch", type=positive_int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refit-trained-map", action="store_true",
                   help="fit a hint whose map onto the visual tokens was trained (its LLM reads the classifier's "
                        "answer, so its captions change too); refused otherwise")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE (or +KEY=VALUE) changes of the run's config, as dense3d eval takes")
    a = p.parse_intermixed_args(argv)  # overrides may come before or after the options
    if not a.held_out < 1:
        raise ConfigError(PROG, "--held-out", "a fraction of the scenes in (0, 1)", got=a.held_out)
    out = check_output_path(a.out, PROG, folder=True)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(PROG, "--out", "a new (or empty) folder for the new run", got=str(out))
    import dense3d.api as api

    torch.manual_seed(a.seed)
    part = "motion_hint" if a.hint == "motion" else "relation_head"
    loaded = api.load(a.run, regions="gt", overrides=a.overrides, new_parts=(f"captioner.{part}.",))
    captioner = loaded.model.captioner
    if a.hint == "motion":
        hint = captioner.motion_hint
        if hint is None:
            raise ConfigError(PROG, "model.captioner.motion_phrases",
                              "a run with a motion hint (or +model.captioner.motion_phrases={word: [phrases], ...})", got="none")
        check_untrained_map(hint, part, a.refit_trained_map)
        labels, boxes, answers, scenes = motion_rows(loaded, a.split, a.limit)
        x = hint.inputs(labels, boxes).detach()  # (N, L + BOX_DIMS)
        params, names = list(hint.classifier.parameters()), list(captioner.motion_names)
        classify = hint.classifier
    else:
        hint = captioner.relation_head if captioner.relation_input else None
        if hint is None or hint.tokens:
            raise ConfigError(PROG, "model.captioner.relation_input",
                              "a run whose relation hint reads the pair features alone (or +model.captioner.relation_phrases="
                              "{name: [phrases], ...} +model.captioner.relation_input=true +model.captioner.relation_hint_tokens=false)",
                              got="none" if hint is None else "relation_hint_tokens=true (it reads the Q-Former's tokens)")
        check_untrained_map(hint, part, a.refit_trained_map)
        pair, valid, answers, labels, scenes = relation_rows(loaded, a.split, a.limit)
        x = (pair, valid)
        params = list(hint.pair_in["box"].parameters()) + list(hint.classifier.parameters())
        names = [*captioner.relation_names, "none"]

        def classify(rows):
            return hint.classify("box", *rows)  # (n, k, P), (n, k) -> (n, C)
    cut = int(scenes.max()) + 1 - max(1, math.ceil(a.held_out * (int(scenes.max()) + 1)))
    train, held = scenes < cut, scenes >= cut
    if not train.any():
        raise ConfigError(PROG, "--held-out", "a fraction that leaves scenes to fit on", got=a.held_out)
    before = accuracy(classify, _take(x, held), answers[held])
    fit(hint, classify, params, _take(x, train), answers[train], a.steps, a.lr, a.batch, a.seed)
    after = accuracy(classify, _take(x, held), answers[held])
    # the commonest answer of each class on the fitted scenes, scored on the held-out ones
    common = {c: Counter(answers[train & (labels == c)].tolist()).most_common(1) for c in labels.unique().tolist()}
    guess = torch.tensor([common[c][0][0] if common[c] else -1 for c in labels[held].tolist()])
    per_class = 100.0 * float((guess == answers[held]).float().mean())
    summary = {"run": str(a.run), "hint": a.hint, "split": a.split,
               "rows": {"fitted": int(train.sum()), "held_out": int(held.sum())},
               "held_out_accuracy": {"before": before, "after": after, "commonest_answer_per_class": per_class},
               "answers": dict(zip(names, torch.bincount(answers, minlength=len(names)).tolist())),
               "steps": a.steps, "lr": a.lr, "batch": a.batch, "overrides": list(a.overrides)}
    print(f"{PROG}: {a.hint} hint: {int(train.sum())} captions fitted, {int(held.sum())} held out; held-out accuracy "
          f"{before:.1f} % before, {after:.1f} % after (commonest answer per class: {per_class:.1f} %)")
    write_run(loaded, out, summary)
    print(f"{PROG}: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, PROG))
