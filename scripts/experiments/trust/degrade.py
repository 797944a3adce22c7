"""The test family of the trust experiment: held-out labelled scans, clean and damaged in ways the
library's own calibration never applies, so the quality score is measured on failures it did not see.

From ``DATA/imagesTs/ID_0000.nii.gz`` + ``DATA/labelsTs/ID.nii.gz`` (one channel) it writes, per
case, nine cases ``ID_<variant>`` into ``OUT/imagesTs`` and ``OUT/labelsTs`` and lists them in
``OUT/variants.json``:

* ``clean``: the files copied byte for byte;
* ``noise1`` / ``noise2``: **Rician** noise, the magnitude ``|image + N(0, s) + i N(0, s)|`` over the
  whole field of view (the background gets the Rayleigh floor), ``s`` 4-9 % (mild) or 15-35 %
  (heavy) of the brain's mean intensity;
* ``bias1`` / ``bias2``: a **polynomial field** of order 2 or 3 in world coordinates, random
  coefficients, scaled so that its max/min ratio over the brain is 1.3-1.7 (mild) or 2-4 (heavy);
* ``lowres1`` / ``lowres2``: **thick slices** along a random array axis, 2.5-3.5 mm (mild) or 4-6 mm
  (heavy): a box slice profile, then linear sampling onto a new grid of that spacing covering the
  same extent; the label is sampled with nearest neighbour onto the same grid, and both files
  get the new grid's affine;
* ``contrast1`` / ``contrast2``: a **contrast remap** inside the brain that keeps the brain's
  histogram: each voxel's intensity rank ``p`` becomes ``(1 - w) p + w (1 - p)`` and is read back
  through the brain's own quantiles; ``w`` 0.15-0.35 flattens the tissue contrast (mild), ``w``
  0.8-1.0 reverses the order of the tissues (heavy: a contrast the model never saw).

"The brain" is the labelled voxels (label > 0). Every level is drawn from its range with a
generator seeded by (``seed``, the case id, the variant): the same seed writes the same files.
Labels are copied unchanged except for the low-resolution variants.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import Geometry, read_image, read_label, write_image
from scripts.common import case_id

GENERATOR = "scripts.experiments.trust.degrade v1"
DEFAULT_SEED = 20250724
VARIANTS_JSON = "variants.json"


@dataclass(frozen=True)
class Damage:
    """One variant: what is done, how strongly, and the range its level is drawn from."""

    suffix: str
    kind: str  # clean, noise, bias, lowres, contrast
    severity: str  # none, mild, heavy
    low: float
    high: float
    unit: str


DAMAGES = (
    Damage("clean", "clean", "none", 0.0, 0.0, ""),
    Damage("noise1", "noise", "mild", 0.04, 0.09, "Rician sigma / brain mean"),
    Damage("noise2", "noise", "heavy", 0.15, 0.35, "Rician sigma / brain mean"),
    Damage("bias1", "bias", "mild", 1.3, 1.7, "field max/min over the brain"),
    Damage("bias2", "bias", "heavy", 2.0, 4.0, "field max/min over the brain"),
    Damage("lowres1", "lowres", "mild", 2.5, 3.5, "slice thickness, mm"),
    Damage("lowres2", "lowres", "heavy", 4.0, 6.0, "slice thickness, mm"),
    Damage("contrast1", "contrast", "mild", 0.15, 0.35, "weight of the reversed ranks"),
    Damage("contrast2", "contrast", "heavy", 0.8, 1.0, "weight of the reversed ranks"),
)


# --------------------------------------------------------------------------- the damage models


def rician(
    image: np.ndarray, level: float, brain: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Magnitude of the image plus complex Gaussian noise of ``level`` x the brain's mean intensity
    (and that noise's standard deviation ``sigma``)."""
    floor = min(0.0, float(image.min()))  # a magnitude image starts at 0: shift negative data up, then back
    signal = image.astype(np.float64) - floor
    sigma = level * float(signal[brain].mean() if brain.any() else signal[signal > 0].mean())
    real = signal + sigma * rng.standard_normal(image.shape)
    imaginary = sigma * rng.standard_normal(image.shape)
    return (np.hypot(real, imaginary) + floor).astype(np.float32), {"sigma": round(sigma, 6)}


def world_unit_coordinates(shape: tuple[int, ...], affine: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """World coordinates of every voxel (3, X, Y, Z), shifted and scaled to [-1, 1] over the brain's box."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    inside = world[:, brain] if brain.any() else world.reshape(3, -1)
    lo, hi = inside.min(axis=1), inside.max(axis=1)
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-6)
    return (world - centre[:, None, None, None]) / half[:, None, None, None]


def polynomial_bias(
    image: np.ndarray, affine: np.ndarray, ratio: float, brain: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """The image times a polynomial field (order 2 or 3 in world coordinates) whose max/min over
    the brain is ``ratio`` (the field is held at its brain extremes outside the brain)."""
    order = int(rng.choice([2, 3]))
    u = world_unit_coordinates(image.shape, affine, brain)
    powers = [p for p in product(range(order + 1), repeat=3) if 1 <= sum(p) <= order]
    poly = np.zeros(image.shape)
    for p in powers:
        poly += rng.normal(0.0, 1.0 / sum(p)) * u[0] ** p[0] * u[1] ** p[1] * u[2] ** p[2]
    values = poly[brain] if brain.any() else poly.ravel()
    lo, hi = float(values.min()), float(values.max())
    t = np.clip((poly - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    field = ratio ** (t - 0.5)
    floor = min(0.0, float(image.min()))
    return ((image - floor) * field + floor).astype(np.float32), {"order": order, "terms": len(powers)}


def thick_slices(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, axis: int, thickness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The scan and its label on a grid of ``thickness`` mm along ``axis`` (same extent, same
    directions): a box slice profile then linear sampling for the scan, nearest neighbour for
    the label. Returns (scan, label, the new affine, the thickness used: at least 1.25 x the
    old spacing)."""
    spacing = float(np.linalg.norm(affine[:3, axis]))
    thickness = max(thickness, 1.25 * spacing)
    factor = thickness / spacing
    n = image.shape[axis]
    m = max(1, int(round(n / factor)))
    matrix = np.ones(3)
    matrix[axis] = factor
    offset = np.zeros(3)
    offset[axis] = (n - 1) / 2 - (m - 1) / 2 * factor  # old index of the new first slice: centred extents
    shape = list(image.shape)
    shape[axis] = m
    profile = 2 * int(factor // 2) + 1  # odd: centred on the slice
    smooth = ndimage.uniform_filter1d(image.astype(np.float32), profile, axis=axis, mode="nearest")
    scan = ndimage.affine_transform(smooth, matrix, offset, output_shape=tuple(shape), order=1, mode="nearest")
    mask = ndimage.affine_transform(label, matrix, offset, output_shape=tuple(shape), order=0, mode="nearest")
    new_affine = affine.copy()
    new_affine[:3, axis] = affine[:3, axis] * factor
    new_affine[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
    return scan.astype(np.float32), mask, new_affine, thickness


def rank_remap(image: np.ndarray, weight: float, brain: np.ndarray) -> np.ndarray:
    """Inside the brain, each intensity's rank ``p`` becomes ``(1 - w) p + w (1 - p)``, read back
    through the brain's own quantiles: the brain's histogram stays, the tissues' order flattens
    (``w`` < 0.5) or reverses (``w`` > 0.5). Outside the brain nothing changes."""
    out = image.astype(np.float32).copy()
    values = image[brain]
    if values.size < 2:
        return out
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size) / (values.size - 1)
    target = (1.0 - weight) * ranks + weight * (1.0 - ranks)
    out[brain] = np.sort(values)[np.rint(target * (values.size - 1)).astype(np.int64)]
    return out


# --------------------------------------------------------------------------- the test set


def source_cases(data: Path) -> list[tuple[str, Path, Path]]:
    """(case id, scan, label) of every held-out case of ``data`` (imagesTs/labelsTs, one channel)."""
    images, labels = data / "imagesTs", data / "labelsTs"
    if not images.is_dir() or not labels.is_dir():
        raise SystemExit(f"trust: {data}: expected imagesTs/ and labelsTs/ (held-out cases, nnU-Net layout)")
    if any(images.glob("*_0001.nii.gz")):
        raise SystemExit(f"trust: {images}: more than one channel per case (only single-channel scans are supported)")
    cases = []
    for scan in sorted(images.glob("*_0000.nii.gz")):
        cid = case_id(scan)
        label = labels / f"{cid}.nii.gz"
        if not label.is_file():
            raise SystemExit(f"trust: {label}: no label for {scan.name}")
        cases.append((cid, scan, label))
    if not cases:
        raise SystemExit(f"trust: {images}: no ID_0000.nii.gz scans")
    return cases


def case_rng(seed: int, source: str, variant: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(source.encode()), variant])


def degrade_case(
    source: str, scan: Path, label: Path, out: Path, seed: int, index: int, damage: Damage
) -> dict[str, Any]:
    """Write one variant of one case into ``out``; its entry of variants.json."""
    cid = f"{source}_{damage.suffix}"
    out_scan, out_label = out / "imagesTs" / f"{cid}_0000.nii.gz", out / "labelsTs" / f"{cid}.nii.gz"
    rng = case_rng(seed, source, index)
    level = round(float(rng.uniform(damage.low, damage.high)), 4) if damage.kind != "clean" else 0.0
    entry: dict[str, Any] = {
        "case": cid,
        "source": source,
        "degradation": damage.kind,
        "severity": damage.severity,
        "level": level,
        "unit": damage.unit,
    }
    if damage.kind == "clean":
        shutil.copyfile(scan, out_scan)
        shutil.copyfile(label, out_label)
        return entry
    image, geom = read_image(scan)
    labels, label_geom = read_label(label)
    if not geom.same_grid(label_geom):
        raise SystemExit(f"trust: {label}: not on its scan's grid ({label_geom.describe()} vs {geom.describe()})")
    brain = labels > 0
    if damage.kind == "lowres":
        axis = int(rng.integers(3))
        data, lab, affine, thickness = thick_slices(image, labels, geom.affine, axis, level)
        grid = Geometry(shape=tuple(int(s) for s in data.shape), affine=affine)  # type: ignore[arg-type]
        write_image(out_scan, data, grid, dtype=np.float32)
        write_image(out_label, lab, grid)
        entry.update(level=round(thickness, 4), axis=axis, shape=list(data.shape))
        return entry
    params: dict[str, Any] = {}
    if damage.kind == "noise":
        data, params = rician(image, level, brain, rng)
    elif damage.kind == "bias":
        data, params = polynomial_bias(image, geom.affine, level, brain, rng)
    else:
        data = rank_remap(image, level, brain)
    entry.update(params)
    write_image(out_scan, data, geom, dtype=np.float32)
    shutil.copyfile(label, out_label)
    return entry


def _manifest_matches(manifest: dict[str, Any], out: Path, seed: int, sources: list[str]) -> bool:
    if manifest.get("generator") != GENERATOR or manifest.get("seed") != seed or manifest.get("sources") != sources:
        return False
    return all(
        (out / "imagesTs" / f"{c['case']}_0000.nii.gz").is_file()
        and (out / "labelsTs" / f"{c['case']}.nii.gz").is_file()
        for c in manifest.get("cases", [])
    )


def make_test_set(data: Path, out: Path, seed: int = DEFAULT_SEED, log: Callable[[str], None] = print) -> dict:
    """Write every variant of every held-out case of ``data`` into ``out``; the manifest
    (``out/variants.json``). A folder already holding this seed's set of the same cases is reused."""
    cases = source_cases(data)
    sources = [c[0] for c in cases]
    try:
        manifest = json.loads((out / VARIANTS_JSON).read_text())
        if _manifest_matches(manifest, out, seed, sources):
            log(f"test set: reusing {out} ({len(manifest['cases'])} cases)")
            return manifest
    except (OSError, ValueError):
        pass
    shutil.rmtree(out, ignore_errors=True)
    (out / "imagesTs").mkdir(parents=True)
    (out / "labelsTs").mkdir(parents=True)
    entries = []
    for source, scan, label in cases:
        for index, damage in enumerate(DAMAGES):
            entries.append(degrade_case(source, scan, label, out, seed, index, damage))
        log(f"test set: {source}: {len(DAMAGES)} variants")
    manifest = {"generator": GENERATOR, "seed": seed, "data": str(data), "sources": sources, "cases": entries}
    atomic_write_text(out / VARIANTS_JSON, json.dumps(manifest, indent=1) + "\n")
    return manifest
