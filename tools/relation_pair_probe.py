"""How well the relation can be told from the pairs alone: a classifier of each object's pair
features, trained on a synthetic set's annotated relations, scored on another split.

The relation hint (``model.captioner.relation_input``, ``dense3d/models/captioner/relation_hint.py``)
reads, per neighbour, what this tool reads: the pair's geometry (``relation_geometry``), ranks
(``relation_ranks``) and "between" frame (``relation_between``), for the ``--neighbours`` nearest
ground-truth boxes. This tool trains the same kind of MLP on those features alone, outside the
captioner: no perception features, no LLM, seconds a run. It tells what the hint's classifier can
reach and how fast at a given rate (batches of ``--batch`` objects, cosine over ``--steps``), and
which relations it confuses (outdoors mostly "between", the annotator's coin no sensor shows).

    python tools/relation_pair_probe.py data/synthetic/big/outdoor --train-root data_extra/outdoor_all2 --lr 5e-4
    python tools/relation_pair_probe.py data/synthetic/big/outdoor --train-root data_extra/outdoor_all2 --lr 2.5e-3

Prints the validation accuracy every ``--steps // 4`` steps and the commonest confusions; writes
them to ``--out`` (JSON) when given.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from dense3d.data.synthetic.annotations import ANNOTATIONS_FILE, load_synthetic_annotations
from dense3d.data.synthetic.facts import set_kind
from dense3d.data.synthetic.grammar import RELATION_TYPES
from dense3d.data.synthetic.indoor import INDOOR_CLASSES
from dense3d.data.synthetic.outdoor import NUSCENES_CLASSES
from dense3d.errors import AnnotationError, ConfigError, exit_status
from dense3d.models.captioner.hint_parts import classifier_mlp
from dense3d.models.captioner.qformer import nearest_neighbours
from dense3d.models.captioner.relation_hint import neighbour_pair_features
from dense3d.structures.sample import RegionFeatures
from dense3d.utils.io import atomic_write_json, check_output_path

PROG = "tools/relation_pair_probe.py"


def pair_features(root: Path, split: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, k * (G + RANK + BETWEEN + 1)) pair features of every object of ``split`` in scenes with
    two objects or more (nearest neighbour first; the last column per neighbour: it exists), and
    (N,) the index of its annotated relation in ``RELATION_TYPES``."""
    kind = set_kind(root)
    classes = list(INDOOR_CLASSES if kind == "indoor" else NUSCENES_CLASSES)
    path = root / ANNOTATIONS_FILE
    X, Y = [], []
    for s, scene in enumerate(load_synthetic_annotations(root, kind)["scenes"]):
        if scene["split"] != split or len(scene["objects"]) < 2:
            continue
        objs = scene["objects"]
        for j, o in enumerate(objs):
            if o.get("label") not in classes or o.get("relation") not in RELATION_TYPES or len(o.get("box", ())) < 7:
                raise AnnotationError(path, f"scenes[{s}].objects[{j}]", "an object with a known label, relation and a 7-number box",
                                      got={key: o.get(key) for key in ("label", "relation")})
        R = len(objs)
        geo = torch.tensor([o["box"][:7] for o in objs], dtype=torch.float32)[None]  # (1, R, 7)
        labels = torch.tensor([classes.index(o["label"]) for o in objs])[None]  # (1, R)
        regions = RegionFeatures("box", torch.zeros(1, R, 1), geo, torch.ones(1, R), labels, torch.ones(1, R, dtype=torch.bool))
        idx, valid = nearest_neighbours(regions, k)
        f = neighbour_pair_features(regions, idx, valid)  # (1, R, k, F)
        f = torch.cat([f * valid[..., None], valid[..., None].float()], -1)  # (1, R, k, F + 1)
        X.append(f[0].flatten(1))  # (R, k * (F + 1))
        Y += [RELATION_TYPES.index(o["relation"]) for o in objs]
    if not Y:
        raise ConfigError(PROG, "split", f"a split of {root} with objects in scenes of two or more", got=split)
    return torch.cat(X), torch.tensor(Y)


def probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float,
          batch: int, hidden: int = 256, seed: int = 0) -> dict:
    """Train the MLP (Adam, cosine from ``lr`` over ``steps``) and score it on ``val``."""
    torch.manual_seed(seed)
    (Xt, Yt), (Xv, Yv) = train, val
    model = classifier_mlp(Xt.shape[1], hidden, len(RELATION_TYPES))  # the hint's classifier
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    curve, order, at = {}, torch.randperm(len(Yt)), 0
    for step in range(1, steps + 1):
        if at + batch > len(Yt):
            order, at = torch.randperm(len(Yt)), 0
        b = order[at:at + batch]
        at += batch
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xt[b]), Yt[b]).backward()
        opt.step()
        sched.step()
        if step % max(steps // 4, 1) == 0 or step == steps:
            with torch.no_grad():
                curve[step] = round(float((model(Xv).argmax(-1) == Yv).float().mean()) * 100, 1)
    with torch.no_grad():
        pred = model(Xv).argmax(-1)
    wrong = Counter((RELATION_TYPES[t], RELATION_TYPES[p]) for t, p in zip(Yv.tolist(), pred.tolist()) if t != p)
    majority = Counter(Yt.tolist()).most_common(1)[0][0]
    return {"train_objects": len(Yt), "val_objects": len(Yv), "accuracy": curve,
            "majority": round(float((Yv == majority).float().mean()) * 100, 1),
            "confusions": [[t, p, n] for (t, p), n in wrong.most_common(10)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="a generated synthetic set (its validation split is scored)")
    ap.add_argument("--train-root", type=Path, default=None, help="the set to train on (default: root's train split)")
    ap.add_argument("--split", default="val", help="split of root to score (default: val)")
    ap.add_argument("--neighbours", type=int, default=8, help="nearest boxes per object (the Q-Former's num_neighbours)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=16, help="objects a step (a captioning step: 2 scenes x 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON of the figures printed")
    args = ap.parse_args(argv)
    for name in ("neighbours", "steps", "batch"):
        if getattr(args, name) < 1:
            raise ConfigError(PROG, f"--{name}", "an integer >= 1", got=getattr(args, name))
    if not (args.lr > 0 and args.lr != float("inf")):
        raise ConfigError(PROG, "--lr", "a finite rate > 0", got=args.lr)
    if args.out is not None:
        check_output_path(args.out, PROG, "--out")
    train = pair_features(args.train_root or args.root, "train", args.neighbours)
    val = pair_features(args.root, args.split, args.neighbours)
    r = probe(train, val, args.steps, args.lr, args.batch, seed=args.seed)
    print(f"{r['train_objects']} training objects, {r['val_objects']} scored; the commonest relation alone: {r['majority']} %")
    print("step  accuracy %")
    for step, acc in r["accuracy"].items():
        print(f"{step:>5}  {acc:>9}")
    print("confusions (annotated -> predicted, objects): " + ", ".join(f"{t} -> {p} {n}" for t, p, n in r["confusions"]))
    if args.out is not None:
        atomic_write_json(args.out, r)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, PROG))
