"""The test family of the synthetic-contrast check: the demo's held-out subjects seen in contrasts and
slice thicknesses the demo never shows, drawn by this module's own intensity model (never the
training's generator, :mod:`brainseg.train.sampling.synth`, nor the demo's, :mod:`brainseg.demo.tissue`).

From each held-out subject's labels (0 background, 1 CSF, 2 grey, 3 white matter) on its own grid:

* **partial volume**: each tissue's one-hot map smoothed (Gaussian, ``PV_SIGMA`` voxels) and
  renormalised, so a voxel's signal mixes the tissues around it;
* **signal** per tissue from a contrast table (:data:`CONTRASTS`: T2-like CSF bright, grey above
  white matter; PD-like everything bright, CSF brightest; FLAIR-like CSF dark, grey above white
  matter), each tissue jittered by up to ``JITTER`` per case and given its own smooth texture
  (``TEXTURE`` log-amplitude), under a smooth multiplicative bias field;
* the **background as the source scan has it**: a skull-stripped subject (exact zeros around the
  brain) stays exactly 0 outside the brain with noise inside; the others get Rician noise over the
  whole field of view and an offset; then an intensity scale.

``t1`` is the held-out T1 scan as it is (what the synthetic mode costs on the training contrast).
The thick sets put a T1 or T2-like scan on a **new grid** with ``THICK_MM`` slices along one random
axis of the file: each slab the average of the fine voxels it covers (the slice profile), its
reference label the tissue covering most of it.

Layout::

    OUT/<contrast>/images/<case>_0000.nii.gz   OUT/<contrast>/labels/<case>.nii.gz   OUT/manifest.json
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainseg.io.atomic import atomic_write_text

GENERATOR = "scripts.experiments.synth_contrast.family v1"
DEFAULT_SEED = 20250901
#: Relative signal of CSF, grey and white matter.
CONTRASTS: dict[str, tuple[float, float, float]] = {
    "t2": (1.0, 0.6, 0.42),
    "pd": (0.9, 0.78, 0.64),
    "flair": (0.12, 0.72, 0.52),
}
#: Sets made by thickening a contrast: name -> the contrast it thickens ("t1": the real scan).
THICK = {"thick_t1": "t1", "thick_t2": "t2"}
#: Every set, in report order.
SETS = ("t1", *CONTRASTS, *THICK)
PV_SIGMA = 0.7  # voxels
JITTER = 0.05  # of a tissue's signal, uniform +-
TEXTURE = 0.06  # log-amplitude of a tissue's smooth texture
BIAS = 0.2  # log-amplitude of the bias field
NOISE = (0.02, 0.04)  # Rician sigma, of the brightest tissue's signal
THICK_MM = (4.0, 6.0)
SCALES = (1.0, 300.0, 1500.0)
#: A scan is skull-stripped when at least this fraction of its voxels is exactly 0.
ZERO_FRACTION = 0.05


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], nodes: int = 4) -> np.ndarray:
    """A smooth random field of unit std over ``shape``: ``nodes`` normal values per axis, cubic-zoomed."""
    coarse = rng.standard_normal((nodes,) * len(shape))
    field = ndimage.zoom(coarse, [s / nodes for s in shape], order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]
    pad = [(0, s - f) for s, f in zip(shape, field.shape)]
    field = np.pad(field, pad, mode="edge")
    return ((field - field.mean()) / max(float(field.std()), 1e-6)).astype(np.float32)


def tissue_fractions(labels: np.ndarray, sigma: float = PV_SIGMA) -> np.ndarray:
    """(4, X, Y, Z): each label's smoothed one-hot map, summing to 1 per voxel."""
    maps = np.stack([ndimage.gaussian_filter((labels == k).astype(np.float32), sigma) for k in range(4)])
    return maps / np.maximum(maps.sum(0, keepdims=True), 1e-6)


def skull_stripped(image: np.ndarray) -> bool:
    return float(np.mean(image == 0)) >= ZERO_FRACTION


def contrast_scan(
    rng: np.random.Generator, labels: np.ndarray, contrast: str, zero_background: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """A scan of ``labels`` in ``contrast`` (a key of :data:`CONTRASTS`) and what was drawn."""
    base = np.asarray(CONTRASTS[contrast]) * rng.uniform(1 - JITTER, 1 + JITTER, size=3)
    fractions = tissue_fractions(labels)
    signal = np.zeros(labels.shape, np.float32)
    for k in range(3):
        texture = np.exp(TEXTURE * smooth_noise(rng, labels.shape, 6))
        signal += fractions[k + 1] * np.float32(base[k]) * texture
    signal *= np.exp(BIAS * smooth_noise(rng, labels.shape, 3))
    sigma = float(rng.uniform(*NOISE)) * float(base.max())
    scale = float(SCALES[int(rng.integers(len(SCALES)))])
    if zero_background:
        brain = labels > 0
        image = np.zeros(labels.shape, np.float32)
        image[brain] = np.maximum(signal[brain] + rng.normal(0.0, sigma, int(brain.sum())), 0.0) * scale
        offset = 0.0
    else:
        real = signal + rng.normal(0.0, sigma, labels.shape)
        imag = rng.normal(0.0, sigma, labels.shape)
        offset = float(rng.uniform(0.0, 0.05)) * scale
        image = (np.sqrt(real * real + imag * imag) * scale + offset).astype(np.float32)
    settings = {"tissue_signal": [round(float(v), 3) for v in base], "noise": round(sigma, 4), "scale": scale}
    return image.astype(np.float32), {**settings, "offset": round(offset, 3), "skull_stripped": zero_background}


def slab_weights(n: int, spacing: float, thickness: float) -> np.ndarray:
    """(n_out, n) weights: fine voxel i covers [i, i + 1) * spacing mm, slab j covers [j, j + 1) *
    thickness mm (the last one may be cut short); each row sums to 1."""
    n_out = int(np.ceil(n * spacing / thickness))
    lo, hi = np.arange(n) * spacing, (np.arange(n) + 1) * spacing
    slo, shi = np.arange(n_out)[:, None] * thickness, (np.arange(n_out)[:, None] + 1) * thickness
    overlap = np.clip(np.minimum(hi[None, :], shi) - np.maximum(lo[None, :], slo), 0.0, None)
    return overlap / overlap.sum(1, keepdims=True)


def thicken(
    image: np.ndarray, labels: np.ndarray, affine: np.ndarray, axis: int, thickness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels, affine) on a grid with ``thickness`` mm slices along file ``axis``: each slab
    the average of the fine voxels it covers, labelled with the tissue covering most of it."""
    spacing = float(np.linalg.norm(affine[:3, axis]))
    weights = slab_weights(image.shape[axis], spacing, thickness)

    def along(volume: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.tensordot(weights, np.moveaxis(volume, axis, 0), axes=1), 0, axis)

    thick_image = along(image.astype(np.float64)).astype(np.float32)
    shares = np.stack([along((labels == k).astype(np.float32)) for k in range(4)])
    factor = thickness / spacing
    new = np.array(affine, dtype=np.float64)
    new[:3, 3] = affine[:3, 3] + affine[:3, axis] * (0.5 * factor - 0.5)  # slab 0's centre
    new[:3, axis] = affine[:3, axis] * factor
    return thick_image, np.argmax(shares, axis=0).astype(np.uint8), new


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine.astype(np.float32).astype(np.float64))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    nib.save(img, str(path))


def make_family(demo: Path, out: Path, seed: int = DEFAULT_SEED, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every set of :data:`SETS` from the held-out subjects of the demo folder ``demo`` (imagesTs,
    labelsTs) into ``out`` (emptied first); returns the manifest (also OUT/manifest.json)."""
    labels_dir = demo / "labelsTs"
    cases = sorted(p.name[: -len(".nii.gz")] for p in labels_dir.glob("*.nii.gz"))
    if not cases:
        raise SystemExit(f"synth_contrast: {labels_dir}: no held-out labels")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    manifest: dict[str, Any] = {"generator": GENERATOR, "seed": seed, "demo": str(demo), "sets": {}}
    for index, case in enumerate(cases):
        t1_img: Any = nib.load(str(demo / "imagesTs" / f"{case}_0000.nii.gz"))
        label_img: Any = nib.load(str(labels_dir / f"{case}.nii.gz"))
        t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
        labels = np.asarray(label_img.dataobj).astype(np.uint8)
        affine = t1_img.affine
        stripped = skull_stripped(t1)
        scans: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]] = {
            "t1": (t1, labels, affine, {"source": "the held-out T1 scan"})
        }
        for k, contrast in enumerate(CONTRASTS):
            image, settings = contrast_scan(np.random.default_rng([seed, index, k]), labels, contrast, stripped)
            scans[contrast] = (image, labels, affine, settings)
        for k, (name, source) in enumerate(THICK.items()):
            rng = np.random.default_rng([seed, index, 100 + k])
            axis, thickness = int(rng.integers(3)), round(float(rng.uniform(*THICK_MM)), 2)
            image, lab, new = thicken(scans[source][0], labels, affine, axis, thickness)
            scans[name] = (image, lab, new, {"source": source, "axis": axis, "thickness_mm": thickness})
        for name, (image, lab, aff, settings) in scans.items():
            save(out / name / "images" / f"{case}_0000.nii.gz", image, aff)
            save(out / name / "labels" / f"{case}.nii.gz", lab, aff)
            manifest["sets"].setdefault(name, []).append({"case_id": case, "shape": list(image.shape), **settings})
        log(f"test family: {case} ({index + 1}/{len(cases)}, {'skull-stripped' if stripped else 'noisy background'})")
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest
