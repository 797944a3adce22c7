"""``brainseg export``: the network as TorchScript or ONNX, with its card beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainseg.io.naming import CHECKPOINT_CHOICES


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="write the network as TorchScript or ONNX (and FILE.card.json) for use without brainseg",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help="run folder or checkpoint file")
    p.add_argument(
        "--checkpoint",
        choices=tuple(CHECKPOINT_CHOICES),
        default=None,
        help="which checkpoint of the run folder (default: final if the run finished, else best, else last)",
    )
    # not argparse choices: a bad format is one error line like every other bad input
    p.add_argument("--format", required=True, metavar="FORMAT", help="torchscript or onnx")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the file to write (card: FILE.card.json)")
    p.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="take raw RAS volumes at the card's spacing, normalise inside, return probabilities",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from brainseg.model.export import export_model, parse_format  # torch: imported when the command runs

    result = export_model(
        args.model,
        args.out,
        parse_format(args.format, args.out),
        with_preprocessing=args.with_preprocessing,
        checkpoint=args.checkpoint,
    )
    kind = "with preprocessing" if result.with_preprocessing else "network only"
    print(f"brainseg export: {result.format} ({kind}) written to {result.path}, card {result.card_path}")
    return 0
