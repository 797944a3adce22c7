"""DICOM series: finding them in a folder and reading one as a checked stack of slices.

A file is DICOM by its content (the 128-byte preamble then ``DICM``), whatever its name,
so exports without a ``.dcm`` suffix are found. The files of a folder are grouped into
series by SeriesInstanceUID and read through SimpleITK's series reader (GDCM): the
reader brainseg already uses for ``.mha``/``.nrrd``, with no extra dependency; it decodes
compressed transfer syntaxes and applies the rescale slope and intercept.

Before any pixel is read, every slice's header is checked, because the series reader
itself would stack whatever it is given: one ImageOrientationPatient, one size and pixel
spacing, positions stacked along the slice normal at one even step (a missing slice
shows as a gap). The geometry here is ITK's (LPS world); :mod:`brainseg.io.images` turns
it into a :class:`~brainseg.io.images.Geometry`'s RAS affine with the same conversion it
uses for every SimpleITK file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.errors import InputError
from brainseg.io.itk import ItkHeader

#: The four bytes after a DICOM file's 128-byte preamble.
DICOM_MAGIC = b"DICM"
#: A DICOMDIR is an index of a media's files, not an image.
DICOMDIR = "DICOMDIR"

# Slices' orientations must agree to this (direction cosines); positions to this (mm).
COSINE_ATOL = 1e-4
POSITION_ATOL = 1e-3
# A step between slice positions may differ from the series' step by this fraction.
STEP_RTOL = 0.01

SERIES_DESCRIPTION = "0008|103e"
ORIENTATION = "0020|0037"
POSITION = "0020|0032"


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series: the folder holding its files and its SeriesInstanceUID.

    It stands where a scan file's path stands (a case's channel); ``os.fspath`` gives the
    folder, ``str`` the folder and the series, as messages name it.
    """

    folder: Path
    uid: str
    description: str = ""

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:
        return f"{self.folder} (series {self.uid})"

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class SeriesHeader:
    """A checked series: its files in volume order (the third axis) and its ITK header (LPS):
    size (columns, rows, slices), spacing, direction, origin."""

    files: tuple[Path, ...]
    itk: ItkHeader


def is_dicom_file(path: Path) -> bool:
    """True for a readable, non-hidden regular file with the DICOM preamble (not a DICOMDIR)."""
    if path.name.startswith(".") or path.name.upper() == DICOMDIR:
        return False
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == DICOM_MAGIC


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder``, by name (empty if it cannot be listed)."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    return [p for p in entries if is_dicom_file(p)]


def _reader(path: Path) -> Any:
    """A SimpleITK file reader with ``path``'s header read (no pixels)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"is not a readable DICOM file ({_short(exc)})") from None
    return reader


def find_series(folder: Path) -> list[DicomSeries]:
    """The DICOM series of the files directly in ``folder``, by description then UID."""
    import SimpleITK as sitk

    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise InputError(folder, f"its DICOM files cannot be read ({_short(exc)})") from None
    out = []
    for uid in uids:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        reader = _reader(Path(files[0]))
        desc = reader.GetMetaData(SERIES_DESCRIPTION).strip() if reader.HasMetaDataKey(SERIES_DESCRIPTION) else ""
        out.append(DicomSeries(folder, str(uid), desc))
    return sorted(out, key=lambda s: (s.description, s.uid))


def only_series(folder: Path) -> DicomSeries:
    """The one DICOM series of ``folder`` (:class:`InputError` if it holds none or several)."""
    series = find_series(folder)
    if len(series) != 1:
        uids = ", ".join(s.uid for s in series) or "none readable"
        raise InputError(folder, f"holds {len(series)} DICOM series ({uids}); give one series per folder")
    return series[0]


def series_case_id(series: DicomSeries) -> str:
    """A case id for one of several series in a folder: its description (characters other
    than letters, digits, ``.`` and ``-`` made ``_``) then ``_`` and its UID."""
    desc = re.sub(r"[^A-Za-z0-9.-]+", "_", series.description).strip("_.")
    return f"{desc}_{series.uid}" if desc else series.uid


def _series_files(series: DicomSeries) -> list[Path]:
    import SimpleITK as sitk

    if not series.folder.is_dir():
        raise InputError(series, "folder not found")
    try:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series.folder), series.uid)
    except RuntimeError as exc:
        raise InputError(series, f"its DICOM files cannot be read ({_short(exc)})") from None
    if not files:
        raise InputError(series, "no DICOM file of this series is in the folder")
    return [Path(f) for f in files]


def read_series_header(series: DicomSeries) -> SeriesHeader:
    """The series' slices checked and put in order along their normal; raises
    :class:`InputError` naming the series for mixed orientations, sizes or spacings, slices
    missing their position, two slices at one position, or uneven steps (a missing slice)."""
    files = _series_files(series)
    readers = [_reader(f) for f in files]
    if len(files) == 1:  # one file: a multi-frame volume, or a single slice
        itk = ItkHeader.of(readers[0])
        if len(itk.size) != 3 or itk.size[2] < 2:
            raise InputError(series, "holds a single 2D slice; a 3D series is required")
        return SeriesHeader(tuple(files), itk)
    for f, r in zip(files, readers):
        if not (r.HasMetaDataKey(ORIENTATION) and r.HasMetaDataKey(POSITION)):
            raise InputError(series, f"slice {f.name} has no ImagePositionPatient / ImageOrientationPatient")
        if len(r.GetSize()) != 3 or r.GetSize()[2] != 1:
            raise InputError(series, f"{f.name} is a multi-frame file inside a series of several files")
    first, name0 = readers[0], files[0].name
    directions = [np.array(r.GetDirection(), dtype=np.float64).reshape(3, 3) for r in readers]
    for f, r, d in zip(files, readers, directions):
        if not np.allclose(d, directions[0], atol=COSINE_ATOL):
            raise InputError(
                series,
                f"mixes slice orientations: ImageOrientationPatient of {f.name} differs from {name0}'s "
                "(one series must be one stack of parallel slices)",
            )
        if tuple(r.GetSize()) != tuple(first.GetSize()):
            raise InputError(series, f"slice {f.name} is {r.GetSize()[:2]} pixels, {name0} {first.GetSize()[:2]}")
        if not np.allclose(r.GetSpacing()[:2], first.GetSpacing()[:2], atol=POSITION_ATOL):
            raise InputError(series, f"slice {f.name}'s PixelSpacing differs from {name0}'s")
    direction = directions[0]
    origins = np.array([r.GetOrigin() for r in readers], dtype=np.float64)
    depth = origins @ direction[:, 2]  # position along the slice normal
    order = np.argsort(depth, kind="stable")
    files, origins, depth = [files[i] for i in order], origins[order], depth[order]
    steps = np.diff(depth)
    if steps.min() < POSITION_ATOL:
        i = int(np.argmin(steps))
        raise InputError(series, f"slices {files[i].name} and {files[i + 1].name} are at the same position")
    step = float(np.median(steps))
    bad = np.abs(steps - step) > STEP_RTOL * step + POSITION_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            series,
            f"slice positions are not evenly spaced: {files[i].name} and {files[i + 1].name} are "
            f"{steps[i]:.3g} mm apart, the other slices {step:.3g} mm (a missing slice?)",
        )
    in_plane = (origins - origins[0]) @ direction[:, :2]
    if np.abs(in_plane).max() > POSITION_ATOL + STEP_RTOL * step:
        raise InputError(series, "slices are not stacked along their normal (a tilted gantry?); not supported")
    size, spacing = first.GetSize(), first.GetSpacing()
    return SeriesHeader(
        tuple(files),
        ItkHeader(
            size=(int(size[0]), int(size[1]), len(files)),
            components=1,
            spacing=(float(spacing[0]), float(spacing[1]), step),
            direction=tuple(float(v) for v in direction.ravel()),
            origin=tuple(float(v) for v in origins[0]),
        ),
    )


def read_series_image(series: DicomSeries, header: SeriesHeader) -> Any:
    """The series' voxels as a SimpleITK image, its files read in ``header``'s order; its
    geometry must be the header's (else :class:`InputError`)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in header.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(series, f"voxel data cannot be read ({_short(exc)})") from None
    got, want = ItkHeader.of(image), header.itk
    same = (
        got.size == want.size
        and np.allclose(got.spacing, want.spacing, rtol=1e-4, atol=1e-6)
        and np.allclose(got.direction, want.direction, atol=COSINE_ATOL)
        and np.allclose(got.origin, want.origin, atol=POSITION_ATOL)
    )
    if not same:
        raise InputError(series, "SimpleITK's series reader stacked the slices differently from their headers")
    return image


def _short(exc: BaseException) -> str:
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (text[-1] if text else type(exc).__name__)[:200]
