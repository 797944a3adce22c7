"""Scoring predicted label maps on nested regions: BraTS's whole tumour, tumour core, enhancing tumour.

``brainseg evaluate --pred P --ref R --out O --regions SPEC`` pairs the files as
:func:`~brainseg.evaluate.per_label.evaluate_folders` does (a bad file costs only its own case) and
scores each region (a set of label values, :class:`~brainseg.labels.regions.Regions`) of each
case with :func:`brainseg.evaluate.metrics.region_scores`:

* Dice; both empty -> 1, exactly one empty -> 0.
* HD95 (mm) as :func:`brainseg.evaluate.metrics.hd95`; both empty -> 0, exactly one empty -> the
  BraTS penalty :data:`~brainseg.evaluate.metrics.BRATS_HD95_PENALTY_MM` (373.13 mm, the diagonal of
  BraTS 2021's 240 x 240 x 155 grid of 1 mm voxels), so every value is finite.

``SPEC`` (:func:`regions_from_spec`): ``brats`` (BraTS 2023's regions when the references
hold label 3 and no 4, else BraTS 2021's), ``brats2021``, ``brats2023``, or a dataset.json
with nnU-Net v2 regions; the CLI also takes a model's regions (``--model``).

``O/metrics.csv``: one row per case, columns ``case``, then ``<region>_dice`` and
``<region>_hd95_mm`` per region. ``O/summary.json``: per region its label values and the
mean/std/median/n of Dice and HD95; ``mean_over_regions`` (the mean of the region means),
``n_cases``, ``failed``, ``hd95_penalty_mm`` and ``conventions``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.data.dataset_json import read_dataset_json
from brainseg.errors import BrainsegError
from brainseg.evaluate.metrics import BRATS_HD95_PENALTY_MM, region_scores
from brainseg.evaluate.per_label import (
    METRICS_NAME,
    _format_number,
    _stats,
    pair_folders,
    read_pair,
    score_pairs,
    write_summary,
)
from brainseg.evaluate.report import write_report
from brainseg.evaluate.trust import DEFAULT_QC_THRESHOLD, add_trust
from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import read_label
from brainseg.labels.regions import BRATS_2021, BRATS_2023, Regions, brats_regions

log = logging.getLogger(__name__)

REGION_SPECS = ("brats", "brats2021", "brats2023")
REGION_CONVENTIONS = (
    "per region (a set of label values): dice: both masks empty -> 1.0, exactly one empty -> 0.0; "
    "hd95_mm: max over both directions of the 95th percentile of surface-to-nearest-surface "
    "distances in mm (= MONAI compute_hausdorff_distance(percentile=95)); both empty -> 0.0, exactly one "
    "empty -> the BraTS penalty hd95_penalty_mm (373.13 mm, the diagonal of BraTS 2021's 240x240x155 "
    "1 mm grid). mean_over_regions: the mean of the per-region means. std is the population std (ddof=0)."
)


def regions_from_spec(spec: str) -> Regions | None:
    """The regions ``--regions SPEC`` names: None for ``brats`` (chosen from the references later),
    BraTS 2021's or 2023's, or the regions of a dataset.json (one error line when it has none)."""
    if spec == "brats":
        return None
    if spec in ("brats2021", "brats2023"):
        return BRATS_2021 if spec == "brats2021" else BRATS_2023
    path = Path(spec)
    if not path.is_file():
        raise BrainsegError(
            f"--regions {spec!r}: expected {', '.join(REGION_SPECS)} or a dataset.json with regions (no such file)"
        )
    problems: list[str] = []
    info = read_dataset_json(path, problems)
    if problems:
        raise BrainsegError(f"{path}: " + "; ".join(problems))
    if info.regions is None:
        raise BrainsegError(
            f'{path}: defines no regions (nnU-Net v2: "labels": {{"whole tumor": [1, 2, 3], ...}}, '
            '"regions_class_order": [...])'
        )
    return info.regions


def _reference_values(pairs: Sequence[tuple[str, Path, Path]]) -> set[int]:
    """Every label value in the references that can be read (the others fail when scored)."""
    values: set[int] = set()
    for _, _, ref_path in pairs:
        try:
            values.update(int(v) for v in np.unique(read_label(ref_path)[0]))
        except (BrainsegError, OSError):
            continue
    return values


def write_region_csv(path: Path, names: Sequence[str], rows: dict[str, dict[str, tuple[float, float]]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case"] + [f"{n}_{m}" for n in names for m in ("dice", "hd95_mm")])
    for case in sorted(rows):
        writer.writerow([case] + [_format_number(v) for n in names for v in rows[case][n]])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def summarize_regions(
    regions: Regions, rows: dict[str, dict[str, tuple[float, float]]], failed: list[dict], penalty_mm: float
) -> dict:
    per_region: dict[str, dict[str, Any]] = {}
    for name, values in zip(regions.names, regions.labels):
        per_region[name] = {
            "labels": list(values),
            "dice": _stats([rows[c][name][0] for c in rows]),
            "hd95_mm": _stats([rows[c][name][1] for c in rows]),
        }

    def over_regions(metric: str) -> float | None:
        means = [r[metric]["mean"] for r in per_region.values()]
        return None if any(m is None for m in means) else float(np.mean(means))

    return {
        "regions": per_region,
        "mean_over_regions": {"dice": over_regions("dice"), "hd95_mm": over_regions("hd95_mm")},
        "n_cases": len(rows),
        "failed": failed,
        "hd95_penalty_mm": float(penalty_mm),
        "conventions": REGION_CONVENTIONS,
    }


def evaluate_region_folders(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    regions: Regions | None = None,
    progress: bool = True,
    penalty_mm: float = BRATS_HD95_PENALTY_MM,
    qc_threshold: float = DEFAULT_QC_THRESHOLD,
) -> dict:
    """Score every prediction in ``pred_dir`` against its reference in ``ref_dir`` on ``regions``
    (None: BraTS's, 2021 or 2023 by the label values of all references, which are then read
    once more before scoring); write metrics.csv and summary.json in ``out_dir`` (see the
    module docstring), the box plot and worst-first table (:mod:`brainseg.evaluate.report`) and
    the trust report of a ``volumes.csv`` with predicted Dice (:mod:`brainseg.evaluate.trust`);
    return the summary. A prediction holding a label value no region
    contains is scored and warned about."""
    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    pairs, failed = pair_folders(pred_dir, ref_dir)
    if regions is None:
        values = _reference_values(pairs)
        regions = brats_regions(values)
        year = "2023" if regions is BRATS_2023 else "2021"
        log.info(
            f"evaluate: BraTS {year} regions (enhancing tumour = {regions.labels[-1][0]}; "
            f"label values in the references: {sorted(values)})"
        )
    stray: dict[str, list[int]] = {}

    def score(cid: str, pred_path: Path, ref_path: Path) -> dict[str, tuple[float, float]]:
        pred, ref, geometry = read_pair(pred_path, ref_path)
        outside = sorted(set(int(v) for v in np.unique(pred)) - set(regions.label_values) - {0})
        if outside:
            stray[cid] = outside
        return region_scores(pred, ref, regions, geometry.spacing, penalty_mm)

    rows = score_pairs(pairs, score, failed, progress)
    for cid, held in sorted(stray.items()):
        log.warning(
            f"{cid}: the prediction holds label(s) {held}, which no region contains "
            f"({', '.join(f'{n} = {list(v)}' for n, v in zip(regions.names, regions.labels))})"
        )
    write_region_csv(out_dir / METRICS_NAME, regions.names, rows)
    dice = {case: {n: scores[n][0] for n in regions.names} for case, scores in rows.items()}
    write_report(out_dir, dice, list(regions.names), "Dice per region")
    summary = summarize_regions(regions, rows, failed, penalty_mm)
    summary = add_trust(summary, pred_dir, out_dir, dice, list(regions.names), False, qc_threshold)
    return write_summary(out_dir, summary)


def format_region_table(summary: dict) -> str:
    """Region, mean Dice and mean HD95 as text."""

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    width = max([len("region"), len("mean")] + [len(n) for n in summary["regions"]])
    lines = [f"{'region':>{width}}  {'mean Dice':>9}  {'mean HD95 (mm)':>14}"]
    for name, stats in summary["regions"].items():
        lines.append(f"{name:>{width}}  {cell(stats['dice']['mean'], 4):>9}  {cell(stats['hd95_mm']['mean'], 2):>14}")
    over = summary["mean_over_regions"]
    lines.append(f"{'mean':>{width}}  {cell(over['dice'], 4):>9}  {cell(over['hd95_mm'], 2):>14}")
    return "\n".join(lines)
