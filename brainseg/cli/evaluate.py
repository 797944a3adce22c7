"""``brainseg evaluate``: Dice, HD95 and volumes of predictions against references, per label
or (``--regions``, ``--model``) per region."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainseg.errors import BrainsegError
from brainseg.evaluate.per_label import (
    METRICS_NAME,
    SUMMARY_NAME,
    evaluate_folders,
    format_table,
    parse_labels,
)
from brainseg.evaluate.per_region import (
    evaluate_region_folders,
    format_region_table,
    regions_from_spec,
)
from brainseg.evaluate.report import BOXPLOT_NAME, WORST_FIRST_NAME, worst_lines
from brainseg.evaluate.trust import DEFAULT_QC_THRESHOLD, format_trust


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="Dice, HD95 and volumes of predictions against references")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted masks")
    p.add_argument("--ref", type=Path, required=True, help="folder of reference masks")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.csv and summary.json")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--labels", default=None, help="comma-separated labels to score (default: all non-zero in the references)"
    )
    which.add_argument(
        "--regions",
        default=None,
        metavar="SPEC",
        help="score nested regions instead of labels (BraTS conventions: HD95 373.13 mm when one side is empty; "
        "BraTS 2023's lesion-wise Dice and HD95 beside them): brats (2021 or 2023 by the references' labels), brats2021, brats2023, or a dataset.json with regions",
    )
    which.add_argument(
        "--model", type=Path, default=None, help="score the regions of this model (checkpoint or run folder)"
    )
    p.add_argument(
        "--worst", type=int, default=5, metavar="N", help="print the N cases with the lowest mean Dice (default 5)"
    )
    p.add_argument(
        "--qc-threshold",
        type=float,
        default=DEFAULT_QC_THRESHOLD,
        metavar="T",
        help="with a volumes.csv of predicted Dice beside the masks: the flag threshold predict used; a case whose "
        f"true mean Dice is under T should be flagged (default {DEFAULT_QC_THRESHOLD})",
    )
    return p


def _model_regions(path: Path):
    from brainseg.model.checkpoint import load_card  # torch only when asked for

    card = load_card(path)
    regions = getattr(card, "regions", None)
    if regions is None:
        raise BrainsegError(f"{path}: the model card defines no regions (give --regions or --labels instead)")
    return regions


def run(args: argparse.Namespace) -> int:
    """0 when every case was scored, 1 if any failed or none was."""
    if not 0.0 <= args.qc_threshold <= 1.0:
        raise BrainsegError(f"--qc-threshold {args.qc_threshold:g}: expected a Dice from 0 to 1")
    if args.regions is not None or args.model is not None:
        regions = regions_from_spec(args.regions) if args.regions is not None else _model_regions(args.model)
        summary = evaluate_region_folders(
            args.pred, args.ref, args.out, regions=regions, progress=True, qc_threshold=args.qc_threshold
        )
        scored = bool(summary["regions"])
        if summary["n_cases"]:
            print(format_region_table(summary))
    else:
        summary = evaluate_folders(
            args.pred,
            args.ref,
            args.out,
            labels=parse_labels(args.labels),
            progress=True,
            qc_threshold=args.qc_threshold,
        )
        scored = bool(summary["labels"])
        if scored:
            print(format_table(summary))
    worst = worst_lines(args.out, args.worst)
    if worst:
        print(f"worst {len(worst)} case(s) by mean Dice:")
        print("\n".join(f"  {line}" for line in worst))
    if "trust" in summary:
        print(format_trust(summary["trust"]))
    print(f"{summary['n_cases']} case(s) scored, {len(summary['failed'])} failed")
    for name in (METRICS_NAME, SUMMARY_NAME):
        print(f"wrote {Path(args.out) / name}")
    if summary["n_cases"]:
        for name in (WORST_FIRST_NAME, BOXPLOT_NAME):
            print(f"wrote {Path(args.out) / name}")
    if "trust" in summary:
        for name in (summary["trust"]["file"], summary["trust"]["plot"]):
            print(f"wrote {Path(args.out) / name}")
    if summary["n_cases"] == 0 or not scored:
        print("brainseg: nothing was evaluated", file=sys.stderr)
        return 1
    return 1 if summary["failed"] else 0
