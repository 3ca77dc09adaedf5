"""``dense3d demo``: the main job, on the embedded synthetic default.

Stages, each timed in ``summary.json``:

1. data: generate the default synthetic set (skipped when already there);
2. train: the demo model (``experiment=demo``: LiDAR + cameras -> BEV boxes -> BiCA ->
   Q-Former -> LLaMA-Adapter on SmolLM2) for a fixed number of steps on CPU;
3. predict: boxes and captions for the validation scenes -> ``predictions.json``
   (the evaluation tools' 3D format) beside ``ground_truth.json``;
4. evaluate: TOD3Cap (corrected and compatible) caption metrics and nuScenes detection AP;
5. pictures and report: training curves, an Open3D render and a BEV plot of a validation
   scene with its boxes and captions, ``report.md``, and a summary table with captions.
"""
from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path

import numpy as np
import torch

from dense3d.utils.env import environment_report
from dense3d.utils.io import atomic_write_json
from dense3d.utils.progress import progress_bar

__all__ = ["run_demo"]


def _data_stage(data_dir: Path, seed: int) -> dict:
    """Generate the default synthetic set (skipped when already there with the same config
    and seed) and print its stats table."""
    from dense3d.data.synthetic import dataset_stats, format_stats, generate_default

    t0 = time.time()
    print(f"synthetic data -> {data_dir}")
    with progress_bar("synthetic data", unit="scenes") as bar:
        folders = generate_default(data_dir, seed=seed, progress=bar)
    stats = {kind: dataset_stats(folder) for kind, folder in folders.items()}
    for s in stats.values():
        print(format_stats(s))
    return {"name": "data", "seconds": round(time.time() - t0, 2), "folders": {k: str(v) for k, v in folders.items()},
            "stats": stats}


def _records(samples, captions_per_sample) -> tuple[dict, dict]:
    """Predictions and ground truth in the evaluation tools' 3D formats (docs/eval.md)."""
    from dense3d.api import prediction_records
    from dense3d.engine.evaluate import box_records

    return prediction_records([s.sample_id for s in samples], captions_per_sample), box_records(samples, captions_per_sample)[1]


def _metrics_csv(trainer, out_dir: Path) -> Path | None:
    """This run's ``metrics.csv``: its CSV logger's ``log_dir`` (an earlier demo's ``csv/version_N``
    folders stay beside it, and ``version_9`` sorts after ``version_10``), else the newest one
    under ``out_dir``."""
    for logger in getattr(trainer, "loggers", None) or []:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir is not None and (Path(log_dir) / "metrics.csv").is_file():
            return Path(log_dir) / "metrics.csv"
    csvs = list(out_dir.rglob("metrics.csv"))
    return max(csvs, key=lambda p: p.stat().st_mtime) if csvs else None


def _pictures(out_dir: Path, sample, captions, gt_captions, metrics_csv: Path | None) -> list[tuple[str, Path]]:
    """Curves; the scene with GT boxes (green, labelled with the captions generated for them) and
    the predicted boxes (class colours, labelled with their captions); its bird's-eye view."""
    from dense3d.engine.report import plot_curves, read_metrics_csv
    from dense3d.structures import Boxes3D
    from dense3d.vis import GT_COLOR, BoxLayer, label_colors, plot_bev, render_scene, save_png

    pics = []
    if metrics_csv is not None:
        pics.append(("training curves", plot_curves(read_metrics_csv(metrics_csv), out_dir / "curves.png", "demo training")))
    pts = sample.points.points.numpy()
    gt = sample.boxes.boxes[:]
    pred = Boxes3D([c.region for c in captions]) if captions else Boxes3D(torch.zeros(0, 7))
    pred_colors = label_colors([c.label for c in captions], sample.boxes.class_names)  # as `dense3d vis` colours them
    gt_colors = np.tile(np.array(GT_COLOR), (len(gt), 1))
    top = sorted(range(len(captions)), key=lambda i: -captions[i].score)[:4]
    labels = [captions[i].text if i in top else "" for i in range(len(captions))]
    gt_labels = [c.text for c in gt_captions[:4]] + [""] * max(0, len(gt) - 4)
    render = render_scene(pts, None, [BoxLayer(Boxes3D._wrap(gt.tensor[:, :7]), gt_colors, gt_labels, line_width=1.5),
                                      BoxLayer(pred, pred_colors, labels, line_width=2.5)], width=1280, height=960)
    pics.append(("validation scene: ground truth (green), predictions with captions", save_png(render.image, out_dir / "scene.png")))
    pics.append(("bird's-eye view", plot_bev(pts, [(Boxes3D._wrap(gt.tensor[:, :7]), gt_colors, []), (pred, pred_colors, labels)],
                                             out_dir / "bev.png", title=sample.sample_id)))
    return pics


def _summary_table(metrics: dict) -> list[dict]:
    """One row per caption protocol: CIDEr, BLEU-4, METEOR, ROUGE-L at IoU 0.25 and CIDEr at 0.5
    (the corrected mode reports the F1 of its one-to-one matching)."""
    rows = []
    for name, key, suffix in (("TOD3Cap corrected (F1)", "tod3cap_corrected", "-F1"), ("TOD3Cap compatible", "tod3cap_compatible", "")):
        m = metrics[key]
        row = {"protocol": name}
        for metric, k in (("CIDEr", 0.25), ("BLEU-4", 0.25), ("METEOR", 0.25), ("ROUGE-L", 0.25), ("CIDEr", 0.5)):
            row[f"{metric}@{k}"] = float(m.get(f"{metric}{suffix}@{k}", float("nan")))
        rows.append(row)
    return rows


def _detection_rows(det: dict) -> list[dict]:
    """One row per class (AP at 0.5, 1, 2, 4 m), then the means."""
    classes = sorted({k.split("/", 1)[1] for k in det if k.startswith("AP@") and "/" in k})
    rows = [{"class": c, **{d: det.get(f"AP@{d}/{c}", float("nan")) for d in ("0.5m", "1m", "2m", "4m")}} for c in classes]
    rows.append({"class": "mean", **{d: det.get(f"mAP@{d}", float("nan")) for d in ("0.5m", "1m", "2m", "4m")}})
    return rows


# `dense3d demo` trains with the progress bar only and saves last.ckpt itself once trained
# (run_demo), where `dense3d train experiment=demo` checkpoints every epoch like any experiment
DEMO_TRAIN_OVERRIDES = ["callbacks=progress", "++trainer.enable_checkpointing=false"]

DEMO_MARKER = ".dense3d_demo"  # in a folder whose run the demo trained (and may replace)


@contextlib.contextmanager
def _replacing_earlier_demo_run(out_dir: Path):
    """A demo run again into its folder replaces the earlier demo's checkpoints (``fit`` refuses
    a folder holding another run's): they are moved aside, deleted once the new run has trained
    and put back if it fails. Only a folder the demo marked as its own (:data:`DEMO_MARKER`,
    written once its training succeeded) is replaced; any other run's is left to ``fit`` to
    refuse, a ``dense3d train experiment=demo`` run's included."""
    import shutil

    ckpts, aside = out_dir / "checkpoints", out_dir / ".checkpoints.earlier_demo"
    earlier = ckpts.is_dir() and (out_dir / DEMO_MARKER).is_file()
    shutil.rmtree(aside, ignore_errors=True)  # left by a demo killed while training
    if earlier:
        ckpts.rename(aside)
    try:
        yield
    except BaseException:
        if earlier and not ckpts.exists():
            aside.rename(ckpts)
        raise
    if earlier:
        shutil.rmtree(aside, ignore_errors=True)


def run_demo(out_dir: str | Path = "outputs/demo", seed: int = 0, data_dir: str | Path = "data/synthetic/default",
             steps: int | None = None, overrides: list[str] | None = None) -> int:
    from dense3d.engine.evaluate import box_metrics
    from dense3d.engine.report import markdown_table, write_report
    from dense3d.engine.train import compose_config, fit

    t_start = time.time()
    out_dir = Path(out_dir).resolve()  # made by fit() once data, config and model are good (none left on bad input)
    report = environment_report()
    print("dense3d demo")
    for k, v in report.items():
        print(f"  {k:<14} {v}")
    summary = {"environment": report, "seed": seed, "stages": []}
    summary["stages"].append(_data_stage(Path(data_dir), seed))

    # -- train
    t0 = time.time()
    ov = ["experiment=demo", f"seed={seed}", f"paths.output_dir={out_dir}", f"paths.synthetic_dir={Path(data_dir).resolve()}",
          *DEMO_TRAIN_OVERRIDES]
    if steps is not None:
        ov += [f"trainer.max_steps={steps}", f"trainer.log_every_n_steps={max(1, min(5, steps))}"]
    cfg = compose_config(ov + list(overrides or []))
    with _replacing_earlier_demo_run(out_dir):
        module, datamodule, trainer = fit(cfg)
    (out_dir / DEMO_MARKER).write_text("trained by dense3d demo: a later demo replaces this run\n")
    trainer.save_checkpoint(out_dir / "checkpoints" / "last.ckpt")  # + config.yaml: dense3d.api.load(out_dir)
    summary["stages"].append({"name": "train", "seconds": round(time.time() - t0, 2), "steps": int(trainer.global_step)})
    print(f"trained {trainer.global_step} steps in {time.time() - t0:.0f} s")

    # -- predict
    t0 = time.time()
    from dense3d.data import collate

    model = module.model.eval()
    val = datamodule.val_set
    samples = [val[i] for i in range(len(val))]
    captions, gt_captions = [], []
    for regions, dest, label in (("proposals", captions, "proposals"), ("gt", gt_captions, "GT boxes")):
        with progress_bar(f"captioning val scenes ({label})", total=len(samples), unit="scenes") as bar:
            for i in range(0, len(samples), 2):
                dest += model.predict(collate(samples[i : i + 2]), regions=regions)
                bar.advance(len(samples[i : i + 2]))
    pred, gt = _records(samples, captions)
    pred_gt_regions, _ = _records(samples, gt_captions)
    atomic_write_json(out_dir / "predictions.json", pred)
    atomic_write_json(out_dir / "predictions_gt_regions.json", pred_gt_regions)
    atomic_write_json(out_dir / "ground_truth.json", gt)
    summary["stages"].append({"name": "predict", "seconds": round(time.time() - t0, 2), "scenes": len(samples)})

    # -- evaluate
    t0 = time.time()
    metrics = box_metrics(pred, gt, axis_aligned=False, captions=True, label="detected boxes")
    metrics["gt_regions"] = box_metrics(pred_gt_regions, gt, axis_aligned=False, captions=True, label="GT boxes")
    atomic_write_json(out_dir / "metrics.json", metrics)
    summary["stages"].append({"name": "evaluate", "seconds": round(time.time() - t0, 2)})

    # -- pictures, report, summary
    t0 = time.time()
    pics = _pictures(out_dir, samples[0], captions[0], gt_captions[0], _metrics_csv(trainer, out_dir))
    rows = _summary_table(metrics)
    rows += [dict(r, protocol=r["protocol"] + ", GT boxes") for r in _summary_table(metrics["gt_regions"])]
    det = metrics["detection"]
    examples = [{"scene": s.sample_id[:8], "label": c.label, "score": round(c.score, 2), "caption": c.text}
                for s, caps in zip(samples, captions) for c in sorted(caps, key=lambda c: -c.score)[:2]][:8]
    on_gt = [{"scene": s.sample_id[:8], "generated (GT box)": c.text, "reference": (r["descriptions"] or [""])[0]}
             for s, caps in zip(samples, gt_captions) for c, r in zip(caps[:2], gt[s.sample_id][:2])][:8]
    write_report(out_dir / "report.md", "dense3d demo", [
        ("Run", markdown_table([{"stage": s["name"], "seconds": s["seconds"]} for s in summary["stages"]])),
        ("Captions (TOD3Cap protocols, x100)", markdown_table(rows)),
        ("Detection (nuScenes centre-distance AP, x100)", markdown_table(_detection_rows(det))),
        ("Captions generated for ground-truth boxes", markdown_table(on_gt)),
        ("Example predictions (detected boxes)", markdown_table(examples)),
    ], pics)
    summary["stages"].append({"name": "report", "seconds": round(time.time() - t0, 2)})
    summary["metrics"] = {"captions": rows, "detection_mAP": det.get("mAP")}
    summary["wall_time_s"] = round(time.time() - t_start, 2)
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    atomic_write_json(out_dir / "summary.json", summary)

    print("\n" + markdown_table(rows))
    print(f"detection mAP (nuScenes centre distance): {det.get('mAP', float('nan')):.2f}")
    print("\ncaptions generated for ground-truth boxes (-> reference):")
    for e in on_gt[:5]:
        print(f"  {e['generated (GT box)']}\n    -> {e['reference']}")
    print("captions of detected boxes:")
    for e in examples[:3]:
        print(f"  [{e['label']} {e['score']:.2f}] {e['caption']}")
    print(f"\nwrote {out_dir}/report.md, predictions.json, metrics.json, pictures; "
          f"{summary['wall_time_s']:.0f} s in all, peak memory {summary['peak_rss_mb']:.0f} MB")
    return 0
