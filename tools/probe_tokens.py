"""Where does a fact get lost between the sensors and the words? Linear probes on a trained
captioning run's intermediate features, on ground-truth boxes of a synthetic set.

For each box the run's captioner reads (``DenseCaptioner.region_inputs``, ground-truth regions),
this collects its BiCA feature, the relation token of its annotated relation target (when the
target is among its ``k`` nearest neighbours) and the K visual tokens the Q-Former hands to the
LLaMA-Adapter, and fits a logistic regression (scikit-learn, standardised inputs) from each to:
the box's own colour, its relation target's colour and class, and its annotated relation type
("between", "left_of", ...: from its BiCA feature, its one target's relation token and its visual
tokens). A probe fitted on the first
``--train-scenes`` training scenes is scored on the first ``--val-scenes`` validation scenes. A fact
the captions miss that the visual tokens still hold is lost in the LLM; one the relation token holds
and the visual tokens do not is lost in the Q-Former (docs/results.md, "neighbour queries"). With
the Q-Former's ``target_order`` it also says how often the target head's first choice is the
annotated target, against the nearest-neighbour rule.

    python tools/probe_tokens.py outputs/RUN data/synthetic/big/indoor [--train-scenes 300 --val-scenes 40]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dense3d.data.synthetic.annotations import ANNOTATIONS_FILE, load_synthetic_annotations
from dense3d.errors import AnnotationError, ConfigError, exit_status
from dense3d.models.captioner.qformer import nearest_neighbours
from dense3d.utils.argtypes import positive_int
from dense3d.utils.io import atomic_write_json, check_output_path

# (name, input, label): inputs are the keys collect_rows fills per box
PROBES = (
    ("own colour <- own BiCA feature", "feature", "colour"),
    ("target colour <- target's BiCA feature", "target_feature", "target_colour"),
    ("target class <- target's BiCA feature", "target_feature", "target_class"),
    ("target colour <- its relation token", "relation_token", "target_colour"),
    ("target class <- its relation token", "relation_token", "target_class"),
    ("own colour <- visual tokens", "visual", "colour"),
    ("target colour <- visual tokens", "visual", "target_colour"),
    ("target class <- visual tokens", "visual", "target_class"),
    ("relation type <- own BiCA feature", "feature", "relation"),
    ("relation type <- its target's relation token", "relation_token", "relation"),
    ("relation type <- visual tokens", "visual", "relation"),
    ("relation type <- visual tokens, one-target boxes", "one_target_visual", "relation"),
)


def scene_objects(root: Path) -> dict[str, list[dict]]:
    """``{scene_id: objects}`` of a generated synthetic set (each with colour, label, relation_targets
    and an id: object_id indoors, ann_token outdoors)."""
    ann = load_synthetic_annotations(root)
    return {s["scene_id"]: s["objects"] for s in ann["scenes"]}


def box_rows(objects: list[dict], targets: list[int | None], feature: np.ndarray, visual: np.ndarray,
             relation: np.ndarray, neighbours: list[list[int]], head_first: list[int] | None = None) -> list[dict]:
    """One row per box of a scene (R boxes).

    Args:
        objects: the R boxes' annotations (colour, label); targets: each box's one relation target
            as a box index (None: no target, two targets, or a target that is not a box here).
        feature: (R, C) BiCA features; visual: (R, K * H) flattened visual tokens;
        relation: (R, k, D) relation tokens; neighbours: R lists of the k neighbour indices.
        head_first: the Q-Former target head's first choice per box, a neighbour slot (k: none),
            or None without a target head.
    Returns:
        rows with ``feature``, ``visual``, ``colour`` and, for boxes with a target,
        ``target_feature``, ``target_colour``, ``target_class``, ``one_target_visual`` (its
        visual tokens again), ``relation_token`` (None when
        the target is not among the k nearest) and ``target_rank`` (-1 then), and with
        ``head_first`` ``head_rank`` (the slot the head chose, -1 for none).
    """
    rows = []
    for i, (o, t) in enumerate(zip(objects, targets)):
        row = {"feature": feature[i], "visual": visual[i], "colour": o["colour"], "relation": o["relation"]}
        if t is not None:
            rank = neighbours[i].index(t) if t in neighbours[i] else -1
            row.update(target_feature=feature[t], target_colour=objects[t]["colour"], target_class=objects[t]["label"],
                       one_target_visual=visual[i],
                       relation_token=relation[i, rank] if rank >= 0 else None, target_rank=rank)
            if head_first is not None:
                row["head_rank"] = head_first[i] if head_first[i] < len(neighbours[i]) else -1
        rows.append(row)
    return rows


def _object_key(o: dict) -> str:
    """The id a box of the data set carries for this object (indoor: object_id, outdoor: ann_token)."""
    return str(o["object_id"]) if "object_id" in o else str(o.get("ann_token"))


def collect_rows(loaded, split: str, scenes: int, objects: dict[str, list[dict]], source: Path) -> list[dict]:
    """:func:`box_rows` of the first ``scenes`` scenes of ``split``, one scene at a time (``source``:
    the annotation file ``objects`` came from, named in errors)."""
    from dense3d.data import collate

    model = loaded.model
    captioner = model.captioner
    if captioner is None or captioner.qformer.num_neighbours == 0:
        raise ConfigError("probe_tokens", "model.captioner.qformer.num_neighbours", "a captioner with relation tokens",
                          got=0 if captioner is not None else None)
    data = loaded.dataset(split)
    rows: list[dict] = []
    for n in range(min(scenes, len(data))):
        sample = data[n]
        objs = objects.get(sample.sample_id)
        keys = [str(x) for x in sample.boxes.object_ids]
        by_key = {_object_key(o): o for o in objs or []}
        if objs is None or any(k not in by_key for k in keys):
            raise AnnotationError(source, f"scenes[{sample.sample_id}].objects",
                                  "the boxes of the run's data set (the set it was trained on)")
        boxes = [by_key[k] for k in keys]  # annotations in box order (boxes may drop objects: no points)
        box_of = {k: i for i, k in enumerate(keys)}
        targets = [box_of.get(_object_key(objs[o["relation_targets"][0]])) if len(o["relation_targets"]) == 1 else None
                   for o in boxes]
        with torch.no_grad():
            kinds, contexts = model.region_inputs(collate([sample]), regions="gt")
            regions, context = kinds[0], contexts[0]
            bo = captioner.bica([regions], [context]) if captioner.bica is not None else None
            feats = bo.objects[0] if bo is not None else regions.features  # (1, R, C)
            q = captioner.qformer
            relation, _ = q.relation_tokens(regions, feats)  # (1, R, k, D)
            idx, _ = nearest_neighbours(regions, q.num_neighbours, q.neighbour_min_score)  # (1, R, k)
            visual = captioner.encode([regions], [context])[0]  # (1, R, K, H)
            head = None
            if q.target_order:
                summaries, raw = (bo.summaries[0], regions.features) if bo is not None else (None, None)
                _, logits = q(regions, feats, summaries, raw, with_targets=True)  # (1, R, k + 1, P)
                head = logits[0, :, :, 0].argmax(-1).tolist()  # (R,) the first target's slot, k: none
        rows += box_rows(boxes, targets, feats[0].float().numpy(), visual[0].flatten(1).float().numpy(),  # (R, K*H)
                         relation[0].float().numpy(), idx[0].tolist(), head)
    return rows


def probe(train: list[dict], val: list[dict], x: str, y: str) -> dict:
    """Logistic regression from rows' ``x`` to ``y``, fitted on ``train`` and scored on ``val``:
    ``{"train", "val", "accuracy" (%), "majority" (% of val holding train's commonest label)}``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = [(r[x], r[y]) for r in train if r.get(x) is not None and y in r]
    b = [(r[x], r[y]) for r in val if r.get(x) is not None and y in r]
    if not a or not b or len({v for _, v in a}) < 2:
        return {"train": len(a), "val": len(b), "accuracy": None, "majority": None}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
    clf.fit(np.stack([u for u, _ in a]), [v for _, v in a])
    acc = clf.score(np.stack([u for u, _ in b]), [v for _, v in b])
    labels = [v for _, v in a]
    common = max(set(labels), key=labels.count)
    return {"train": len(a), "val": len(b), "accuracy": 100.0 * acc,
            "majority": 100.0 * sum(v == common for _, v in b) / len(b)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a captioning run folder (dense3d train ...)")
    p.add_argument("root", type=Path, help="the generated synthetic set it was trained on")
    p.add_argument("--train-scenes", type=positive_int, default=300)
    p.add_argument("--val-scenes", type=positive_int, default=40)
    p.add_argument("--out", type=Path, default=None, help="JSON table (default: RUN/probe_tokens.json)")
    a = p.parse_args(argv)
    out = check_output_path(a.out or a.run / "probe_tokens.json", "tools/probe_tokens.py")  # before any work
    import dense3d.api as api

    objects = scene_objects(a.root)
    torch.manual_seed(0)
    loaded = api.load(a.run, regions="gt")
    train = collect_rows(loaded, "train", a.train_scenes, objects, a.root / ANNOTATIONS_FILE)
    val = collect_rows(loaded, "val", a.val_scenes, objects, a.root / ANNOTATIONS_FILE)
    table = {name: probe(train, val, x, y) for name, x, y in PROBES}
    width = max(len("probe"), *(len(name) for name in table))  # the longest probe name sets the column
    print(f"{'probe':<{width}} {'train':>6} {'val':>5} {'accuracy %':>11} {'majority %':>11}")
    for name, row in table.items():
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.1f}"
        maj = "-" if row["majority"] is None else f"{row['majority']:.1f}"
        print(f"{name:<{width}} {row['train']:>6} {row['val']:>5} {acc:>11} {maj:>11}")
    ranks = np.bincount([r["target_rank"] + 1 for r in val if "target_rank" in r], minlength=2).tolist()
    print(f"targets by neighbour rank (val; first: not among the k nearest): {ranks}")
    result = {"probes": table, "target_ranks": ranks}
    judged = [r for r in val if "head_rank" in r]
    if judged:
        right = 100.0 * sum(r["head_rank"] == r["target_rank"] >= 0 for r in judged) / len(judged)
        nearest = 100.0 * sum(r["target_rank"] == 0 for r in judged) / len(judged)
        print(f"target head: first choice is the target for {right:.1f} % of {len(judged)} one-target boxes "
              f"(the nearest neighbour is for {nearest:.1f} %)")
        result["target_head"] = {"boxes": len(judged), "right": right, "nearest": nearest}
    atomic_write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "tools/probe_tokens.py"))
