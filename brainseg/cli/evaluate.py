"""``brainseg evaluate``: Dice, HD95 and volumes of predictions against references."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluate import METRICS_NAME, SUMMARY_NAME, evaluate_folders, format_table, parse_labels


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="Dice, HD95 and volumes of predictions against references")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted masks")
    p.add_argument("--ref", type=Path, required=True, help="folder of reference masks")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.csv and summary.json")
    p.add_argument("--labels", default=None, help="comma-separated labels to score (default: all non-zero in the references)")
    return p


def run(args: argparse.Namespace) -> int:
    """0 when every case was scored, 1 if any failed or none was."""
    labels = parse_labels(args.labels)
    summary = evaluate_folders(args.pred, args.ref, args.out, labels=labels, progress=True)
    if summary["labels"]:
        print(format_table(summary))
    print(f"{summary['n_cases']} case(s) scored, {len(summary['failed'])} failed")
    for name in (METRICS_NAME, SUMMARY_NAME):
        print(f"wrote {Path(args.out) / name}")
    if summary["n_cases"] == 0 or not summary["labels"]:
        print("brainseg: nothing was evaluated", file=sys.stderr)
        return 1
    return 1 if summary["failed"] else 0
