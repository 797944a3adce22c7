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
    p.add_argument("model", type=Path, metavar="MODEL", help="run folder or checkpoint file")
    p.add_argument(
        "--checkpoint",
        choices=tuple(CHECKPOINT_CHOICES),
        default=None,
        help="which checkpoint of the run folder (default: final if the run finished, else best, else last)",
    )
    p.add_argument("--json", action="store_true", help="print the card as JSON (the stored card plus the extras)")
    return p


def run(args: argparse.Namespace) -> int:
    from brainseg.model.info import read_model_info  # torch: imported when the command runs

    info = read_model_info(args.model, args.checkpoint)
    print(json.dumps(info.to_dict(), indent=1) if args.json else info.render())
    return 0
