"""Synthetic benchmark generation: scenes per minute and disk size per scene for each kind,
and the caption gap between the ground-truth oracle and the context-free oracle.

    .venv/bin/python benchmarks/bm_synthetic.py [--scenes-outdoor 60] [--workers 1] [--out DIR]

Wall-clock scenes/min depend on what else runs on the machine; ``/cpu-min`` (scenes per
minute of this process's CPU time, workers = 1) is what one free core does.

Prints a table and writes ``bm_synthetic.json`` into ``--out`` (default: a temp folder that is
removed afterwards, except the JSON which goes to the current folder).

The oracle gap scores, against the ground-truth captions of every region: the GT oracle (an
upper bound: 1.0 / the maximum) and the context-free oracle (the best caption without
relations), with pycocoevalcap's BLEU-4 and CIDEr-D scorers on lower-cased, whitespace-split
captions (no PTB tokenizer, so no Java is needed). For indoor, the references are the other
descriptions of the object and the GT oracle is the first one.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from dense3d.data.synthetic import SynthConfig, generate
from dense3d.utils.io import atomic_write_json


def _disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _tok(s: str) -> str:
    return " ".join(s.lower().replace(".", " ").replace(",", " ").replace(":", " ").replace(";", " ").split())


def _oracle_gap(folder: Path, kind: str) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    ann = json.loads((folder / "synthetic_annotations.json").read_text())["scenes"]
    refs, gt, free = {}, {}, {}
    k = 0
    for rec in ann:
        if kind == "av":
            items = [([e["caption"]], e["caption"], e["context_free_caption"]) for e in rec["events"]]
        elif kind == "indoor":
            items = [(o["captions"][1:], o["captions"][0], o["context_free_caption"]) for o in rec["objects"]]
        else:
            items = [(o["captions"], o["captions"][0], o["context_free_caption"]) for o in rec["objects"]]
        for r, g, f in items:
            refs[k] = [_tok(x) for x in r]
            gt[k], free[k] = [_tok(g)], [_tok(f)]
            k += 1
    out = {}
    for name, hyp in (("gt_oracle", gt), ("context_free_oracle", free)):
        bleu, _ = Bleu(4).compute_score(refs, hyp, verbose=0)
        cider, _ = Cider().compute_score(refs, hyp)
        out[name] = {"BLEU-4": round(float(bleu[3]), 4), "CIDEr": round(float(cider), 4)}
    out["regions"] = k
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes-outdoor", type=int, default=60)
    ap.add_argument("--scenes-indoor", type=int, default=300)
    ap.add_argument("--scenes-av", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=None, help="keep the generated sets and bm_synthetic.json here "
                    "(default: a temporary folder, removed; the JSON goes to the current folder)")
    args = ap.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bm_synthetic."))
    rows = []
    try:
        for kind, n in (("outdoor", args.scenes_outdoor), ("indoor", args.scenes_indoor), ("av", args.scenes_av)):
            cfg = SynthConfig(kind=kind, scenes=n, seed=args.seed)
            t0, c0 = time.perf_counter(), time.process_time()
            generate(cfg, root / kind, workers=args.workers)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            size = _disk(root / kind)
            rows.append({"kind": kind, "scenes": n, "workers": args.workers, "seconds": round(dt, 2),
                         "scenes_per_min": round(60 * n / dt, 1),
                         "cpu_seconds": round(cpu, 2), "scenes_per_cpu_min": round(60 * n / cpu, 1) if args.workers == 1 else None, "mb_per_scene": round(size / n / 2**20, 3),
                         "oracle_gap": _oracle_gap(root / kind, kind)})
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'kind':<8} {'scenes':>6} {'workers':>7} {'s':>7} {'scenes/min':>10} {'/cpu-min':>8} {'MB/scene':>9}   "
          f"{'GT BLEU-4':>9} {'GT CIDEr':>8} {'CF BLEU-4':>9} {'CF CIDEr':>8}")
    for r in rows:
        g, f = r["oracle_gap"]["gt_oracle"], r["oracle_gap"]["context_free_oracle"]
        print(f"{r['kind']:<8} {r['scenes']:>6} {r['workers']:>7} {r['seconds']:>7} {r['scenes_per_min']:>10} {str(r['scenes_per_cpu_min']):>8} {r['mb_per_scene']:>9}   "
              f"{g['BLEU-4']:>9} {g['CIDEr']:>8} {f['BLEU-4']:>9} {f['CIDEr']:>8}")
    json_path = root / "bm_synthetic.json" if args.out else Path("bm_synthetic.json")  # the temp folder is gone
    atomic_write_json(json_path, rows, indent=1)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
