"""Scoring predicted label maps on nested regions: BraTS's whole tumour, tumour core, enhancing tumour.

``brainseg evaluate --pred P --ref R --out O --regions SPEC`` pairs the files as
:func:`~brainseg.evaluate.per_label.evaluate_folders` does (a bad file costs only its own case) and
scores each region (a set of label values, :class:`~brainseg.labels.regions.Regions`) of each
case with :func:`brainseg.evaluate.metrics.region_scores`:

* Dice; both empty -> 1, exactly one empty -> 0.
* HD95 (mm) as :func:`brainseg.evaluate.metrics.hd95`; both empty -> 0, exactly one empty -> the
  BraTS penalty :data:`~brainseg.evaluate.metrics.BRATS_HD95_PENALTY_MM` (373.13 mm, the diagonal of
  BraTS 2021's 240 x 240 x 155 grid of 1 mm voxels), so every value is finite.
* Lesion-wise Dice and HD95 as BraTS 2023 ranks (:mod:`brainseg.evaluate.lesions`): each reference
  lesion scored against the predicted components that reach it, a missed lesion and each predicted
  component that reaches none scoring Dice 0 and HD95 374 mm, the mean over lesions.

``SPEC`` (:func:`regions_from_spec`): ``brats`` (BraTS 2023's regions when the references
hold label 3 and no 4, else BraTS 2021's), ``brats2021``, ``brats2023``, or a dataset.json
with nnU-Net v2 regions; the CLI also takes a model's regions (``--model``).

``O/metrics.csv``: one row per case, columns ``case``, then ``<region>_dice``,
``<region>_hd95_mm``, ``<region>_lesion_dice`` and ``<region>_lesion_hd95_mm`` per region.
``O/summary.json``: per region its label values, the mean/std/median/n of each of those four and
the lesion counts over all cases (``lesions``: scored, found, missed, false positives, too small);
``mean_over_regions`` (the mean of the region means), ``n_cases``, ``failed``,
``hd95_penalty_mm``, ``lesion_rule`` and ``conventions``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.data.dataset_json import read_dataset_json
from brainseg.errors import BrainsegError
from brainseg.evaluate.lesions import BRATS_2023_LESIONS, LesionRule, LesionScores, region_lesion_scores
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
    "1 mm grid). lesion_dice, lesion_hd95_mm (BraTS 2023's lesion-wise scores): the reference's lesions are the "
    "reference voxels in one 26-connected component of the reference dilated lesion_rule.dilation times with the "
    "18-connected cross; a lesion is scored (dice, hd95_mm as above) against the union of the 26-connected predicted "
    "components that overlap the lesion dilated the same way; a lesion no component reaches scores dice 0 and hd95 "
    "lesion_rule.penalty_mm (374 mm); lesions of lesion_rule.min_volume_mm3 or less are not scored (and the "
    "components reaching them are no false positives); each predicted component that reaches no lesion is a false "
    "positive scoring dice 0 and hd95 penalty_mm; the score is the sum over lesions and false positives divided by "
    "their number; nothing to score -> dice 1.0, hd95 0.0. "
    "mean_over_regions: the mean of the per-region means. std is the population std (ddof=0)."
)
METRICS = ("dice", "hd95_mm", "lesion_dice", "lesion_hd95_mm")


@dataclass(frozen=True)
class RegionScores:
    """One case's scores on one region: voxel-wise Dice and HD95, and the lesion-wise ones."""

    dice: float
    hd95_mm: float
    lesions: LesionScores

    def values(self) -> tuple[float, float, float, float]:
        """The values of :data:`METRICS`, in that order."""
        return self.dice, self.hd95_mm, self.lesions.dice, self.lesions.hd95_mm


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


def write_region_csv(path: Path, names: Sequence[str], rows: dict[str, dict[str, RegionScores]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case"] + [f"{n}_{m}" for n in names for m in METRICS])
    for case in sorted(rows):
        writer.writerow([case] + [_format_number(v) for n in names for v in rows[case][n].values()])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def _lesion_counts(scores: Sequence[LesionScores]) -> dict[str, int]:
    """Reference lesions scored, found and missed, false positives and lesions too small, over all cases."""
    return {
        "scored": sum(s.n_lesions for s in scores),
        "found": sum(s.n_found for s in scores),
        "missed": sum(s.n_missed for s in scores),
        "false_positive": sum(s.n_false_positive for s in scores),
        "too_small": sum(s.n_ignored for s in scores),
    }


def summarize_regions(
    regions: Regions,
    rows: dict[str, dict[str, RegionScores]],
    failed: list[dict],
    penalty_mm: float,
    rule: LesionRule = BRATS_2023_LESIONS,
) -> dict:
    per_region: dict[str, dict[str, Any]] = {}
    for name, values in zip(regions.names, regions.labels):
        per_region[name] = {"labels": list(values)}
        for i, metric in enumerate(METRICS):
            per_region[name][metric] = _stats([rows[c][name].values()[i] for c in rows])
        per_region[name]["lesions"] = _lesion_counts([rows[c][name].lesions for c in rows])

    def over_regions(metric: str) -> float | None:
        means = [r[metric]["mean"] for r in per_region.values()]
        return None if any(m is None for m in means) else float(np.mean(means))

    return {
        "regions": per_region,
        "mean_over_regions": {metric: over_regions(metric) for metric in METRICS},
        "n_cases": len(rows),
        "failed": failed,
        "hd95_penalty_mm": float(penalty_mm),
        "lesion_rule": asdict(rule),
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
    rule: LesionRule = BRATS_2023_LESIONS,
) -> dict:
    """Score every prediction in ``pred_dir`` against its reference in ``ref_dir`` on ``regions``
    (None: BraTS's, 2021 or 2023 by the label values of all references, which are then read
    once more before scoring), voxel-wise and lesion-wise (``rule``); write metrics.csv and
    summary.json in ``out_dir`` (see the module docstring), the box plot and worst-first table
    (:mod:`brainseg.evaluate.report`) and the trust report of a ``volumes.csv`` with predicted Dice
    (:mod:`brainseg.evaluate.trust`); return the summary. A prediction holding a label value no
    region contains is scored and warned about."""
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

    def score(cid: str, pred_path: Path, ref_path: Path) -> dict[str, RegionScores]:
        pred, ref, geometry = read_pair(pred_path, ref_path)
        outside = sorted(set(int(v) for v in np.unique(pred)) - set(regions.label_values) - {0})
        if outside:
            stray[cid] = outside
        voxel = region_scores(pred, ref, regions, geometry.spacing, penalty_mm)
        lesion = region_lesion_scores(pred, ref, regions, geometry.spacing, rule)
        return {name: RegionScores(*voxel[name], lesion[name]) for name in regions.names}

    rows = score_pairs(pairs, score, failed, progress)
    for cid, held in sorted(stray.items()):
        log.warning(
            f"{cid}: the prediction holds label(s) {held}, which no region contains "
            f"({', '.join(f'{n} = {list(v)}' for n, v in zip(regions.names, regions.labels))})"
        )
    write_region_csv(out_dir / METRICS_NAME, regions.names, rows)
    dice = {case: {n: scores[n].dice for n in regions.names} for case, scores in rows.items()}
    write_report(out_dir, dice, list(regions.names), "Dice per region")
    summary = summarize_regions(regions, rows, failed, penalty_mm, rule)
    summary = add_trust(summary, pred_dir, out_dir, dice, list(regions.names), False, qc_threshold)
    return write_summary(out_dir, summary)


def format_region_table(summary: dict) -> str:
    """Region, mean Dice and mean HD95, voxel-wise and lesion-wise, as text."""

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    heads = ("mean Dice", "mean HD95 (mm)", "lesion Dice", "lesion HD95 (mm)")
    digits = (4, 2, 4, 2)
    width = max([len("region"), len("mean")] + [len(n) for n in summary["regions"]])

    def line(name: str, values: Sequence[float | None]) -> str:
        cells = (f"{cell(v, d):>{len(h)}}" for v, d, h in zip(values, digits, heads))
        return f"{name:>{width}}  " + "  ".join(cells)

    lines = [f"{'region':>{width}}  " + "  ".join(heads)]
    for name, stats in summary["regions"].items():
        lines.append(line(name, [stats[m]["mean"] for m in METRICS]))
    lines.append(line("mean", [summary["mean_over_regions"][m] for m in METRICS]))
    return "\n".join(lines)
