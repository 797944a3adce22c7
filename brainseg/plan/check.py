"""``brainseg check``: a data set's integrity before hours of training.

Every problem is collected (nothing stops at the first): errors (training would fail or
learn nonsense) and warnings (worth a look). Checked per case: each file readable, its
voxels finite (NaN/Inf counted), every channel on the first channel's grid, the label map
on the scan's grid with whole-number values among the data set's labels, and not empty;
across cases: orientations that differ, voxel sizes far from the median, a channel count
that differs. The fingerprint of the readable cases comes with it (:mod:`.fingerprint`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainseg.data.cases import Case, Dataset, DiscoveryError
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.io.images import DEFAULT_MAX_VOXELS, ScanSource, read_image
from brainseg.labels.laterality import from_names
from brainseg.plan.fingerprint import CaseFingerprint, Fingerprint, case_fingerprint

#: A case's voxel size is an outlier when an axis is this many times above or below the median.
SPACING_OUTLIER = 2.0


@dataclass
class CheckReport:
    dataset: Dataset | None
    fingerprint: Fingerprint | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _read(path: ScanSource, kind: str, problems: list[str], max_voxels: int):
    """A scan's data (NaN/Inf kept, counted) and geometry, or None with the problem noted."""
    try:
        data, geom = read_image(path, max_voxels=max_voxels, check_finite=False)
    except BrainsegError as exc:
        problems.append(str(exc))
        return None, None
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        problems.append(f"{path}: {bad:,} NaN or Inf voxels in the {kind}")
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return data, geom


def check_case(
    case: Case, label_values: set[int], errors: list[str], warnings: list[str], max_voxels: int
) -> CaseFingerprint | None:
    """Check one case; its fingerprint when every file could be read and agrees."""
    arrays, first = [], None
    n_errors = len(errors)
    for path in case.images:
        data, geom = _read(path, "scan", errors, max_voxels)
        if data is None:
            continue
        if not data.any():
            errors.append(f"{path}: all voxels are zero (an empty scan)")
        if first is None:
            first = geom
        elif not first.same_grid(geom):
            errors.append(
                f"{path}: channel grid ({geom.describe()}) differs from {Path(first.path).name} ({first.describe()})"
            )
        arrays.append(data)
    label = None
    if case.label is not None:
        label, lgeom = _read(case.label, "label map", errors, max_voxels)
        if label is not None:
            if first is not None and not first.same_grid(lgeom):
                errors.append(
                    f"{case.label}: label geometry ({lgeom.describe()}) differs from its image ({first.describe()})"
                )
            if not np.allclose(np.rint(label), label, atol=1e-3):
                errors.append(f"{case.label}: label map has non-integer values")
            label = np.rint(label).astype(np.int64)
            present = {int(v) for v in np.unique(label)}
            unknown = sorted(present - label_values) if label_values else sorted(v for v in present if v < 0)
            if unknown:
                errors.append(
                    f"{case.label}: label values {unknown} are not among the data set's labels {sorted(label_values)}"
                )
            if present <= {0}:
                warnings.append(f"{case.label}: the label map is empty (background only)")
    if len(errors) > n_errors or first is None:
        return None
    return case_fingerprint(case.case_id, np.stack(arrays), first, label)


def _dataset_warnings(cases: list[CaseFingerprint], warnings: list[str], root: Path) -> None:
    if len(cases) < 2:
        return
    codes = sorted({c.axcodes for c in cases})
    if len(codes) > 1:
        counts = {code: sum(c.axcodes == code for c in cases) for code in codes}
        warnings.append(
            f"{root}: the cases' orientations differ ({', '.join(f'{k} x{v}' for k, v in counts.items())}); "
            "brainseg reorients each to RAS, but check that this is intended"
        )
    median = np.median(np.array([c.ras_spacing for c in cases]), axis=0)
    for c in cases:
        ratio = np.asarray(c.ras_spacing) / median
        if ratio.max() > SPACING_OUTLIER or ratio.min() < 1 / SPACING_OUTLIER:
            sp = "x".join(f"{v:.3g}" for v in c.ras_spacing)
            med = "x".join(f"{v:.3g}" for v in median)
            warnings.append(f"{c.case_id}: voxel size {sp} mm is far from the data set's median {med} mm")


def check_dataset(
    root: Path,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> CheckReport:
    """Discover ``root`` and check every case (training and test); never raises for a data problem."""
    try:
        ds = discover_dataset(Path(root))
    except DiscoveryError as exc:
        return CheckReport(None, None, errors=[str(exc)])
    errors: list[str] = []
    warnings: list[str] = []
    label_values = {int(v) for v in ds.labels}
    cases = list(ds.train) + list(ds.test)
    fingerprints = {}
    for case in cases if progress is None else progress(cases):
        fp = check_case(case, label_values, errors, warnings, max_voxels)
        if fp is not None:
            fingerprints[case.case_id] = fp
    if not ds.train:
        errors.append(f"{root}: no labelled training cases")
    n_channels = len(ds.channels)
    for case in cases:
        if len(case.images) != n_channels:
            errors.append(f"{case.case_id}: {len(case.images)} channel file(s), the data set has {n_channels}")
    _dataset_warnings(list(fingerprints.values()), warnings, Path(root))
    lateral = from_names(ds.labels)
    if lateral.unpaired:
        names = ", ".join(f"{v} {ds.labels[v]!r}" for v in lateral.unpaired)
        warnings.append(f"{root}: lateralised labels without a left/right partner ({names}): no left-right flips")
    train_fps = [fingerprints[c.case_id] for c in ds.train if c.case_id in fingerprints]
    dataset_fp = Fingerprint(
        channels=list(ds.channels),
        labels=dict(ds.labels),
        cases=train_fps,
        layout=ds.layout,
        mirror_pairs=[list(p) for p in lateral.pairs],
        unpaired_lateral=list(lateral.unpaired),
        regions=None if ds.regions is None else ds.regions.to_dict(),
    )
    return CheckReport(ds, dataset_fp, errors, warnings)
