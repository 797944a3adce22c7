"""The demo tissue-segmentation data set, made from the MNI ICBM152 2009a template.

nilearn ships the template (T1 plus grey- and white-matter probability maps, 1 mm,
197 x 233 x 189, skull-stripped) so the demo needs no download. Every subject is the
template seen through its own random "scan":

* a smooth random deformation (a coarse random displacement field of a few mm,
  upsampled with cubic splines) and a small global size change;
* its own voxel grid: anisotropic voxels of 1.0-2.2 mm, its own axis order and
  flips (subject 0 is RAS, the others cycle through LAS, LPS, PIR, ASL, ...), and
  every odd subject tilted by a few degrees (an oblique affine);
* its own appearance: a multiplicative smooth bias field, a gamma change and a
  random monotone tissue-contrast curve, an intensity scale (log-uniform, x1 to
  x3000) and an offset. Every third subject (0, 3, 6, ...) is skull-stripped: noise
  inside the brain, the background exactly 0. The others are seen as an MR
  magnitude image: Rician noise over the whole field of view (the background is
  never exactly 0) and the offset everywhere.

Deformation and regridding are one trilinear resampling per map
(:func:`scipy.ndimage.map_coordinates`) from the template grid to the subject grid.

**Label convention** (used everywhere in brainseg for this data set): the T1, GM and
WM maps scaled to [0, 1]; each voxel takes the argmax of ``[background, CSF, GM,
WM]`` where background is 1 outside the brain and 0 inside, and CSF is
``clip(1 - GM - WM, 0, 1)`` inside the brain and 0 outside; ties go to the lower
label. Labels: 0 background, 1 CSF, 2 grey matter, 3 white matter. On the template
the brain is ``T1 > 0`` (:func:`~brainseg.demo.template.template_labels`); on a subject it is
the resampled brain mask >= 0.5 (:func:`~brainseg.demo.template.tissue_labels`). The template,
the convention and the grid helpers are in :mod:`brainseg.demo.template`.

The output is an nnU-Net / Medical Segmentation Decathlon folder::

    out/dataset.json
    out/imagesTr/demo_000_0000.nii.gz   out/labelsTr/demo_000.nii.gz
    out/imagesTs/demo_007_0000.nii.gz   out/labelsTs/demo_007.nii.gz
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from brainseg.demo.template import (
    LABELS,
    SubjectGrid,
    Template,
    load_template,
    nifti_geometry,
    orientation_matrix,
    resample,
    rotation,
    smooth_field,
    tissue_labels,
    world_box,
)
from brainseg.errors import BrainsegError
from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import Geometry, write_image
from brainseg.io.naming import NIFTI_GZ, channel_stem

log = logging.getLogger(__name__)

DATASET_NAME = "brainseg-demo"
CASE_PREFIX = "demo"
#: Orientations of subjects 1, 2, 3, ... (cycled); subject 0 is RAS.
ORIENTATIONS = ("LAS", "LPS", "PIR", "ASL", "RPI", "SLP", "IRA", "LIP")
SPACING_RANGE = (1.0, 2.2)  # mm, drawn per axis
#: Every this-many-th subject (0, 3, ...) is skull-stripped (exact-zero background); the rest have noise everywhere.
SKULL_STRIPPED_EVERY = 3
OBLIQUE_DEGREES = (2.0, 7.0)  # tilt of odd-numbered subjects
DISPLACEMENT_MM = (1.5, 4.0)  # std of the coarse displacement field
COARSE_NODES = 5  # control points per axis of the displacement field
SUBFOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
#: What the labels are: ``tissue`` (CSF, grey, white matter) or ``hemispheres`` (grey and white
#: matter split at the template's midline, x = 0 mm, into left and right; CSF is not split), or
#: ``tumour`` (BraTS-like four-contrast cases, written by :mod:`brainseg.demo.tumour`, not here).
KINDS = ("tissue", "hemispheres", "tumour")
HEMISPHERE_LABELS: dict[str, int] = {
    "background": 0,
    "CSF": 1,
    "left grey matter": 2,
    "right grey matter": 3,
    "left white matter": 4,
    "right white matter": 5,
}


# ----------------------------------------------------------------------------- subject grid


def subject_grid(
    rng: np.random.Generator, index: int, world_lo: np.ndarray, world_hi: np.ndarray, spacing_mm=None
) -> SubjectGrid:
    """The output grid of subject ``index``, covering the world box [world_lo, world_hi]
    (``spacing_mm``: the voxel size along the subject's left-right, posterior-anterior and
    inferior-superior axes instead of a random one per file axis: whatever order its file
    stores the axes in, 0.9 x 0.9 x 4 means 4 mm slices along inferior-superior)."""
    orientation = "RAS" if index == 0 else ORIENTATIONS[(index - 1) % len(ORIENTATIONS)]
    spacing = rng.uniform(*SPACING_RANGE, size=3)  # drawn always: the other draws stay the same
    if spacing_mm is not None:  # file axis j lies along world axis argmax |column j|
        om = orientation_matrix(orientation)
        spacing = np.array([float(spacing_mm[int(np.argmax(np.abs(om[:, j])))]) for j in range(3)])
    axis = rng.normal(size=3)
    tilt = float(rng.uniform(*OBLIQUE_DEGREES)) if index % 2 == 1 else 0.0
    direction = rotation(axis, tilt) @ orientation_matrix(orientation)
    # Extent of the box along each (possibly tilted) voxel axis.
    extent = np.abs(direction.T) @ (world_hi - world_lo)
    sizes = [int(math.ceil(e / s)) + 1 for e, s in zip(extent, spacing)]
    shape = (sizes[0], sizes[1], sizes[2])
    linear = direction @ np.diag(spacing)
    centre = (world_lo + world_hi) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre - linear @ ((np.array(shape) - 1) / 2.0)
    # NIfTI stores the sform as float32: use exactly what the file will hold.
    affine = affine.astype(np.float32).astype(np.float64)
    return SubjectGrid(shape, affine, orientation, tilt)


# ----------------------------------------------------------------------------- one subject


def template_coordinates(
    rng: np.random.Generator, grid: SubjectGrid, template_affine: np.ndarray, centre: np.ndarray
) -> np.ndarray:
    """Template voxel coordinates (3, X, Y, Z) of every output voxel.

    world = grid affine @ voxel; the inverse deformation adds a smooth displacement
    and a global scale about ``centre``; then the template's inverse affine.
    """
    scale = rng.uniform(0.88, 1.08, size=3)
    disp_std = float(rng.uniform(*DISPLACEMENT_MM))
    inv = np.linalg.inv(template_affine)
    axes = [np.arange(n, dtype=np.float32) for n in grid.shape]
    world = []
    for k in range(3):
        w = (
            np.float32(grid.affine[k, 0]) * axes[0][:, None, None]
            + np.float32(grid.affine[k, 1]) * axes[1][None, :, None]
            + np.float32(grid.affine[k, 2]) * axes[2][None, None, :]
            + np.float32(grid.affine[k, 3] - centre[k])
        )
        w = w / np.float32(scale[k]) + np.float32(centre[k])
        w += smooth_field(rng, grid.shape, COARSE_NODES, disp_std)
        world.append(w)
    coords = np.empty((3,) + grid.shape, dtype=np.float32)
    for k in range(3):
        coords[k] = (
            np.float32(inv[k, 0]) * world[0]
            + np.float32(inv[k, 1]) * world[1]
            + np.float32(inv[k, 2]) * world[2]
            + np.float32(inv[k, 3])
        )
    return coords


def contrast_curve(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A random monotone map of [0, 1] onto itself (knots at 1/3 and 2/3 moved by up to 0.08)."""
    knots = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    values = knots + np.concatenate([[0.0], rng.uniform(-0.08, 0.08, 2), [0.0]])
    return np.interp(x, knots, values).astype(np.float32)


def synthesise_t1(
    rng: np.random.Generator, t1: np.ndarray, brain: np.ndarray, noisy_background: bool = False
) -> np.ndarray:
    """One subject's T1 from the warped template T1 in [0, 1].

    Bias field, gamma and contrast curve on the signal; then either noise inside the
    brain and exactly 0 outside (``noisy_background=False``, skull-stripped), or Rician
    noise over the whole field of view (``|signal + n1 + i n2|``, the signal 0 outside
    the brain); then an intensity scale and offset (inside the brain only for the
    skull-stripped kind, everywhere for the other).
    """
    bias = np.exp(smooth_field(rng, t1.shape, 4, float(rng.uniform(0.08, 0.25))))
    gamma = np.float32(rng.uniform(0.6, 1.6))
    scale = np.float32(np.exp(rng.uniform(0.0, np.log(3000.0))))
    offset = np.float32(rng.uniform(0.0, 0.1)) * scale
    signal = contrast_curve(rng, np.clip(np.power(np.maximum(t1 * bias, 0.0), gamma), 0.0, 1.0))
    if noisy_background:
        sigma = np.float32(rng.uniform(0.01, 0.05))
        real = signal + rng.normal(0.0, sigma, size=t1.shape).astype(np.float32)
        imag = rng.normal(0.0, sigma, size=t1.shape).astype(np.float32)
        return (np.sqrt(real * real + imag * imag) * scale + offset).astype(np.float32)
    noise_std = np.float32(rng.uniform(0.01, 0.04))
    inside = signal[brain] + rng.normal(0.0, noise_std, size=int(brain.sum())).astype(np.float32)
    out = np.zeros(t1.shape, dtype=np.float32)
    out[brain] = np.maximum(inside * scale + offset, 0.0)
    return out


def hemisphere_labels(tissue: np.ndarray, template_x_mm: np.ndarray) -> np.ndarray:
    """Tissue labels (0-3) with grey and white matter split into left (template x < 0 mm,
    RAS) and right: the values of :data:`HEMISPHERE_LABELS`."""
    right = template_x_mm > 0
    out = tissue.copy()
    out[(tissue == 2) & right] = 3
    out[(tissue == 3) & ~right] = 4
    out[(tissue == 3) & right] = 5
    return out


def make_subject(
    template: Template, brain_map: np.ndarray, seed: int, index: int, kind: str = "tissue", spacing_mm=None
) -> tuple[np.ndarray, np.ndarray, Geometry, SubjectGrid]:
    """One synthetic subject: (T1 float32, labels uint8, geometry, grid)."""
    rng = np.random.default_rng([seed, index])
    lo, hi = world_box(template.affine, template.t1.shape)
    grid = subject_grid(rng, index, lo, hi, spacing_mm)
    coords = template_coordinates(rng, grid, template.affine, (lo + hi) / 2.0)
    t1 = resample(template.t1, coords)
    gm = resample(template.gm, coords)
    wm = resample(template.wm, coords)
    brain = resample(brain_map, coords) >= 0.5
    a = template.affine[0]
    template_x = a[0] * coords[0] + a[1] * coords[1] + a[2] * coords[2] + a[3] if kind == "hemispheres" else None
    del coords
    labels = tissue_labels(brain, gm, wm)
    if template_x is not None:
        labels = hemisphere_labels(labels, template_x)
    image = synthesise_t1(rng, t1, brain, noisy_background=index % SKULL_STRIPPED_EVERY != 0)
    return image, labels, nifti_geometry(grid), grid


# ----------------------------------------------------------------------------- data set


def _split_sizes(n: int, n_test: int | None, seed: int) -> tuple[int, int]:
    """(n_train, n_test) after checking the arguments."""
    if seed < 0:
        raise BrainsegError(f"--seed must be 0 or larger (got {seed})")
    if n < 2:
        raise BrainsegError(f"the demo data set needs at least 2 subjects (got --n {n})")
    if n_test is None:
        n_test = max(1, math.ceil(n / 4))
    if not 1 <= n_test < n:
        raise BrainsegError(f"--n-test must be between 1 and {n - 1} for --n {n} (got {n_test})")
    return n - n_test, n_test


def _prepare_folder(out: Path) -> None:
    """Create ``out``; refuse a non-empty folder that is not an earlier demo data set.

    Files of an earlier demo run are removed so no stale case outlives dataset.json.
    """
    if out.exists() and not out.is_dir():
        raise BrainsegError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        meta = out / "dataset.json"
        try:
            previous = json.loads(meta.read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != DATASET_NAME:
            raise BrainsegError(f"{out}: folder is not empty and is not a brainseg demo data set; choose another")
        for sub in SUBFOLDERS:
            for stale in (out / sub).glob(f"{CASE_PREFIX}_*{NIFTI_GZ}"):
                stale.unlink()
    for sub in SUBFOLDERS:
        (out / sub).mkdir(parents=True, exist_ok=True)


def msd_case_lists(train_ids: list[str], test_ids: list[str], suffixed: bool = True) -> dict:
    """dataset.json's case counts, file ending and ``training`` / ``test`` lists (images as
    ``ID_0000`` when ``suffixed``, else as MSD's ``ID``)."""

    def entry(case: str, split: str) -> dict:
        image = channel_stem(case, 0) if suffixed else case
        return {"image": f"./images{split}/{image}{NIFTI_GZ}", "label": f"./labels{split}/{case}{NIFTI_GZ}"}

    return {
        "numTraining": len(train_ids),
        "numTest": len(test_ids),
        "file_ending": NIFTI_GZ,
        "training": [entry(c, "Tr") for c in train_ids],
        "test": [entry(c, "Ts") for c in test_ids],
    }


def _dataset_json(train_ids: list[str], test_ids: list[str], seed: int, kind: str = "tissue") -> dict:
    return {
        "name": DATASET_NAME,
        "description": (
            (
                "Synthetic brain tissue segmentation (CSF, grey and white matter) made from the "
                if kind == "tissue"
                else "Synthetic brain tissue segmentation (CSF; left and right grey and white matter, split at the midline) made from the "
            )
            + "MNI ICBM152 2009a template: random deformation, voxel grid, bias, contrast, "
            f"scale and noise per subject, a third skull-stripped, the rest with noise over the field of view (seed {seed})."
        ),
        "reference": "Fonov et al., NeuroImage 2011 (MNI ICBM152 nonlinear symmetric 2009a)",
        "licence": "see the MNI ICBM152 template licence",
        "tensorImageSize": "3D",
        "channel_names": {"0": "T1"},
        "modality": {"0": "T1"},
        "labels": dict(LABELS if kind == "tissue" else HEMISPHERE_LABELS),
        **msd_case_lists(train_ids, test_ids),
    }


def make_demo_dataset(
    out: Path,
    n: int = 10,
    n_test: int | None = None,
    seed: int = 0,
    verbose: bool = True,
    kind: str = "tissue",
    spacing: tuple[float, float, float] | None = None,
) -> Path:
    """Write ``n`` synthetic subjects as an MSD / nnU-Net folder at ``out``; return ``out``.

    The last ``n_test`` subjects (default: a quarter, at least one) go to imagesTs /
    labelsTs. The same ``seed`` gives the same files. ``kind``: see :data:`KINDS`;
    ``spacing``: every subject's voxel size along its RAS axes (mm, e.g. ``(0.9, 0.9, 4.0)`` for
    thick slices) instead of a random one in ``SPACING_RANGE``.
    """
    out = Path(out)
    if kind not in KINDS or kind == "tumour":
        raise BrainsegError(
            f"--kind {kind!r}: expected one of {', '.join(KINDS[:2])} (tumour: brainseg.demo.tumour.make_tumour_dataset)"
        )
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0 or max(spacing) > 10):
        raise BrainsegError(f"--spacing {spacing}: expected three voxel sizes in mm, each in (0, 10]")
    n_train, n_test = _split_sizes(n, n_test, seed)
    template = load_template()
    brain_map = (template.t1 > 0).astype(np.float32)
    _prepare_folder(out)
    ids = [f"{CASE_PREFIX}_{i:03d}" for i in range(n)]
    start = time.perf_counter()
    for index, case in enumerate(ids):
        split = "Tr" if index < n_train else "Ts"
        image, labels, geometry, grid = make_subject(template, brain_map, seed, index, kind, spacing)
        write_image(out / f"images{split}" / f"{channel_stem(case, 0)}{NIFTI_GZ}", image, geometry, dtype=np.float32)
        write_image(out / f"labels{split}" / f"{case}{NIFTI_GZ}", labels, geometry, dtype=np.uint8)
        if verbose:
            sp = "x".join(f"{s:.2f}" for s in geometry.spacing)
            tilt = f", tilted {grid.oblique_degrees:.1f} deg" if grid.oblique_degrees else ""
            tilt += ", skull-stripped" if index % SKULL_STRIPPED_EVERY == 0 else ", noise over the field of view"
            log.info(
                f"demo-data [{index + 1}/{n}] {case} ({split}): {grid.orientation} {grid.shape} {sp} mm{tilt} "
                f"({time.perf_counter() - start:.1f} s)"
            )
    meta = _dataset_json(ids[:n_train], ids[n_train:], seed, kind)
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return out
