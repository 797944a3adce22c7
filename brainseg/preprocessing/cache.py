"""Preprocess every training case once and keep it as memory-mappable ``.npy``.

Per case the cache holds ``ID.npy`` (C, X, Y, Z float32, preprocessed),
``ID_seg.npy`` (uint8 class indices: the i-th smallest label value is class i), ``ID_locs.npz`` (a sample of voxel coordinates per
foreground class, for foreground oversampling) and ``ID.json`` (the preprocessing
record and a key over the source files and settings). A case whose key still matches
is not decoded again, so epochs, resumed runs and later runs skip NIfTI entirely.

The key covers everything the three arrays depend on: the files (path, size, mtime; the
channel files in their order, then the label), the target spacing, the normalisation (and
for ``ct`` the data set's intensities), the crop, the label values (the class index of a
value is its rank among them), the number of stored locations and ``PREPROCESS_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from brainseg.config import NormalizationScheme
from brainseg.data.cases import Case
from brainseg.errors import InputError
from brainseg.io.atomic import atomic_path, atomic_write_text
from brainseg.io.images import check_file, read_channels, read_geometry, read_label
from brainseg.preprocessing.foreground import threshold_mask
from brainseg.preprocessing.normalisation import ChannelIntensity
from brainseg.preprocessing.preprocess import (
    PREPROCESS_VERSION,
    PreprocessRecord,
    preprocess,
    to_ras,
)

#: Voxel coordinates stored per class for foreground sampling.
MAX_LOCATIONS = 10_000


@dataclass
class CachedCase:
    case_id: str
    data_path: Path
    seg_path: Path
    locs_path: Path
    record: PreprocessRecord
    classes: list[int]  # foreground classes present

    def load(self, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        mode: Literal["r"] | None = "r" if mmap else None
        return np.load(self.data_path, mmap_mode=mode), np.load(self.seg_path, mmap_mode=mode)

    def locations(self) -> dict[int, np.ndarray]:
        with np.load(self.locs_path) as z:
            return {int(k.split("_")[1]): z[k] for k in z.files}


def ras_spacing(case: Case, max_voxels: int) -> list[float]:
    """A case's voxel size in RAS axis order, from its first channel's header."""
    geom = read_geometry(case.images[0], max_voxels=max_voxels)
    return to_ras(geom.spacing, geom)


def _cache_key(case: Case, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in list(case.images) + ([case.label] if case.label else []):
        st = os.stat(check_file(p))  # a broken link, a missing file, ...: named as such
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


#: Foreground voxels sampled per case and channel for the data set's intensities (nnU-Net's number).
INTENSITY_SAMPLES = 10_000


def cache_settings(
    target_spacing: Sequence[float],
    label_values: Sequence[int],
    normalization: NormalizationScheme,
    crop_to_nonzero: bool,
    intensity: Sequence[ChannelIntensity] | None = None,
) -> dict:
    """What a cache entry's arrays depend on besides its files (part of its key)."""
    return {
        "spacing": [float(s) for s in target_spacing],
        "normalization": normalization,
        "intensity": [c.to_dict() for c in intensity] if normalization == "ct" and intensity else None,
        "crop": bool(crop_to_nonzero),
        "labels": sorted(int(v) for v in label_values),
        "locations": MAX_LOCATIONS,
        "version": PREPROCESS_VERSION,
    }


def intensity_statistics(
    cases: Sequence[Case], cache_dir: Path | None = None, max_voxels: int = 1024**3
) -> list[ChannelIntensity]:
    """Per channel, the mean, std and 0.5 / 99.5 percentiles of the training cases' foreground
    intensities (nnU-Net's CT fingerprint: its labelled voxels, a case without any its
    threshold foreground; at most ``INTENSITY_SAMPLES`` voxels a case), in the files' own
    units. Kept in ``cache_dir/intensity.json`` under a key over the files."""
    key = hashlib.sha256("".join(_cache_key(c, {"intensity": PREPROCESS_VERSION}) for c in cases).encode()).hexdigest()[
        :20
    ]
    path = Path(cache_dir) / "intensity.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return [ChannelIntensity.from_dict(c) for c in stored["channels"]]
    samples: list[list[np.ndarray]] = []
    for case in cases:
        data, _ = read_channels(case.images, max_voxels=max_voxels)
        mask = read_label(case.label, max_voxels=max_voxels)[0] > 0 if case.label is not None else None
        if mask is None or not mask.any():
            mask = threshold_mask(data)
        rng = np.random.default_rng(1234)
        take = rng.choice(int(mask.sum()), min(int(mask.sum()), INTENSITY_SAMPLES), replace=False)
        samples.append([channel[mask][take] for channel in data])
    out = []
    for c in range(len(samples[0])):
        values = np.concatenate([s[c] for s in samples]).astype(np.float64)
        lo, hi = np.percentile(values, [0.5, 99.5])
        out.append(ChannelIntensity(float(values.mean()), max(float(values.std()), 1e-8), float(lo), float(hi)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "channels": [c.to_dict() for c in out]}))
    return out


def _sample_locations(seg: np.ndarray, classes: Sequence[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for c in classes:
        coords = np.argwhere(seg == c).astype(np.int32)
        if len(coords) > MAX_LOCATIONS:
            coords = coords[rng.choice(len(coords), MAX_LOCATIONS, replace=False)]
        out[f"class_{c}"] = coords
    return out


def cache_case(
    case: Case,
    cache_dir: Path,
    target_spacing: Sequence[float],
    label_values: Sequence[int],
    normalization: NormalizationScheme = "zscore",
    crop_to_nonzero: bool = True,
    max_voxels: int = 1024**3,
    intensity: Sequence[ChannelIntensity] | None = None,
) -> CachedCase:
    """Preprocess one labelled case into the cache (or reuse a matching entry); ``intensity``:
    the data set's (:func:`intensity_statistics`), for the ``ct`` normalisation."""
    settings = cache_settings(target_spacing, label_values, normalization, crop_to_nonzero, intensity)
    key = _cache_key(case, settings)
    meta_path = cache_dir / f"{case.case_id}.json"
    paths = dict(
        data_path=cache_dir / f"{case.case_id}.npy",
        seg_path=cache_dir / f"{case.case_id}_seg.npy",
        locs_path=cache_dir / f"{case.case_id}_locs.npz",
    )
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and all(p.is_file() for p in paths.values()):
            return CachedCase(
                case.case_id, record=PreprocessRecord.from_dict(meta["record"]), classes=meta["classes"], **paths
            )

    data, geom = read_channels(case.images, max_voxels=max_voxels)
    if case.label is None:
        raise InputError(case.images[0], "training case has no label file")
    label, lgeom = read_label(case.label, max_voxels=max_voxels)
    if not geom.same_grid(lgeom):
        raise InputError(case.label, f"label geometry ({lgeom.describe()}) differs from its image ({geom.describe()})")
    present = np.unique(label)
    unknown = sorted(set(int(v) for v in present) - set(int(v) for v in label_values))
    if unknown:
        raise InputError(
            case.label, f"label values {unknown} are not among the data set's labels {sorted(label_values)}"
        )
    img, seg, record = preprocess(
        data,
        geom,
        target_spacing,
        label=label,
        normalization=normalization,
        crop_to_nonzero=crop_to_nonzero,
        intensity=intensity,
    )
    # Store class indices 0..K-1 (label values may have gaps, e.g. BraTS 0, 1, 2, 4).
    lut = np.zeros(int(max(label_values)) + 1, dtype=np.int16)
    lut[np.asarray(sorted(int(v) for v in label_values))] = np.arange(len(label_values), dtype=np.int16)
    seg = lut[seg].astype(np.uint8 if len(label_values) <= 256 else np.int16)
    classes = [int(c) for c in np.unique(seg) if c != 0]
    rng = np.random.default_rng(int(key[:8], 16))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths["data_path"]) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, img.astype(np.float32, copy=False))
    with atomic_path(paths["seg_path"]) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, seg)
    with atomic_path(paths["locs_path"]) as tmp:
        with open(tmp, "wb") as fh:
            arrays: dict[str, Any] = _sample_locations(seg, classes, rng)  # Any: mypy fears a key named allow_pickle
            np.savez(fh, **arrays)
    atomic_write_text(meta_path, json.dumps({"key": key, "record": record.to_dict(), "classes": classes}))
    return CachedCase(case.case_id, record=record, classes=classes, **paths)


def cache_cases(cases: Sequence[Case], cache_dir: Path, *settings, progress: bool = True, **named) -> list[CachedCase]:
    """:func:`cache_case` for every case, with its settings (``target_spacing``, ``label_values``, ...);
    the first bad case raises an error naming its file."""
    return [
        cache_case(case, Path(cache_dir), *settings, **named)
        for case in tqdm(cases, desc="preprocessing", unit="case", disable=not progress, leave=False)
    ]
