"""The shifted scan set of the generalisation check: MNI-derived brains seen the way real scans are.

Each scan is the MNI ICBM152 template (the one ``brainseg demo-data`` uses) seen through
this module's own settings and seeds (never the demo's generator, only its low-level
functions: template, warp resampling, labels, random fields, grids):

* **noise over the whole field of view**: Rician (magnitude) noise,
  ``|signal + N(0, s) + i N(0, s)|`` in every voxel, ``s`` 2-5 % of the scan's
  white-matter signal, so the background is not exactly 0. One case in six
  (``skull_stripped``) is masked to the brain afterwards: exact zeros outside the brain,
  noise inside, as skull-stripped data;
* **its own smooth warp**: a displacement field of 3-4.5 mm std on 7 control points per
  axis and a global shrink of 0.84-0.94 per axis (the template is a large brain, 1.9
  litres: these are 1.1-1.6 litres);
* a multiplicative **bias field** of 0.2-0.35 log-std, **gamma** 0.6-1.6, **intensity
  scale** x1, x400 or x2500 and an **offset** of 0-10 % of the scale over the whole
  field of view (inside the brain only for the skull-stripped case);
* **grids**: 1 mm RAS, 2 mm ASL, 1.5 mm LPS, 1.2 x 1.0 x 2.0 mm LAS, 1.4 mm PIR and a
  12-degree oblique 1.6 mm grid, each covering the template's box plus a random margin of
  0-20 mm per side, its centre moved by up to 8 mm. Cases past the sixth draw their
  settings from the same ranges (spacing 1-2 mm per axis, every other one tilted 8-15
  degrees, orientations the demo does not use).

Against the demo generator (:mod:`brainseg.demo.tissue`): the tilts
(demo 2-7 degrees), the finer warp (demo 5 control points), the shrink (mostly below the
demo's 0.88-1.08), the bias above 0.25 (demo 0.08-0.25), the field of view (demo: exactly the template's
box, centred) and the seeds lie outside its ranges; gamma, scales and noise levels are
the issue's and may overlap the demo's as it widens them.

Labels follow the demo's convention exactly (:func:`brainseg.demo.template.tissue_labels`
with the brain = resampled ``template T1 > 0`` >= 0.5).

Layout::

    OUT/images/shifted_000_0000.nii.gz   OUT/labels/shifted_000.nii.gz   OUT/manifest.json
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
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
from brainseg.demo.tissue import HEMISPHERE_LABELS, hemisphere_labels
from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import write_image

GENERATOR = "scripts.experiments.generalisation.shifted v3"
CASE_PREFIX = "shifted"
DEFAULT_SEED = 20250611
WARP_NODES = 7
WARP_MM = (3.0, 4.5)
SHRINK = (0.84, 0.94)
MARGIN_MM = (0.0, 20.0)
CENTRE_SHIFT_MM = 8.0


@dataclass(frozen=True)
class ScanSettings:
    """What one shifted scan looks like (its random fields come from its own seed)."""

    case_id: str
    orientation: str
    spacing: tuple[float, float, float]
    tilt_degrees: float
    noise: float  # Rician sigma as a fraction of the white-matter intensity
    skull_stripped: bool  # exact zeros outside the brain (noise inside only)
    scale: float
    offset: float  # added over the field of view, as a fraction of ``scale``
    gamma: float
    bias_std: float  # std of the log bias field

    def describe(self) -> str:
        sp = "x".join(f"{s:g}" for s in self.spacing)
        tilt = f" {self.tilt_degrees:g}deg oblique" if self.tilt_degrees else ""
        bg = "skull-stripped" if self.skull_stripped else f"noise {self.noise:.0%}"
        return (
            f"{self.orientation} {sp} mm{tilt}, {bg}, x{self.scale:g} +{self.offset:g}, "
            f"gamma {self.gamma:g}, bias {self.bias_std:g}"
        )


# The six scans of the issue; cases past the sixth are drawn by :func:`drawn_settings`.
FIELDS = ("orientation", "spacing", "tilt_degrees", "noise", "skull_stripped", "scale", "offset", "gamma", "bias_std")
FIXED = (
    ("LPS", (1.5, 1.5, 1.5), 0.0, 0.03, False, 2500.0, 0.02, 1.4, 0.25),
    ("ASL", (2.0, 2.0, 2.0), 0.0, 0.05, False, 400.0, 0.0, 0.65, 0.3),
    ("PIR", (1.4, 1.4, 1.4), 0.0, 0.03, True, 1.0, 0.05, 1.25, 0.25),
    ("RAS", (1.0, 1.0, 1.0), 0.0, 0.02, False, 1.0, 0.0, 1.6, 0.2),
    ("LAS", (1.2, 1.0, 2.0), 0.0, 0.04, False, 400.0, 0.1, 0.6, 0.35),
    ("LSA", (1.6, 1.6, 1.6), 12.0, 0.03, False, 2500.0, 0.03, 1.1, 0.3),
)
DRAWN_ORIENTATIONS = ("RPS", "AIL", "SPR", "LIA", "PLS", "IAR")
SCALES = (1.0, 400.0, 2500.0)


def drawn_settings(seed: int, index: int) -> dict:
    """Settings of case ``index`` >= 6: drawn from the same ranges as the fixed six."""
    rng = np.random.default_rng([seed, 1, index])
    return dict(
        orientation=DRAWN_ORIENTATIONS[index % len(DRAWN_ORIENTATIONS)],
        spacing=tuple(round(float(v), 2) for v in rng.uniform(1.0, 2.0, size=3)),
        tilt_degrees=round(float(rng.uniform(8.0, 15.0)), 1) if index % 2 else 0.0,
        noise=round(float(rng.uniform(0.02, 0.06)), 3),
        skull_stripped=index % 6 == 2,
        scale=SCALES[index % 3],
        offset=round(float(rng.uniform(0.0, 0.1)), 3),
        gamma=round(float(rng.uniform(0.6, 1.6)), 2),
        bias_std=round(float(rng.uniform(0.2, 0.35)), 2),
    )


def scan_settings(seed: int, index: int) -> ScanSettings:
    values = dict(zip(FIELDS, FIXED[index])) if index < len(FIXED) else drawn_settings(seed, index)
    return ScanSettings(case_id=f"{CASE_PREFIX}_{index:03d}", **values)


# --------------------------------------------------------------------------- geometry


def fixed_grid(
    settings: ScanSettings, lo: np.ndarray, hi: np.ndarray, centre: np.ndarray, tilt_axis: np.ndarray
) -> SubjectGrid:
    """A grid of the settings' orientation, spacing and tilt covering the world box [lo, hi]."""
    spacing = np.asarray(settings.spacing, dtype=np.float64)
    direction = rotation(tilt_axis, settings.tilt_degrees) @ orientation_matrix(settings.orientation)
    span = np.abs(direction.T) @ (hi - lo)  # the box's extent along each voxel axis
    shape = tuple(int(math.ceil(e / s)) + 1 for e, s in zip(span, spacing))
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    affine = affine.astype(np.float32).astype(np.float64)  # what the NIfTI sform holds
    return SubjectGrid(shape, affine, settings.orientation, float(settings.tilt_degrees))


def warped_coordinates(
    rng: np.random.Generator, grid: SubjectGrid, template_affine: np.ndarray, centre: np.ndarray
) -> np.ndarray:
    """Template voxel coordinates (3, X, Y, Z) of the grid's voxels through a shrink and a smooth warp."""
    shrink = rng.uniform(*SHRINK, size=3).astype(np.float32)
    warp_mm = float(rng.uniform(*WARP_MM))
    voxels = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    world = grid.affine[:3, :3].astype(np.float32) @ voxels + grid.affine[:3, 3:4].astype(np.float32)
    del voxels
    c = centre.astype(np.float32)[:, None]
    world = ((world - c) / shrink[:, None] + c).reshape((3,) + grid.shape)
    for k in range(3):
        world[k] += smooth_field(rng, grid.shape, WARP_NODES, warp_mm)
    inv = np.linalg.inv(template_affine).astype(np.float32)
    coords = inv[:3, :3] @ world.reshape(3, -1) + inv[:3, 3:4]
    return coords.reshape((3,) + grid.shape)


# --------------------------------------------------------------------------- one scan


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels: |s + n1 + i n2|."""
    real = signal + rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    return np.hypot(real, imag).astype(np.float32)


def make_scan(
    template: Template, brain_map: np.ndarray, settings: ScanSettings, seed: int, index: int, kind: str = "tissue"
) -> tuple[np.ndarray, np.ndarray, SubjectGrid, dict]:
    """(image float32, labels uint8, grid, measured facts) of one shifted scan; ``kind``
    "hemispheres" splits grey and white matter at the template's midline (the demo's
    :func:`~brainseg.demo.tissue.hemisphere_labels`)."""
    rng = np.random.default_rng([seed, 2, index])
    lo, hi = world_box(template.affine, template.t1.shape)
    margin = rng.uniform(*MARGIN_MM, size=3)
    centre = (lo + hi) / 2.0
    grid_centre = centre + rng.uniform(-CENTRE_SHIFT_MM, CENTRE_SHIFT_MM, size=3)
    grid = fixed_grid(settings, lo - margin, hi + margin, grid_centre, rng.normal(size=3))
    coords = warped_coordinates(rng, grid, template.affine, centre)
    t1, gm, wm, brain = (resample(m, coords) for m in (template.t1, template.gm, template.wm, brain_map))
    template_x = template.affine[0, :3].astype(np.float32) @ coords.reshape(3, -1) + np.float32(template.affine[0, 3])
    del coords
    brain = brain >= 0.5
    labels = tissue_labels(brain, gm, wm)
    if kind == "hemispheres":
        labels = hemisphere_labels(labels, template_x.reshape(labels.shape))
    del template_x
    del gm, wm
    bias = np.exp(smooth_field(rng, grid.shape, 4, settings.bias_std))
    signal = np.power(np.maximum(t1 * bias, 0.0), np.float32(settings.gamma)).astype(np.float32)
    del t1, bias
    wm_level = float(np.median(signal[labels == 3])) if np.any(labels == 3) else float(signal.max())
    sigma = settings.noise * wm_level
    image = rician(rng, signal, sigma) * np.float32(settings.scale) + np.float32(settings.offset * settings.scale)
    if settings.skull_stripped:
        image[~brain] = 0.0
    voxel_ml = float(abs(np.linalg.det(grid.affine[:3, :3]))) / 1000.0
    facts = {
        "shape": list(grid.shape),
        "affine": np.round(grid.affine, 6).tolist(),
        "axcodes": "".join(nib.aff2axcodes(grid.affine)),
        "voxel_mm": [round(float(v), 4) for v in np.linalg.norm(grid.affine[:3, :3], axis=0)],
        "brain_litres": round(float(brain.sum()) * voxel_ml / 1000.0, 4),
        "label_litres": {
            str(v): round(float((labels == v).sum()) * voxel_ml / 1000.0, 4) for v in range(1, int(labels.max()) + 1)
        },
        "white_matter_median": float(np.median(image[labels == 3])),
        "noise_sigma": round(sigma * settings.scale, 4),
        "exact_zero_fraction": round(float(np.mean(image == 0)), 6),
    }
    return image, labels, grid, facts


# --------------------------------------------------------------------------- the set


def _manifest_matches(out: Path, n: int, seed: int, kind: str = "tissue") -> bool:
    try:
        meta = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if (
        meta.get("generator") != GENERATOR
        or meta.get("seed") != seed
        or len(meta.get("cases", [])) != n
        or meta.get("kind", "tissue") != kind
    ):
        return False
    return all(
        (out / "images" / f"{c['case_id']}_0000.nii.gz").is_file()
        and (out / "labels" / f"{c['case_id']}.nii.gz").is_file()
        for c in meta["cases"]
    )


def make_shifted_set(out: Path, n: int = 6, seed: int = DEFAULT_SEED, log=print, kind: str = "tissue") -> dict:
    """Write ``n`` shifted scans to ``out`` (reused when its manifest says the same); return the manifest.
    ``kind``: "tissue" (the demo's labels) or "hemispheres" (left/right grey and white matter)."""
    out = Path(out)
    if _manifest_matches(out, n, seed, kind):
        log(f"shifted set: reusing {n} scans in {out}")
        return json.loads((out / "manifest.json").read_text())
    for sub in ("images", "labels"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    template = load_template()
    brain_map = (template.t1 > 0).astype(np.float32)
    cases = []
    for index in range(n):
        settings = scan_settings(seed, index)
        image, labels, grid, facts = make_scan(template, brain_map, settings, seed, index, kind)
        geometry = nifti_geometry(grid)
        write_image(out / "images" / f"{settings.case_id}_0000.nii.gz", image, geometry, dtype=np.float32)
        write_image(out / "labels" / f"{settings.case_id}.nii.gz", labels, geometry, dtype=np.uint8)
        cases.append({**asdict(settings), "description": settings.describe(), **facts})
        log(
            f"shifted set [{index + 1}/{n}] {settings.case_id}: {settings.describe()}, shape {grid.shape}, "
            f"brain {facts['brain_litres']:.2f} L"
        )
    names = HEMISPHERE_LABELS if kind == "hemispheres" else LABELS
    manifest = {
        "generator": GENERATOR,
        "seed": seed,
        "kind": kind,
        "labels": {str(v): k for k, v in names.items()},
        "cases": cases,
    }
    text = json.dumps(manifest, indent=1) + "\n"
    atomic_write_text(out / "manifest.json", text)
    return json.loads(text)  # as a reuse reads it back
