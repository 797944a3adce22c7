"""On-the-fly augmentation of training patches (nnU-Net-like), driven by one RNG.

Spatial transforms (rotation, scaling) are not applied here: they are folded into
patch extraction (:mod:`brainseg.train.sampling.patches`), which samples the rotated/scaled
patch straight from the cached volume in one interpolation. This module does the
rest on the extracted patch: flips, then intensity transforms (background noise,
low-resolution simulation, noise, blur, brightness, contrast, gamma, bias field). Each transform fires with its own
probability; every random draw comes from the ``rng`` passed in, so a patch is a
pure function of its index and the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from brainseg.config import AugmentConfig


def spatial_matrix(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray | None:
    """A 3x3 output->input matrix (rotation x scaling), or None when neither fires."""
    rotate = cfg.enabled and rng.random() < cfg.p_rotate
    scale = cfg.enabled and rng.random() < cfg.p_scale
    if not (rotate or scale):
        return None
    m = np.eye(3)
    if rotate:
        limit = math.radians(cfg.rotate_degrees)
        for axes in ((1, 2), (0, 2), (0, 1)):
            a = rng.uniform(-limit, limit)
            r = np.eye(3)
            i, j = axes
            r[i, i] = r[j, j] = math.cos(a)
            r[i, j], r[j, i] = -math.sin(a), math.sin(a)
            m = r @ m
    if scale:
        # A zoom factor s > 1 shows a larger field of view: sample input at s * offset.
        m = m * _between(rng, cfg.scale_range)
    return m


def _between(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """One uniform draw from a config's ``[low, high]`` range."""
    low, high = bounds
    return rng.uniform(low, high)


def flip(
    image: np.ndarray,
    seg: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    swap: np.ndarray | None = None,
    left_right: bool = True,
):
    """Flip a (C, X, Y, Z) image patch and its (X, Y, Z) class-index patch along each axis with
    probability ``cfg.p_flip``.

    Axis 0 is the subject's left-right axis (the cache is in RAS order): a flip along it maps
    class ``c`` to ``swap[c]`` (a lookup table on class indices,
    :meth:`~brainseg.labels.laterality.Laterality.channel_permutation`; None: nothing to swap), and it
    does not happen at all when ``left_right`` is False (a lateralised label without a
    partner). One draw per axis either way, so the other draws do not move.
    """
    if not cfg.enabled:
        return image, seg
    for axis in range(3):
        if rng.random() < cfg.p_flip and (axis or left_right):
            image = np.flip(image, axis=axis + 1)
            seg = np.flip(seg, axis=axis)
            if axis == 0 and swap is not None:
                seg = np.asarray(swap).astype(seg.dtype, copy=False)[seg]
    return image, seg


def intensity(
    image: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    background: list[float] | None = None,
    raw_zero: list[float] | None = None,
) -> np.ndarray:
    """Intensity augmentation of a (C, X, Y, Z) float32 patch (returns a new array).

    ``background``: per channel, the value of an exact-zero background after
    normalisation (None when the case's background is noise already); voxels with
    exactly that value may get Rician background noise. ``raw_zero``: per channel, the
    value a raw intensity of 0 has after normalisation (``-mean / std`` for the z-score):
    the bias field multiplies the scan's raw intensities, so it scales about that value
    (about 0 when None: a contrast change of the normalised patch, not a bias).
    """
    image = np.array(image, dtype=np.float32, copy=True)
    if not cfg.enabled:
        return image
    if background is not None and rng.random() < cfg.p_background_noise:
        add_background_noise(image, background, _between(rng, cfg.background_noise_std), rng)
    if rng.random() < cfg.p_lowres:
        image = simulate_low_resolution(image, rng.uniform(cfg.lowres_zoom[0], cfg.lowres_zoom[1], size=3))
    if rng.random() < cfg.p_noise:
        std = rng.uniform(0, cfg.noise_std)
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std)
    if rng.random() < cfg.p_blur:
        for c in range(image.shape[0]):
            sigma = _between(rng, cfg.blur_sigma)
            image[c] = gaussian_blur(image[c], sigma)
    channels = range(image.shape[0])
    draws = image.shape[0] if cfg.per_channel else 1  # cfg.per_channel: each channel its own parameters
    if rng.random() < cfg.p_brightness:
        factors = [np.float32(_between(rng, cfg.brightness_range)) for _ in range(draws)]
        for c in channels:
            image[c] *= factors[c % draws]
    if rng.random() < cfg.p_contrast:
        factors = [np.float32(_between(rng, cfg.contrast_range)) for _ in range(draws)]
        for c in channels:
            lo, hi, mean = image[c].min(), image[c].max(), image[c].mean()
            image[c] = np.clip((image[c] - mean) * factors[c % draws] + mean, lo, hi)
    if rng.random() < cfg.p_gamma:
        gammas = [_between(rng, cfg.gamma_range) for _ in range(draws)]
        for c in channels:
            lo, hi = image[c].min(), image[c].max()
            if hi - lo > 1e-6:
                mean, std = image[c].mean(), image[c].std()
                x = _power((image[c] - lo) / (hi - lo), gammas[c % draws]) * (hi - lo) + lo
                # keep the patch's mean and spread, as nnU-Net's gamma transform does
                x = (x - x.mean()) / max(float(x.std()), 1e-6) * std + mean
                image[c] = x
    if rng.random() < cfg.p_bias:
        fields = [_bias_field(image.shape[1:], rng, cfg.bias_strength) for _ in range(draws)]
        zero = np.zeros(image.shape[0], np.float32) if raw_zero is None else np.asarray(raw_zero, np.float32)
        for c in channels:
            image[c] = (image[c] - zero[c]) * fields[c % draws] + zero[c]
    return image


#: Background noise reaches this many voxels from the subject (preprocessing keeps a noisy
#: scan's noise within 5 mm of its foreground, about 3 voxels, and makes the rest constant).
BACKGROUND_NOISE_REACH = 3


def add_background_noise(image: np.ndarray, background: list[float], sigma: float, rng: np.random.Generator) -> None:
    """In place: where channel c equals ``background[c]`` exactly and lies within
    ``BACKGROUND_NOISE_REACH`` voxels of the subject, add the magnitude of complex Gaussian
    noise (Rayleigh, sigma * sqrt(chi2 with 2 degrees of freedom)) - what an MR magnitude
    image shows there, as preprocessing leaves a noisy scan."""
    for c, value in enumerate(background):
        where = image[c] == np.float32(value)
        if where.all():
            continue
        where &= ndimage.binary_dilation(~where, iterations=BACKGROUND_NOISE_REACH)
        n = int(np.count_nonzero(where))
        if n:
            noise = np.sqrt(
                rng.standard_normal(n, dtype=np.float32) ** 2 + rng.standard_normal(n, dtype=np.float32) ** 2
            )
            image[c][where] += noise * np.float32(sigma)


def simulate_low_resolution(image: np.ndarray, zoom) -> np.ndarray:
    """A (C, X, Y, Z) patch seen at a coarser resolution: each axis down-sampled by its ``zoom``
    factor (<= 1) by averaging (partial volume), then trilinearly up-sampled to its size again."""
    shape = image.shape[1:]
    small = [max(1, int(round(s * float(z)))) for s, z in zip(shape, zoom)]
    if list(small) == list(shape):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image))[None]
    pooled = F.adaptive_avg_pool3d(t, (small[0], small[1], small[2]))
    t = F.interpolate(pooled, size=tuple(shape), mode="trilinear", align_corners=False)
    return t[0].numpy()


def gaussian_kernel(sigma: float, truncate: float = 2.0) -> np.ndarray:
    """The normalised 1-D Gaussian scipy.ndimage.gaussian_filter uses (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def gaussian_blur(volume: np.ndarray, sigma: float, truncate: float = 2.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(volume, sigma, mode="nearest", truncate=truncate)`` of a 3-D
    float32 array, as weighted sums of shifted slices in torch: float32 throughout, where scipy
    makes float64 correlate1d passes, which is slower for these 3-5 tap kernels; the same
    values to float32 rounding."""
    k = gaussian_kernel(sigma, truncate)
    r = len(k) // 2
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if r == 0:
        return t.numpy().copy()
    for axis in range(3):
        if t.shape[axis] == 1:
            continue  # edge padding makes a length-1 axis a constant: unchanged
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        padded = F.pad(t[None, None], pad, mode="replicate")[0, 0]
        n = t.shape[axis]
        out = padded.narrow(axis, 0, n) * float(k[0])
        for j in range(1, len(k)):
            out.add_(padded.narrow(axis, j, n), alpha=float(k[j]))
        t = out
    return t.numpy()


def _power(x: np.ndarray, gamma: float) -> np.ndarray:
    """``x ** gamma`` for float32 ``x >= 0`` as exp(gamma * log x) in torch (vectorised; numpy's float32
    power is not, so this is faster); the same values to float32 rounding, and 0 stays 0."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.exp(torch.log(t).mul_(float(gamma))).numpy()


#: Coefficients of a bias field: the nine 1st- and 2nd-order terms of :func:`bias_field`, then the constant.
BIAS_COEFFICIENTS = 10


def _bias_field(shape, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field: exp of a random 2nd-order polynomial over the patch,
    its constant term included (a patch is a window of a scan-wide field: its level varies
    from patch to patch as much as its slope)."""
    return bias_field(shape, rng.normal(0, strength / 3, BIAS_COEFFICIENTS).astype(np.float32))


def bias_field(shape, coeffs: np.ndarray) -> np.ndarray:
    """exp of the 2nd-order polynomial with float32 ``coeffs`` (x, y, z, x^2, y^2, z^2, xy, xz, yz,
    then the constant) over a patch of ``shape``, each axis running over [-1, 1]."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    x, y, z = grids
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    field = coeffs[-1] + sum(c * t for c, t in zip(coeffs[:-1], terms))
    return np.exp(np.broadcast_to(field, shape)).astype(np.float32)
