"""``brainseg train``: a scan directory in, a run folder out.

``--init RUN`` fine-tunes: RUN's plan and weights, a short schedule, the new data's validation
Dice before and after (:mod:`brainseg.train.finetune`).

Under torchrun an error on one rank ends every rank; the error line is printed once (by
the rank that had it) and every rank exits 1.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from brainseg.cli.common import add_config_args, add_device_arg
from brainseg.cli.plan import fingerprint_bar, planned_device
from brainseg.errors import BrainsegError

if TYPE_CHECKING:
    from brainseg.config import Config

log = logging.getLogger(__name__)


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model on a scan directory")
    p.add_argument("--data", type=Path, required=True, help="data set folder (MSD, BraTS or images/labels layout)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, curves)")
    add_config_args(p)
    add_device_arg(p)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop cleanly after this much training time: the run's total (--resume continues it, a larger value "
        "extends it)",
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's last checkpoint")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="RUN",
        help="fine-tune: start from RUN's weights (a run folder or checkpoint file) with RUN's plan (spacing, "
        "normalisation, patch, network; --set still overrides), a tenth of its learning rate and a quarter of its "
        "epochs; another label set starts the output layers anew",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="cross-validation: train RUN/fold_0 .. fold_{K-1} on the splits in RUN/splits.json (made once), "
        "predict each fold's held-out cases into RUN/cv_predictions and summarise in RUN/cv_summary.csv/.json; "
        "--max-minutes is each fold's budget",
    )
    p.add_argument(
        "--fold",
        type=int,
        default=None,
        metavar="k",
        help="train only fold k of the cross-validation (folds can run on different machines; the splits and "
        "the plan in RUN are made by the first and reused)",
    )
    p.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def planned_config(args: argparse.Namespace, overrides: list[str], reuse: bool = False) -> Config:
    """No --config: plan for the data set (fingerprint cached in the run folder) into RUN/plan.yaml;
    with ``reuse`` (a cross-validation's folds) an existing RUN/plan.yaml is read back instead.
    Under torchrun every rank plans alike without timing a step (rank 0 writes the files); nor is
    a step timed when ``--set`` fixes the epochs and the patch (all the timing would decide)."""
    from brainseg.config import apply_overrides, config_from_dict, load_config
    from brainseg.plan import FINGERPRINT_FILE, PLAN_FILE, plan_dataset
    from brainseg.runtime import torchrun_env

    env = torchrun_env()
    fixed = {o.split("=", 1)[0].strip() for o in overrides}
    if reuse and (args.out / PLAN_FILE).is_file():
        planned = load_config(args.out / PLAN_FILE).to_dict()  # one error line naming the file if it is bad
        if env.is_main:
            print(f"using the plan in {args.out / PLAN_FILE} (made once for all folds)")
    else:
        timed = not {"train.epochs", "train.patch_size"} <= fixed  # what the step time decides, unless --set fixes it
        plan, _ = plan_dataset(
            args.data,
            args.out / PLAN_FILE,
            fingerprint_cache=args.out / FINGERPRINT_FILE if env.is_main else None,
            device=planned_device(args.device),
            minutes=args.max_minutes,
            measure=env.world_size == 1 and timed,
            progress=fingerprint_bar(not args.no_progress and env.is_main),
            write=env.is_main,
        )
        if env.is_main:
            print(
                f"{plan.summary()}\nwrote {args.out / PLAN_FILE} "
                "(no --config given; edit it and pass --config to change it)"
            )
        planned = plan.config.to_dict()
    if fixed & {"model.levels", "train.patch_size"} and not fixed & {"model.strides", "model.kernels"}:
        # the planned per-stage lists fit the planned levels and patch: overridden, they go
        planned["model"]["strides"] = planned["model"]["kernels"] = None
    try:
        return config_from_dict(apply_overrides(planned, overrides))
    except BrainsegError as exc:
        raise BrainsegError(f"{args.out / PLAN_FILE}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    # the library (torch, MONAI) is imported when a command runs, so `brainseg evaluate` does not pay for it
    from brainseg.config import load_config
    from brainseg.runtime import check_device_spec, torchrun_env
    from brainseg.train.distributed import PeerFailure
    from brainseg.train.finetune import finetune_config, load_init
    from brainseg.train.state import check_run_dir
    from brainseg.train.trainer import train

    device = check_device_spec(args.device)
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.folds is not None or args.fold is not None:
        if args.init is not None:
            raise BrainsegError("--init: fine-tuning trains one run; it does not combine with --folds/--fold")
        return run_folds(args, device, overrides)
    config_path = args.config
    if args.resume and config_path is None and (args.out / "config.yaml").is_file():
        config_path = args.out / "config.yaml"
    init = load_init(args.init) if args.init is not None else None
    if init is not None and args.config is not None:
        raise BrainsegError(f"{args.config}: --init takes the config of {init.checkpoint}; change fields with --set")
    if config_path is None:
        check_run_dir(args.out, args.resume)  # before the plan lands in a folder that holds a run
        config = planned_config(args, overrides) if init is None else finetune_config(init, args.data, overrides)
    else:
        config = load_config(config_path, overrides)
    try:
        summary = train(
            args.data,
            args.out,
            config,
            device=device,
            max_minutes=args.max_minutes,
            resume=args.resume,
            progress=not args.no_progress,
            init=init,
        )
    except PeerFailure as exc:
        if not exc.quiet:
            raise
        log.debug(str(exc))  # another rank prints the error line; this one only exits non-zero
        return 1
    if torchrun_env().is_main:
        print(trained_line(summary))
        if init is not None:
            print(finetune_report(summary))
    return 0


#: How ``trained_line`` names each effective precision.
PRECISION_NAMES = {"none": "float32", "bf16": "bf16", "fp16": "fp16"}


def trained_line(summary: dict) -> str:
    dice = summary["val_dice_mean"]
    return (
        f"trained {summary['epochs']} epochs ({summary['steps']} steps, {summary['minutes']:.1f} min"
        + f" in {PRECISION_NAMES.get(summary.get('precision', 'none'), 'float32')})"
        + (", stopped at the time budget" if summary["stopped_by_time"] else "")
        + (f"; validation Dice {dice:.3f}" if dice is not None else "")
        + f"; run folder: {summary['run_dir']}"
    )


def run_folds(args: argparse.Namespace, device: str, overrides: list[str]) -> int:
    """``--folds K`` / ``--fold k``: the cross-validation's folds with one config (``--config``, or the
    plan made once into RUN/plan.yaml), then the CV table of the folds predicted so far."""
    from brainseg.config import load_config
    from brainseg.io.naming import CV_SUMMARY_FILES
    from brainseg.model.checkpoint import CHECKPOINT_LAST
    from brainseg.runtime import torchrun_env
    from brainseg.train.crossval import format_cv_table, train_folds
    from brainseg.train.distributed import PeerFailure

    if args.folds is not None and args.folds < 2:
        raise BrainsegError(f"--folds {args.folds}: a cross-validation needs 2 folds or more")
    if (args.out / CHECKPOINT_LAST).is_file():  # before a plan lands in a single run's folder
        raise BrainsegError(f"{args.out}: holds a single training run, not a cross-validation; choose a new --out")
    if args.config is None:
        config = planned_config(args, overrides, reuse=True)
    else:
        config = load_config(args.config, overrides)
    main = torchrun_env().is_main

    def report(fold: int, trained: dict | None) -> None:
        if main:
            print(f"fold {fold}: " + (trained_line(trained) if trained else "trained already, not trained again"))

    try:
        summary = train_folds(
            args.data,
            args.out,
            config,
            folds=args.folds,
            only=args.fold,
            on_fold=report,
            device=device,
            max_minutes=args.max_minutes,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except PeerFailure as exc:
        if not exc.quiet:
            raise
        log.debug(str(exc))  # another rank prints the error line; this one only exits non-zero
        return 1
    if main and summary is not None:
        print(format_cv_table(summary))
        print("wrote " + ", ".join(str(args.out / name) for name in CV_SUMMARY_FILES))
    return 0


def finetune_report(summary: dict) -> str:
    """The new data's validation Dice of the loaded model (before any step) and the fine-tuned one."""
    before, after = summary["val_dice_before"], summary["val_dice_after"]

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    per_label = ", ".join(f"{k} {fmt(before.get(k))} -> {fmt(v)}" for k, v in after.items())
    return (
        f"fine-tuned from {summary['initialised_from']['path']}: validation Dice on the new data "
        f"{fmt(summary['val_dice_before_mean'])} before any step -> {fmt(summary['val_dice_after_mean'])} "
        f"after ({per_label})"
    )
