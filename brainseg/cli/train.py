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
    p.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def planned_config(args: argparse.Namespace, overrides: list[str]) -> Config:
    """No --config: plan for the data set (fingerprint cached in the run folder) into RUN/plan.yaml.
    Under torchrun every rank plans alike without timing a step (rank 0 writes the files); nor is
    a step timed when ``--set`` fixes the epochs and the patch (all the timing would decide)."""
    from brainseg.config import apply_overrides, config_from_dict
    from brainseg.plan import FINGERPRINT_FILE, PLAN_FILE, plan_dataset
    from brainseg.runtime import torchrun_env

    env = torchrun_env()
    fixed = {o.split("=", 1)[0].strip() for o in overrides}
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
            f"{plan.summary()}\nwrote {args.out / PLAN_FILE} (no --config given; edit it and pass --config to change it)"
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
        dice = summary["val_dice_mean"]
        print(
            f"trained {summary['epochs']} epochs ({summary['steps']} steps, {summary['minutes']:.1f} min)"
            + (", stopped at the time budget" if summary["stopped_by_time"] else "")
            + (f"; validation Dice {dice:.3f}" if dice is not None else "")
            + f"; run folder: {summary['run_dir']}"
        )
        if init is not None:
            print(finetune_report(summary))
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
