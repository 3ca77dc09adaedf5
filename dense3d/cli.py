"""The ``dense3d`` command: ``train``, ``predict``, ``eval``, ``demo``, ``vis``, ``convert``.

Thin: each sub-command parses its arguments and calls into ``dense3d.engine``,
``dense3d.eval``, ``dense3d.data`` or ``dense3d.vis``. Bad input (a ``Dense3DError``) is
printed as one line and exits with status 2; sub-commands not built yet say so and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from dense3d.errors import ConfigError, exit_status
from dense3d.utils.argtypes import non_negative_int, positive_int

__all__ = ["main", "build_parser", "parse_args"]


def _not_built(name: str, issue: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"dense3d {name}: not built yet ({issue}); see README.md for what exists.", file=sys.stderr)
        return 2

    return run


def _demo(args: argparse.Namespace) -> int:
    from dense3d.engine.demo import run_demo
    from dense3d.utils.io import check_output_path

    check_output_path(args.out, "dense3d demo", folder=True)
    return run_demo(out_dir=args.out, seed=args.seed, data_dir=args.data, steps=args.steps, overrides=args.overrides)


def _convert_synth(args: argparse.Namespace) -> int:
    from dense3d.data.synthetic import dataset_stats, format_stats, generate, load_synth_config
    from dense3d.utils.progress import progress_bar

    params = {"kind": args.kind, "seed": args.seed}
    if args.scenes is not None:
        params["scenes"] = args.scenes
    if args.split is not None:
        try:
            params["split"] = [float(f) for f in args.split.split(",")]
        except ValueError:
            raise ConfigError("dense3d convert synth", "--split", "three fractions, e.g. 1,0,0", got=args.split) from None
    cfg = load_synth_config(args.config, **params)  # a missing / broken yaml, unknown keys, bad values: one line
    with progress_bar(f"generating {cfg.kind} scenes", total=cfg.scenes, unit="scenes") as bar:
        meta = generate(cfg, args.out, workers=args.workers, progress=lambda done, total: bar.advance())
    rate = 60 * cfg.scenes / max(meta["seconds"], 1e-6)
    print(f"wrote {cfg.scenes} {cfg.kind} scenes to {args.out} in {meta['seconds']} s ({rate:.0f} scenes/min)")
    print(format_stats(dataset_stats(args.out)))
    return 0


def _convert_stats(args: argparse.Namespace) -> int:
    import json

    from dense3d.data.synthetic import dataset_stats, format_stats

    stats = dataset_stats(args.folder)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0


def _convert_nuscenes_results(args: argparse.Namespace) -> int:
    from dense3d.data.converters import convert_nuscenes_results
    from dense3d.utils.io import check_output_path

    check_output_path(args.out, "dense3d convert nuscenes-results")
    n = convert_nuscenes_results(args.results, args.info, args.out)
    print(f"wrote {n['boxes']} boxes of {n['samples']} samples to {args.out} (LiDAR frame; score with dense3d eval tod3cap)")
    return 0


def _convert_tod3cap_gt(args: argparse.Namespace) -> int:
    from dense3d.data.converters import tod3cap_ground_truth
    from dense3d.utils.io import check_output_path

    check_output_path(args.out, "dense3d convert tod3cap-gt")
    n = tod3cap_ground_truth(args.info, args.captions, args.out, caption_source=args.caption_source, data_root=args.data_root)
    print(f"wrote {n['objects']} objects ({n['captioned']} with a caption) of {n['samples']} samples to {args.out}")
    return 0


def _convert_scannet(args: argparse.Namespace) -> int:
    from dense3d.data.scannet_raw import convert_scannet_scans
    from dense3d.utils.io import check_output_path
    from dense3d.utils.progress import progress_bar

    check_output_path(args.out, "dense3d convert scannet", folder=True)
    with progress_bar("converting ScanNet scans", unit="scenes") as bar:

        def scene_done(done: int, total: int) -> None:
            bar.update(total=total)
            bar.advance()

        n = convert_scannet_scans(args.scans, args.out, args.label_map, scenes=args.scenes, workers=args.workers,
                                  max_points=args.max_points, seed=args.seed, allow_unannotated=args.allow_unannotated,
                                  progress=scene_done)
    dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in n["dropped"].items() if v) or "none"
    print(f"wrote {n['scenes']} scenes ({n['points']} points, {n['boxes']} boxes; boxes left out: {dropped}) to {args.out}")
    if n["unannotated"]:
        print(f"{len(n['unannotated'])} scenes without an aggregation file were written with no boxes: {', '.join(n['unannotated'][:5])}"
              + (", ..." if len(n["unannotated"]) > 5 else ""))
    if n["unaligned"]:
        print(f"{len(n['unaligned'])} scenes have no axisAlignment (kept in the scan frame): {', '.join(n['unaligned'][:5])}"
              + (", ..." if len(n["unaligned"]) > 5 else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    if "--checkpoint" in args.rest:  # a trained run on its own data: dense3d.engine.evaluate
        return _eval_run(args.rest)
    from dense3d.eval.cli import main as eval_main

    return eval_main(args.rest)


def _eval_run(argv: list[str]) -> int:
    import json

    from dense3d.engine.evaluate import evaluate_run
    from dense3d.utils.io import strict_json

    p = argparse.ArgumentParser(prog="dense3d eval", description="Describe a split with a trained run and score it.")
    p.add_argument("--checkpoint", required=True, help="run folder (config.yaml + checkpoints/) or checkpoint folder")
    p.add_argument("--split", default="val", help="data split of the run's data config (train / val / test), read through the val split's pipeline (no augmentation)")
    p.add_argument("--regions", default="proposals", choices=("proposals", "gt"), help="caption detections (boxes, events) or the ground-truth regions (GT boxes, GT event spans)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N samples")
    p.add_argument("--out", default=None, help="output folder (default: RUN/eval_<split>)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE changes of the run's config, e.g. model.captioner.num_beams=3")
    a = p.parse_args(argv)
    metrics = evaluate_run(a.checkpoint, split=a.split, regions=a.regions, out_dir=a.out, limit=a.limit,
                           overrides=a.overrides)
    print(json.dumps(strict_json(metrics), indent=1, default=str))
    return 0


def _train(args: argparse.Namespace) -> int:
    from dense3d.engine.train import compose_config, fit

    if args.multirun:  # hydra's sweeps run through hydra's own entry point (one folder and config.yaml per job)
        raise ConfigError("dense3d train", "-m/--multirun", "one run per command; sweep with hydra's multirun: "
                          "python tools/train.py -m experiment=demo seed=0,1 (configs/README.md, \"Sweeps\")", got="-m")
    fit(compose_config(args.overrides), ckpt_path=args.resume)
    return 0


def _predict(args: argparse.Namespace) -> int:
    import dense3d.api as api
    from dense3d.utils.io import atomic_write_json, check_output_path
    from dense3d.utils.progress import progress_bar

    check_output_path(args.out, "dense3d predict")
    run = api.load(args.checkpoint, regions=args.regions, overrides=args.overrides)
    data = run.dataset(args.split)
    samples = [data[i] for i in range(len(data) if args.limit is None else min(args.limit, len(data)))]
    with progress_bar(f"captioning {args.split} ({args.regions})", total=len(samples), unit="samples") as bar:
        captions = run.caption_many(samples, progress=bar)
    event_model = getattr(run.model, "event_detector", None) is not None  # its file is read by `dense3d eval events`
    atomic_write_json(args.out, api.prediction_records([s.sample_id for s in samples], captions, event_model=event_model))
    print(f"wrote {args.out}: {sum(len(c) for c in captions)} captioned regions in {len(samples)} samples")
    return 0


def _vis(args: argparse.Namespace) -> int:
    from dense3d.engine.visualize import main as vis_main

    return vis_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dense3d", description="Dense captioning from many sensors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job: synthetic data -> train -> evaluate -> report")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the data, the model's init and training (default: 0)")
    p.add_argument("--data", default="data/synthetic/default", help="synthetic data folder (generated when missing or stale)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: configs/experiment/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="hydra overrides of the demo config, e.g. model.captioner.num_beams=3")
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="train a model from a hydra config")
    p.add_argument("overrides", nargs="*", help="hydra overrides of configs/train.yaml, e.g. experiment=demo "
                   "trainer.max_steps=500 task_name=demo_500 (the run goes to outputs/<task_name>)")
    p.add_argument("--resume", default=None, help="checkpoint folder to resume from (its run folder, same config), "
                   "or 'last': the run folder's checkpoint of the most steps (last.ckpt, or a newer step=N.ckpt)")
    p.add_argument("-m", "--multirun", action="store_true", help="refused: sweeps run with python tools/train.py -m ...")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="caption a data split with a trained run -> predictions JSON")
    p.add_argument("--checkpoint", required=True, help="run folder (config.yaml + checkpoints/) or checkpoint folder")
    p.add_argument("--split", default="val", help="data split of the run's data config (train / val / test), read through the val split's pipeline (no augmentation)")
    p.add_argument("--regions", default="proposals", choices=("proposals", "gt"), help="caption detections (boxes, events) or the ground-truth regions (GT boxes, GT event spans)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N samples")
    p.add_argument("--out", required=True, help="predictions JSON (docs/eval.md formats)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE changes of the run's config, e.g. model.captioner.num_beams=3 "
                   "or data.val.info_file=my_infos.pkl (your own scenes)")
    p.set_defaults(func=_predict)

    # Everything after "eval" (also --help) goes to dense3d.eval.cli's own parser: no option
    # prefix here, so argparse treats every word as part of ``rest``.
    p = sub.add_parser("eval", help="score a predictions file with a published protocol (dense3d eval PROTOCOL --help), "
                       "or a trained run on a data split (dense3d eval --checkpoint RUN --help)", add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_eval)

    p = sub.add_parser("vis", help="render a scene, its boxes and captions", add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_vis)

    p = sub.add_parser("convert", help="generate synthetic data or convert data sets")
    conv = p.add_subparsers(dest="convert_command", required=True, metavar="WHAT")
    q = conv.add_parser("synth", help="generate a synthetic data set in the real formats")
    q.add_argument("--kind", required=True, choices=("outdoor", "indoor", "av", "joint"))
    q.add_argument("--out", required=True, help="output folder, e.g. data/synthetic/mine/outdoor (replaced as a whole)")
    q.add_argument("--scenes", type=int, default=None, help="number of scenes (default: the config's)")
    q.add_argument("--seed", type=non_negative_int, default=0, help="generator seed: the same seed and config give the same files")  # argparse names the flag (SynthConfig would name its field)
    q.add_argument("--split", default=None, help="train,val,test fractions (default: the config's, 0.7,0.15,0.15); "
                   "1,0,0 makes extra training scenes (tools/merge_synth_sets.py)")
    q.add_argument("--workers", type=positive_int, default=1, help="processes (the output does not depend on it)")
    q.add_argument("--config", default=None, help="a generator yaml (configs/synthetic/*.yaml); flags override it")
    q.set_defaults(func=_convert_synth)
    q = conv.add_parser("stats", help="class, caption-length and relation-type histograms of a synthetic folder")
    q.add_argument("folder", help="a folder written by dense3d convert synth")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=_convert_stats)
    q = conv.add_parser("nuscenes-results", help="a nuScenes results file with captions (TOD3Cap's results_nusc.json) "
                        "-> dense3d 3D predictions in the LiDAR frame")
    q.add_argument("--results", required=True, help="nuScenes results JSON {meta, results: {sample_token: [box, ...]}}")
    q.add_argument("--info", required=True, help="mmdet3d v1.1 info pickle of the same samples (their poses)")
    q.add_argument("--out", required=True, help="predictions JSON (docs/eval.md)")
    q.set_defaults(func=_convert_nuscenes_results)
    q = conv.add_parser("tod3cap-gt", help="a TOD3Cap split's boxes and references -> dense3d ground-truth JSON")
    q.add_argument("--info", required=True, help="mmdet3d v1.1 info pickle (instances with ann_token)")
    q.add_argument("--captions", default=None, help="TOD3Cap caption JSON keyed by sample_annotation token")
    q.add_argument("--caption-source", default="template", choices=("template", "final_caption"),
                   help="template: TOD3Cap's own references (default); final_caption: the entries' final_caption")
    q.add_argument("--data-root", default=None, help="folder the info's paths are relative to (default: the info's folder)")
    q.add_argument("--out", required=True, help="ground-truth JSON (docs/eval.md)")
    q.set_defaults(func=_convert_tod3cap_gt)
    q = conv.add_parser("scannet", help="raw ScanNet v2 scans (ply, segs, aggregation, axisAlignment) -> the ScanRefer "
                        "loader's {scene}_aligned_vert.npy / {scene}_aligned_bbox.npy (Scan2Cap's preprocessing)")
    q.add_argument("--scans", required=True, help="folder of ScanNet scene folders (ScanNet's scans/ or scans_test/)")
    q.add_argument("--label-map", required=True, help="scannetv2-labels.combined.tsv (raw_category -> nyu40id)")
    q.add_argument("--out", required=True, help="the loader's scans_dir, e.g. data/scannet/scannet_data (converted scenes' files replaced)")
    q.add_argument("--scenes", default=None, help="a file with one scene id a line (e.g. scannetv2_val.txt) or comma-separated "
                   "ids (default: every sceneXXXX_XX folder of --scans)")
    q.add_argument("--workers", type=positive_int, default=1, help="processes (the output does not depend on it)")
    q.add_argument("--max-points", type=non_negative_int, default=50000,
                   help="keep at most this many vertices per scene, a seeded random subset as Scan2Cap's (0: all)")
    q.add_argument("--seed", type=non_negative_int, default=0, help="seed of the vertex subset")
    q.add_argument("--allow-unannotated", action="store_true",
                   help="write scenes without {scene}.aggregation.json (ScanNet's test scans) with no boxes")
    q.set_defaults(func=_convert_scannet)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with hydra overrides allowed on both sides of an option
    (``dense3d train a=1 --resume R b=2``): argparse ends a positional list at the first option
    and would refuse ``b=2``; words left over after an option are overrides too."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: args.func(args), f"dense3d {args.command}")


if __name__ == "__main__":
    sys.exit(main())
