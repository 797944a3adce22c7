"""Degraded copies of a scan, for calibrating the quality score on failures.

A quality score fitted on clean out-of-fold cases only has never seen a mask go wrong, so it
cannot say when one does. The cross-validation's calibration set therefore holds each
held-out case again after one strong degradation (:data:`DEGRADATIONS`): additive noise,
a smooth multiplicative bias field, blur (isotropic, or along one axis as thick slices
would), a gamma change, the contrast inverted inside the subject, or real thick slices: the
scan (and its label) on a new grid of 3-7 mm slices along one axis (:func:`degrade_case`), so
the score also sees voxel sizes outside the training range that still segment well. The severity is drawn
per case, from mild to far beyond what augmentation showed the network, so the calibration
sees the whole range from unharmed to failed.

Every function is pure: a new float32 (C, X, Y, Z) array, the input untouched; the draw
comes from the ``rng`` passed in (:func:`degradation_plan` seeds it from the case id, so a
rerun degrades alike).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainseg.preprocessing.resample import resample_image, resample_labels, resample_steps, resampled_shape

#: What a calibration copy may suffer.
DEGRADATIONS: tuple[str, ...] = ("noise", "bias", "blur", "thick", "gamma", "invert", "slices")


@dataclass(frozen=True)
class Degradation:
    """One degradation and its severity in [0, 1] (0: barely visible, 1: the strongest drawn)."""

    kind: str
    severity: float

    @property
    def name(self) -> str:
        return f"{self.kind}{round(100 * self.severity):02d}"


def _stats(channel: np.ndarray, subject: np.ndarray) -> tuple[float, float, float, float]:
    inside = channel[subject] if subject.any() else channel.ravel()
    lo, hi = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    return float(np.mean(inside)), float(np.std(inside)) or 1.0, float(lo), float(hi)


def _noise(data, subject, severity, rng):
    out = np.empty_like(data)
    for c, ch in enumerate(data):
        _, std, _, _ = _stats(ch, subject)
        out[c] = ch + rng.normal(0.0, (0.15 + 0.85 * severity) * std, ch.shape).astype(np.float32)
    return out


def _smooth_field(shape, rng, strength: float) -> np.ndarray:
    """exp of a random field smooth over a quarter of the scan, scaled to +-``strength`` (log units)."""
    coarse = rng.normal(size=(4, 4, 4))
    zoom = [s / 4 for s in shape]
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    field = field / (np.abs(field).max() or 1.0)
    return np.exp(strength * field).astype(np.float32)


def _bias(data, subject, severity, rng):
    field = _smooth_field(data.shape[1:], rng, 0.3 + 0.9 * severity)
    return (data * field[None]).astype(np.float32)


def _blur(data, subject, severity, rng):
    sigma = 0.8 + 2.2 * severity
    return np.stack([ndimage.gaussian_filter(ch, sigma) for ch in data]).astype(np.float32)


def _thick(data, subject, severity, rng):
    axis = int(rng.integers(3))
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = 1.0 + 3.0 * severity
    return np.stack([ndimage.gaussian_filter(ch, sigma) for ch in data]).astype(np.float32)


def _gamma(data, subject, severity, rng):
    gamma = float(np.exp((0.4 + 1.0 * severity) * rng.choice([-1.0, 1.0])))
    out = np.empty_like(data)
    for c, ch in enumerate(data):
        _, _, lo, hi = _stats(ch, subject)
        scaled = np.clip((ch - lo) / ((hi - lo) or 1.0), 0.0, None)
        out[c] = np.where(subject, lo + (hi - lo) * scaled**gamma, ch)
    return out


def _invert(data, subject, severity, rng):
    """Contrast inverted inside the subject, blended with the original by the severity."""
    out = np.empty_like(data)
    weight = 0.4 + 0.6 * severity
    for c, ch in enumerate(data):
        _, _, lo, hi = _stats(ch, subject)
        inverted = hi + lo - np.clip(ch, lo, hi)
        out[c] = np.where(subject, (1 - weight) * ch + weight * inverted, ch)
    return out


_APPLY: dict[str, Callable] = {
    "noise": _noise,
    "bias": _bias,
    "blur": _blur,
    "thick": _thick,
    "gamma": _gamma,
    "invert": _invert,
}


def degrade(data: np.ndarray, subject: np.ndarray, degradation: Degradation, seed: int) -> np.ndarray:
    """A degraded float32 copy of a (C, X, Y, Z) scan (``subject``: its subject mask), on its own
    grid (every kind but ``slices``, which :func:`degrade_case` puts on a new one)."""
    if degradation.kind == "slices":
        raise ValueError("thick slices change the grid: use degrade_case")
    rng = np.random.default_rng(seed)
    data = np.asarray(data, dtype=np.float32)
    return _APPLY[degradation.kind](data, np.asarray(subject, dtype=bool), float(degradation.severity), rng)


def degrade_case(
    data: np.ndarray, labels: np.ndarray, subject: np.ndarray, affine: np.ndarray, degradation: Degradation, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scan, label map, affine) of a degraded case. ``slices``: both resampled to slices of
    3-7 mm (by the severity; at least 1.5x the voxel) along a random axis, the scan with the
    slice's partial-volume blur, the label by :func:`~brainseg.preprocessing.resample.resample_labels`,
    first voxel centres kept; every other kind: :func:`degrade` on the same grid."""
    if degradation.kind != "slices":
        return degrade(data, subject, degradation, seed), np.asarray(labels), np.asarray(affine)
    rng = np.random.default_rng(seed)
    axis = int(rng.integers(3))
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    thick = max(3.0 + 4.0 * float(degradation.severity), 1.5 * float(spacing[axis]))
    target = [float(s) for s in spacing]
    target[axis] = thick
    shape = resampled_shape(np.shape(labels), spacing, target)
    steps = resample_steps(spacing, target)
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = 0.4 * steps[axis]
    blurred = np.stack([ndimage.gaussian_filter(np.asarray(ch, dtype=np.float32), sigma) for ch in data])
    new_affine = np.array(affine, dtype=np.float64, copy=True)
    new_affine[:3, axis] *= steps[axis]
    image = resample_image(blurred, shape, steps)
    return image.astype(np.float32), resample_labels(np.asarray(labels), shape, steps), new_affine


def case_seed(case_id: str, salt: int = 0) -> int:
    """A seed from the case id (stable across runs and machines, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(f"{case_id}:{salt}".encode()).digest()[:4], "little")


def degradation_plan(case_id: str, copies: int) -> list[Degradation]:
    """The degradations a held-out case's calibration copies get: ``copies`` distinct kinds,
    each at a severity drawn uniformly in [0, 1], from the case id."""
    rng = np.random.default_rng(case_seed(case_id))
    kinds = rng.permutation(len(DEGRADATIONS))[: max(0, min(copies, len(DEGRADATIONS)))]
    return [Degradation(DEGRADATIONS[int(k)], float(rng.uniform())) for k in kinds]
