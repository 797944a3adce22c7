"""``brainseg train``: a scan directory in, a run folder out.

Under torchrun an error on one rank ends every rank; the error line is printed once (by
the rank that had it) and every rank exits 1.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import load_config
from ..runtime import check_device_spec, torchrun_env
from ..train.distributed import PeerFailure
from ..train.trainer import train
from .common import add_config_args, add_device_arg

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
    p.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    config_path = args.config
    if args.resume and config_path is None and (args.out / "config.yaml").is_file():
        config_path = args.out / "config.yaml"
    config = load_config(config_path, overrides)
    try:
        summary = train(
            args.data,
            args.out,
            config,
            device=check_device_spec(args.device),
            max_minutes=args.max_minutes,
            resume=args.resume,
            progress=not args.no_progress,
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
    return 0
