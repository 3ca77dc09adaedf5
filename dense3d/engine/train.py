"""Building and running a training run from a composed hydra config (``configs/train.yaml``).

``tools/train.py``, ``dense3d train`` and ``dense3d demo`` all go through :func:`build` and
:func:`fit`; the config decides everything (data, model, trainer, optimizer, stage).
"""
from __future__ import annotations

import copy
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf

from dense3d.engine.checkpoint import SafeCheckpointIO, check_weight_shapes, load_checkpoint
from dense3d.engine.module import SOURCE, DenseCaptionDataModule, DenseCaptionModule, RNGStateCallback, SeededSamples
from dense3d.engine.schedule import RunLengthSchedule, ScheduleFromConfig, scheduler_from_config
from dense3d.errors import ConfigError, Dense3DError
from dense3d.utils.config import instantiate_config
from dense3d.utils.io import atomic_write

__all__ = ["compose_config", "check_group_choices", "check_hydra_commands", "build", "check_data_module", "check_sensors", "check_launch", "fit", "init_weights", "check_new_run_folder", "check_resume_folder", "check_resume_checkpoint", "run_checkpoints"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class _NoLightningAdverts(logging.Filter):
    """Lightning 2.6 advertises its cloud services at every fit ("💡 Tip: ... install litlogger",
    and litmodels): not messages about the run, so they are dropped; all of Lightning's other
    messages pass. Added to Lightning's rank-zero loggers by :func:`build`, for the process."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_NO_ADVERTS = _NoLightningAdverts()

# The start of Lightning 2.6's warning (loops/training_epoch_loop.py) on resuming a checkpoint
# written inside an epoch with a loader that has no state_dict; see fit().
_NOT_RESUMABLE = re.escape("You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable")


def compose_config(overrides: list[str] | None = None, config_name: str = "train", config_dir: str | Path | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra overrides (outside ``@hydra.main``).
    Overrides that do not parse or compose are a ``ConfigError`` naming the override."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException

    overrides = list(overrides or [])
    check_group_choices(overrides, config_name, config_dir, composes=False)
    try:
        with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    except ValueError as e:  # not a HydraException: `group=null` for a group outside config_dir
        if "Config group override" not in str(e):
            raise
        check_group_choices(overrides, config_name, config_dir, any_null=True, composes=False)
        raise ConfigError(f"configs/{config_name}.yaml", "overrides", "overrides that compose", got=e) from None
    except (HydraException, MissingConfigException) as e:
        parser = OverridesParser.create()
        for override in overrides:  # hydra's parse error does not say which override: find it
            try:
                parser.parse_override(override)
            except HydraException as bad:
                raise ConfigError(f"configs/{config_name}.yaml", f"override {override}",
                                  "hydra override syntax (quote values with braces or spaces: 'key=\"a/{split}\"')", got=bad) from None
        raise ConfigError(f"configs/{config_name}.yaml", "overrides", "overrides that compose", got=e) from None


def check_group_choices(overrides: list[str], config_name: str = "train", config_dir: str | Path | None = None,
                        any_null: bool = False, composes: bool = True) -> None:
    """Refuse ``GROUP=null`` (e.g. ``logger=null``) for a config group (a folder of
    ``config_dir``) with a ``ConfigError`` naming the override. Hydra raises a ValueError for it
    ("Config group override must be a string or a list"), which ``@hydra.main``
    (``tools/train.py``) reports in several lines, before any code of ours runs: so this runs on
    the command line's overrides first. Arguments that are not overrides (hydra's flags and
    their values) are skipped; ``any_null=True`` refuses every null override, group or not
    (for hydra's ValueError, when the group lies outside ``config_dir``).

    Also refuses an option that is not a file of its group (``experiment=dmo``, also inside a
    sweep ``experiment=a,dmo``) in one line listing the group's files: hydra's own message is 16
    lines. Skipped when the command line adds config folders (``-cd``, ``--config-dir``,
    ``hydra.searchpath``): their options are not in ``config_dir``.

    And refuses ``hydra.run.dir=...``, which nothing reads: ``configs/train.yaml`` keeps the
    working directory and the run writes to ``paths.output_dir``, so the run went there
    silently. (``hydra.sweep.dir`` is used: ``tools/train.py -m`` trains each job into it. The
    ``hydra.run.dir`` that Lightning's DDP launcher gives its child processes is left alone.)

    ``composes=True`` (the command line of ``tools/train.py``, which hydra would compose itself):
    the overrides must also compose (:func:`_check_command_line_composes`), so that a misspelt key
    (``trainr.max_steps=1``) is one line, not hydra's six."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

    root = Path(config_dir or CONFIG_DIR)
    parser = OverridesParser.create()
    other_folders = any(o in ("-cd", "--config-dir") or o.startswith(("--config-dir=", "hydra.searchpath", "+hydra.searchpath"))
                        for o in overrides)
    # Lightning's DDP launcher re-runs the command line with the parent's hydra.run.dir and this job name
    ddp_child = any(o.startswith("hydra.job.name=train_ddp_process_") for o in overrides)
    for override in overrides:
        if override.startswith("-"):
            continue  # a flag of hydra's command line (-m, --config-name=...)
        try:
            parsed = parser.parse_override(override)
        except HydraException:
            continue  # not an override (a flag's value), or bad syntax: compose names it
        if parsed.is_delete():
            continue
        if parsed.key_or_group in ("hydra.run", "hydra.run.dir") and not ddp_child:  # hydra.run={dir: /x} as well
            raise ConfigError(f"configs/{config_name}.yaml", f"override {override}", "paths.output_dir=... for the run folder "
                              "(hydra.run.dir is not used: the run writes to paths.output_dir, the working directory stays)",
                              got=override.split("=", 1)[-1])
        group = parsed.key_or_group
        value = parsed.value()
        if value is not None:
            choices = value.list if isinstance(value, ChoiceSweep) else [value]
            if other_folders or not (root / group).is_dir() or not all(isinstance(c, str) for c in choices):
                continue
            missing = [c for c in choices if not (root / group / f"{c}.yaml").is_file()]
            if missing:
                options = sorted(str(p.relative_to(root / group).with_suffix("")) for p in (root / group).rglob("*.yaml"))
                raise ConfigError(f"configs/{config_name}.yaml", f"override {override}", f"one of configs/{group}/: "
                                  f"{', '.join(options)}", got=f"{missing[0]} (no configs/{group}/{missing[0]}.yaml)")
            continue
        if any_null or (root / group).is_dir():
            raise ConfigError(f"configs/{config_name}.yaml", f"override {override}", f"one of the files of configs/{group}/ "
                              f"(to use none: ~{group})", got="null")
    if composes and not other_folders:
        _check_command_line_composes(overrides, config_name, config_dir)


def check_hydra_commands(argv: list[str], prog: str = "tools/train.py") -> None:
    """Refuse two of hydra's commands on one command line (``-m --cfg job``, ``--cfg job --info``),
    and ``--resolve`` without ``--cfg``, in one ``ConfigError`` naming the flags: hydra (1.3) runs
    one command at a time and raises a ValueError for these ("Only one of --run, --multirun,
    --cfg, --info and --shell_completion can be specified"), which ``@hydra.main`` prints as a
    traceback. Hydra has no way to show the configs of a sweep's jobs: ``--cfg job`` with one
    job's overrides (``seed=0``, not ``seed=0,1``) shows that job's. Read with hydra's own
    argument parser; a command line it does not parse is left to it."""
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    try:  # quiet: hydra parses the command line again and prints its own messages
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:  # argparse's own error (--cfg without a value), or --version: left to hydra
        return
    commands = [name for name, on in (("-m/--multirun", args.multirun), (f"--cfg {args.cfg}", args.cfg is not None),
                                      (f"--info {args.info}", args.info is not None), ("-r/--run", args.run),
                                      ("-sc/--shell-completion", args.shell_completion)) if on]
    if len(commands) > 1:
        raise ConfigError(prog, commands[1].split()[0], "one of hydra's commands (-m, --cfg, --info, -r, -sc) at a time; a sweep job's "
                          "config: --cfg job with that job's overrides (seed=0, not seed=0,1), without -m", got=" ".join(commands))
    if args.resolve and args.cfg is None and not args.help:
        raise ConfigError(prog, "--resolve", "--cfg job|hydra|all with it (it resolves the config --cfg prints)",
                          got="--resolve without --cfg")


# hydra's flags that change what is composed, or that take a value written as an override
# (--shell-completion install=bash): the command line is then left to hydra
_COMPOSE_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-sc", "--shell-completion", "--experimental-rerun",
                  "-h", "--help", "-hh", "--hydra-help")


def _check_command_line_composes(argv: list[str], config_name: str, config_dir: str | Path | None) -> None:
    """The overrides of a hydra command line (``tools/train.py``) compose, each sweep at its first
    value (``seed=0,1`` as ``seed=0``: a sweep's keys are the same in every job); else the one-line
    ``ConfigError`` of :func:`compose_config`. Flags and their values are left out; a command line
    with a flag of ``_COMPOSE_FLAGS`` or a glob sweep is not checked (hydra reports it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    if any(a.split("=")[0] in _COMPOSE_FLAGS for a in argv if a.startswith("-")):
        return
    parser = OverridesParser.create()
    first = []
    for arg in argv:
        if arg.startswith("-"):
            continue
        try:
            parsed = parser.parse_override(arg)
        except HydraException:
            continue  # a flag's value (--cfg job), or bad syntax: compose_config names it below
        if parsed.is_sweep_override():
            if isinstance(parsed.value(), Glob):
                return
            first.append(f"{parsed.get_key_element()}={next(iter(parsed.sweep_string_iterator()))}")
        else:
            first.append(arg)
    compose_config(first, config_name, config_dir)


def _instantiate_dict(node: DictConfig | None, key: str) -> list[Any]:
    if not node:
        return []
    return [instantiate_config(v, SOURCE, f"{key}.{k}") for k, v in node.items() if v is not None and "_target_" in v]


def _under(name: str, parts) -> bool:
    """``name`` is one of the dotted sub-module paths ``parts`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in parts)


ALL_PARTS = "all"  # init_parts=[all]: every top-level module the other run and this model share


def init_weights(model, run: str | Path, parts: list[str], skip: list[str] = ()) -> int:
    """Start ``model``'s sub-modules ``parts`` from another run's weights (e.g. the captioning
    stage from a detection run): every weight under ``parts`` but those under ``skip`` must be in
    the checkpoint with the same shape, and every checkpoint weight under ``parts`` but those under
    ``skip`` must be in the model; the rest of the model keeps its initialisation (``skip``: parts
    the other run lacks, such as a module switched on now, or parts only the other run has).
    ``parts=["all"]``: every top-level module that the run and this model both have (the run's
    modules this model has none of, and this model's the run lacks, are named in the line printed).
    Returns the tensors loaded."""
    return _init_weights(model, run, parts, skip)[0]


def _init_weights(model, run: str | Path, parts: list[str], skip: list[str] = ()) -> tuple[int, list[str]]:
    """:func:`init_weights`, also returning the sub-modules it loaded (``all`` spelt out)."""
    from dense3d.api import find_run
    from dense3d.errors import CheckpointError

    if not parts:
        raise ConfigError(SOURCE, "init_parts", "the sub-modules to load from init_from, e.g. [box_detector] (or [all])")
    parts = list(parts)
    if ALL_PARTS in parts and parts != [ALL_PARTS]:
        raise ConfigError(SOURCE, "init_parts", "[all] alone, or the names of sub-modules", got=parts)
    _, ckpt = find_run(Path(run))
    state = load_checkpoint(ckpt)["state_dict"]
    own = model.state_dict()
    under = _under
    not_in_model: list[str] = []  # init_parts=[all]: the run's top-level modules this model has none of
    not_in_run: list[str] = []  # and this model's top-level modules the run has none of
    if parts == [ALL_PARTS]:
        run_modules = list(dict.fromkeys(k[len("model."):].split(".")[0] for k in state if k.startswith("model.")))
        own_modules = list(dict.fromkeys(k.split(".")[0] for k in own))
        parts = [m for m in own_modules if m in run_modules]
        not_in_model = [m for m in run_modules if m not in own_modules]
        not_in_run = [m for m in own_modules if m not in run_modules]
        if not parts:
            raise ConfigError(SOURCE, "init_parts", f"a run that shares a module with this model ({', '.join(own_modules)}) "
                              "for init_parts=[all]", got=f"{ckpt}, whose modules are {', '.join(run_modules) or 'none'}")
    wanted = {k: v for k, v in own.items() if under(k, parts)}
    missing = [p for p in parts if not any(under(k, [p]) for k in wanted)]
    if missing:
        raise ConfigError(SOURCE, "init_parts", f"sub-modules of the model, e.g. {sorted({k.split('.')[0] for k in own})}", got=missing)
    # under parts, the checkpoint's weights this model lacks (a sub-module removed or renamed since)
    extra = [k[len("model."):] for k in state if k.startswith("model.") and under(k[len("model."):], parts)
             and k[len("model."):] not in own]
    unused = [p for p in skip if not any(under(k, [p]) for k in [*wanted, *extra])]
    if unused:
        raise ConfigError(SOURCE, "init_skip", "sub-modules inside init_parts", got=unused)
    wanted = {k: v for k, v in wanted.items() if not under(k, skip)}
    emptied = [p for p in parts if not any(under(k, [p]) for k in wanted)]
    if emptied:
        raise ConfigError(SOURCE, "init_skip", f"sub-modules inside init_parts, not all of {emptied}", got=skip)
    hint = " (init_from must be a run of the same sub-modules; init_skip=[...] leaves new ones at their initialisation)"
    absent = [k for k in wanted if "model." + k not in state]
    if absent:
        raise CheckpointError(ckpt, f"state_dict.model.{absent[0]}", "present" + hint, got="missing")
    extra = [k for k in extra if not under(k, skip)]
    if extra:  # they were dropped without a word: the new model would start from part of the other run
        raise CheckpointError(ckpt, f"state_dict.model.{extra[0]}", "a weight of this run's model (init_skip=[...] leaves "
                              "out sub-modules this model no longer has)", got=f"{len(extra)} weights under "
                              f"{', '.join(parts)} this model lacks")
    check_weight_shapes(wanted, state, ckpt, prefix="model.", hint=hint)
    loaded = {k: state["model." + k] for k in wanted}
    model.load_state_dict(loaded, strict=False)
    # the run's weights of this model's modules that init_parts left out (e.g. a fine-tuning stage
    # started from a whole run with one part forgotten): named, since they silently keep their initialisation
    names = [k[len("model."):] for k in state if k.startswith("model.")]
    left = sorted({k.split(".")[0] for k in names if k in own and k not in loaded and not under(k, skip)})
    print(f"init_from {ckpt}: {len(loaded)} tensors of {', '.join(parts)}" + (f" but {', '.join(skip)}" if skip else "")
          + (f"; not loaded, at their initialisation (not in init_parts): {', '.join(left)}" if left else "")
          + (f"; at their initialisation (not in the run): {', '.join(not_in_run)}" if not_in_run else "")
          + (f"; the run's modules this model has none of, not loaded: {', '.join(not_in_model)}" if not_in_model else ""))
    return len(loaded), parts


def build(cfg: DictConfig, *, resuming: bool = False,
          **trainer_overrides) -> tuple[DenseCaptionModule, pl.LightningDataModule, pl.Trainer]:
    """Instantiate the data module, the model (inside ``DenseCaptionModule``) and the trainer.
    ``resuming``: the weights come from the run's own checkpoint, so ``init_from`` is not read
    (that run may be gone by now), and the config's learning-rate schedule replaces the
    checkpoint's (:class:`dense3d.engine.schedule.ScheduleFromConfig`)."""
    for key in ("data", "model", "trainer"):
        if cfg.get(key) is None:
            raise ConfigError(SOURCE, key, f"a '{key}' config (e.g. experiment=demo)")
    # init_parts=all, as init_parts=[all]
    init_parts = OmegaConf.create([ALL_PARTS]) if cfg.get("init_parts") == ALL_PARTS else cfg.get("init_parts")
    for key, value in (("init_parts", init_parts), ("init_skip", cfg.get("init_skip"))):  # (frozen / trainable: the module checks them)
        if value is not None and not (OmegaConf.is_list(value) and all(isinstance(v, str) for v in value)):
            # init_parts=box_detector would be split into letters
            raise ConfigError(SOURCE, key, f"a list of sub-module names, e.g. {key}=[box_detector]", got=value)
        if value and not cfg.get("init_from"):  # without init_from they would be ignored
            raise ConfigError(SOURCE, key, "init_from=outputs/<run> to load them from", got=list(value))
    try:
        seed = int(cfg.seed)
    except (TypeError, ValueError):
        raise ConfigError(SOURCE, "seed", "an integer", got=cfg.seed) from None
    if not 0 <= seed < 2**32:  # numpy's range: seed_everything raised ValueError from deep inside Lightning
        raise ConfigError(SOURCE, "seed", "an integer from 0 to 2**32 - 1", got=cfg.seed)
    # Lightning takes 0 steps as "done" (exit 0, nothing trained) and divides by 0 accumulations
    for key, lowest in (("max_steps", -1), ("accumulate_grad_batches", 1)):
        value = cfg.trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < lowest):
            raise ConfigError(SOURCE, f"trainer.{key}", "an integer >= 1" + (" (or -1: until max_epochs)" if lowest < 0 else ""),
                              got=value)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NO_ADVERTS)  # once: addFilter skips a filter already there
    pl.seed_everything(seed, workers=True, verbose=False)
    check_data_module(cfg)
    try:  # the data sets read their index files here (len): a missing one is the first error of a new setup
        datamodule = instantiate_config(cfg.data, SOURCE, "data")
        train_set = getattr(datamodule, "train_set", None)
        if train_set is not None and len(train_set) == 0:  # Lightning would only warn and "train" nothing
            raise ConfigError(SOURCE, "data.train", "a training split with samples", got="0 samples")
        val_set = getattr(datamodule, "val_set", None)
        if val_set is not None and len(val_set) == 0:  # Lightning would skip validation without a word
            raise ConfigError(SOURCE, "data.val", "a validation split with samples (or data.val=null: no validation)", got="0 samples")
    except Dense3DError as e:  # e.g. the demo's data not generated yet: say how to make it
        raise _with_synthetic_data_hint(e, cfg) from None
    model = instantiate_config(cfg.model, SOURCE, "model")
    check_sensors(model, datamodule, cfg)  # else the first training batch fails, after the trainer's setup
    check_point_columns(model, datamodule)  # likewise
    loaded_parts: list[str] = []
    if cfg.get("init_from") and not resuming:
        _, loaded_parts = _init_weights(model, cfg.init_from, list(init_parts or []), list(cfg.get("init_skip") or []))
    scheduler = scheduler_from_config(cfg.get("scheduler"))  # T_max: null is the run's length
    if isinstance(scheduler, RunLengthSchedule) and cfg.trainer.get("max_steps") == -1 and cfg.trainer.get("max_epochs") == -1:
        raise ConfigError(SOURCE, "scheduler.T_max", "an integer >= 1 when the run has no end (trainer.max_steps=-1, "
                          "trainer.max_epochs=-1)", got="null")
    module = DenseCaptionModule(
        model,
        optimizer=instantiate_config(cfg.optim, SOURCE, "optim"),
        scheduler=scheduler,
        frozen=list(cfg.get("frozen", []) or []),
        trainable=list(cfg.get("trainable", []) or []),
    )
    callbacks = [RNGStateCallback(), *_instantiate_dict(cfg.get("callbacks"), "callbacks")]
    if resuming:  # after Lightning restores the checkpoint's optimizer and scheduler, the config's schedule wins
        callbacks.append(ScheduleFromConfig())
    loggers = _instantiate_dict(cfg.get("logger"), "logger")
    if not loggers:  # LearningRateMonitor refuses a trainer without a logger (a 54-line MisconfigurationException)
        monitors = [cb for cb in callbacks if isinstance(cb, pl.callbacks.LearningRateMonitor)]
        if monitors:
            import sys

            callbacks = [cb for cb in callbacks if cb not in monitors]
            print("dense3d train: note: no logger, so callbacks.lr_monitor is dropped (the learning rate is not logged)",
                  file=sys.stderr)
    trainer_kwargs = dict(callbacks=callbacks, logger=loggers or False, plugins=[SafeCheckpointIO()])
    trainer_kwargs.update(trainer_overrides)
    trainer = instantiate_config(cfg.trainer, SOURCE, "trainer", **trainer_kwargs)
    check_launch(trainer, cfg)
    if isinstance(scheduler, RunLengthSchedule):
        scheduler.attach(trainer)  # reads the run's length when Lightning builds the optimizer
    if not resuming:
        _warn_frozen_at_random(cfg, loaded_parts)
    return module, datamodule, trainer


def data_module_options(config_dir: str | Path | None = None) -> list[str]:
    """The options of ``configs/data/`` that are data modules (train and val splits, batches:
    what ``trainer.fit`` takes); the others are single data sets, mounted inside them."""
    root = Path(config_dir or CONFIG_DIR) / "data"
    return [p.stem for p in sorted(root.glob("*.yaml"))
            if str(OmegaConf.load(p).get("_target_", "")).endswith("DenseCaptionDataModule")]


def check_data_module(cfg: DictConfig) -> None:
    """``cfg.data`` builds a LightningDataModule; else a one-line ConfigError naming the options that
    do. ``data=synthetic_outdoor`` (or ``tod3cap``, ``scanrefer``, ...: one data set) was handed to
    ``trainer.fit`` as a loader of single samples and failed inside the model's first layer."""
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, "data._target_", default=None)
    try:
        cls = get_class(str(target))
    except Exception:  # no or a wrong _target_: instantiate_config says so
        return
    if not issubclass(cls, pl.LightningDataModule):
        raise ConfigError(SOURCE, "data", f"a data module (data={' / '.join(data_module_options())}, or a config of "
                          "DenseCaptionDataModule with its data sets under data.train / data.val)",
                          got=f"a single data set ({cls.__name__})")


def _detector_sensors(model) -> list[tuple[str, list[str]]]:
    """(detector, the sensors it reads) for the model's own box and event detectors: each needs at
    least one of its sensors in every batch. (Other detectors, e.g. the mmdet3d bridge: not known.)"""
    from dense3d.models.proposals.boxes.detector import BoxDetector
    from dense3d.models.proposals.events.detector import EventDetector

    found = []
    box, events = getattr(model, "box_detector", None), getattr(model, "event_detector", None)
    if isinstance(box, BoxDetector):
        found.append(("box detector", [s for s, enc in (("lidar", box.lidar_encoder), ("camera", box.camera_encoder)) if enc is not None]))
    if isinstance(events, EventDetector):
        found.append(("event detector", [s for s, enc in (("audio", events.audio_encoder), ("video", events.video_encoder)) if enc is not None]))
    return found


def check_sensors(model, datamodule, cfg: DictConfig, config_dir: str | Path | None = None) -> None:
    """Every detector of ``model`` reads at least one sensor that the training and validation data
    sets read in this run; else a one-line ConfigError before anything trains, naming ``sensors``
    (the data set has such a sensor, the run's ``sensors.names`` left it out: the sensors options
    that name it) or ``data`` (the data set has none, e.g. an audio model on the LiDAR-only indoor
    rooms), and what the data set has. A data set reads ``sensors.names`` ∩ its own sensors (its
    class's ``SENSORS``) and drops the rest silently, so ``experiment=perception_indoor
    sensors=audio_video`` built everything, printed the model summary and failed at the first
    training batch ("Batch: field 'points/images': expected the sensors of this detector").
    Asking for more sensors than a data set has (``sensors=lidar_camera`` on the indoor rooms, a
    LiDAR model) trains as before."""
    from dense3d.data.datasets import JointScenesDataset

    detectors = _detector_sensors(model)
    for split in ("train", "val"):
        dataset = getattr(datamodule, f"{split}_set", None)
        if dataset is None:
            continue
        halves = [dataset.scenes, dataset.recordings] if isinstance(dataset, JointScenesDataset) else [dataset]
        if not all(hasattr(h, "sensors") and hasattr(h, "SENSORS") for h in halves):
            continue  # a data set of another kind: what it reads is not known
        reads = {s for h in halves for s in h.sensors}
        has = [s for h in halves for s in h.SENSORS]
        name = " + ".join(type(h).__name__ for h in halves)
        for detector, wants in detectors:
            if not wants or reads & set(wants):
                continue
            usable = [s for s in wants if s in has]
            if usable:  # the data set has them: the run's sensors left them out
                root = Path(config_dir or CONFIG_DIR) / "sensors"
                options = [p.stem for p in sorted(root.glob("*.yaml")) if set(OmegaConf.load(p).get("names") or []) & set(usable)]
                raise ConfigError(SOURCE, "sensors", f"sensors naming {' or '.join(usable)} (sensors={' / '.join(options)}): the "
                                  f"model's {detector} reads {', '.join(wants)}; data.{split} ({name}) has {', '.join(has)}",
                                  got=f"sensors.names {list(OmegaConf.select(cfg, 'sensors.names', default=None) or [])}")
            raise ConfigError(SOURCE, "data", f"a data set with {' or '.join(wants)} for the model's {detector} (or a model "
                              f"for {', '.join(has)})", got=f"data.{split} ({name}), which has {', '.join(has)}")


POINT_COLUMNS_KEY = "box_detector.lidar_encoder.voxel_encoder.in_channels"  # in a model config: the point columns it reads


def check_point_columns(model, datamodule) -> None:
    """The points of each split's first sample have the columns the model's LiDAR encoder reads
    (``model.box_detector.lidar_encoder.voxel_encoder.in_channels``); else a one-line ConfigError
    before anything trains, naming the data set, its columns and the model configs made for them. A model for
    other data (``experiment=perception_outdoor data=indoor_rooms``: 5 columns x, y, z, intensity,
    ring against the rooms' 6, x, y, z, r, g, b) built everything, printed the model summary and
    failed at the first training batch ("Batch: field 'points[0]'"). One sample per split is read
    (the samples of one data set share their columns), its augmentation seeded on its own
    (:class:`SeededSamples`: torch's, numpy's and ``random``'s states are left as they were, so a
    run draws what it drew without the check); data sets without points are not checked."""
    encoder = getattr(getattr(getattr(model, "box_detector", None), "lidar_encoder", None), "voxel_encoder", None)
    wants = getattr(encoder, "in_channels", None)
    if not isinstance(wants, int):  # no LiDAR encoder of dense3d's (a camera-only model, the mmdet3d bridge)
        return
    for split in ("train", "val"):
        dataset = getattr(datamodule, f"{split}_set", None)
        if dataset is None or len(dataset) == 0:
            continue
        # under the sample's own random state (its augmentation): the run's generators are left as they were
        cloud = getattr(SeededSamples(dataset)[0], "points", None)
        if cloud is None or cloud.points.shape[1] == wants:
            continue
        has = cloud.points.shape[1]
        raise ConfigError(SOURCE, "model", f"a model for the {has} point columns of data.{split} ({type(dataset).__name__}: "
                          f"{', '.join(cloud.feature_names)}): {_models_reading(has)}",
                          got=f"model.{POINT_COLUMNS_KEY}={wants}")


def _models_reading(columns: int) -> str:
    """The model configs (``configs/model/*.yaml``) whose LiDAR encoder reads ``columns`` point
    columns, as overrides (``model=indoor_rooms``); composed one by one, which only an error pays for.
    A config that does not compose on its own (a user's, needing other overrides) is left out."""
    fits = []
    for path in sorted((Path(CONFIG_DIR) / "model").glob("*.yaml")):
        try:
            model = compose_config([f"model={path.stem}"]).model
        except ConfigError:
            continue
        if OmegaConf.select(model, POINT_COLUMNS_KEY, throw_on_resolution_failure=False) == columns:
            fits.append(f"model={path.stem}")
    return " / ".join(fits) if fits else f"a model with {POINT_COLUMNS_KEY}={columns}"


def check_launch(trainer: pl.Trainer, cfg: DictConfig) -> None:
    """The processes started for this run and the trainer's settings agree; else a one-line
    ConfigError before anything trains.

    - ``torchrun`` (or any launcher that sets ``WORLD_SIZE``) started N processes, but the trainer
      runs one (``trainer=cpu`` / ``trainer=gpu``: ``devices: 1``, no DDP): each process would
      train the whole run on its own, N copies writing one run folder's checkpoints at once.
    - ``trainer.sync_batchnorm`` on the CPU: torch's DDP refuses SyncBatchNorm without GPUs
      (``trainer=ddp`` sets it), a traceback from inside Lightning's setup.
    """
    import os

    launched = os.environ.get("WORLD_SIZE", "1")
    launched = int(launched) if launched.isdigit() else 1
    if launched > 1 and trainer.world_size != launched:
        raise ConfigError(SOURCE, "trainer", f"a trainer of {launched} processes in all, as the launcher started "
                          f"(WORLD_SIZE={launched}): trainer=ddp trainer.devices=<processes per node> "
                          "trainer.num_nodes=<nodes>", got=f"{trainer.world_size} process(es) "
                          f"(trainer.devices={cfg.trainer.get('devices')}, trainer.strategy={cfg.trainer.get('strategy', 'auto')})")
    if cfg.trainer.get("sync_batchnorm") and trainer.world_size > 1 \
            and isinstance(trainer.accelerator, pl.accelerators.CPUAccelerator):
        raise ConfigError(SOURCE, "trainer.sync_batchnorm", "false on the CPU (torch's DDP syncs BatchNorm on GPUs only): "
                          "trainer.sync_batchnorm=false", got=True)


DEFAULT_SYNTHETIC_DIR = Path("data/synthetic/default")  # configs/paths/default.yaml's, where `dense3d demo` writes


def _with_synthetic_data_hint(error: Dense3DError, cfg: DictConfig) -> Dense3DError:
    """A file missing under ``paths.synthetic_dir`` (``dense3d train experiment=demo`` before
    any data exists): the same one-line error, ending with how to generate that set. Other
    errors, and missing files elsewhere (real data sets, which dense3d cannot make), as they are."""
    from dense3d.data.synthetic import DEFAULT_SCENES, KINDS

    if error.got != "missing":
        return error
    try:
        root = OmegaConf.select(cfg, "paths.synthetic_dir", default=None)
    except Exception:  # an interpolation that does not resolve: no hint rather than a second error
        return error
    if not root:
        return error
    root = Path(str(root))
    try:
        parts = Path(error.source).resolve().relative_to(root.resolve()).parts
    except ValueError:  # not under the synthetic root
        return error
    kind = parts[0] if parts and parts[0] in KINDS else "|".join(KINDS)
    demo = "dense3d demo" if root.resolve() == DEFAULT_SYNTHETIC_DIR.resolve() else f"dense3d demo --data {root}"
    convert = f"dense3d convert synth --kind {kind} --out {root / kind}"
    hinted = type(error)(error.source, error.field, error.expected, got=error.got)
    # appended to the message, not put in ``got`` (shortened to 200 characters: two long paths would be cut);
    # the demo makes the kinds of DEFAULT_SCENES only (not the joint scenes)
    how = f"`{demo}` or `{convert}`" if kind in DEFAULT_SCENES or "|" in kind else f"`{convert}`"
    hinted.args = (f"{hinted}; make the synthetic data first: {how}",)
    return hinted


def saved_config_yaml(cfg: DictConfig) -> str:
    """The run's ``config.yaml``: ``cfg`` resolved, with relative folders and files made absolute
    against the working directory: the ``paths`` group's, then the ``data`` group's files and
    folders (the datasets' ``*_file``, ``*_dir`` and ``*_root`` arguments, read from the working
    directory), and ``init_from`` / ``ckpt_path`` (the run it started from or resumed). Training
    reads them from there; ``dense3d eval`` and ``dense3d.api.load`` read the saved file later,
    maybe from another folder, where ``paths.synthetic_dir=data/synthetic/big`` or
    ``data.train.info_file=data_extra/...`` would name no data."""
    saved = copy.deepcopy(cfg)  # the run itself keeps what it was given
    for key in list(saved.get("paths") or {}):  # root_dir first: data_dir etc. interpolate it
        if _relative_path(saved.paths[key]):
            saved.paths[key] = os.path.abspath(saved.paths[key])
    if isinstance(saved.get("data"), DictConfig):
        _absolute_data_paths(saved.data)
    for key in ("init_from", "ckpt_path"):  # the run it started from / resumed: which one, read from anywhere
        if _relative_path(saved.get(key)) and saved[key] != "last":
            saved[key] = os.path.abspath(saved[key])
    return OmegaConf.to_yaml(saved, resolve=True)


def _relative_path(value) -> bool:
    """``value`` is a non-empty string that is not an absolute path."""
    return isinstance(value, str) and bool(value) and not os.path.isabs(value)


_DATA_PATH_KEY = re.compile(r".+_(file|dir|root)$")  # info_file, caption_file, scans_dir, media_dir, data_root, ...


def _absolute_data_paths(node: DictConfig) -> None:
    """Make the relative ``*_file`` / ``*_dir`` / ``*_root`` strings under ``node`` absolute, in
    place. Interpolations are left as they are: ``${paths.data_dir}/...`` follows the absolute
    ``paths`` group when the copy is resolved."""
    for key in list(node.keys()):
        if OmegaConf.is_interpolation(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            _absolute_data_paths(value)
        elif _DATA_PATH_KEY.match(str(key)) and _relative_path(value):
            node[key] = os.path.abspath(value)


def fit(cfg: DictConfig, ckpt_path: str | None = None, **trainer_overrides) -> tuple[DenseCaptionModule, pl.LightningDataModule, pl.Trainer]:
    """Build and train; ``ckpt_path`` resumes a run exactly (weights, optimizer, loops, RNG).

    The run folder (``paths.output_dir``) must not hold another run's checkpoints unless this
    resumes one (Lightning would add ``last-v1.ckpt`` beside the old ``last.ckpt``, and
    ``dense3d eval`` would go on scoring the old weights). A run that fails before its first
    optimizer step leaves the folder as it found it: nothing where there was nothing, the old
    ``config.yaml`` where it resumed."""
    out = Path(cfg.paths.output_dir)
    ckpt_path = ckpt_path or cfg.get("ckpt_path")
    if ckpt_path == "last":  # Lightning's shorthand: this run folder's checkpoint of the most steps (api.find_run)
        from dense3d.api import find_run

        ckpt_path = str(find_run(out)[1])
    if ckpt_path is None:
        check_new_run_folder(out)
    else:
        check_resume_folder(out, ckpt_path)
    flushing = _flushes_denormals()  # put back when fit() returns or raises: a library caller's arithmetic is its own
    if cfg.get("flush_denormal", False):
        torch.set_flush_denormal(True)  # this run's CPU arithmetic: denormals as zero (configs/train.yaml)
    try:
        return _fit(cfg, out, ckpt_path, **trainer_overrides)
    finally:
        torch.set_flush_denormal(flushing)


def _flushes_denormals() -> bool:
    """Whether this thread's CPU arithmetic flushes denormal floats to zero (torch sets the mode,
    ``torch.set_flush_denormal``, but has no getter: a denormal float32 times one tells)."""
    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0


def _fit(cfg: DictConfig, out: Path, ckpt_path: str | None, **trainer_overrides):
    """:func:`fit` after its folder checks: build, write config.yaml, train."""
    module, datamodule, trainer = build(cfg, resuming=ckpt_path is not None, **trainer_overrides)
    resumed_step = 0
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path)  # verified (sizes, hashes); a missing file is its own one-line error
        resumed_step = check_resume_checkpoint(state, ckpt_path, module)
        if isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO):
            trainer.strategy.checkpoint_io.hand_over(ckpt_path, state)  # Lightning's resume reads it from there
        del state  # Lightning drops its reference after restoring; none kept here for the whole run
    undo = _RunOutputs(out, trainer)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.yaml") as f:
        f.write(saved_config_yaml(cfg))
    try:
        with warnings.catch_warnings():
            if isinstance(datamodule, DenseCaptionDataModule):
                # Lightning warns on every resume from a checkpoint written inside an epoch that the
                # loader "is not resumable" (it has no state_dict): dense3d's is, without one, as
                # DenseCaptionDataModule.train_dataloader gives its SeededSampler the epoch and the
                # samples already trained to skip (SeededSampler.skip). That warning only, only then.
                warnings.filterwarnings("ignore", message=_NOT_RESUMABLE, category=PossibleUserWarning)
            trainer.fit(module, datamodule, ckpt_path=ckpt_path)
    except BaseException as e:
        if trainer.global_step <= resumed_step:  # nothing trained: undo what this run wrote
            undo.undo()
        if isinstance(e, RuntimeError) and str(e).startswith(_DDP_UNUSED_PARAMETERS):
            # plain DDP (trainer.devices=2 without trainer=ddp: Lightning's "ddp") on a model with trainable
            # parts that take no gradient in a step: torch's many-line traceback at the second step, in every rank
            raise ConfigError(SOURCE, "trainer.strategy", "ddp_find_unused_parameters_true (trainer=ddp): this model has "
                              "trainable parts without a gradient in some steps (configs/trainer/ddp.yaml)",
                              got=f"{cfg.trainer.get('strategy', 'auto')} (DDP without find_unused_parameters)") from None
        raise
    return module, datamodule, trainer


# The start of torch's DistributedDataParallel error (torch/nn/parallel/distributed.py) when a
# parameter took no gradient in the previous step and find_unused_parameters is off.
_DDP_UNUSED_PARAMETERS = "It looks like your LightningModule has parameters that were not used in producing the loss"


def _warn_frozen_at_random(cfg: DictConfig, loaded: list[str]) -> None:
    """One line on stderr when a frozen part is not loaded from another run (``init_from``; ``loaded``:
    the sub-modules loaded, ``init_parts=[all]`` spelt out): it stays at its random initialisation,
    e.g. a captioning stage on an untrained detector."""
    import sys

    skipped = list(cfg.get("init_skip") or [])
    random = [f for f in cfg.get("frozen") or [] if not _under(f, loaded) or _under(f, skipped)]
    if random:
        print(f"dense3d train: warning: frozen {random} not loaded from another run (init_from=outputs/<run> "
              f"init_parts={random}): they keep their random initialisation", file=sys.stderr)


def run_checkpoints(out: Path) -> list[Path]:
    """The checkpoints a run folder holds (``out/checkpoints/*.ckpt``), sorted; [] for none."""
    return sorted((out / "checkpoints").glob("*.ckpt")) if (out / "checkpoints").is_dir() else []


def check_new_run_folder(out: Path) -> None:
    """A one-line ConfigError when ``out`` already holds a run's checkpoints (use --resume, another
    task_name / paths.output_dir, or delete the folder)."""
    ckpts = run_checkpoints(out)
    if ckpts:
        raise ConfigError(SOURCE, "paths.output_dir", "a folder without another run's checkpoints (resume it with "
                          "--resume, or choose another task_name / paths.output_dir, or delete it)", got=str(ckpts[0]))


def check_resume_folder(out: Path, ckpt_path: str | Path) -> None:
    """Resuming ``ckpt_path`` into the run folder ``out``: the checkpoint is one of ``out``'s own
    (``out/checkpoints/``), or ``out`` holds no run's checkpoints (a run continued in a new folder);
    else a one-line ConfigError (the two runs' checkpoints would mix in one folder, ``last-v1.ckpt``
    beside the other run's ``last.ckpt``)."""
    own = (out / "checkpoints").resolve()
    if Path(ckpt_path).absolute().parent.resolve() == own:
        return
    ckpts = run_checkpoints(out)
    if ckpts:
        raise ConfigError(SOURCE, "paths.output_dir", f"the run folder of the checkpoint resumed ({ckpt_path}: its folder's "
                          "parent), or a folder without another run's checkpoints", got=str(ckpts[0]))


def check_resume_checkpoint(state: dict, ckpt_path: str | Path, module: DenseCaptionModule) -> int:
    """The checkpoint to resume (``state``, read from ``ckpt_path``) must hold this model's
    weights (same names and shapes) and an optimizer over the same trainable tensors (the same
    frozen / trainable parts); else a one-line CheckpointError before training (Lightning raised
    torch's many-line errors). Returns the checkpoint's training step."""
    from dense3d.errors import CheckpointError

    weights, own = state.get("state_dict", {}), module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        raise CheckpointError(ckpt_path, "state_dict", "the weights of this run's model (the same model config)",
                              got=f"{len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    check_weight_shapes(own, weights, ckpt_path, hint=" (the same model config)")
    trainable = sum(1 for p in module.model.parameters() if p.requires_grad)
    for i, opt in enumerate(state.get("optimizer_states") or []):
        saved = sum(len(g.get("params", [])) for g in opt.get("param_groups", []))
        if saved != trainable:
            raise CheckpointError(ckpt_path, f"optimizer_states[{i}]", f"an optimizer over this run's {trainable} trainable "
                                  "tensors (resume with the run's frozen / trainable parts)", got=f"{saved} tensors")
    return int(state.get("global_step") or 0)


class _RunOutputs:
    """What a run writes into its folder, noted before it starts: ``config.yaml``, new entries in
    its checkpoint folders and its loggers' new version folders. :meth:`undo` removes those (and
    folders it made, once empty) and puts the earlier ``config.yaml`` back; nothing else under
    the folder is touched, whoever wrote it."""

    def __init__(self, out: Path, trainer: pl.Trainer):
        self.out = out
        self.made_out = not out.exists()
        self.config = out / "config.yaml"
        self.old_config = self.config.read_bytes() if self.config.is_file() else None
        ckpt_dirs = {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
        self.ckpt_dirs = {d: (set(d.iterdir()) if d.is_dir() else None) for d in ckpt_dirs}  # None: made by this run
        self.log_dirs = []  # (version folder, its parent) that did not exist yet
        for logger in trainer.loggers:
            log_dir = getattr(logger, "log_dir", None)
            if log_dir and not Path(log_dir).exists():
                self.log_dirs.append((Path(log_dir), Path(log_dir).parent.exists()))

    def undo(self) -> None:
        import shutil

        if self.old_config is not None:
            self.config.write_bytes(self.old_config)
        else:
            self.config.unlink(missing_ok=True)
        for d, before in self.ckpt_dirs.items():
            if not d.is_dir():
                continue
            for path in set(d.iterdir()) - (before or set()):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            if before is None:
                _remove_if_empty(d)
        for log_dir, parent_existed in self.log_dirs:
            shutil.rmtree(log_dir, ignore_errors=True)
            if not parent_existed:
                _remove_if_empty(log_dir.parent)
        if self.made_out:
            _remove_if_empty(self.out)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (someone else's files), or gone
        pass
