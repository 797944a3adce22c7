"""The fingerprint of a data set: what planning, checking and the out-of-distribution warning know.

Per case (nnU-Net's fingerprint, and what our rules need besides): the voxel size and shape
(file order and RAS order), the orientation codes and how oblique the grid is, per channel
the intensity percentiles inside the foreground, whether the background is exactly zero,
the foreground's extent in mm, and per label its volume and number of connected
components, and how the labels sit against the scan's non-zero region (what the
``input_mask`` rules assume). Data-set wide: the channel names, the label names, the
left/right label pairs and the regions.

:func:`fingerprint_dataset` caches the result as JSON (``fingerprint.json`` in the run
folder) keyed by every file's size and modification time, so a second run reads it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from brainseg.data.cases import Case, Dataset
from brainseg.errors import InputError
from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import (
    DEFAULT_MAX_VOXELS,
    Geometry,
    check_file,
    read_channels,
    read_label,
)
from brainseg.io.naming import FINGERPRINT_FILE  # noqa: F401 (re-exported: the planner's name for it)
from brainseg.labels.laterality import Laterality, from_names
from brainseg.preprocessing.foreground import subject_mask
from brainseg.preprocessing.preprocess import to_ras
from brainseg.quality.ood import TrainingRanges
from brainseg.quality.scan_stats import ChannelStats, obliquity, scan_statistics

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 2


@dataclass
class CaseFingerprint:
    case_id: str
    shape: list[int]
    spacing: list[float]
    #: Voxel size and shape in RAS axis order (what the network sees before resampling).
    ras_spacing: list[float]
    ras_shape: list[int]
    axcodes: str
    #: Largest angle (degrees) between a voxel axis and its nearest world axis.
    obliquity: float
    channels: list[ChannelStats]
    #: The foreground's bounding box in mm per RAS axis.
    extent_mm: list[float]
    #: Label value -> volume (mm^3) and number of connected components (26-connected).
    label_volumes: dict[int, float] = field(default_factory=dict)
    label_components: dict[int, int] = field(default_factory=dict)
    #: Fraction of the labelled voxels where the scan is zero in every channel, and of the
    #: scan's non-zero voxels (holes filled) that are labelled background.
    labels_outside_scan: float = 0.0
    scan_unlabelled: float = 0.0
    #: Connected components (26-connected) of every non-zero label together, and the share of
    #: the labelled volume in the largest of them.
    foreground_components: int = 0
    foreground_largest_fraction: float = 1.0

    @property
    def zero_background(self) -> bool:
        return all(c.zero_background for c in self.channels)


@dataclass
class Fingerprint:
    channels: list[str]
    labels: dict[int, str]
    cases: list[CaseFingerprint]
    layout: str = ""
    mirror_pairs: list[list[int]] = field(default_factory=list)
    unpaired_lateral: list[int] = field(default_factory=list)
    regions: dict[str, Any] | None = None
    version: int = FINGERPRINT_VERSION

    @property
    def laterality(self) -> Laterality:
        """The left/right pairs the label names give (``mirror_pairs``/``unpaired_lateral`` record them)."""
        return from_names(self.labels)

    @property
    def label_values(self) -> list[int]:
        """The labels the table names and the label maps hold, background included."""
        seen = {v for c in self.cases for v in c.label_volumes}
        return sorted(seen | set(self.labels) | {0})

    def median(self, name: str) -> list[float]:
        return [float(v) for v in np.median(np.array([getattr(c, name) for c in self.cases], dtype=float), axis=0)]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for case in out["cases"]:
            case["label_volumes"] = {str(k): v for k, v in case["label_volumes"].items()}
            case["label_components"] = {str(k): v for k, v in case["label_components"].items()}
        out["labels"] = {str(k): v for k, v in self.labels.items()}
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Fingerprint:
        cases = []
        for c in raw["cases"]:
            c = dict(c)
            c["channels"] = [ChannelStats(**s) for s in c["channels"]]
            c["label_volumes"] = {int(k): float(v) for k, v in c["label_volumes"].items()}
            c["label_components"] = {int(k): int(v) for k, v in c["label_components"].items()}
            cases.append(CaseFingerprint(**c))
        rest = {k: v for k, v in raw.items() if k not in ("cases", "labels")}
        return cls(labels={int(k): str(v) for k, v in raw["labels"].items()}, cases=cases, **rest)


# --------------------------------------------------------------------------- one case


def label_statistics(label: np.ndarray, voxel_volume: float) -> tuple[dict[int, float], dict[int, int]]:
    volumes, components = {}, {}
    structure = ndimage.generate_binary_structure(3, 3)
    counts = np.bincount(label.ravel().astype(np.int64))
    for value in np.nonzero(counts)[0]:
        if value == 0:
            continue
        volumes[int(value)] = float(counts[value]) * voxel_volume
        components[int(value)] = int(ndimage.label(label == value, structure=structure)[1])
    return volumes, components


def case_fingerprint(
    case_id: str, data: np.ndarray, geom: Geometry, label: np.ndarray | None = None
) -> CaseFingerprint:
    """The fingerprint of a (C, X, Y, Z) scan already read, with its label map on the same grid."""
    channels, extent, _ = scan_statistics(data, geom)
    out = CaseFingerprint(
        case_id=case_id,
        shape=[int(s) for s in geom.shape],
        spacing=[round(float(s), 5) for s in geom.spacing],
        ras_spacing=[round(v, 5) for v in to_ras(geom.spacing, geom)],
        ras_shape=[int(v) for v in to_ras(geom.shape, geom)],
        axcodes="".join(geom.axcodes),
        obliquity=round(obliquity(geom.affine), 3),
        channels=channels,
        extent_mm=extent,
    )
    if label is not None:
        out.label_volumes, out.label_components = label_statistics(label, geom.voxel_volume)
        labelled = label > 0
        components, out.foreground_components = ndimage.label(
            labelled, structure=ndimage.generate_binary_structure(3, 3)
        )
        sizes = np.bincount(components.ravel())[1:]
        out.foreground_largest_fraction = float(sizes.max() / sizes.sum()) if sizes.size else 1.0
        nonzero = ~np.all(data == 0, axis=0)
        n_lab = int(np.count_nonzero(labelled))
        out.labels_outside_scan = float(np.count_nonzero(labelled & ~nonzero) / max(1, n_lab))
        filled = subject_mask(data)
        out.scan_unlabelled = float(np.count_nonzero(filled & ~labelled) / max(1, int(np.count_nonzero(filled))))
    return out


def fingerprint_case(case: Case, max_voxels: int = DEFAULT_MAX_VOXELS) -> CaseFingerprint:
    data, geom = read_channels(case.images, max_voxels=max_voxels)
    label = None
    if case.label is not None:
        label, lgeom = read_label(case.label, max_voxels=max_voxels)
        if not lgeom.same_grid(geom):
            raise InputError(
                case.label, f"label geometry ({lgeom.describe()}) differs from its image ({geom.describe()})"
            )
    return case_fingerprint(case.case_id, data, geom, label)


# --------------------------------------------------------------------------- the data set


def _files_key(cases: Sequence[Case]) -> list[list]:
    key = []
    for case in cases:
        for path in list(case.images) + ([case.label] if case.label else []):
            st = check_file(path).stat()  # a missing or unreadable file: one line naming it
            key.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    return key


def fingerprint_dataset(
    dataset: Dataset,
    cache: Path | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    progress=None,
) -> Fingerprint:
    """The fingerprint of a discovered data set's training cases; read back from ``cache``
    (a JSON file) when its files are unchanged, else computed and written there.
    ``progress``: a callable wrapping the case iterator (a progress bar), or None."""
    key = _files_key(dataset.train)
    if cache is not None and Path(cache).is_file():
        try:
            stored = json.loads(Path(cache).read_text())
            if stored.get("files") == key and stored.get("fingerprint", {}).get("version") == FINGERPRINT_VERSION:
                return Fingerprint.from_dict(stored["fingerprint"])
            log.info("%s: the data set changed since it was fingerprinted; fingerprinting again", cache)
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable fingerprint cache; fingerprinting again", cache)
    cases = dataset.train if progress is None else progress(dataset.train)
    lateral = from_names(dataset.labels)
    fp = Fingerprint(
        channels=list(dataset.channels),
        labels=dict(dataset.labels),
        cases=[fingerprint_case(c, max_voxels) for c in cases],
        layout=dataset.layout,
        mirror_pairs=[list(p) for p in lateral.pairs],
        unpaired_lateral=list(lateral.unpaired),
        regions=None if dataset.regions is None else dataset.regions.to_dict(),
    )
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(cache), json.dumps({"files": key, "fingerprint": fp.to_dict()}))
    return fp


def training_ranges(fp: Fingerprint) -> TrainingRanges:
    """What the model card keeps of the training fingerprint for the out-of-distribution check."""
    return TrainingRanges.from_cases(
        [c.ras_spacing for c in fp.cases],
        [c.extent_mm for c in fp.cases],
        [c.obliquity for c in fp.cases],
        [[ch.depth_correlation for ch in c.channels] for c in fp.cases],
        [[ch.profile[2] for ch in c.channels] for c in fp.cases],
    )
