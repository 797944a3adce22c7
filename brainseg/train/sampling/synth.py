"""Synthetic contrasts for training: a patch's image redrawn from its labels (SynthSeg-like domain
randomisation), so the network learns the labels' shapes rather than one contrast, and segments
scans of another contrast or slice thickness of the same anatomy.

A share of the training patches (``train.synth``) is redrawn; the others stay real, which keeps
the training contrast's accuracy. As TorchIO's transforms do, the parameters are drawn first
(:func:`draw`: a small frozen :class:`SynthParams`, from a generator spawned from the patch's own,
so a run is reproducible and the patch's other draws do not move) and then applied
deterministically (:func:`apply`). Per channel, in this order:

1. **Gaussian mixture**: every class (the background and any unlabelled tissue too) gets a mean
   uniform in ``mean`` and a spread in ``std``, independently of the others, so the classes'
   intensity order changes from draw to draw (a [0, 1] scale before normalisation).
2. **Texture inside a label**: label maps are often coarse (three tissue classes; a tumour data
   set's background holds the whole healthy brain), and flat labels would teach the network that
   tissue is flat. Each class's voxels are split into ``subclusters`` quantile bins of the real
   patch's intensity within that class, and each bin's mean lies within ``texture`` of its
   class's: unlabelled structure (deep grey matter inside white matter, the ventricles inside a
   tumour's background) keeps its shape, in a random contrast.
3. A smooth multiplicative **bias field** (:func:`~brainseg.train.sampling.augment.bias_field`).
4. **Partial volume**: averaged over a voxel of ``resolution_mm`` per axis (never finer than the
   patch's), with probability ``p_thick`` over slices of ``thick_mm`` along one random axis, and
   interpolated back onto the patch grid (:func:`~brainseg.train.sampling.augment.simulate_low_resolution`).
5. Additive Gaussian **noise**, then **gamma** on the non-negative intensities.

A skull-stripped case's exact-zero background (every channel at its background value in the real
patch) stays raw 0 throughout: skull stripping comes after the scan.

**Normalised as the real cases are**: the cache holds each case normalised with statistics over its
whole foreground (z-score, or quantile landmarks), never per patch, so a synthetic patch is
normalised with the statistics its synthetic subject would have: a reference sample of the drawn
mixture, each class weighted by its share of the real case's normalisation region
(:class:`SubjectMix`), through a bias of the patch's field's spread, the same noise and gamma. ``ct`` (absolute units) and ``none`` (no
intensity convention) have nothing to draw into: the config refuses ``train.synth`` with them.

**Several channels** are drawn independently (each its own mixture, resolution, bias, gamma and
noise) rather than refused: the channels are co-registered scans of the same anatomy, each a
contrast of the same label map, so any combination of contrasts may turn up, and a refusal would
shut out the multi-sequence tumour data that meets other scanners' sequences most. What an
independent draw cannot keep is a relation between channels that defines a label (enhancing
tumour is brighter after contrast than before): the real patches keep teaching it, so for tumour
data the share should stay well below 1. Region training needs nothing else: targets stay class
indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from brainseg.config import NormalizationScheme
from brainseg.preprocessing.foreground import threshold_mask
from brainseg.preprocessing.normalisation import normalise
from brainseg.preprocessing.preprocess import PreprocessRecord
from brainseg.train.sampling.augment import BIAS_COEFFICIENTS, bias_field, simulate_low_resolution

#: Size of the reference sample that gives a synthetic subject its normalisation statistics.
REFERENCE_SAMPLES = 20_000
#: Cases up to this many voxels are read whole for their :class:`SubjectMix` (larger ones every other voxel).
MIX_FULL_VOXELS = 4_000_000
#: The normalisations a synthetic patch can be brought into.
SYNTH_SCHEMES = ("zscore", "quantile")


@dataclass(frozen=True)
class SynthRanges:
    """What a synthetic image may look like (intensities on a [0, 1] scale before normalisation)."""

    mean: tuple[float, float] = (0.0, 1.0)  # a class's mean, uniform
    std: tuple[float, float] = (0.01, 0.1)  # within a sub-cluster, uniform
    subclusters: int = 3  # quantile bins of the real intensities within each class
    texture: float = 0.1  # a bin's mean lies within +-texture of its class's
    resolution_mm: tuple[float, float] = (1.0, 2.5)  # voxel size per axis, uniform (at least the patch's)
    p_thick: float = 0.3  # thick slices along one random axis
    thick_mm: tuple[float, float] = (3.0, 7.0)  # their thickness, uniform
    bias: float = 0.4  # the log bias field's coefficients: normal, std bias / 3
    gamma: tuple[float, float] = (0.7, 1.5)  # log-uniform
    noise: float = 0.04  # additive Gaussian noise, std uniform up to this


@dataclass(frozen=True, eq=False)
class SynthParams:
    """One synthetic patch's draw: C channels, K classes, B sub-clusters per class."""

    means: np.ndarray  # (C, K, B)
    stds: np.ndarray  # (C, K, B)
    window: np.ndarray  # (C, 3): the partial-volume window per axis, in patch voxels (>= 1)
    bias: np.ndarray  # (C, BIAS_COEFFICIENTS): the log bias field's polynomial
    gamma: np.ndarray  # (C,)
    noise: np.ndarray  # (C,): the noise's std
    seed: int  # the voxels' own draws (the mixture's samples, the noise)


@dataclass(frozen=True, eq=False)
class SubjectMix:
    """Shares of a case's normalisation region: per class index (K,) and, when the statistics came
    from the whole crop box (``norm_region`` "all"), of its exact-zero background (raw 0)."""

    classes: np.ndarray
    outside: float = 0.0


def outside_scan(image: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Voxels of a (C, X, Y, Z) real patch where every channel has the exact-zero background's
    value (a skull-stripped case; none for a noisy background)."""
    if not record.zero_background:
        return np.zeros(image.shape[1:], dtype=bool)
    fill = np.asarray(record.pad_values(), dtype=np.float32).reshape(-1, 1, 1, 1)
    return np.all(image == fill, axis=0)


def subject_mix(image: np.ndarray, seg: np.ndarray, record: PreprocessRecord, n_classes: int) -> SubjectMix:
    """The class shares of a cached case's normalisation region (every other voxel per axis in a
    case over ``MIX_FULL_VOXELS``): its subject (a skull-stripped case; with ``norm_region`` "all"
    the whole crop box) or the threshold foreground preprocessing found (a noisy background; the
    threshold is scale- and offset-free, so the normalised image gives the raw image's mask)."""
    step = slice(None, None, 1 if seg.size <= MIX_FULL_VOXELS else 2)
    img = np.asarray(image[:, step, step, step], dtype=np.float32)
    lab = np.asarray(seg[step, step, step]).astype(np.int64)
    outside = outside_scan(img, record)
    if record.zero_background:
        region = np.ones(lab.shape, dtype=bool) if record.norm_region == "all" else ~outside
    else:
        region = threshold_mask(img)
    total = max(int(np.count_nonzero(region)), 1)
    counts = np.bincount(lab[region & ~outside], minlength=n_classes)[:n_classes]
    return SubjectMix(counts / total, float(np.count_nonzero(region & outside)) / total)


def draw(
    rng: np.random.Generator,
    n_channels: int,
    n_classes: int,
    spacing: Sequence[float],
    ranges: SynthRanges = SynthRanges(),  # noqa: B008 (frozen: an immutable default)
) -> SynthParams:
    """The parameters of one synthetic patch of ``n_channels`` channels and ``n_classes`` classes
    at ``spacing`` (mm per axis); always the same number of draws from ``rng``."""
    c, k, b = n_channels, n_classes, ranges.subclusters
    means = rng.uniform(*ranges.mean, size=(c, k, 1)) + rng.uniform(-ranges.texture, ranges.texture, size=(c, k, b))
    stds = rng.uniform(*ranges.std, size=(c, k, b))
    voxel = rng.uniform(*ranges.resolution_mm, size=(c, 3))
    thick = rng.random(c) < ranges.p_thick
    axis = rng.integers(3, size=c)
    slices = rng.uniform(*ranges.thick_mm, size=c)
    for ch in np.flatnonzero(thick):
        voxel[ch, axis[ch]] = max(voxel[ch, axis[ch]], slices[ch])
    window = np.maximum(voxel / np.asarray(spacing, dtype=np.float64)[None, :], 1.0)
    bias = rng.normal(0.0, ranges.bias / 3.0, size=(c, BIAS_COEFFICIENTS))
    gamma = np.exp(rng.uniform(np.log(ranges.gamma[0]), np.log(ranges.gamma[1]), size=c))
    noise = rng.uniform(0.0, ranges.noise, size=c)
    f32 = np.float32
    return SynthParams(
        means.astype(f32), stds.astype(f32), window, bias.astype(f32), gamma, noise, int(rng.integers(2**63))
    )


def quantile_bins(labels: np.ndarray, values: np.ndarray, inside: np.ndarray, bins: int) -> np.ndarray:
    """Per voxel, which of ``bins`` quantile bins of its class's ``values`` (over the ``inside``
    voxels) it falls in, 0 to bins - 1; equal values share a bin (a constant region stays one)."""
    out = np.zeros(labels.shape, dtype=np.int64)
    if bins <= 1:
        return out
    levels = np.arange(1, bins) / bins
    for k in np.unique(labels[inside]):
        where = (labels == k) & inside
        v = values[where]
        out[where] = np.searchsorted(np.quantile(v, levels), v, side="right")
    return out


def _gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    return np.power(np.maximum(x, np.float32(0.0)), np.float32(gamma)).astype(np.float32)


def _reference_counts(mix: SubjectMix, n_classes: int, bins: int) -> tuple[np.ndarray, int]:
    """How many reference samples each (class, bin) cluster gets, and how many are raw 0 (outside)."""
    classes = np.zeros(n_classes)
    n = min(n_classes, len(mix.classes))
    classes[:n] = mix.classes[:n]
    if classes.sum() <= 0:  # no statistics (an empty region): every class alike
        classes[:] = 1.0
    share = classes / classes.sum() * (1.0 - mix.outside) / bins
    counts = np.round(np.repeat(share, bins) * REFERENCE_SAMPLES).astype(np.int64)
    return np.maximum(counts, 0), int(round(mix.outside * REFERENCE_SAMPLES))


def apply(
    params: SynthParams,
    labels: np.ndarray,
    real: np.ndarray,
    outside: np.ndarray,
    mix: SubjectMix,
    scheme: NormalizationScheme,
) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic (C, X, Y, Z) float32 image of an (X, Y, Z) class-index patch ``labels`` (the
    real (C, X, Y, Z) patch ``real`` gives only the sub-clusters; ``outside``: its exact-zero
    background) normalised by ``scheme`` as its synthetic subject would be, and per channel the
    value a raw 0 takes (the background's value, for the intensity augmentation)."""
    if scheme not in SYNTH_SCHEMES:
        raise ValueError(f"a synthetic patch cannot be normalised by {scheme!r}: only by {', '.join(SYNTH_SCHEMES)}")
    n_channels, n_classes, bins = params.means.shape
    rng = np.random.default_rng(params.seed)
    lab = np.clip(labels.astype(np.int64), 0, n_classes - 1)
    shape = lab.shape
    counts, n_zero = _reference_counts(mix, n_classes, bins)
    ref_cluster = np.repeat(np.arange(n_classes * bins), counts)
    out = np.empty((n_channels, *shape), dtype=np.float32)
    refs = []
    for c in range(n_channels):
        means, stds, noise = params.means[c].ravel(), params.stds[c].ravel(), np.float32(params.noise[c])
        cluster = (lab * bins + quantile_bins(lab, real[c], ~outside, bins)).ravel()
        x = means[cluster] + stds[cluster] * rng.standard_normal(cluster.size, dtype=np.float32)
        field = bias_field(shape, params.bias[c])
        x = x.reshape(shape) * field
        x[outside] = 0.0
        x = simulate_low_resolution(x[None], 1.0 / params.window[c])[0]
        x += rng.standard_normal(shape, dtype=np.float32) * noise
        out[c] = _gamma(x, float(params.gamma[c]))
        out[c][outside] = 0.0
        ref = means[ref_cluster] + stds[ref_cluster] * rng.standard_normal(ref_cluster.size, dtype=np.float32)
        # the bias field's spread over the subject (its level, the constant term, stays the patch's own)
        ref *= np.exp(np.float32(np.log(field).std()) * rng.standard_normal(ref.size, dtype=np.float32))
        ref += rng.standard_normal(ref.size, dtype=np.float32) * noise
        refs.append(np.concatenate([_gamma(ref, float(params.gamma[c])), np.zeros(n_zero, np.float32)]))
    n_ref = len(refs[0])
    data = np.concatenate([np.stack(refs), out.reshape(n_channels, -1)], axis=1)
    mask = np.zeros(data.shape[1], dtype=bool)
    mask[:n_ref] = True
    normalised, _, _, raw_zero = normalise(data, mask, scheme)
    image = np.ascontiguousarray(normalised[:, n_ref:].reshape(out.shape), dtype=np.float32)
    image[:, outside] = raw_zero[:, None]
    return image, np.asarray(raw_zero, dtype=np.float32)


def redraw(
    rng: np.random.Generator,
    share: float,
    image: np.ndarray,
    labels: np.ndarray,
    record: PreprocessRecord,
    mix: SubjectMix,
    scheme: NormalizationScheme,
    ranges: SynthRanges = SynthRanges(),  # noqa: B008 (frozen: an immutable default)
) -> tuple[np.ndarray, np.ndarray] | None:
    """With probability ``share`` a real training patch's synthetic image and its raw 0's value per
    channel (:func:`apply`); None when the patch stays real. ``rng``: this patch's own generator."""
    if not rng.random() < share:
        return None
    params = draw(rng, image.shape[0], len(mix.classes), record.target_spacing, ranges)
    return apply(params, labels, image, outside_scan(image, record), mix, scheme)
