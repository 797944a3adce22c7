"""``brainseg predict``: segment scans with a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainseg.cli.common import add_config_args, add_device_arg
from brainseg.io.naming import CHECKPOINT_CHOICES


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="segment scans with a trained model")
    p.add_argument(
        "--model",
        type=Path,
        nargs="+",
        required=True,
        help="run folder or checkpoint file; several, or a cross-validation run folder (fold_*/): "
        "their ensemble (mean probabilities; the first model's decision)",
    )
    p.add_argument(
        "--checkpoint",
        choices=tuple(CHECKPOINT_CHOICES),
        default=None,
        help="which checkpoint of the run folder (default: final if the run finished, else best, else last)",
    )
    p.add_argument(
        "--input", type=Path, nargs="+", required=True, help="folders and/or scan files (a folder of DICOM files too)"
    )
    p.add_argument("--output", type=Path, required=True, help="output folder for ID.nii.gz masks")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output exists (default: skip)")
    p.add_argument(
        "--bids-derivatives",
        action="store_true",
        help="BIDS input: write OUT/sub-*/[ses-*/]anat/*_desc-brainseg_dseg.nii.gz with its .tsv/.json, "
        "*_desc-brainseg_volumes.tsv and dataset_description.json (default: OUT/ID.nii.gz and volumes.csv)",
    )
    p.add_argument("--save-probabilities", action="store_true", help="also write ID_probabilities.nii.gz (4D float)")
    p.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write ID_uncertainty.nii.gz (float32 in [0, 1]: one model's entropy, or the disagreement "
        "of an ensemble's members or of the mirrored passes)",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="for DICOM inputs also write ID_seg.dcm, a DICOM SEG referencing the series (needs brainseg[dicom])",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write ID_preview.png: three slices with the mask over the scan (with --save-uncertainty, "
        "a second row with the uncertainty; the title gives the predicted Dice of a model with a quality score)",
    )
    speed = p.add_mutually_exclusive_group()
    speed.add_argument(
        "--tta",
        action="store_true",
        help="test-time mirroring (infer.mirror): the mean over 8 flipped passes, 8x the time "
        "(a CPU plan and the CPU configs leave it off)",
    )
    speed.add_argument(
        "--fast",
        action="store_true",
        help="the 'fast' inference preset (brainseg.infer.loading.INFER_PRESETS: fewer windows, no mirroring), "
        "recorded in brainseg_run.json; --set still overrides its fields",
    )
    p.add_argument(
        "--qc-threshold",
        type=float,
        default=0.7,
        metavar="DICE",
        help="a model with a quality score (a cross-validation run's folds) flags a case whose predicted mean "
        "Dice is below this in volumes.csv's qc_flag column (default 0.7)",
    )
    add_device_arg(p)
    add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    """0 when every case was written or skipped, 1 if any failed."""
    from brainseg.infer.batch import (
        predict,  # torch and the network: imported when the command runs
    )

    same_name = {
        name: getattr(args, name)
        for name in (
            "checkpoint",
            "device",
            "overwrite",
            "save_probabilities",
            "preview",
            "save_uncertainty",
            "debug",
            "bids_derivatives",
            "dicom_seg",
            "qc_threshold",
        )
    }
    result = predict(
        args.model,
        args.input,
        args.output,
        config_path=args.config,
        overrides=[*(args.overrides or []), *(["infer.mirror=true"] if args.tta else [])],
        preset="fast" if args.fast else None,
        progress=not args.no_progress and sys.stderr.isatty(),
        command=getattr(args, "command_line", None),
        **same_name,
    )
    where = f"rank {result.rank}/{result.world_size}: " if result.world_size > 1 else ""
    print(f"brainseg predict: {where}{result.summary.report()}")
    if args.bids_derivatives and result.summary.written:
        print(f"BIDS derivatives in {args.output}, volumes in each case's *_desc-brainseg_volumes.tsv")
    if result.volumes_csv is not None:
        print(f"masks in {args.output}, volumes in {result.volumes_csv}")
    if result.record is not None:
        print(f"how each mask was made: {result.record}")
    return 1 if result.summary.failed else 0
