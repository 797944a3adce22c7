"""``brainseg check --data DIR``: the data set's fingerprint and its problems, before training.

Prints one row per readable training case, then the errors and the warnings, each a line
naming the file; exits 1 when there is any error, 0 otherwise (warnings included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from brainseg.plan.fingerprint import Fingerprint


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("check", help="check a data set (geometry, NaN, labels, orientations) before training")
    p.add_argument("--data", type=Path, required=True, help="data set folder (MSD, BraTS or images/labels layout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _fmt(values, digits: int = 3) -> str:
    return "x".join(f"{v:.{digits}g}" for v in values)


def fingerprint_table(fp: Fingerprint) -> str:
    head = ["case", "shape (RAS)", "voxel mm (RAS)", "orient", "oblique", "background"]
    head += [f"{name} p1..p99" for name in fp.channels] + ["labels (ml)"]
    rows = [head]
    for c in fp.cases:
        row = [
            c.case_id,
            _fmt(c.ras_shape, 4),
            _fmt(c.ras_spacing),
            c.axcodes,
            f"{c.obliquity:.1f}",
            "zero" if c.zero_background else "noise",
        ]
        for ch in c.channels:
            row.append(f"{ch.percentiles[1]:.4g}..{ch.percentiles[7]:.4g}")
        row.append(" ".join(f"{k}:{v / 1000:.3g}" for k, v in sorted(c.label_volumes.items())) or "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    from brainseg.plan.check import check_dataset

    def bar(cases):
        return tqdm(cases, desc="checking", unit="case", disable=args.no_progress, file=sys.stderr)

    report = check_dataset(args.data, progress=bar)
    if report.dataset is not None:
        ds = report.dataset
        print(
            f"{args.data}: {ds.layout} layout, {len(ds.train)} training and {len(ds.test)} test case(s), "
            f"channels {', '.join(ds.channels)}, labels " + ", ".join(f"{k} {v}" for k, v in sorted(ds.labels.items()))
        )
        if report.fingerprint is not None and report.fingerprint.cases:
            print(fingerprint_table(report.fingerprint))
            lat = report.fingerprint.laterality
            if lat.pairs:
                print(
                    "left/right pairs (swapped on left-right flips): " + ", ".join(f"{a}<->{b}" for a, b in lat.pairs)
                )
            if ds.regions is not None:
                print("regions: " + ", ".join(f"{n}={list(v)}" for n, v in zip(ds.regions.names, ds.regions.labels)))
    print(f"errors ({len(report.errors)}):")
    for line in report.errors:
        print(f"  {line}")
    print(f"warnings ({len(report.warnings)}):")
    for line in report.warnings:
        print(f"  {line}")
    print("check: " + ("FAILED" if report.errors else "passed"))
    return 1 if report.errors else 0
