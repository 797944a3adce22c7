"""Structure volumes in mm³: per case, and one ``volumes.csv`` per run with a row per case (the
table FastSurfer and SynthSeg users expect).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import voxel_volume


def label_volumes(labels: np.ndarray, spacing: Sequence[float], label_values: Iterable[int]) -> dict[int, float]:
    """Volume in mm³ of each requested label (0.0 for a label that is absent)."""
    voxel_mm3 = voxel_volume(spacing)
    labels = np.asarray(labels)
    values = [int(v) for v in label_values]
    if np.issubdtype(labels.dtype, np.integer) and labels.size and labels.min() >= 0:
        counts = np.bincount(labels.ravel())  # one pass for all labels
        return {v: (int(counts[v]) if 0 <= v < counts.size else 0) * voxel_mm3 for v in values}
    return {v: int(np.count_nonzero(labels == v)) * voxel_mm3 for v in values}


def _format_volume(value: float) -> str:
    return f"{float(value):.4f}"


def volume_columns(label_values: Iterable[int], label_names: Mapping[int, str] | None = None) -> list[str]:
    """CSV column names ``<name>_mm3`` (``label_<v>_mm3`` when a label has no name)."""
    names = label_names or {}
    columns = []
    for v in label_values:
        name = str(names.get(v, "")).strip() or f"label_{v}"
        columns.append(f"{name}_mm3")
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates or "case" in columns:
        raise ValueError(f"label names give duplicate CSV columns: {', '.join(duplicates or ['case'])}")
    return columns


def write_volumes_csv(
    path: str | os.PathLike,
    volumes: Mapping[str, Mapping[int, float]],
    label_names: Mapping[int, str] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """Write one row per case: ``case,<name or label_v>_mm3,...`` (atomic write).

    ``extra`` adds text columns after the volumes: {column: {case: text}} (an empty
    cell where a case has none).

    ``volumes`` maps case id -> {label: mm³} (as :func:`label_volumes` returns). The
    columns are the union of all cases' labels in ascending order; a label missing
    from a case's dict is an empty cell (unknown), not 0. Rows are in case order as
    given. Volumes are written with 4 decimals (mm³).
    """
    path = Path(path)
    all_labels = sorted({int(v) for vols in volumes.values() for v in vols})
    columns = volume_columns(all_labels, label_names)
    extra = dict(extra or {})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", *columns, *extra])
    for case, vols in volumes.items():
        vols = {int(k): v for k, v in vols.items()}
        cells = [_format_volume(vols[v]) if v in vols else "" for v in all_labels]
        writer.writerow([case, *cells, *(str(col.get(case, "")) for col in extra.values())])
    atomic_write_text(path, buf.getvalue())
    return path
