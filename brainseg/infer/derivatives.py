"""BIDS derivatives out: what ``brainseg predict --bids-derivatives`` writes besides each mask.

Per case (named by :func:`brainseg.data.bids.derivative_path`, beside its mask
``..._desc-brainseg_dseg.nii.gz``): ``..._dseg.tsv`` (the look-up table the BIDS
derivatives spec asks for: ``index``, ``name``, the model card's labels), ``..._dseg.json``
(``Description``, ``Sources`` and ``SpatialReference`` as BIDS URIs into the raw data set,
plus brainseg's ``Background`` and ``OutOfDistribution``) and ``..._volumes.tsv``
(``index``, ``name``, ``volume_mm3`` of every non-background label); with probabilities,
``..._desc-brainseg_probseg.nii.gz`` (4D, one volume per class or region) and its ``.json``
naming them (``Channels``). Volumes are one file per
case rather than one table per run so that each lies beside the segmentation it measures, is
written with it (atomically, or not at all) and is never lost when a later run skips or redoes
other cases. BIDS has no suffix for volume tables, so ``.bidsignore`` lists them.

At the top: ``dataset_description.json`` (``DatasetType: derivative``; ``GeneratedBy``
names brainseg, its version and the model checkpoint with its SHA-256; ``DatasetLinks``
and ``SourceDatasets`` point at the raw BIDS roots), a ``README`` and ``.bidsignore``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from brainseg._version import __version__
from brainseg.data.bids import bids_root_of, derivative_path
from brainseg.data.cases import Case
from brainseg.errors import BrainsegError
from brainseg.io.atomic import atomic_write_text
from brainseg.io.dicom import DicomSeries
from brainseg.model.card import ModelCard

#: The BIDS version the derivatives follow.
BIDS_VERSION = "1.10.0"
DESC = "brainseg"
VOLUMES_SUFFIX = "volumes"
#: What BIDS has no suffix for: the volume tables, and the previews and DICOM SEG objects predict can add.
BIDSIGNORE = f"*_desc-{DESC}_{VOLUMES_SUFFIX}.tsv\n*_preview.png\n*_seg.dcm\nbrainseg_run.json\n"


@dataclass(frozen=True)
class BidsOutput:
    """Where the derivatives go and the raw BIDS roots their sources are in (root -> DatasetLinks key)."""

    output: Path
    roots: Mapping[Path, str]

    def uri(self, scan: Path | DicomSeries) -> str:
        """``bids:<key>:<path in the root>`` of a source scan."""
        if not isinstance(scan, Path):
            raise BrainsegError(f"{scan}: a DICOM series is not a BIDS source scan")
        root = bids_root_of(scan)
        key = None if root is None else self.roots.get(root.resolve())
        if root is None or key is None:
            raise BrainsegError(f"{scan}: not in a BIDS folder's sub-*/[ses-*/]anat/")
        return f"bids:{key}:{scan.resolve().relative_to(root.resolve()).as_posix()}"


def bids_output(output: Path, cases: Sequence[Case]) -> BidsOutput:
    """The :class:`BidsOutput` for ``cases``; a :class:`BrainsegError` naming a case that is not from a
    BIDS folder, or two cases whose derivatives would share a name."""
    roots: set[Path] = set()
    names: dict[Path, str] = {}
    for case in cases:
        first = case.images[0]
        root = bids_root_of(first) if isinstance(first, Path) else None
        try:
            path = derivative_path(output, case.case_id, "dseg", ".nii.gz", DESC)
        except ValueError:
            root = None
        if root is None:
            raise BrainsegError(
                f"{case.images[0]}: --bids-derivatives needs BIDS input (sub-*/[ses-*/]anat/ scans of a BIDS "
                f"folder), and case {case.case_id!r} is not from one"
            )
        if path in names:
            raise BrainsegError(f"cases {names[path]!r} and {case.case_id!r} would both be written to {path}")
        names[path] = case.case_id
        roots.add(root.resolve())
    ordered = sorted(roots)
    keys = {r: "raw" for r in ordered} if len(ordered) == 1 else {r: f"raw{i + 1}" for i, r in enumerate(ordered)}
    return BidsOutput(output, keys)


def output_paths(output: Path, case_id: str, save_probabilities: bool) -> dict[str, Path]:
    """The derivative files of a case: ``mask``, ``lut``, ``sidecar``, ``volumes`` and, if asked for,
    ``probabilities`` (a 4D ``probseg``) with ``probabilities_channels`` (its sidecar)."""

    def at(suffix: str, ext: str) -> Path:
        return derivative_path(output, case_id, suffix, ext, DESC)

    paths = {
        "mask": at("dseg", ".nii.gz"),
        "lut": at("dseg", ".tsv"),
        "sidecar": at("dseg", ".json"),
        "volumes": at(VOLUMES_SUFFIX, ".tsv"),
    }
    if save_probabilities:
        paths["probabilities"] = at("probseg", ".nii.gz")
        paths["probabilities_channels"] = at("probseg", ".json")
    return paths


def _tsv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def lut_tsv(card: ModelCard) -> str:
    """The dseg look-up table: ``index``, ``name`` of every label of the card (background included)."""
    return _tsv(["index", "name"], [(v, card.labels[v]) for v in card.label_values])


def volumes_tsv(volumes: Mapping[int, float], label_names: Mapping[int, str]) -> str:
    """``index``, ``name``, ``volume_mm3`` (4 decimals) of each measured label."""
    rows = [(v, label_names.get(v, f"label_{v}"), f"{float(mm3):.4f}") for v, mm3 in sorted(volumes.items())]
    return _tsv(["index", "name", "volume_mm3"], rows)


def sidecar_json(bids: BidsOutput, case: Case, background: str, ood: str) -> str:
    """The dseg's JSON sidecar: its sources, the grid it is in (the first source's) and brainseg's notes."""
    sources = [bids.uri(p) for p in case.images]
    meta = {
        "Description": "Segmentation by brainseg, in the voxel grid of its first source scan.",
        "Sources": sources,
        "SpatialReference": sources[0],
        "Background": background,
        "OutOfDistribution": [r for r in ood.split("; ") if r],
    }
    return json.dumps(meta, indent=2) + "\n"


def probseg_json(bids: BidsOutput, case: Case, channels: dict) -> str:
    """The probseg's sidecar: its sources and what its 4th-axis volumes are."""
    sources = [bids.uri(p) for p in case.images]
    meta = {
        "Description": "Probabilities by brainseg, one volume per entry of Channels.",
        "Sources": sources,
        "SpatialReference": sources[0],
        "Channels": channels,
    }
    return json.dumps(meta, indent=2) + "\n"


def write_dataset_files(bids: BidsOutput, checkpoint: Path, sha256: str) -> None:
    """``dataset_description.json``, ``README`` and ``.bidsignore`` at the top of the derivatives."""
    description = {
        "Name": "brainseg segmentations",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "brainseg",
                "Version": __version__,
                "Description": f"model checkpoint {checkpoint.name}, SHA-256 {sha256}",
            }
        ],
        "DatasetLinks": {key: root.as_uri() for root, key in bids.roots.items()},
        "SourceDatasets": [{"URL": root.as_uri()} for root in bids.roots],
        "BrainsegModel": {"Checkpoint": checkpoint.name, "SHA256": sha256},
    }
    out = bids.output
    atomic_write_text(out / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    atomic_write_text(
        out / "README",
        "Brain segmentations written by `brainseg predict --bids-derivatives`.\n\n"
        f"Per scan: *_desc-{DESC}_dseg.nii.gz (labels, in the scan's own voxel grid), *_dseg.tsv (the labels' "
        f"names), *_dseg.json (sources) and *_desc-{DESC}_{VOLUMES_SUFFIX}.tsv (volume of each label in mm3).\n",
    )
    atomic_write_text(out / ".bidsignore", BIDSIGNORE)
