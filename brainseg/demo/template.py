"""The MNI ICBM152 2009a template, the demo's label convention and its geometry helpers.

nilearn ships the template (T1 plus grey- and white-matter probability maps, 1 mm,
197 x 233 x 189, skull-stripped), so nothing is downloaded. The label convention is
described in :mod:`brainseg.demo.tissue`; :func:`tissue_labels` applies it. The grid and
field helpers here make the demo subjects (:mod:`brainseg.demo.tissue`) and are public so
other generators can build scans on the same template and grids.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates

from brainseg.errors import BrainsegError
from brainseg.io.images import Geometry

#: Label values of the demo data set (nnU-Net v2 style: name -> value).
LABELS: dict[str, int] = {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


class Template(NamedTuple):
    """The MNI ICBM152 2009a maps as float32 in [0, 1], with their 1 mm RAS affine."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class SubjectGrid:
    """A subject's output voxel grid and its orientation label."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # voxel -> world (RAS mm), float32-exact
    orientation: str
    oblique_degrees: float


# ----------------------------------------------------------------------------- template


def template_dir() -> Path:
    """nilearn's bundled data folder holding the ICBM152 maps (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise BrainsegError(
            "the demo data set is made from the MNI template that nilearn ships; "
            "install it with: pip install brainseg[demo]"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise BrainsegError(
            f"{folder}: nilearn is installed but lacks the template files {', '.join(missing)}; "
            "reinstall it with: pip install --force-reinstall brainseg[demo]"
        )
    return folder


def load_template() -> Template:
    """Load the T1, GM and WM template maps, scaled to [0, 1] (divided by 255)."""
    folder = template_dir()
    maps: dict[str, np.ndarray] = {}
    affine: np.ndarray | None = None
    for key, name in TEMPLATE_FILES.items():
        img = nib.load(str(folder / name))
        if not isinstance(img, nib.Nifti1Image):
            raise BrainsegError(f"{folder / name}: template map is not a NIfTI image")
        if affine is None:
            affine = np.asarray(img.affine, dtype=np.float64)
        elif img.shape != maps["t1"].shape or not np.allclose(img.affine, affine):
            raise BrainsegError(f"{folder / name}: template map is not on the T1 template's grid")
        maps[key] = np.asarray(img.dataobj, dtype=np.float32) / np.float32(255.0)
    assert affine is not None  # TEMPLATE_FILES is not empty
    return Template(maps["t1"], maps["gm"], maps["wm"], affine)


def tissue_labels(brain: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Labels by the demo convention from a brain mask and GM/WM maps in [0, 1].

    argmax over [background = not brain, CSF = clip(1 - GM - WM, 0, 1) in the brain,
    GM, WM], ties to the lower label. Returns uint8 (0 bg, 1 CSF, 2 GM, 3 WM).
    """
    brain = np.asarray(brain, dtype=bool)
    gm = np.asarray(gm, dtype=np.float32)
    wm = np.asarray(wm, dtype=np.float32)
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    labels = np.zeros(brain.shape, dtype=np.uint8)
    best = (~brain).astype(np.float32)  # the background score
    for value, score in ((1, csf), (2, gm), (3, wm)):
        better = score > best  # strictly greater: the first maximum wins, as argmax
        labels[better] = value
        best = np.where(better, score, best)
    return labels


def template_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Labels of the template itself: :func:`tissue_labels` with the brain = T1 > 0.

    The maps must be scaled to [0, 1] as :func:`load_template` returns them.
    """
    for name, arr in (("t1", t1), ("gm", gm), ("wm", wm)):
        if np.size(arr) and float(np.max(arr)) > 1.0 + 1e-6:
            raise ValueError(f"{name} map exceeds 1; scale the template maps to [0, 1] (divide by 255)")
    return tissue_labels(np.asarray(t1) > 0, gm, wm)


# ----------------------------------------------------------------------------- random fields


def _spline_matrix(n_out: int, n_nodes: int) -> np.ndarray:
    """(n_out, n_nodes) weights that interpolate node values smoothly onto n_out points."""
    from scipy.interpolate import CubicSpline  # here: 0.3 s of imports every brainseg command would pay

    nodes = np.arange(n_nodes, dtype=np.float64)
    points = np.linspace(0.0, n_nodes - 1.0, n_out)
    return CubicSpline(nodes, np.eye(n_nodes), axis=0)(points).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], nodes: int, std: float) -> np.ndarray:
    """A smooth random field: N(0, std) on a coarse grid, spline-upsampled to ``shape``."""
    coarse = rng.normal(0.0, std, size=(nodes, nodes, nodes)).astype(np.float32)
    wx, wy, wz = (_spline_matrix(s, nodes) for s in shape)
    field = np.tensordot(wx, coarse, axes=(1, 0))  # (X, n, n)
    field = np.tensordot(field, wy, axes=(1, 1))  # (X, n, Y)
    field = np.tensordot(field, wz, axes=(1, 1))  # (X, Y, Z)
    return np.ascontiguousarray(field, dtype=np.float32)


# ----------------------------------------------------------------------------- grids


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation matrix about a unit ``axis`` (Rodrigues)."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = math.radians(degrees)
    return np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)


def orientation_matrix(code: str) -> np.ndarray:
    """Signed permutation taking voxel axes to RAS world axes for an axis code like 'PIR'."""
    ornt = nib.orientations.axcodes2ornt(tuple(code))
    mat = np.zeros((3, 3))
    for voxel_axis, (world_axis, flip) in enumerate(ornt):
        mat[int(world_axis), voxel_axis] = flip
    return mat


def nifti_geometry(grid: SubjectGrid) -> Geometry:
    """A Geometry with a scanner-like NIfTI-1 header (qform and sform code 1, mm)."""
    header = nib.Nifti1Header()
    header.set_data_shape(grid.shape)
    header.set_data_dtype(np.float32)
    header.set_qform(grid.affine, code=1)
    header.set_sform(grid.affine, code=1)
    header.set_xyzt_units("mm", "sec")
    return Geometry(shape=grid.shape, affine=header.get_best_affine(), header=header)


def world_box(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The world (mm) bounding box of the centres of a grid's corner voxels."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape[:3]], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def resample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear sampling of ``volume`` at ``coords``; 0 outside the template."""
    return map_coordinates(volume, coords, order=1, mode="constant", cval=0.0, output=np.float32, prefilter=False)
