"""ScanRefer m@kIoU at ScanRefer-val scale: dense3d.eval.scanrefer vs the anchor's way.

Synthetic data of ScanRefer-val's size: 2,068 described GT objects in 141 scenes (plus
undescribed objects the predictions can hit), ~9,500 descriptions, 256 predictions per scene,
synthetic text. Two ways to compute C / B-4 / M / R at IoU 0.25 and 0.5:

* anchor: what Vote2Cap-DETR's ``evaluate_caption`` does, one run per threshold: a per-scene
  Python loop over predictions and GT boxes for the IoU (min / max of corners) and the best-GT
  matching, a dict of candidates updated on ``>``, placeholders, then pycocoevalcap's Bleu(4),
  Cider(), Rouge() and a new Meteor() called on the dicts;
* dense3d: ``dense3d.eval.scanrefer.evaluate`` (vectorised matching, one METEOR process for
  both thresholds with per-pair statistics shared, METEOR running beside the Python scorers).

Both must give the same numbers; each runs ``BM_REPEATS`` times (default 2, alternating) and
its best time is kept; prints a table and writes ``bm_eval.json`` beside this file.
Run: ``.venv/bin/python benchmarks/bm_eval.py``.
"""
from __future__ import annotations

import json
import os
import random
import resource
import time
from collections import OrderedDict, defaultdict
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from dense3d.eval import scanrefer
from dense3d.eval.formats import parse_box_predictions, parse_object_gt

N_SCENES, N_OBJECTS, N_DESCRIPTIONS, N_PRED = 141, 2068, 9508, 256
VOCAB = ("the a this is on of to and in with near next left right side room table chair door wall window "
         "bed desk cabinet sofa lamp shelf brown white black wooden small large tall square round corner "
         "front back under above between facing against middle").split()


def synthetic(seed: int = 0):
    rng = random.Random(seed)
    per_scene = [N_OBJECTS // N_SCENES + (1 if i < N_OBJECTS % N_SCENES else 0) for i in range(N_SCENES)]
    n_desc = [1] * N_OBJECTS
    for _ in range(N_DESCRIPTIONS - N_OBJECTS):
        n_desc[rng.randrange(N_OBJECTS)] += 1
    gt, pred, k = {}, {}, 0
    sent = lambda lo, hi: [rng.choice(VOCAB) for _ in range(rng.randint(lo, hi))]  # noqa: E731
    for s, n in enumerate(per_scene):
        scene = f"scene{s:04d}_00"
        objs = []
        for o in range(n + 3):  # 3 undescribed objects per scene
            c = [rng.uniform(0, 8), rng.uniform(0, 8), rng.uniform(0, 2)]
            box = c + [rng.uniform(0.3, 2.0) for _ in range(3)]
            rec = {"object_id": o, "box": box}
            if o < n:
                rec["object_name"] = rng.choice(["chair", "table", "door", "cabinet", "bed"])
                rec["descriptions"] = [sent(8, 40) for _ in range(n_desc[k])]
                k += 1
            objs.append(rec)
        gt[scene] = objs
        preds = []
        for _ in range(N_PRED):
            o = rng.choice(objs)
            box = [x + rng.gauss(0, 0.15) for x in o["box"][:3]] + [max(0.05, x * rng.uniform(0.7, 1.3)) for x in o["box"][3:]]
            if "descriptions" in o and rng.random() < 0.7:  # a noisy piece of one of its descriptions
                d = rng.choice(o["descriptions"])
                i = rng.randrange(max(1, len(d) - 6))
                words = d[i:i + rng.randint(6, 14)] + sent(0, 4)
            else:
                words = sent(6, 20)
            preds.append({"box": box, "caption": " ".join(words), "score": rng.random()})
        pred[scene] = preds
    return pred, gt


def anchor(pred_raw: dict, gt_raw: dict, k: float) -> dict:
    """The anchor's evaluation at one threshold, written as plain Python loops."""
    corpus = defaultdict(list)
    object_id_to_name = defaultdict(lambda: "unknown")
    for scene, objs in gt_raw.items():
        for o in objs:
            if "descriptions" in o:
                key = f"{scene}|{o['object_id']}|{o['object_name']}"
                object_id_to_name[f"{scene}|{o['object_id']}"] = o["object_name"]
                for tok in o["descriptions"]:
                    corpus[key].append(" ".join(["sos"] + tok[:30] + ["eos"]))
    candidates = {"caption": OrderedDict(), "iou": defaultdict(float)}

    def bounds(b):
        return [b[i] - b[i + 3] / 2 for i in range(3)], [b[i] + b[i + 3] / 2 for i in range(3)]

    for scene, preds in pred_raw.items():
        objs = gt_raw[scene]
        gt_bounds = [bounds(o["box"]) for o in objs]
        for p in preds:
            (pl, ph) = bounds(p["box"])
            pv = (ph[0] - pl[0]) * (ph[1] - pl[1]) * (ph[2] - pl[2])
            best, best_j = -1.0, 0
            for j, (gl, gh) in enumerate(gt_bounds):
                inter = 1.0
                for d in range(3):
                    inter *= max(min(ph[d], gh[d]) - max(pl[d], gl[d]), 0.0)
                gv = (gh[0] - gl[0]) * (gh[1] - gl[1]) * (gh[2] - gl[2])
                iou = inter / (pv + gv - inter + 1e-8)
                if iou > best:
                    best, best_j = iou, j
            if not best > k:
                continue
            oid = objs[best_j]["object_id"]
            key = f"{scene}|{oid}|{object_id_to_name[f'{scene}|{oid}']}"
            if best > candidates["iou"][key]:
                candidates["iou"][key] = best
                candidates["caption"][key] = ["sos " + p["caption"] + " eos"]
    missing = corpus.keys() - candidates["caption"].keys()
    for key in missing:
        candidates["caption"][key] = ["sos eos"]
    cands = OrderedDict((key, v) for key, v in sorted(candidates["caption"].items()) if not key.endswith("unknown"))
    refs = OrderedDict((key, corpus[key]) for key in cands)
    bleu = Bleu(4).compute_score(refs, cands, verbose=0)[0]
    cider = Cider().compute_score(refs, cands)[0]
    rouge = Rouge().compute_score(refs, cands)[0]
    m = Meteor()
    meteor = m.compute_score(refs, cands)[0]
    del m
    matched = len(corpus) - len(missing)
    return {f"CIDEr@{k:g}": 100 * cider, f"BLEU-4@{k:g}": 100 * bleu[3], f"METEOR@{k:g}": 100 * meteor,
            f"ROUGE-L@{k:g}": 100 * rouge, f"matched@{k:g}": matched}


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the METEOR JVMs)."""
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def main() -> None:
    pred_raw, gt_raw = synthetic()
    n_desc = sum(len(o.get("descriptions", [])) for objs in gt_raw.values() for o in objs)
    n_obj = sum(1 for objs in gt_raw.values() for o in objs if "descriptions" in o)

    repeats = int(os.environ.get("BM_REPEATS", "2"))
    t_anchor = t_ours = c_anchor = c_ours = float("inf")
    for _ in range(repeats):  # alternate the two, keep each one's best time (the machine is shared)
        t0, c0 = time.perf_counter(), _cpu()
        ref = {}
        for k in (0.25, 0.5):
            ref.update(anchor(pred_raw, gt_raw, k))
        t_anchor, c_anchor = min(t_anchor, time.perf_counter() - t0), min(c_anchor, _cpu() - c0)

        t0, c0 = time.perf_counter(), _cpu()
        pred = parse_box_predictions("bm", pred_raw)
        gt = parse_object_gt("bm", gt_raw)
        ours = scanrefer.evaluate(pred, gt, ious=(0.25, 0.5))
        t_ours, c_ours = min(t_ours, time.perf_counter() - t0), min(c_ours, _cpu() - c0)

    same = all(abs(ours[key] - v) <= 1e-9 * max(1.0, abs(v)) for key, v in ref.items())
    rows = [(key, ref[key], ours[key]) for key in ref]
    print(f"ScanRefer m@kIoU, {N_SCENES} scenes, {n_obj} described objects, {n_desc} descriptions, {N_PRED} predictions/scene")
    print(f"{'metric':<16}{'anchor':>12}{'dense3d':>12}")
    for key, a, b in rows:
        print(f"{key:<16}{a:>12.4f}{b:>12.4f}" if isinstance(a, float) else f"{key:<16}{a:>12}{b:>12}")
    print(f"{'wall time (s)':<16}{t_anchor:>12.2f}{t_ours:>12.2f}")
    print(f"{'CPU time (s)':<16}{c_anchor:>12.2f}{c_ours:>12.2f}   (Python + METEOR JVMs)")
    print(f"speed-up: {t_anchor / t_ours:.2f}x wall, {c_anchor / c_ours:.2f}x CPU   same numbers: {same}   (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    out = {"scenes": N_SCENES, "objects": n_obj, "descriptions": n_desc, "predictions_per_scene": N_PRED,
           "anchor_s": t_anchor, "dense3d_s": t_ours, "speedup": t_anchor / t_ours,
           "anchor_cpu_s": c_anchor, "dense3d_cpu_s": c_ours, "cpu_speedup": c_anchor / c_ours, "same_numbers": same,
           "metrics": {key: {"anchor": a, "dense3d": b} for key, a, b in rows}, "loadavg": os.getloadavg()[0], "repeats": repeats}
    Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
