"""Scoring predicted label maps against references: Dice, HD95 and volumes.

``brainseg evaluate --pred P --ref R --out O`` pairs the files of two folders by case
id, scores every label of every case, and writes ``O/metrics.csv`` (one row per case
and label) and ``O/summary.json`` (per-label mean/std/median). A bad file costs only
its own case: it is reported as one line and the others are still scored.

Conventions (also written into summary.json as ``"conventions"``):

* Dice and HD95 (mm) as :mod:`brainseg.evaluate.metrics` defines them (MONAI's
  ``DiceMetric(ignore_empty=False)`` and ``compute_hausdorff_distance(percentile=95)``).
  Dice: both masks empty -> 1.0, exactly one empty -> 0.0. HD95: both empty -> 0.0,
  exactly one empty -> inf, written as ``inf`` in metrics.csv.
* summary.json statistics of HD95 are over the finite values only, with ``n_inf``
  counting the cases left out; a statistic with no value is ``null`` (the JSON is
  strict: no NaN/Infinity tokens).
* std is the population standard deviation (ddof=0).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from brainseg.errors import BrainsegError, InputError
from brainseg.evaluate.metrics import check_spacing, dice, hd95
from brainseg.evaluate.pairing import drop_probability_maps, pair_cases, scan_folder
from brainseg.evaluate.report import write_report
from brainseg.evaluate.trust import DEFAULT_QC_THRESHOLD, add_trust
from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import DEFAULT_MAX_VOXELS, Geometry, read_label
from brainseg.io.naming import strip_suffix

log = logging.getLogger(__name__)
T = TypeVar("T")

METRICS_NAME = "metrics.csv"
SUMMARY_NAME = "summary.json"
COLUMNS = ("case", "label", "dice", "hd95_mm", "pred_volume_mm3", "ref_volume_mm3")
CONVENTIONS = (
    "dice: both masks empty -> 1.0, exactly one empty -> 0.0 "
    "(= MONAI DiceMetric(ignore_empty=False)). "
    "hd95_mm: max over both directions of the 95th percentile (linear interpolation) of "
    "surface-to-nearest-surface Euclidean distances in mm; surface = mask minus its "
    "6-connected erosion (= MONAI compute_hausdorff_distance(percentile=95)); "
    "both empty -> 0.0, exactly one empty -> inf ('inf' in metrics.csv). "
    "summary hd95_mm statistics are over finite values only; n_inf counts the others. "
    "std is the population std (ddof=0); null = no value."
)

# ----------------------------------------------------------------------------- one case


def _grid_text(geom: Geometry) -> str:
    origin = ", ".join(f"{v:.4g}" for v in geom.affine[:3, 3])
    return f"{geom.describe()}, origin ({origin}) mm"


def _label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every non-zero label present in a non-negative integer map."""
    return {value: box for value, box in enumerate(ndimage.find_objects(labels), start=1) if box is not None}


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def empty_row(case: str, label: int) -> dict:
    """The row of a label absent from both the prediction and the reference."""
    return {
        "case": case,
        "label": int(label),
        "dice": 1.0,
        "hd95_mm": 0.0,
        "pred_volume_mm3": 0.0,
        "ref_volume_mm3": 0.0,
    }


def score_labels(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Iterable[int] | None,
    case: str,
) -> list[dict]:
    """Rows (see :data:`COLUMNS`) for two non-negative integer label maps on one grid.

    ``labels=None`` scores every non-zero label present in either map. Each label is
    scored inside the union of its bounding boxes in the two maps, which holds all of
    its voxels, so the numbers equal whole-volume ones.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"label map shapes differ: {pred.shape} vs {ref.shape}")
    sizes = check_spacing(spacing, pred.ndim)
    # |det| of the affine for a Geometry's spacing (sheared grids), else the product of the sizes
    voxel_mm3 = float(getattr(spacing, "voxel_volume", np.prod(sizes)))
    spacing = sizes
    pred_boxes, ref_boxes = _label_boxes(pred), _label_boxes(ref)
    if labels is None:
        labels = sorted(set(pred_boxes) | set(ref_boxes))
    rows = []
    for value in labels:
        value = int(value)
        box = _union_box(pred_boxes.get(value), ref_boxes.get(value))
        if box is None:
            rows.append(empty_row(case, value))
            continue
        pred_mask, ref_mask = pred[box] == value, ref[box] == value
        rows.append(
            {
                "case": case,
                "label": value,
                "dice": dice(pred_mask, ref_mask),
                "hd95_mm": hd95(pred_mask, ref_mask, spacing),
                "pred_volume_mm3": int(np.count_nonzero(pred_mask)) * voxel_mm3,
                "ref_volume_mm3": int(np.count_nonzero(ref_mask)) * voxel_mm3,
            }
        )
    return rows


def evaluate_case(
    pred_path: str | os.PathLike,
    ref_path: str | os.PathLike,
    labels: Iterable[int] | None = None,
    case: str | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> list[dict]:
    """Score one predicted label map against its reference; one row per label.

    Both files are read with :func:`~brainseg.io.images.read_label`. Their grids must match
    (same shape, affines equal within 1e-4), else :class:`InputError` names the
    prediction and both geometries. ``labels=None`` scores every non-zero label in
    either map. ``case`` defaults to the reference's name without its suffix. A file
    whose header claims more than ``max_voxels`` voxels is refused before any of it
    is read (:data:`~brainseg.io.images.DEFAULT_MAX_VOXELS`, 1024³, by default).
    """
    pred, ref, geometry = read_pair(pred_path, ref_path, max_voxels)
    case = case if case is not None else strip_suffix(Path(ref_path))
    return score_labels(pred, ref, geometry.spacing, labels, case)


def read_pair(
    pred_path: str | os.PathLike, ref_path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """(prediction, reference, the reference's geometry), read with :func:`~brainseg.io.images.read_label`;
    :class:`InputError` naming the prediction when the two grids differ."""
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    pred, pred_geom = read_label(pred_path, max_voxels=max_voxels)
    ref, ref_geom = read_label(ref_path, max_voxels=max_voxels)
    if not pred_geom.same_grid(ref_geom):
        raise InputError(
            pred_path,
            f"geometry ({_grid_text(pred_geom)}) does not match the reference {ref_path} ({_grid_text(ref_geom)})",
        )
    return pred, ref, ref_geom


# ----------------------------------------------------------------------------- folders


def _report(message: str) -> None:
    """A case that could not be scored: one error line (the CLI's handler keeps it off the progress bar)."""
    log.error(message)


def _stats(values: Sequence[float], count_inf: bool = False) -> dict:
    """mean/std/median/n over the finite values (None when there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    out: dict = {"mean": None, "std": None, "median": None, "n": int(finite.size)}
    if finite.size:
        out.update(mean=float(finite.mean()), std=float(finite.std()), median=float(np.median(finite)))
    if count_inf:
        out["n_inf"] = int(np.count_nonzero(np.isinf(arr)))
    return out


def summarize(rows: Sequence[dict], labels: Sequence[int], n_cases: int, failed: list[dict]) -> dict:
    """The summary.json content for scored rows (see the module docstring)."""
    per_label = {}
    for value in labels:
        mine = [r for r in rows if r["label"] == value]
        per_label[str(value)] = {
            "dice": _stats([r["dice"] for r in mine]),
            "hd95_mm": _stats([r["hd95_mm"] for r in mine], count_inf=True),
        }
    return {
        "labels": per_label,
        "overall": {
            "dice": _stats([r["dice"] for r in rows]),
            "hd95_mm": _stats([r["hd95_mm"] for r in rows], count_inf=True),
        },
        "n_cases": int(n_cases),
        "failed": failed,
        "conventions": CONVENTIONS,
    }


def _format_number(value: float) -> str:
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, ".10g")


def write_metrics_csv(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """One row per case and label with :data:`COLUMNS`; HD95 ``inf`` as ``inf``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row["case"], row["label"]] + [_format_number(row[c]) for c in COLUMNS[2:]])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def _complete_rows(rows_by_case: dict[str, list[dict]], labels: Sequence[int]) -> list[dict]:
    """Exactly one row per case and label: absent labels get the both-empty row."""
    out: list[dict] = []
    for case in sorted(rows_by_case):
        have = {r["label"]: r for r in rows_by_case[case]}
        out.extend(have.get(v) or empty_row(case, v) for v in labels)
    return out


def _check_labels(labels: Iterable[int]) -> list[int]:
    out: list[int] = []
    for v in labels:
        if isinstance(v, bool) or int(v) != v or not 0 < int(v) <= np.iinfo(np.int16).max:
            raise BrainsegError(f"label {v!r}: labels must be integers from 1 to 32767")
        if int(v) not in out:
            out.append(int(v))
    if not out:
        raise BrainsegError("no labels to score")
    return out


def evaluate_folders(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    labels: list[int] | None = None,
    progress: bool = True,
    qc_threshold: float = DEFAULT_QC_THRESHOLD,
) -> dict:
    """Score every prediction in ``pred_dir`` against its reference in ``ref_dir``.

    Files pair by case id (file name without its image suffix; see
    :func:`pair_cases`). A reference without a prediction, a prediction without a
    reference, a case id taken by several files of one folder (``x.nii`` and
    ``x.nii.gz``), and a case whose files cannot be read or do not line up are each
    reported as one line ``brainseg: <file>: <problem>`` on stderr and listed in
    ``failed``; the other cases are still scored. ``labels=None`` scores every
    non-zero label found in the references of the scored cases.

    Writes ``out_dir/metrics.csv`` and ``out_dir/summary.json`` (atomically; the
    folder is created, and may be anywhere, including inside ``pred_dir``), and the box
    plot and worst-first table of :mod:`brainseg.evaluate.report`, and, when ``pred_dir`` holds a
    ``volumes.csv`` with predicted Dice, the trust report of :mod:`brainseg.evaluate.trust`
    (``qc_threshold``: the flag threshold). Returns the summary dict.
    """
    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    if labels is not None:
        labels = _check_labels(labels)
    pairs, failed = pair_folders(pred_dir, ref_dir)
    rows_by_case = score_pairs(
        pairs, lambda cid, pred_path, ref_path: evaluate_case(pred_path, ref_path, labels, case=cid), failed, progress
    )
    if labels is None:  # every label some scored reference contains
        labels = sorted({r["label"] for rows in rows_by_case.values() for r in rows if r["ref_volume_mm3"] > 0})
    rows = _complete_rows(rows_by_case, labels)
    summary = summarize(rows, labels, n_cases=len(rows_by_case), failed=failed)
    write_metrics_csv(out_dir / METRICS_NAME, rows)
    dice: dict[str, dict[str, float]] = {}
    for r in rows:
        dice.setdefault(r["case"], {})[str(r["label"])] = r["dice"]
    write_report(out_dir, dice, [str(v) for v in labels], "Dice per label")
    summary = add_trust(summary, pred_dir, out_dir, dice, [str(v) for v in labels], True, qc_threshold)
    return write_summary(out_dir, summary)


def write_summary(out_dir: Path, summary: dict) -> dict:
    """summary.json (strict JSON) in ``out_dir``; a warning naming the failed cases; the summary."""
    atomic_write_text(Path(out_dir) / SUMMARY_NAME, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    failed = summary["failed"]
    if failed:
        names = ", ".join(sorted({f["case"] for f in failed}))
        log.warning(f"{len(failed)} case(s) failed: {names}")
    return summary


def pair_folders(pred_dir: Path, ref_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[dict]]:
    """(case id, prediction, reference) of every pair, and the failures (each reported): files
    without a partner, case ids taken by several files of one folder."""
    refs, ref_clashes = scan_folder(ref_dir, "reference")
    preds, pred_clashes = scan_folder(pred_dir, "prediction")
    if not refs:
        raise BrainsegError(f"{ref_dir}: no reference masks (.nii.gz, .nii, .mha, .mhd, .nrrd)")
    preds = drop_probability_maps(preds)
    pairs, lone_refs, lone_preds = pair_cases(preds, refs)

    failed: list[dict] = ref_clashes + pred_clashes
    for item in failed:
        _report(f"{item['file']}: {item['problem']}")
    clashing = {item["case"] for item in failed}  # already reported
    lone_refs = {c: p for c, p in lone_refs.items() if c not in clashing}
    lone_preds = {c: p for c, p in lone_preds.items() if c not in clashing}
    for cid, path in sorted(lone_refs.items()):
        failed.append({"case": cid, "file": str(path), "problem": f"no prediction in {pred_dir}"})
        _report(f"{path}: no prediction for case '{cid}' in {pred_dir}")
    for cid, path in sorted(lone_preds.items()):
        failed.append({"case": cid, "file": str(path), "problem": f"no reference in {ref_dir}"})
        _report(f"{path}: no reference for case '{cid}' in {ref_dir}")
    return pairs, failed


def score_pairs(
    pairs: Sequence[tuple[str, Path, Path]], score: Callable[[str, Path, Path], T], failed: list[dict], progress: bool
) -> dict[str, T]:
    """``score(case, pred, ref)`` of every pair, by case; a case that raises a brainseg or OS
    error is reported as one line and appended to ``failed`` instead."""
    out: dict[str, T] = {}
    show = progress and sys.stderr.isatty()
    for cid, pred_path, ref_path in tqdm(pairs, desc="evaluate", unit="case", disable=not show):
        try:
            out[cid] = score(cid, pred_path, ref_path)
        except InputError as exc:
            failed.append({"case": cid, "file": exc.path or str(pred_path), "problem": exc.problem})
            _report(str(exc))
        except BrainsegError as exc:
            failed.append({"case": cid, "file": str(pred_path), "problem": str(exc)})
            _report(f"{pred_path}: {exc}")
        except OSError as exc:
            where = exc.filename or pred_path
            failed.append({"case": cid, "file": str(where), "problem": exc.strerror or str(exc)})
            _report(f"{where}: {exc.strerror or exc}")
    return out


# ----------------------------------------------------------------------------- CLI


def parse_labels(text: str | None) -> list[int] | None:
    """``"1,2,3"`` -> [1, 2, 3]; None -> None (all labels). Bad text -> BrainsegError."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BrainsegError(f"--labels {text!r}: expected comma-separated positive integers, e.g. 1,2,3") from None
    try:
        return _check_labels(values)
    except BrainsegError as exc:
        raise BrainsegError(f"--labels {text!r}: {exc}") from None


def _cell(stats: dict, digits: int) -> str:
    return "-" if stats["mean"] is None else f"{stats['mean']:.{digits}f}"


def format_table(summary: dict) -> str:
    """Label, mean Dice and mean HD95 (finite values; inf cases counted) as text."""
    lines = [f"{'label':>8}  {'mean Dice':>9}  {'mean HD95 (mm)':>14}"]
    entries = list(summary["labels"].items()) + [("all", summary["overall"])]
    for name, stats in entries:
        hd = _cell(stats["hd95_mm"], 2)
        if stats["hd95_mm"]["n_inf"]:
            hd += f" ({stats['hd95_mm']['n_inf']} inf)"
        lines.append(f"{name:>8}  {_cell(stats['dice'], 4):>9}  {hd:>14}")
    return "\n".join(lines)
