"""Reading and writing scans with exact geometry.

Arrays are kept in the file's own voxel order (no reorientation happens here); the
:class:`Geometry` that travels with them holds everything needed to write a new map
that lines up voxel for voxel with the original: shape, the voxel-to-world affine
(RAS+ millimetres, nibabel's convention), and for NIfTI the original header, so the
written file keeps the input's qform/sform codes and both transforms.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; ``.mha``, ``.mhd`` and ``.nrrd``
through SimpleITK (LPS world converted to RAS), and so is a DICOM series
(:mod:`brainseg.io.dicom`): a :class:`~brainseg.io.dicom.DicomSeries`, or the path of a
folder that holds exactly one series, stands wherever a scan file's path does. Every write is atomic
(:func:`brainseg.io.atomic.atomic_path`): a temporary file in the destination folder,
fsynced, then renamed over the target. File-name rules live in :mod:`brainseg.io.naming`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from brainseg.errors import InputError
from brainseg.io.atomic import atomic_path
from brainseg.io.dicom import DicomSeries, dicom_files, only_series, read_series_header, read_series_image
from brainseg.io.itk import ItkHeader, array_xyz
from brainseg.io.naming import (
    IMAGE_SUFFIXES,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    image_suffix,
)

#: Default refusal threshold for a header's claimed voxel count (before allocating).
DEFAULT_MAX_VOXELS = 1024**3

# Tolerance when deciding whether two channel files share one voxel grid (mm).
AFFINE_ATOL = 1e-4

log = logging.getLogger(__name__)
_WARNED_NO_ORIENTATION: set[str] = set()


class Spacing(tuple):
    """The voxel size (mm) along each array axis, carrying the voxel's true volume (mm³):
    ``|det(affine[:3, :3])|``, which the product of the sizes is not for a sheared grid."""

    voxel_volume: float

    def __new__(cls, sizes, voxel_volume: float):
        out = super().__new__(cls, (float(s) for s in sizes))
        out.voxel_volume = float(voxel_volume)
        return out

    def __reduce__(self):
        return Spacing, (tuple(self), self.voxel_volume)


def voxel_volume(spacing: Sequence[float]) -> float:
    """A voxel's volume in mm³: a :class:`Spacing`'s ``voxel_volume`` (from the affine), else
    the product of three positive voxel sizes."""
    sizes = tuple(float(s) for s in spacing)
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"spacing must be three positive numbers (mm), got {sizes}")
    return float(getattr(spacing, "voxel_volume", sizes[0] * sizes[1] * sizes[2]))


@dataclass(frozen=True, eq=False)
class Geometry:
    """The voxel grid of a scan: what a mask written for it must reproduce."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    path: str | None = None

    @property
    def spacing(self) -> Spacing:
        """Voxel size in mm along each array axis (column norms of the affine), with the
        voxel volume |det| of the affine (:class:`Spacing`)."""
        return Spacing(np.linalg.norm(self.affine[:3, :3], axis=0), self.voxel_volume)

    @property
    def voxel_volume(self) -> float:
        """A voxel's volume in mm³: ``|det(affine[:3, :3])|`` (right for sheared grids too)."""
        return abs(float(np.linalg.det(self.affine[:3, :3])))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return tuple(nib.aff2axcodes(self.affine))

    @property
    def qform_code(self) -> int:
        return int(self.header["qform_code"]) if self.header is not None else 1

    @property
    def sform_code(self) -> int:
        return int(self.header["sform_code"]) if self.header is not None else 1

    def same_grid(self, other: Geometry, atol: float = AFFINE_ATOL) -> bool:
        return tuple(self.shape) == tuple(other.shape) and bool(np.allclose(self.affine, other.affine, atol=atol))

    def describe(self) -> str:
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        return f"shape {tuple(self.shape)}, {''.join(self.axcodes)}, {sp} mm"


# ----------------------------------------------------------------------------- reading


def _check_affine(path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)):
        raise InputError(path, "the affine (voxel-to-world transform) contains NaN or Inf")
    det = float(np.linalg.det(affine[:3, :3]))
    if not np.isfinite(det) or abs(det) < 1e-12:
        raise InputError(path, "the affine (voxel-to-world transform) is singular or zero")


def _spatial_shape(path, shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate a file's shape; return its 3D spatial shape."""
    shape = tuple(int(s) for s in shape)
    # Trailing singleton axes beyond the third are not real dimensions.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3:
        raise InputError(path, f"is a {len(shape)}D image {shape}; a 3D volume is required")
    if len(shape) > 3:
        raise InputError(
            path,
            f"is a {len(shape)}D image {shape}; one 3D volume is required "
            "(a 4th axis of size 1 is fine; give several channels as separate files)",
        )
    if min(shape) < 1:
        raise InputError(path, f"has an empty dimension {shape}")
    return shape[0], shape[1], shape[2]


#: What the reading functions accept: a scan file's path, a DICOM series, or a folder of one series.
ScanSource = str | os.PathLike | DicomSeries


def _source(path: ScanSource) -> Path | DicomSeries:
    return path if isinstance(path, DicomSeries) else Path(path)


def read_geometry(path: ScanSource, max_voxels: int = DEFAULT_MAX_VOXELS) -> Geometry:
    """The geometry of a scan from its header alone (no voxel data is read)."""
    geom, _ = _open(_source(path), max_voxels=max_voxels)
    return geom


def check_file(path: str | os.PathLike) -> Path:
    """``path`` if it is an existing, readable, non-empty regular file, else :class:`InputError`.

    The message says what is wrong: not found, a broken symbolic link, a folder,
    not a regular file, no read permission, empty.
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise InputError(path, f"is a broken symbolic link (its target {os.readlink(path)} does not exist)")
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not a scan file")
    if not path.is_file():
        raise InputError(path, "is not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(path, "is an empty file")
    return path


def _open(path: Path | DicomSeries, max_voxels: int):
    """Open ``path`` lazily: return its Geometry and a loader of its data."""
    if isinstance(path, DicomSeries):
        return _open_dicom(path, max_voxels)
    if path.is_dir() and dicom_files(path):
        return _open_dicom(only_series(path), max_voxels)
    check_file(path)
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _open_nifti(path, max_voxels)
    if suffix in ITK_SUFFIXES:
        return _open_itk(path, max_voxels)
    raise InputError(path, f"unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}")


def _open_nifti(path: Path, max_voxels: int):
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise InputError(path, f"is not a readable NIfTI file ({_short(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"is not a NIfTI image (nibabel read it as {type(img).__name__})")
    shape = _spatial_shape(path, img.shape)
    n_vox = int(np.prod(shape, dtype=np.int64))
    if n_vox > max_voxels:
        raise InputError(path, f"header claims {n_vox:,} voxels {shape}, above the limit of {max_voxels:,}")
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(path, affine)
    header = img.header.copy()
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0 and str(path) not in _WARNED_NO_ORIENTATION:
        _WARNED_NO_ORIENTATION.add(str(path))
        sizes = "x".join(f"{v:.3g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
        log.warning(
            "%s: qform_code and sform_code are both 0 (the header stores no orientation); assuming %s "
            "orientation with %s mm voxels (nibabel's default: the voxel sizes, no rotation)",
            path,
            "".join(nib.aff2axcodes(affine)),
            sizes,
        )
    geom = Geometry(shape=shape, affine=affine, header=header, path=str(path))

    def load() -> np.ndarray:
        try:
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:
            raise InputError(path, f"voxel data cannot be read, the file may be truncated ({_short(exc)})") from None
        return data.reshape(shape)

    return geom, load


def _open_itk(path: Path, max_voxels: int):
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except Exception as exc:
        raise InputError(path, f"is not a readable image ({_short(exc)})") from None
    geom = _itk_geometry(path, ItkHeader.of(reader), max_voxels)

    def load() -> np.ndarray:
        try:
            image = reader.Execute()
        except Exception as exc:
            raise InputError(path, f"voxel data cannot be read ({_short(exc)})") from None
        return array_xyz(image, geom.shape)

    return geom, load


def _open_dicom(series: DicomSeries, max_voxels: int):
    """A series' geometry has its affine rounded to float32, as the NIfTI mask stores it: the scan
    is segmented in the grid the mask names, and gives the mask its NIfTI conversion gives."""
    header = read_series_header(series)
    geom = _itk_geometry(series, header.itk, max_voxels, float32=True)
    return geom, lambda: array_xyz(read_series_image(series, header), geom.shape)


def _itk_geometry(path, header: ItkHeader, max_voxels: int, float32: bool = False) -> Geometry:
    full = header.size + ((header.components,) if header.components > 1 else ())
    shape = _spatial_shape(path, full)
    n_vox = int(np.prod(shape, dtype=np.int64))
    if n_vox > max_voxels:
        raise InputError(path, f"header claims {n_vox:,} voxels {shape}, above the limit of {max_voxels:,}")
    if len(header.size) != 3:
        raise InputError(path, f"is a {len(header.size)}D image; a 3D volume is required")
    affine = header.ras_affine()
    affine = affine.astype(np.float32).astype(np.float64) if float32 else affine
    _check_affine(path, affine)
    return Geometry(shape=shape, affine=affine, header=None, path=str(path))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def read_image(
    path: ScanSource,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    check_finite: bool = True,
) -> tuple[np.ndarray, Geometry]:
    """Read one 3D scan as float32 (file voxel order) with its geometry.

    A 4D file whose 4th axis has size 1 is a 3D scan. Raises :class:`InputError`
    naming the file for anything unusable.
    """
    path = _source(path)
    geom, load = _open(path, max_voxels=max_voxels)
    data = load()
    if check_finite and not np.isfinite(data).all():
        n_bad = int(np.size(data) - np.isfinite(data).sum())
        raise InputError(path, f"contains {n_bad:,} NaN or Inf voxels")
    return data, geom


def read_channels(
    paths: Sequence[ScanSource],
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> tuple[np.ndarray, Geometry]:
    """Read one file per channel into a (C, X, Y, Z) float32 array.

    All channels must share the first channel's grid; the file that differs is named.
    This is how scans (not label maps) are read, so a file whose voxels are all zero
    (an empty or failed export: nothing to segment or learn from) is refused here.
    """
    if not paths:
        raise InputError(None, "no channel files given")
    arrays = []
    first: Geometry | None = None
    first_path = _source(paths[0])
    for p in paths:
        data, geom = read_image(p, max_voxels=max_voxels)
        if not data.any():
            raise InputError(p, "all voxels are zero (an empty scan)")
        if first is None:
            first = geom
        elif not first.same_grid(geom):
            raise InputError(
                p,
                f"geometry ({geom.describe()}) differs from the case's first channel "
                f"{first_path.name} ({first.describe()})",
            )
        arrays.append(data)
    assert first is not None  # paths is not empty, so the loop set it
    return np.stack(arrays, axis=0), first


def read_label(path: ScanSource, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[np.ndarray, Geometry]:
    """Read a label map; values must be whole numbers. Returned as int16."""
    data, geom = read_image(path, max_voxels=max_voxels)
    rounded = np.rint(data)
    if not np.allclose(rounded, data, atol=1e-3):
        raise InputError(path, "label map has non-integer values")
    if rounded.min() < 0 or rounded.max() > np.iinfo(np.int16).max:
        raise InputError(path, f"label values out of range [{rounded.min():g}, {rounded.max():g}]")
    return rounded.astype(np.int16), geom


# ----------------------------------------------------------------------------- writing


def write_image(
    path: str | os.PathLike,
    data: np.ndarray,
    reference: Geometry,
    dtype: npt.DTypeLike | None = None,
) -> Path:
    """Write ``data`` (the reference's shape, or shape + one trailing axis) as NIfTI.

    The file gets exactly the reference's shape, affine, qform/sform codes and
    orientation: for a NIfTI reference its header is copied (data type and scaling
    reset), otherwise both forms are set from the reference affine with code 1.
    ``dtype`` defaults to uint8 / int16 for integer data and float32 otherwise.
    """
    path = Path(path)
    data = np.asarray(data)
    if tuple(data.shape[:3]) != tuple(reference.shape):
        raise ValueError(f"data shape {data.shape} does not match reference {reference.shape}")
    if dtype is None:
        if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
            lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
            dtype = np.uint8 if lo >= 0 and hi <= 255 else np.int16
        else:
            dtype = np.float32
    dtype = np.dtype(dtype)
    data = data.astype(dtype, copy=False)

    if reference.header is not None:
        ref = reference.header
        klass = nib.Nifti2Image if isinstance(ref, nib.Nifti2Header) else nib.Nifti1Image
        header = ref.copy()
        if header.endianness != "<":  # write little-endian whatever the input was
            header = header.as_byteswapped("<")
        img = klass(data, None, header=header)
        img.header.set_data_dtype(dtype)
        img.header.set_slope_inter(1.0, 0.0)
        img.header["cal_min"] = 0
        img.header["cal_max"] = 0
        img.header["intent_code"] = 0
        img.header["descrip"] = b"brainseg"
        # Keep the reference's transforms and their codes exactly.
        img.header.set_qform(ref.get_qform(), code=int(ref["qform_code"]))
        img.header.set_sform(ref.get_sform(), code=int(ref["sform_code"]))
        img.update_header()
        if data.ndim == 4:
            img.header.set_data_shape(data.shape)
    else:
        img = nib.Nifti1Image(data, reference.affine)
        img.header.set_qform(reference.affine, code=1)
        img.header.set_sform(reference.affine, code=1)
        img.header.set_data_dtype(dtype)
        img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
