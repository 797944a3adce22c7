"""``brainseg info``: a trained model's card, as text or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from brainseg.io.naming import CHECKPOINT_CHOICES


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="show a trained model's card: labels, channels, spacing, network, training, checksum",
    )
    p.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help="run folder or checkpoint file (a cross-validation run's folder: its folds and CV scores)",
    )
    p.add_argument(
        "--checkpoint",
        choices=tuple(CHECKPOINT_CHOICES),
        default=None,
        help="which checkpoint of the run folder (default: final if the run finished, else best, else last)",
    )
    p.add_argument("--json", action="store_true", help="print the card as JSON (the stored card plus the extras)")
    return p


def run(args: argparse.Namespace) -> int:
    from brainseg.errors import BrainsegError
    from brainseg.model.info import read_cv_run, read_model_info  # torch: imported when the command runs

    cv = read_cv_run(args.model)
    if cv is not None and args.checkpoint is None:  # a cross-validation's folder: its folds and scores
        print(json.dumps(cv.to_dict(), indent=1) if args.json else cv.render())
        return 0
    if cv is not None:
        raise BrainsegError(
            f"{args.model}: a cross-validation run, not one model; --checkpoint chooses a file of a fold's folder "
            f"(e.g. {args.model / 'fold_0'})"
        )
    info = read_model_info(args.model, args.checkpoint)
    print(json.dumps(info.to_dict(), indent=1) if args.json else info.render())
    return 0
