"""Preprocessing shared by training and inference, recorded so it can be inverted.

Steps, in order:

1. **Reorient** the voxel array to the closest RAS axis order (a permutation and
   flips only: no interpolation, the grid is kept, oblique scans stay oblique).
2. **Resample** to the target spacing (trilinear for images; labels are resampled
   as one-hot maps and re-argmaxed so thin structures survive). The new grid keeps
   the first voxel's centre and has exactly the target spacing (the convention of
   ITK/SimpleITK and MONAI's ``Spacing``): new voxel ``j`` lies at old voxel
   coordinate ``j * target / spacing``; samples past the last old voxel take its
   value.
3. **Foreground** (:mod:`brainseg.preprocessing.foreground`): decided per case whether the
   background is exactly 0 (zeros reaching the border: skull-stripped) or not (noise, CT
   air); the foreground is then the subject mask (the non-zero voxels, holes filled) or a
   robust threshold mask (always for ``ct``). **Crop** to its bounding box (grown by
   ``CROP_MARGIN_MM`` for a threshold mask). On a noisy MR scan (when cropping) the noise
   farther than that margin is replaced by the background's median: one constant on every
   scan, so a window outside the subject is never pure noise blown up by instance norm.
4. **Normalise** each channel with statistics of the *whole volume* (never per patch),
   applied to every voxel (:func:`~brainseg.preprocessing.normalisation.normalise`): ``zscore`` (mean,
   std) or ``quantile`` (the percentiles mapped onto a standard normal's) over the
   foreground; on a zero-background case only when the crop kept under 3/4 of the volume,
   else over every voxel (nnU-Net's rule, ``record.norm_region``). ``ct``: clip to the
   data set's foreground 0.5-99.5 percentiles, z-score with its mean and std (the model
   card's ``intensity``). An exact-zero background becomes one constant,
   ``record.background``, which patches and windows are also padded with.

A :class:`PreprocessRecord` stores what was done. :func:`invert_to_original` takes
class scores on the preprocessed grid back to the scan's own grid: un-crop, resample
to the RAS-ordered original shape, undo the axis permutation and flips. The result
has exactly the input's shape; written with the input's geometry it lines up voxel
for voxel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import nibabel as nib
import numpy as np
import torch

from brainseg.config import NormalizationScheme
from brainseg.io.images import Geometry
from brainseg.preprocessing.foreground import (
    beyond_margin,
    bounding_box,
    crop_fraction,
    has_zero_background,
    subject_mask,
    threshold_mask,
)
from brainseg.preprocessing.normalisation import (
    MASK_FOR_NORM_BELOW,
    background_values,
    normalise,
)
from brainseg.preprocessing.resample import (
    _lerp_axis,
    grid_taps,
    resample_image,
    resample_labels,
    resample_linear,
    resample_steps,
    resampled_shape,
)

#: The preprocessing convention (cache entries and model cards record it):
#: 3: resampling keeps the first voxel centre, exact target spacing;
#: 4: foreground per background kind, every voxel normalised, background value recorded;
#: 5: far noise set to the background constant (record.far_constant);
#: 6: background zeros reach the border; nnU-Net's rule for the statistics' region; ct.
PREPROCESS_VERSION = 6
#: How far the crop box reaches past a threshold foreground (noisy background), in mm.
CROP_MARGIN_MM = 5.0


@dataclass
class PreprocessRecord:
    """Everything needed to map the preprocessed grid back to the original one."""

    original_shape: list[int]  # file voxel order
    ornt: list[list[float]]  # nibabel orientation: file axes -> RAS axes
    ras_shape: list[int]  # shape after reorientation
    ras_spacing: list[float]  # spacing after reorientation
    target_spacing: list[float]
    resampled_shape: list[int]
    bbox: list[list[int]]  # [[start, stop]] per axis in the resampled grid
    norm_mean: list[float]
    norm_std: list[float]
    #: Whether the case's background is exactly 0 (decides the input-mask rule).
    zero_background: bool = True
    #: Per channel, the normalised value of the background: the padding value.
    background: list[float] = field(default_factory=list)
    #: Whether noise farther than CROP_MARGIN_MM from the foreground was set to the background
    #: (noisy scans, when cropping): those voxels are background by construction.
    far_constant: bool = False
    #: Where the normalisation statistics came from: "foreground" or "all" (nnU-Net's rule).
    norm_region: str = "foreground"

    def pad_values(self) -> list[float]:
        """Per channel, what lies beyond the crop box in normalised units (0 for old records)."""
        return list(self.background) or [0.0] * len(self.norm_mean)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessRecord:
        return cls(**values)


# --------------------------------------------------------------------------- helpers


def ras_orientation(geometry: Geometry) -> np.ndarray:
    """nibabel orientation array taking the file's axes to the closest RAS order."""
    return nib.orientations.io_orientation(geometry.affine)


def to_ras(values: Sequence[float], geometry: Geometry) -> list[float]:
    """Per-file-axis values (spacing, shape) in RAS axis order: file axis i goes to RAS axis ornt[i, 0]."""
    ornt = ras_orientation(geometry)
    return [float(values[int(np.flatnonzero(ornt[:, 0] == axis)[0])]) for axis in range(3)]


def reorient_array(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply an orientation to the last three axes of ``data`` (a view when possible)."""
    if data.ndim == 3:
        return nib.orientations.apply_orientation(data, ornt)
    return np.stack([nib.orientations.apply_orientation(c, ornt) for c in data])


def undo_reorient_array(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`reorient_array` (last three axes)."""
    inverse = _invert_ornt(np.asarray(ornt))
    if data.ndim == 3:
        return nib.orientations.apply_orientation(data, inverse)
    return np.stack([nib.orientations.apply_orientation(c, inverse) for c in data])


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation that undoes ``ornt`` (a signed axis permutation)."""
    inverse = np.zeros_like(ornt)
    for in_axis, (out_axis, flip) in enumerate(ornt):
        inverse[int(out_axis)] = [in_axis, flip]
    return inverse


def crop(data: np.ndarray, bbox: Sequence[Sequence[int]]) -> np.ndarray:
    sl = tuple(slice(a, b) for a, b in bbox)
    return data[(Ellipsis,) + sl]


# --------------------------------------------------------------------------- forward


def preprocess(
    data: np.ndarray,
    geometry: Geometry,
    target_spacing: Sequence[float],
    label: np.ndarray | None = None,
    normalization: NormalizationScheme = "zscore",
    crop_to_nonzero: bool = True,
    intensity: Sequence | None = None,
    subject: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, PreprocessRecord]:
    """Preprocess a (C, X, Y, Z) case (file voxel order) and its optional label map
    (``intensity``: the data set's, per channel, for the ``ct`` scheme; ``subject``: the
    case's :func:`~brainseg.preprocessing.foreground.subject_mask` if the caller has it already)."""
    data = data[None] if data.ndim == 3 else data
    ornt = ras_orientation(geometry)
    ras = reorient_array(data, ornt)
    ras_spacing = to_ras(geometry.spacing, geometry)
    target = [float(t) for t in target_spacing]
    new_shape = resampled_shape(ras.shape[1:], ras_spacing, target)
    steps = resample_steps(ras_spacing, target) if list(new_shape) != list(ras.shape[1:]) else [1.0] * 3
    img = resample_image(ras, new_shape, steps)
    lab = None
    if label is not None:
        lab = resample_labels(reorient_array(label, ornt), new_shape, steps)
    subject = subject_mask(data) if subject is None else subject
    ct = normalization == "ct"
    zero_bg = has_zero_background(data, subject)
    inside = (
        resample_image(reorient_array(subject, ornt)[None].astype(np.float32), new_shape, steps)[0] if zero_bg else None
    )
    if inside is not None and not ct:  # crop to the subject; statistics over voxels mostly inside it
        fg, box, margin = inside >= 0.5, inside > 0, 0
    else:  # a threshold foreground (inside a zero-padded field of view), with a margin
        fg = box = threshold_mask(img, valid=None if inside is None else inside >= 0.5)
        margin = int(np.ceil(CROP_MARGIN_MM / min(target)))
    found = bounding_box(box, margin)
    region = "all" if zero_bg and not ct and crop_fraction(found, new_shape) >= MASK_FOR_NORM_BELOW else "foreground"
    found = found if crop_to_nonzero else None  # the whole volume when not cropping or empty
    bbox = [[s.start, s.stop] for s in found] if found is not None else [[0, int(s)] for s in new_shape]
    img, fg = crop(img, bbox), crop(fg, bbox)
    if lab is not None:
        lab = np.ascontiguousarray(crop(lab, bbox))
    img, means, stds, raw_zero = normalise(
        img, fg if region == "foreground" else np.ones_like(fg), normalization, intensity
    )
    background = background_values(img, raw_zero, fg, zero_bg and not ct)  # ct: a zero rim is not what lies beyond
    far_constant = not zero_bg and crop_to_nonzero and not ct  # ct: the clip makes far air constant already
    if far_constant:  # noise farther than the margin from the subject becomes its median: one constant
        far = beyond_margin(fg, target, CROP_MARGIN_MM)
        img[:, far] = np.asarray(background, dtype=np.float32)[:, None]
    record = PreprocessRecord(
        original_shape=[int(s) for s in data.shape[1:]],
        ornt=np.asarray(ornt).tolist(),
        ras_shape=[int(s) for s in ras.shape[1:]],
        ras_spacing=ras_spacing,
        target_spacing=target,
        resampled_shape=[int(s) for s in new_shape],
        bbox=bbox,
        norm_mean=means,
        norm_std=stds,
        zero_background=bool(zero_bg),
        background=background,
        far_constant=bool(far_constant),
        norm_region=region,
    )
    return img, lab, record


# --------------------------------------------------------------------------- inverse


def invert_to_original(scores: torch.Tensor, record: PreprocessRecord) -> torch.Tensor:
    """Map class scores (C, x, y, z) on the preprocessed grid to the original grid.

    Outside the cropped box the background class (index 0) gets all the probability.
    Works on whatever device ``scores`` lives on; returns float32 (C, *original_shape).
    """
    scores = scores.float()
    c = scores.shape[0]
    full = torch.zeros((c, *record.resampled_shape), dtype=scores.dtype, device=scores.device)
    full[0] = 1.0
    sl = tuple(slice(a, b) for a, b in record.bbox)
    full[(slice(None),) + sl] = scores
    if list(record.resampled_shape) != list(record.ras_shape):
        full = resample_linear(full, record.ras_shape, inverse_steps(record))
    # Undo the reorientation: flips then permutation, inverse of nibabel's apply_orientation.
    ornt = np.asarray(record.ornt)
    inverse = _invert_ornt(ornt)
    return _apply_ornt_torch(full, inverse)


def _apply_ornt_torch(t: torch.Tensor, ornt: np.ndarray) -> torch.Tensor:
    """nibabel.apply_orientation for the last three axes of a torch tensor."""
    flips = [1 + i for i, (_, f) in enumerate(ornt) if f == -1]
    if flips:
        t = torch.flip(t, dims=flips)
    perm = [0] + [1 + int(a) for a in np.argsort(ornt[:, 0])]
    # apply_orientation: output axis ornt[i,0] takes input axis i, i.e. transpose by argsort.
    return t.permute(*perm).contiguous()


# --------------------------------------------------------------------------- inverse, labels only


def inverse_steps(record: PreprocessRecord) -> list[float]:
    """:func:`resample_steps` from the resampled grid back to the RAS-ordered original one."""
    return resample_steps(record.target_spacing, record.ras_spacing)


def invert_region_slabs(
    scores: torch.Tensor, record: PreprocessRecord, max_elements: int = 2**21
) -> Iterator[tuple[torch.Tensor, tuple[slice, slice, slice]]]:
    """Class scores (C, x, y, z) on the cropped grid, taken to the region of the RAS-ordered
    original grid that the crop box reaches (the values :func:`invert_to_original` gives there,
    before its reorientation; outside it that is the background one-hot), in slabs along the
    first axis, each of at most about ``max_elements`` values: ``(slab (x, Y, Z, C) float32, its slices in the RAS grid)``, in order.

    Peak memory is a few slabs whatever the volume's size, not several C-channel copies of
    the whole region, which inverting it at once would hold.
    """
    scores = scores.float()
    c = scores.shape[0]
    res, ras = [int(s) for s in record.resampled_shape], [int(s) for s in record.ras_shape]
    bbox = [(int(a), int(b)) for a, b in record.bbox]
    if res == ras:  # no resampling: the region is the box itself
        rows = max(1, max_elements // max(1, c * scores.shape[2] * scores.shape[3]))
        for s in range(0, scores.shape[1], rows):
            e = min(s + rows, scores.shape[1])
            yield (
                scores[:, s:e].permute(1, 2, 3, 0).contiguous(),
                (slice(bbox[0][0] + s, bbox[0][0] + e), slice(*bbox[1]), slice(*bbox[2])),
            )
        return
    taps, slices, lows = [], [], []
    for (a, b), n_in, n_ras, step in zip(bbox, res, ras, inverse_steps(record)):
        i0, i1, w = grid_taps(n_in, n_ras, step)
        hit = np.flatnonzero((i1 >= a) & (i0 < b))  # outputs that read the box: a contiguous run
        j0, j1 = (int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0)
        taps.append((i0[j0:j1], i1[j0:j1], w[j0:j1]))  # resampled-grid indices
        slices.append(slice(j0, j1))
        lows.append(max(a - 1, 0))  # read from here: the box plus one voxel of background
    highs = [min(b + 1, n) for (a, b), n in zip(bbox, res)]
    n_out = [len(t[2]) for t in taps]
    if not all(n_out):
        yield torch.zeros((*n_out, c), dtype=torch.float32, device=scores.device), tuple(slices)  # type: ignore[misc]
        return
    rows = max(1, max_elements // max(1, c * n_out[1] * n_out[2]))
    device = scores.device
    for s in range(0, n_out[0], rows):
        e = min(s + rows, n_out[0])
        i0, i1, w = (t[s:e] for t in taps[0])
        lo0, hi0 = int(i0.min()), int(i1.max()) + 1  # resampled rows this slab reads
        block = torch.zeros((hi0 - lo0, highs[1] - lows[1], highs[2] - lows[2], c), dtype=torch.float32, device=device)
        block[..., 0] = 1.0  # background one-hot outside the box
        r0, r1 = max(lo0, bbox[0][0]), min(hi0, bbox[0][1])
        if r1 > r0:
            inner = (
                slice(r0 - lo0, r1 - lo0),
                slice(bbox[1][0] - lows[1], bbox[1][1] - lows[1]),
                slice(bbox[2][0] - lows[2], bbox[2][1] - lows[2]),
            )
            block[inner] = scores[:, r0 - bbox[0][0] : r1 - bbox[0][0]].permute(1, 2, 3, 0)
        # Separable linear interpolation, one axis at a time (trilinear = the product of the three).
        axis_taps = [(i0 - lo0, i1 - lo0, w)] + [(t[0] - lo, t[1] - lo, t[2]) for t, lo in zip(taps[1:], lows[1:])]
        for axis, (a0, a1, wa) in enumerate(axis_taps):
            block = _lerp_axis(block, axis, a0, a1, wa)
        yield block, (slice(slices[0].start + s, slices[0].start + e), slices[1], slices[2])
