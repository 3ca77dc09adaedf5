"""Write a whole synthetic data set (all-or-nothing), its oracles, and read back its stats."""
from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from dense3d.data.synthetic.annotations import ANNOTATIONS_FILE, load_synthetic_annotations
from dense3d.data.synthetic.common import SPLITS, SynthConfig, atomic_output_dir, split_of, write_json
from dense3d.errors import AnnotationError
from dense3d.utils.io import check_output_path
from dense3d.utils.progress import ProgressBar, ensure_progress

__all__ = ["generate", "generate_default", "dataset_stats", "format_stats", "DEFAULT_SCENES"]

# scenes of each kind in the demo's default set (data/synthetic/default/{outdoor,indoor,av})
DEFAULT_SCENES = {"outdoor": 32, "indoor": 32, "av": 32}


def _one(args):
    cfg, index, tmp, split = args
    if cfg.kind == "outdoor":
        from dense3d.data.synthetic.outdoor import make_outdoor_scene

        return make_outdoor_scene(cfg, index, tmp, split)
    if cfg.kind == "indoor":
        from dense3d.data.synthetic.indoor import make_indoor_scene

        return make_indoor_scene(cfg, index, tmp / "scans", split)
    if cfg.kind == "joint":
        from dense3d.data.synthetic.joint import make_joint_scene

        return make_joint_scene(cfg, index, tmp, split)
    from dense3d.data.synthetic.av import make_av_clip

    return make_av_clip(cfg, index, tmp / "clips", split)


def generate(cfg: SynthConfig, out: str | Path, workers: int = 1, progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate ``cfg.scenes`` scenes of ``cfg.kind`` into ``out`` (replaced as a whole, only
    when everything is written; nothing partial is ever left at ``out``). ``out`` must be new,
    an empty folder or an earlier generated set (``ConfigError`` before anything is written).

    Args:
        cfg: what to generate (kind, scene count, seed, ...).
        out: the data set folder (e.g. ``data/synthetic/default/outdoor``).
        workers: processes (scenes are independent; the output does not depend on this).
        progress: called with (done, total) after each scene.

    Returns:
        The ``meta.json`` content: config, fingerprint, scene ids per split, seconds taken.
    """
    out = Path(out)
    t_start = time.time()
    with atomic_output_dir(out) as tmp:
        (tmp / {"outdoor": "samples", "indoor": "scans", "av": "clips", "joint": "samples"}[cfg.kind]).mkdir(parents=True)
        jobs = [(cfg, i, tmp, split_of(i, cfg.scenes, cfg.split)) for i in range(cfg.scenes)]
        results = []
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for k, r in enumerate(pool.map(_one, jobs, chunksize=4)):
                    results.append(r)
                    if progress:
                        progress(k + 1, cfg.scenes)
        else:
            for k, job in enumerate(jobs):
                results.append(_one(job))
                if progress:
                    progress(k + 1, cfg.scenes)
        splits = {s: [] for s in SPLITS}
        records = []
        if cfg.kind == "outdoor":
            from dense3d.data.synthetic.outdoor import write_infos

            infos = {s: [] for s in SPLITS}
            caps = {s: {} for s in SPLITS}
            for (info, cap, rec), job in zip(results, jobs):
                infos[job[3]].append(info)
                caps[job[3]].update(cap)
                splits[job[3]].append(info["token"])
                records.append(rec)
            for s in SPLITS:
                write_infos(tmp / f"nuscenes_infos_{s}.pkl", infos[s])
                write_json(tmp / f"tod3cap_captions_{s}.json", caps[s])
        elif cfg.kind == "joint":  # the outdoor files, plus the recordings' events keyed by sample token
            from dense3d.data.synthetic.outdoor import write_infos

            infos = {s: [] for s in SPLITS}
            caps = {s: {} for s in SPLITS}
            dense = {s: {} for s in SPLITS}
            for (info, cap, de, rec), job in zip(results, jobs):
                infos[job[3]].append(info)
                caps[job[3]].update(cap)
                dense[job[3]][info["token"]] = de
                splits[job[3]].append(info["token"])
                records.append(rec)
            for s in SPLITS:
                write_infos(tmp / f"nuscenes_infos_{s}.pkl", infos[s])
                write_json(tmp / f"tod3cap_captions_{s}.json", caps[s])
                write_json(tmp / f"dense_events_{s}.json", dense[s])
        elif cfg.kind == "indoor":
            refer = {s: [] for s in SPLITS}
            for (entries, rec), job in zip(results, jobs):
                refer[job[3]].extend(entries)
                splits[job[3]].append(rec["scene_id"])
                records.append(rec)
            for s in SPLITS:
                write_json(tmp / f"ScanRefer_filtered_{s}.json", refer[s])
                (tmp / f"ScanRefer_filtered_{s}.txt").write_text("".join(f"{x}\n" for x in splits[s]))
        else:
            favd = {s: {} for s in SPLITS}
            dense = {s: {} for s in SPLITS}
            for (clip, fv, de, rec), job in zip(results, jobs):
                favd[job[3]][clip] = fv
                dense[job[3]][clip] = de
                splits[job[3]].append(clip)
                records.append(rec)
            for s in SPLITS:
                write_json(tmp / f"favdbench_{s}.json", favd[s])
                write_json(tmp / f"dense_events_{s}.json", dense[s])
        write_json(tmp / ANNOTATIONS_FILE, {"kind": cfg.kind, "scenes": records})
        write_oracles(cfg.kind, records, tmp / "oracles")
        meta = {
            "kind": cfg.kind,
            "config": cfg.to_dict(),
            "fingerprint": cfg.fingerprint(),
            "splits": splits,
        }
        write_json(tmp / "meta.json", meta, indent=1)
    meta["seconds"] = round(time.time() - t_start, 2)
    return meta


# ----------------------------------------------------------------------------- oracles
def write_oracles(kind: str, records: list[dict], folder: Path) -> None:
    """Prediction files in the evaluation formats, per split: ``oracles/{split}/{name}.json``.

    * ``gt``: the ground-truth caption of every ground-truth region (score 1);
    * ``context_free``: for every ground-truth region, the best caption it allows without
      any relation to other regions (the grammar's template with the relation left out).
    * ``fixed`` and ``fixed_context_free``: the same two with the first paraphrase always
      (``grammar.FirstParaphrase``) instead of the annotator's random wording, which no model
      can infer from sensors; the fair references for a captioner's CIDEr (indoor: the first
      template and place word; its context-free caption has one wording already).

    3D (outdoor, indoor, joint): ``{scene_id: [{"box", "caption", "score", "label"}]}``;
    events (av, joint): ``{"version", "results": {video_id: [{"timestamp", "sentence"}]}, "external_data"}``
    as ``{gt,context_free}_events.json``, and (av) FAVDBench paragraphs ``{clip_id: paragraph}`` as
    ``{gt,context_free}_favd.json``.
    """
    from dense3d.data.synthetic.grammar import favd_paragraph

    for split in SPLITS:
        recs = [r for r in records if r["split"] == split]
        d = folder / split
        if kind in ("outdoor", "indoor", "joint"):
            oracles = [("gt", None), ("context_free", "context_free_caption")]
            if any("fixed_caption" in o for r in recs for o in r["objects"]):
                oracles += [("fixed", "fixed_caption"), ("fixed_context_free", "fixed_context_free_caption")]
            for name, key in oracles:
                pred = {
                    r["scene_id"]: [
                        {"box": o["box"], "caption": o[key] if key else o["captions"][0], "score": 1.0, "label": o["label"]}
                        for o in r["objects"]
                    ]
                    for r in recs
                }
                write_json(d / f"{name}.json", pred)
        if kind in ("av", "joint"):
            for name, key in (("gt", "caption"), ("context_free", "context_free_caption")):
                res = {r["scene_id"]: [{"timestamp": [e["t0"], e["t1"]], "sentence": e[key]} for e in r["events"]] for r in recs}
                write_json(d / f"{name}_events.json", {"version": "VERSION 1.0", "results": res, "external_data": {"used": False, "details": "dense3d synthetic oracle"}})
        if kind == "av":
            write_json(d / "gt_favd.json", {r["scene_id"]: _favd_gt(r) for r in recs})
            write_json(
                d / "context_free_favd.json",
                {r["scene_id"]: favd_paragraph(r["favd_context_free"]["summary"], r["favd_context_free"]["visual"], r["favd_context_free"]["audio"]) for r in recs},
            )


def _favd_gt(rec: dict) -> str:
    return rec["favd_paragraph"]


# ----------------------------------------------------------------------------- default set
def generate_default(root: str | Path = "data/synthetic/default", seed: int = 0, scenes: dict | None = None, workers: int = 1,
                     log: Callable[[str], None] = print, progress: ProgressBar | None = None) -> dict[str, Path]:
    """The demo's default set: ``root/{outdoor,indoor,av}``, each skipped when its
    ``meta.json`` already has the same config fingerprint. Returns the three folders.
    ``progress`` (:mod:`dense3d.utils.progress`) advances by one per generated scene."""
    root = Path(root)
    check_output_path(root, str(root), "data folder", folder=True)  # else generate() would fail below a file
    scenes = dict(DEFAULT_SCENES, **(scenes or {}))
    bar = ensure_progress(progress)
    out = {}
    for kind in DEFAULT_SCENES:  # not the joint kind: the demo does not use it
        cfg = SynthConfig(kind=kind, scenes=scenes[kind], seed=seed)
        folder = root / kind
        meta_path = folder / "meta.json"
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                old = {}
            if old.get("fingerprint") == cfg.fingerprint():
                log(f"  {kind:<8} {folder} up to date (fingerprint {cfg.fingerprint()}), kept")
                out[kind] = folder
                continue
        bar.add_total(cfg.scenes)
        bar.update(f"{kind} scenes")
        meta = generate(cfg, folder, workers=workers, progress=lambda done, total: bar.advance())
        log(f"  {kind:<8} {folder}: {cfg.scenes} scenes in {meta['seconds']} s ({60 * cfg.scenes / max(meta['seconds'], 1e-6):.0f} scenes/min)")
        out[kind] = folder
    return out


# ----------------------------------------------------------------------------- stats
_LEN_BINS = ((0, 5), (6, 10), (11, 15), (16, 20), (21, 25), (26, 30), (31, 40), (41, 60), (61, 80), (81, 100), (101, 10**9))


def _len_bin(n: int) -> str:
    for lo, hi in _LEN_BINS:
        if lo <= n <= hi:
            return f"{lo}-{hi}" if hi < 10**9 else f">{lo - 1}"
    return "?"


def _text(record: dict, key: str, path: Path, where: str) -> str:
    """``record[key]``, a string; else an AnnotationError naming ``where.key`` in ``path``."""
    if key not in record:
        raise AnnotationError(path, f"{where}.{key}", "a string", got="missing")
    if not isinstance(record[key], str):
        raise AnnotationError(path, f"{where}.{key}", "a string", got=type(record[key]).__name__)
    return record[key]


def dataset_stats(folder: str | Path) -> dict:
    """Histograms of a generated folder: ``classes``, ``caption_words`` (binned caption
    lengths in words), ``relations`` (relation types), ``splits``; for ``av`` also
    ``event_classes``, ``event_words`` and ``paragraph_words`` (``joint``: the events' three)."""
    folder = Path(folder)
    data = load_synthetic_annotations(folder)
    path = folder / ANNOTATIONS_FILE
    kind = data["kind"]
    classes, words, rels, splits = Counter(), Counter(), Counter(), Counter()
    ev_classes, ev_words, para = Counter(), Counter(), Counter()
    n_obj = n_cap = 0
    for i, rec in enumerate(data["scenes"]):
        where = f"scenes[{i}]"
        if rec["split"] not in SPLITS:  # else counted in the total but under no split
            raise AnnotationError(path, f"{where}.split", f"one of {', '.join(SPLITS)}", got=rec["split"])
        splits[rec["split"]] += 1
        for j, o in enumerate(rec["objects"]):
            if not isinstance(o, dict):
                raise AnnotationError(path, f"{where}.objects[{j}]", "an object with 'label', 'relation' and captions", got=type(o).__name__)
            n_obj += 1
            classes[_text(o, "label", path, f"{where}.objects[{j}]")] += 1
            rels[_text(o, "relation", path, f"{where}.objects[{j}]")] += 1
            if o.get("captions"):
                caps = o["captions"]
                if not isinstance(caps, list):
                    raise AnnotationError(path, f"{where}.objects[{j}].captions", "a list of strings", got=type(caps).__name__)
                fields = [f"captions[{k}]" for k in range(len(caps))]
            else:
                caps, fields = [o.get("caption", "")], ["caption"]
            for c, name in zip(caps, fields):
                if not isinstance(c, str):
                    raise AnnotationError(path, f"{where}.objects[{j}].{name}", "a string", got=type(c).__name__)
                n_cap += 1
                words[_len_bin(len(c.split()))] += 1
        events = rec.get("events", [])
        if not isinstance(events, list):
            raise AnnotationError(path, f"{where}.events", "a list of events", got=type(events).__name__)
        for j, e in enumerate(events):
            if not isinstance(e, dict):
                raise AnnotationError(path, f"{where}.events[{j}]", "an object with 'label' and 'caption'", got=type(e).__name__)
            ev_classes[_text(e, "label", path, f"{where}.events[{j}]")] += 1
            ev_words[_len_bin(len(_text(e, "caption", path, f"{where}.events[{j}]").split()))] += 1
        if kind == "av":
            para[_len_bin(len(_text(rec, "favd_paragraph", path, where).split()))] += 1
    order = [_len_bin(lo) for lo, _ in _LEN_BINS]
    stats = {
        "kind": kind,
        "folder": str(folder),
        "scenes": sum(splits.values()),
        "objects": n_obj,
        "captions": n_cap,
        "splits": {s: splits.get(s, 0) for s in SPLITS},
        "classes": dict(classes.most_common()),
        "caption_words": {b: words[b] for b in order if words.get(b)},
        "relations": dict(rels.most_common()),
    }
    if kind in ("av", "joint"):
        stats["events"] = sum(ev_classes.values())
        stats["event_classes"] = dict(ev_classes.most_common())
        stats["event_words"] = {b: ev_words[b] for b in order if ev_words.get(b)}
    if kind == "av":
        stats["paragraph_words"] = {b: para[b] for b in order if para.get(b)}
    return stats


def format_stats(stats: dict) -> str:
    """A plain-text table of :func:`dataset_stats`."""
    lines = [f"{stats['kind']} - {stats['folder']}: {stats['scenes']} scenes "
             f"(train {stats['splits']['train']}, val {stats['splits']['val']}, test {stats['splits']['test']}), "
             f"{stats['objects']} objects, {stats['captions']} captions" + (f", {stats['events']} events" if "events" in stats else "")]
    for key, title in (("classes", "class"), ("relations", "relation type"), ("caption_words", "caption words"),
                       ("event_classes", "event class"), ("event_words", "event caption words"), ("paragraph_words", "paragraph words")):
        if key not in stats:
            continue
        hist = stats[key]
        total = max(sum(hist.values()), 1)
        lines.append(f"  {title}:")
        for name, n in hist.items():
            bar = "#" * max(1, round(30 * n / total)) if n else ""
            lines.append(f"    {name:<22} {n:>6} {100 * n / total:5.1f}%  {bar}")
    return "\n".join(lines)
