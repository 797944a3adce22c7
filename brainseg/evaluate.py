"""Scoring predicted label maps against references: Dice, HD95 and volumes.

``brainseg evaluate --pred P --ref R --out O`` pairs the files of two folders by case
id, scores every label of every case, and writes ``O/metrics.csv`` (one row per case
and label) and ``O/summary.json`` (per-label mean/std/median). A bad file costs only
its own case: it is reported as one line and the others are still scored.

Conventions (also written into summary.json as ``"conventions"``):

* Dice: both masks empty -> 1.0 (nothing to find, nothing found); exactly one empty
  -> 0.0. This equals MONAI's ``DiceMetric(ignore_empty=False)``; MONAI's default
  (``ignore_empty=True``) returns NaN for an empty reference instead.
* HD95 (mm): for each surface voxel of one mask, the Euclidean distance (voxel
  spacing applied) to the nearest surface voxel of the other; the 95th percentile
  (linear interpolation) of each direction; the larger of the two. The surface of a
  mask is the mask minus its erosion by the 6-connected cross (image border counts
  as outside). This is MONAI's ``compute_hausdorff_distance(percentile=95)``. Both
  empty -> 0.0; exactly one empty -> inf, written as ``inf`` in metrics.csv.
  summary.json statistics of HD95 are over the finite values only, with ``n_inf``
  counting the cases left out; a statistic with no value is ``null`` (the JSON is
  strict: no NaN/Infinity tokens).
* std is the population standard deviation (ddof=0).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from .errors import BrainsegError, InputError, one_line
from .atomic import atomic_write_text
from .io import DEFAULT_MAX_VOXELS, Geometry, read_label
from .naming import CHANNEL_SUFFIX as _CHANNEL_SUFFIX, is_image_file, strip_suffix

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

_PROBABILITIES_SUFFIX = "_probabilities"


# ----------------------------------------------------------------------------- metrics


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice overlap 2|P∩R| / (|P| + |R|) of two boolean masks of the same shape.

    Empty masks: both empty -> 1.0 (nothing to find and nothing found); exactly one
    empty -> 0.0. MONAI's ``DiceMetric`` by default (``ignore_empty=True``) returns
    NaN when the reference is empty, so such cases drop out of its means; we score
    them instead, as MONAI does with ``ignore_empty=False``.
    """
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    if n_pred + n_ref == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / (n_pred + n_ref)


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of a boolean mask, grown by ``margin`` and clipped to the array."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        lo = max(int(hit[0]) - margin, 0)
        hi = min(int(hit[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (or on the array border)."""
    return mask & ~ndimage.binary_erosion(mask)


def _surface_distances(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    """Distance (mm) from each voxel of ``from_surface`` to the nearest of ``to_surface``."""
    distance_map = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_map[from_surface]


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm), got {spacing}")
    return spacing


def surface_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances (mm) from every surface voxel of each mask to the other mask's surface.

    Returns ``(pred_to_ref, ref_to_pred)``, or ``None`` when either mask is empty (there
    is no surface to measure against). Surface = mask minus its erosion (6-connected
    cross; outside the array counts as background); Euclidean distances with the voxel
    spacing applied (``distance_transform_edt(..., sampling=spacing)``). HD95 and the
    surface Dice of scripts/skip_ablation.py are both computed from these.

    The distance transforms run on the bounding box of both masks plus a one-voxel
    margin, not the whole volume; this is exact because every surface voxel, and
    hence every nearest surface voxel, lies inside that box.
    """
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    spacing = _check_spacing(spacing, pred.ndim)
    if not (pred.any() and ref.any()):
        return None
    box = _bbox(pred | ref, margin=1)
    surf_pred, surf_ref = _surface(pred[box]), _surface(ref[box])
    return _surface_distances(surf_pred, surf_ref, spacing), _surface_distances(surf_ref, surf_pred, spacing)


def hd95(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between two masks' surfaces.

    For each direction, the distances from every surface voxel of one mask to the
    nearest surface voxel of the other (:func:`surface_distances`), their 95th
    percentile with linear interpolation; the result is the larger of the two
    (MONAI's definition).

    Empty masks: both empty -> 0.0; exactly one empty -> ``inf``.
    """
    distances = surface_distances(pred_mask, ref_mask, spacing)
    if distances is None:
        return 0.0 if not (np.any(pred_mask) or np.any(ref_mask)) else math.inf
    pred_to_ref, ref_to_pred = distances
    return float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))


# ----------------------------------------------------------------------------- one case


def _grid_text(geom: Geometry) -> str:
    origin = ", ".join(f"{v:.4g}" for v in geom.affine[:3, 3])
    return f"{geom.describe()}, origin ({origin}) mm"


def _label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every non-zero label present in a non-negative integer map."""
    return {
        value: box
        for value, box in enumerate(ndimage.find_objects(labels), start=1)
        if box is not None
    }


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
    spacing = _check_spacing(spacing, pred.ndim)
    voxel_mm3 = float(np.prod(spacing))
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

    Both files are read with :func:`~brainseg.io.read_label`. Their grids must match
    (same shape, affines equal within 1e-4), else :class:`InputError` names the
    prediction and both geometries. ``labels=None`` scores every non-zero label in
    either map. ``case`` defaults to the reference's name without its suffix. A file
    whose header claims more than ``max_voxels`` voxels is refused before any of it
    is read (:data:`~brainseg.io.DEFAULT_MAX_VOXELS`, 1024³, by default).
    """
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    pred, pred_geom = read_label(pred_path, max_voxels=max_voxels)
    ref, ref_geom = read_label(ref_path, max_voxels=max_voxels)
    if not pred_geom.same_grid(ref_geom):
        raise InputError(
            pred_path,
            f"geometry ({_grid_text(pred_geom)}) does not match the reference "
            f"{ref_path} ({_grid_text(ref_geom)})",
        )
    case = case if case is not None else strip_suffix(ref_path)
    return score_labels(pred, ref, ref_geom.spacing, labels, case)


# ----------------------------------------------------------------------------- folders


def _report(message: str) -> None:
    """One line on stderr that does not break a running progress bar."""
    tqdm.write(one_line(f"brainseg: {message}"), file=sys.stderr)


def _scan_folder(folder: Path, role: str) -> tuple[dict[str, Path], list[dict]]:
    """Image files of ``folder`` by case id, and one problem per id taken by several files.

    Such a case is not scored at all: which of the files is meant cannot be known.
    """
    if not folder.is_dir():
        raise BrainsegError(f"{folder}: {role} folder not found")
    by_id: dict[str, list[Path]] = {}
    # Entries named like scans that are not regular files (a broken link, a folder
    # called x.nii.gz) are kept: reading them reports the case instead of dropping it.
    for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
        by_id.setdefault(strip_suffix(path), []).append(path)
    files: dict[str, Path] = {}
    clashes: list[dict] = []
    for cid, paths in by_id.items():
        if len(paths) == 1:
            files[cid] = paths[0]
            continue
        others = ", ".join(p.name for p in paths[1:])
        clashes.append(
            {"case": cid, "file": str(paths[0]),
             "problem": f"same case id as {others}; the case is not scored until all but one are renamed"}
        )
    return files, clashes


def _drop_probability_maps(preds: dict[str, Path]) -> dict[str, Path]:
    """Leave out ``ID_probabilities`` files written beside a prediction ``ID``."""
    return {
        cid: path
        for cid, path in preds.items()
        if not (cid.endswith(_PROBABILITIES_SUFFIX) and cid[: -len(_PROBABILITIES_SUFFIX)] in preds)
    }


def _base_id(cid: str) -> str:
    return _CHANNEL_SUFFIX.sub("", cid)


def pair_cases(
    preds: dict[str, Path], refs: dict[str, Path]
) -> tuple[list[tuple[str, Path, Path]], dict[str, Path], dict[str, Path]]:
    """Pair predictions and references by case id.

    Exact ids pair first. What is left pairs when the ids agree once an nnU-Net
    channel suffix (``_0000``) is removed from either, e.g. prediction
    ``case7_0000.nii.gz`` with reference ``case7.nii.gz`` (only one-to-one matches).
    Returns (pairs as (case, prediction, reference), references without a
    prediction, predictions without a reference).
    """
    pairs = [(cid, preds[cid], ref) for cid, ref in refs.items() if cid in preds]
    paired = {cid for cid, _, _ in pairs}
    rest_refs = {c: p for c, p in refs.items() if c not in paired}
    rest_preds = {c: p for c, p in preds.items() if c not in paired}

    def by_base(files: dict[str, Path]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for cid in files:
            groups.setdefault(_base_id(cid), []).append(cid)
        return groups

    ref_groups, pred_groups = by_base(rest_refs), by_base(rest_preds)
    for base in sorted(set(ref_groups) & set(pred_groups)):
        if len(ref_groups[base]) == 1 and len(pred_groups[base]) == 1:
            rid, pid = ref_groups[base][0], pred_groups[base][0]
            pairs.append((base, rest_preds.pop(pid), rest_refs.pop(rid)))
    pairs.sort(key=lambda item: item[0])
    return pairs, rest_refs, rest_preds


def _stats(values: Sequence[float], count_inf: bool = False) -> dict:
    """mean/std/median/n over the finite values (None when there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    out: dict = {"mean": None, "std": None, "median": None, "n": int(finite.size)}
    if finite.size:
        out.update(
            mean=float(finite.mean()), std=float(finite.std()), median=float(np.median(finite))
        )
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
        writer.writerow(
            [row["case"], row["label"]] + [_format_number(row[c]) for c in COLUMNS[2:]]
        )
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def _complete_rows(rows_by_case: dict[str, list[dict]], labels: Sequence[int]) -> list[dict]:
    """Exactly one row per case and label: absent labels get the both-empty row."""
    out = []
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
    folder is created, and may be anywhere, including inside ``pred_dir``). Returns
    the summary dict.
    """
    pred_dir, ref_dir, out_dir = Path(pred_dir), Path(ref_dir), Path(out_dir)
    if labels is not None:
        labels = _check_labels(labels)
    refs, ref_clashes = _scan_folder(ref_dir, "reference")
    preds, pred_clashes = _scan_folder(pred_dir, "prediction")
    if not refs:
        raise BrainsegError(f"{ref_dir}: no reference masks (.nii.gz, .nii, .mha, .mhd, .nrrd)")
    preds = _drop_probability_maps(preds)
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

    rows_by_case: dict[str, list[dict]] = {}
    show = progress and sys.stderr.isatty()
    for cid, pred_path, ref_path in tqdm(pairs, desc="evaluate", unit="case", disable=not show):
        try:
            rows_by_case[cid] = evaluate_case(pred_path, ref_path, labels, case=cid)
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

    if labels is None:  # every label some scored reference contains
        labels = sorted(
            {r["label"] for rows in rows_by_case.values() for r in rows if r["ref_volume_mm3"] > 0}
        )
    rows = _complete_rows(rows_by_case, labels)
    summary = summarize(rows, labels, n_cases=len(rows_by_case), failed=failed)
    write_metrics_csv(out_dir / METRICS_NAME, rows)
    atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    if failed:
        names = ", ".join(sorted({f["case"] for f in failed}))
        _report(f"{len(failed)} case(s) failed: {names}")
    return summary


# ----------------------------------------------------------------------------- CLI


def parse_labels(text: str | None) -> list[int] | None:
    """``"1,2,3"`` -> [1, 2, 3]; None -> None (all labels). Bad text -> BrainsegError."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BrainsegError(
            f"--labels {text!r}: expected comma-separated positive integers, e.g. 1,2,3"
        ) from None
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


def evaluate_from_cli(args: argparse.Namespace) -> int:
    """``brainseg evaluate``: 0 when every case was scored, 1 if any failed or none was."""
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
