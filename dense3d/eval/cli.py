"""``dense3d eval <protocol> --pred PRED.json --gt GT.json... [--iou ...] [--mode ...] [--out metrics.json]``.

(``dense3d eval --checkpoint RUN ...``, a trained run on a data split, is ``dense3d.engine.evaluate``,
reached through :mod:`dense3d.cli`; this parser's help names that form too.)

Reads the files (formats in ``docs/eval.md``), runs one protocol (its stages shown on stderr,
:mod:`dense3d.utils.progress`), prints a table and writes the metrics JSON atomically. Protocols: scanrefer, scan2cap, tod3cap, favd, events, detection.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from dense3d.errors import PredictionFormatError
from dense3d.eval import formats
from dense3d.utils.argtypes import positive_float, positive_int
from dense3d.utils.io import atomic_write_json, check_output_path
from dense3d.utils.progress import ProgressBar, progress_bar

__all__ = ["PROTOCOLS", "build_parser", "run", "main", "format_table"]

PROTOCOLS = ("scanrefer", "scan2cap", "tod3cap", "favd", "events", "detection")
_MODES = {
    "scanrefer": ("vote2cap",),
    "scan2cap": ("benchmark",),
    "tod3cap": ("compatible", "corrected"),
    "favd": ("favdbench",),
    "events": ("2018", "2021"),
    "detection": ("voc", "voc-rotated", "nuscenes"),
}


def build_parser() -> argparse.ArgumentParser:
    # ``dense3d eval --checkpoint RUN ...`` (a trained run on a data split) is parsed by dense3d/cli.py
    # before it gets here; this help is the one ``dense3d eval --help`` shows, so it names both forms.
    p = argparse.ArgumentParser(
        prog="dense3d eval",
        usage="%(prog)s PROTOCOL --pred PRED --gt GT [GT ...] [options]   (score a predictions file)\n"
              "       %(prog)s --checkpoint RUN [--split SPLIT] [options] [KEY=VALUE ...]   (evaluate a trained run)",
        description="Score predictions with a published protocol (the options below), or describe a data split "
                    "with a trained run and score it.",
        epilog="dense3d eval --checkpoint RUN --help lists the options of the second form (--split, --regions, "
               "--limit, --out, config overrides).",
    )
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("--pred", required=True, help="prediction JSON")
    p.add_argument("--gt", required=True, nargs="+", help="ground-truth JSON (events: one or more reference files)")
    p.add_argument("--iou", type=positive_float, nargs="+",
                   help="IoU / tIoU thresholds in (0, 1] (detection nuscenes: centre distances in metres; default: the protocol's)")
    p.add_argument("--mode", help="; ".join(f"{k}: {'|'.join(v)}" for k, v in _MODES.items()) + " (first is default)")
    p.add_argument("--out", help="write the metrics here as JSON (atomically)")
    p.add_argument("--strict-ids", action="store_true",
                   help="prediction ids (scenes, videos, clips) absent from the ground truth are an error, not a warning")
    p.add_argument("--seed", type=int, default=0, help="events 2021 mode: seed of the garbage references")
    p.add_argument("--max-proposals", type=positive_int, default=1000, help="events: predictions kept per video")
    p.add_argument("--soda-refs", choices=("average", "merged", "separate"), default="average",
                   help="events: SODA_c with several reference files: scored one file at a time and averaged (average, PDVC's "
                        "number), merged per video (merged), or separate (each video takes the best-F1 file)")
    p.add_argument("--soda-missing", choices=("zero", "compatible"), default="zero",
                   help="events: SODA_c videos without predictions count 0 (zero) or are dropped (compatible)")
    p.add_argument("--no-soda", action="store_true", help="events: skip SODA_c")
    p.add_argument("--text-encoder", help="favd: local T5-base folder for EntityScore (default: shipped MiniLM)")
    p.add_argument("--no-entity", action="store_true", help="favd: skip EntityScore")
    p.add_argument("--audio-scores", help="favd: JSON {clip_id: AudioScore} computed with TriLip (local weights)")
    return p


def _check_ids(args: argparse.Namespace, pred_ids, gt_ids) -> None:
    if getattr(args, "strict_ids", False):
        unknown = formats.unknown_scenes(pred_ids, gt_ids)
        if unknown:
            raise PredictionFormatError(args.pred, unknown[0], "an id present in the ground truth", got=f"{len(unknown)} unknown ids")


def _require_described_objects(path: str, gt: dict, proto: str) -> None:
    """ScanRefer / Scan2Cap score only objects with ``descriptions``: a ground truth with none
    (e.g. the references under another key such as ``caption``) would print an empty table or
    zeros and exit 0; it is an error naming the file and the field instead."""
    from dense3d.eval.scanrefer import is_scored

    objs = [o for v in gt.values() for o in v]
    if not any(is_scored(o) for o in objs):
        raise PredictionFormatError(path, "descriptions", f"at least one object with 'descriptions' (token lists or strings) "
                                    f"and a name other than 'unknown' for {proto}", got=f"none among {len(objs)} objects")


def run(args: argparse.Namespace, progress: ProgressBar | None = None) -> dict:
    """Run one protocol on the files named by ``args``; returns the metrics dict. ``progress``
    gets the protocol's stages (:mod:`dense3d.utils.progress`)."""
    proto = args.protocol
    mode = args.mode or _MODES[proto][0]
    if mode not in _MODES[proto]:
        raise PredictionFormatError("command line", "--mode", f"one of {'|'.join(_MODES[proto])} for {proto}", got=mode)
    if args.iou and not (proto == "detection" and mode == "nuscenes") and max(args.iou) > 1:
        raise PredictionFormatError("command line", "--iou", f"thresholds in (0, 1] for {proto}", got=max(args.iou))
    if proto == "favd" and args.text_encoder and not Path(args.text_encoder).is_dir():
        raise PredictionFormatError("command line", "--text-encoder", "a local T5-base folder (weights are never downloaded)",
                                    got=args.text_encoder)
    pred_raw = formats.read_json(args.pred)
    if proto in ("scanrefer", "scan2cap", "tod3cap", "detection"):
        if len(args.gt) != 1:
            raise PredictionFormatError("command line", "--gt", f"one ground-truth file for {proto}", got=len(args.gt))
        pred = formats.parse_box_predictions(args.pred, pred_raw, need_caption=proto != "detection", need_score=proto in ("scan2cap", "detection"))
        gt = formats.parse_object_gt(args.gt[0], formats.read_json(args.gt[0]))
        _check_ids(args, pred, gt)
        if proto in ("scanrefer", "scan2cap"):
            _require_described_objects(args.gt[0], gt, proto)
        ious = tuple(args.iou) if args.iou else (0.25, 0.5)
        if proto == "scanrefer":
            from dense3d.eval import scanrefer

            return scanrefer.evaluate(pred, gt, ious=ious, progress=progress)
        if proto == "scan2cap":
            from dense3d.eval import scan2cap

            return scan2cap.evaluate(pred, gt, ious=ious, progress=progress)
        if proto == "tod3cap":
            from dense3d.eval import tod3cap

            return tod3cap.evaluate(pred, gt, ious=ious, mode=mode, source=args.pred, progress=progress)
        from dense3d.eval import detection

        # A prediction without a label would match no GT class and score 0 silently: without any
        # label, VOC AP is class-agnostic (as Scan2Cap's mAP); a label missing among labelled
        # predictions, or any missing for nuScenes AP (per class by definition), is an error.
        unlabelled = [f"{s}[{i}].label" for s, ps in pred.items() for i, p in enumerate(ps) if p.label is None]
        labelled = sum(len(ps) for ps in pred.values()) - len(unlabelled)
        if unlabelled and (labelled or mode == "nuscenes"):
            raise PredictionFormatError(args.pred, unlabelled[0], f"a class name for detection {mode}"
                                        + (" (other predictions have one)" if labelled else ""), got="missing")
        if mode == "nuscenes":
            return detection.evaluate_nuscenes(pred, gt, distances=tuple(args.iou) if args.iou else detection.NUSCENES_DISTANCES,
                                               progress=progress)
        return detection.evaluate_voc(pred, gt, ious=ious, rotated=mode == "voc-rotated", class_agnostic=bool(unlabelled),
                                      progress=progress)
    if proto == "events":
        from dense3d.eval import events

        pred = formats.parse_event_predictions(args.pred, pred_raw)
        gts = [formats.parse_event_gt(g, formats.read_json(g)) for g in args.gt]
        _check_ids(args, pred, {v for g in gts for v in g})
        return events.evaluate(
            pred, gts, tious=tuple(args.iou) if args.iou else events.TIOUS, max_proposals=args.max_proposals,
            mode=mode, seed=args.seed, soda=not args.no_soda, soda_refs=args.soda_refs, soda_missing=args.soda_missing,
            progress=progress,
        )
    from dense3d.eval import favd

    if len(args.gt) != 1:
        raise PredictionFormatError("command line", "--gt", "one reference file for favd", got=len(args.gt))
    pred = formats.parse_paragraphs(args.pred, pred_raw, many=False)
    refs = formats.parse_paragraphs(args.gt[0], formats.read_json(args.gt[0]), many=True)
    _check_ids(args, pred, refs)
    encoder = favd.T5Encoder(args.text_encoder) if args.text_encoder else None
    audio = None
    if args.audio_scores:
        raw = formats.read_json(args.audio_scores)
        if not isinstance(raw, dict):
            raise PredictionFormatError(args.audio_scores, "(top level)", "an object {clip_id: number}", got=type(raw).__name__)
        for k, v in raw.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PredictionFormatError(args.audio_scores, str(k), "a finite number (AudioScore)", got=v)
        audio = {str(k): float(v) for k, v in raw.items()}
    return favd.evaluate(pred, refs, encoder=encoder, entity=not args.no_entity, audio_scores=audio, progress=progress)


def format_table(metrics: dict) -> str:
    """Two columns, metric and value; lists (unknown scenes, ...) summarised on one line."""
    rows = []
    for k, v in metrics.items():
        if isinstance(v, float):
            s = f"{v:.2f}"
        elif isinstance(v, list):
            s = f"{len(v)}" + (f"  ({', '.join(map(str, v[:5]))}{', ...' if len(v) > 5 else ''})" if v else "")
        else:
            s = str(v)
        if k.startswith("matched@") and "objects" in metrics:
            s = f"{v} / {metrics['objects']}"
        rows.append((k, s))
    w = max((len(k) for k, _ in rows), default=6)
    lines = [f"{'metric':<{w}}  value", f"{'-' * w}  -----"] + [f"{k:<{w}}  {s}" for k, s in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        check_output_path(args.out, "dense3d eval")
    with progress_bar(f"eval {args.protocol} ({args.mode or _MODES[args.protocol][0]})", unit="stages") as bar:
        metrics = run(args, progress=bar)
    print(format_table(metrics))
    for key in ("unknown_scenes", "unknown_videos", "unknown_clips"):
        if metrics.get(key):
            print(f"warning: {len(metrics[key])} prediction ids are not in the ground truth ({key} in the output)", file=sys.stderr)
    if metrics.get("audio_missing_clips"):
        print(f"warning: {len(metrics['audio_missing_clips'])} clips have no AudioScore; the mean leaves them out "
              "(audio_missing_clips in the output)", file=sys.stderr)
    if args.out:
        atomic_write_json(args.out, {"protocol": args.protocol, "mode": args.mode or _MODES[args.protocol][0], **metrics})
    return 0
