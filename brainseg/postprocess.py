"""Turning network output into a clean label map, and measuring label volumes.

Plain functions on numpy arrays (file voxel order, spacing in mm per array axis):

* :func:`probabilities_to_labels` — (C, X, Y, Z) class scores to a label map (argmax).
* :func:`regions_within_input` — (R, X, Y, Z) region probabilities of a region model to a
  label map (each region thresholded, labels written by the class order).
* :func:`innermost_rule` — the BraTS enhancing-tumour rule for region models.
* :func:`postprocess_labels` — per-label connected-component clean-up, configured by
  :class:`~brainseg.config.PostprocessConfig`.
* :func:`label_volumes` / :func:`write_volumes_csv` — structure volumes in mm³, one CSV
  per run with one row per case (the table FastSurfer/SynthSeg users expect).

Connectivity: a label's voxels form one component when they touch by a face, an edge
or a corner (**26-connectivity**, ``generate_binary_structure(3, 3)``). Holes are the
complement's dual: background that cannot reach the volume border through face
neighbours (6-connectivity), which is what ``binary_fill_holes`` does by default. The
26/6 pair is the standard consistent choice in 3D: a one-voxel-thick diagonal wall
counts as closed for hole filling exactly when it counts as connected for components.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .arrays import bounding_box
from .atomic import atomic_write_text
from .config import PostprocessConfig
from .data.foreground import largest_component_mask
from .io import voxel_volume
from .regions import Regions

#: Structuring element for connected components of one label (26-connectivity).
COMPONENT_STRUCTURE = ndimage.generate_binary_structure(3, 3)


def probabilities_to_labels(probs: np.ndarray) -> np.ndarray:
    """Argmax over the class axis of a (C, X, Y, Z) array of scores or probabilities.

    Returns uint8 when every class index fits (C <= 256, indices 0..255), else int16.
    Ties go to the lowest class index (numpy's argmax). Scores must be finite: a NaN
    wins the argmax wherever it occurs.
    """
    probs = np.asarray(probs)
    if probs.ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) array, got shape {probs.shape}")
    n_classes = probs.shape[0]
    if n_classes < 1:
        raise ValueError("the class axis is empty")
    if n_classes - 1 > np.iinfo(np.int16).max:
        raise ValueError(f"{n_classes} classes do not fit an int16 label map")
    dtype = np.uint8 if n_classes - 1 <= np.iinfo(np.uint8).max else np.int16
    return np.argmax(probs, axis=0).astype(dtype)


INPUT_MASK_MODES = ("none", "restrict", "fill")


def labels_within_input(
    probs: np.ndarray, nonzero: np.ndarray, mode: str = "none", weights: np.ndarray | None = None
) -> np.ndarray:
    """Class indices from probabilities, using where the input scan is non-zero; with
    ``weights`` (C,) each class's probability is scaled by its weight before the argmax
    (the card's class offsets, ``exp(offset)``, chosen on the validation cases).

    ``mode`` (``postprocess.input_mask``):

    * ``"none"``: plain argmax.
    * ``"restrict"``: voxels where every input channel is exactly 0 are background
      (skull-stripped or defaced inputs: nothing is ever found outside the head/brain).
    * ``"fill"``: additionally every non-zero voxel takes its most likely *foreground*
      class (skull-stripped tissue segmentation, where the brain mask is the input's
      support: background exactly where the scan is 0).
    """
    if mode not in INPUT_MASK_MODES:
        raise ValueError(f"postprocess.input_mask must be one of {INPUT_MASK_MODES}, got {mode!r}")
    if weights is not None:
        probs = np.asarray(probs) * np.asarray(weights, dtype=np.float32).reshape(-1, *([1] * (np.ndim(probs) - 1)))
    if mode == "fill" and probs.shape[0] > 1:
        labels = probabilities_to_labels(probs[1:])
        labels += 1
    else:
        labels = probabilities_to_labels(probs)
    if mode != "none":
        labels[~np.asarray(nonzero, dtype=bool)] = 0
    return labels


def regions_within_input(
    probs: np.ndarray, nonzero: np.ndarray, mode: str, regions: Regions, thresholds: Sequence[float]
) -> np.ndarray:
    """A label map (label values) from (R, X, Y, Z) region probabilities: region r holds where
    its probability reaches ``thresholds[r]``, and the regions write their labels in class order
    (:meth:`~brainseg.regions.Regions.to_label_map`). ``mode`` "restrict" and "fill" both make
    voxels where every input channel is 0 background (for regions there is no "most likely
    foreground" to fill with); "none" leaves them."""
    if mode not in INPUT_MASK_MODES:
        raise ValueError(f"postprocess.input_mask must be one of {INPUT_MASK_MODES}, got {mode!r}")
    probs = np.asarray(probs)
    masks = probs >= np.asarray(thresholds, dtype=probs.dtype).reshape((-1,) + (1,) * (probs.ndim - 1))
    labels = regions.to_label_map(masks, dtype=np.uint8 if max(regions.class_order) <= 255 else np.int16)
    if mode != "none":
        labels[~np.asarray(nonzero, dtype=bool)] = 0
    return labels


def innermost_rule(labels: np.ndarray, spacing: Sequence[float], regions: Regions, min_mm3: float) -> np.ndarray:
    """The enhancing-tumour rule (BraTS): when the innermost region's label (the last of the class
    order, ET = 4) covers less than ``min_mm3`` mm^3 of the whole case, those voxels take the label
    of the region before it (TC's, necrosis = 1); a new array. ``min_mm3`` 0: unchanged."""
    out = np.array(labels, copy=True)
    inner, outer = regions.innermost
    if min_mm3 <= 0:
        return out
    where = out == inner
    if 0 < np.count_nonzero(where) * voxel_volume(spacing) < min_mm3:
        out[where] = outer
    return out


#: The volumes (mm^3) training tries for the enhancing-tumour rule (0 = off), BraTS-sized:
#: a false-positive ET speck is tens to hundreds of mm^3, a real one thousands.
INNERMOST_CANDIDATES_MM3 = (0.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


def _component_sizes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected components of ``mask``: (component map, voxel count per id; id 0 unused)."""
    components, _ = ndimage.label(mask, structure=COMPONENT_STRUCTURE)
    return components, np.bincount(components.ravel())


def _surrounding_label(labels: np.ndarray, island: np.ndarray) -> int:
    """The most common label among the voxels touching ``island`` (26-neighbours); ties and
    an island with no neighbours go to the lowest label."""
    ring = ndimage.binary_dilation(island, structure=COMPONENT_STRUCTURE) & ~island
    votes = np.bincount(labels[ring].astype(np.int64).ravel())
    return int(np.argmax(votes)) if votes.size else 0


def _clean_label(
    out: np.ndarray, value: int, keep_largest: bool, min_mm3: float, voxel_mm3: float
) -> None:
    """Remove the components of ``value`` that the configuration drops, in place: each takes
    the label that surrounds it (:func:`_surrounding_label`; background in the open).

    Everything is done inside the label's bounding box grown by one voxel, which holds all
    its components and their neighbours.
    """
    box = bounding_box(out == value, 1)
    if box is None:
        return
    crop = out[box]  # a view: writing into it writes into ``out``
    components, sizes = _component_sizes(crop == value)
    drop = np.zeros(sizes.shape, dtype=bool)
    if keep_largest and sizes.size > 2:
        drop[1:] = True
        drop[1 + int(np.argmax(sizes[1:]))] = False
    drop[1:] |= sizes[1:] * voxel_mm3 < min_mm3
    objects = ndimage.find_objects(components)
    for index in np.flatnonzero(drop[1:]) + 1:
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(objects[index - 1], crop.shape))
        island = components[grown] == index
        region = crop[grown]  # a view
        region[island] = _surrounding_label(region, island)


def _fill_label(out: np.ndarray, value: int) -> None:
    """Fill the holes of ``value``'s mask, in place, only where the voxel is background.

    Voxels of other labels inside a hole (e.g. ventricles inside white matter) keep
    their label. Working in the bounding box is exact: background on the box's border
    always reaches the volume border without entering the mask.
    """
    box = bounding_box(out == value)
    if box is None:
        return
    crop = out[box]
    mask = crop == value
    holes = ndimage.binary_fill_holes(mask) & ~mask
    crop[holes & (crop == 0)] = value


def main_component_mask(labels: np.ndarray, core: Sequence[int] = ()) -> np.ndarray:
    """The foreground component (26-connected) that ``largest_foreground`` keeps: the one with
    the most voxels of the ``core`` labels, ties broken by its size; with no ``core`` the
    largest. A region model ranks by its inner labels (BraTS: the tumour core, necrosis and
    enhancing tumour together): a FLAIR-bright blob without a core is a common false
    positive, and it can outgrow a small tumour. Enhancing tumour alone would not do: a
    speck of it in a false blob would outrank a non-enhancing tumour."""
    foreground = labels > 0
    if not core:
        return largest_component_mask(foreground)
    components, n = ndimage.label(foreground, structure=COMPONENT_STRUCTURE)
    if n <= 1:
        return foreground
    inner = np.bincount(components[np.isin(labels, core)], minlength=n + 1)[1:]
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    best = 1 + int(np.lexsort((sizes, inner))[-1])  # lexsort: the last key is the primary one
    return components == best


def postprocess_labels(
    labels: np.ndarray, spacing: Sequence[float], config: PostprocessConfig, core: Sequence[int] = ()
) -> np.ndarray:
    """Clean a 3D label map per label; returns a new array of the same dtype.

    With ``config.largest_foreground`` first only one 26-connected component of the whole
    foreground is kept, the largest, or with ``core`` labels the one :func:`main_component_mask`
    ranks first. Then two passes over the labels named in ``config`` (labels
    absent from the map are skipped; the input is never modified):

    1. removal, per label: keep only its largest 26-connected component (labels in
       ``config.largest_component``), then drop its components smaller than
       ``config.min_size_mm3[label]`` mm³ (voxel count × voxel volume: |det| of the
       affine for ``Geometry.spacing``, else the product of ``spacing``). A removed
       component takes the label that surrounds it (the most common among the voxels
       touching it): background in the open, the structure it sits in otherwise.
    2. hole filling, per label in ``config.fill_holes``: enclosed background (see the
       module docstring for connectivity) takes the label; voxels of other labels
       inside the hole are left alone.

    Filling runs after every removal, so a gap a removal leaves in a label is filled too.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {labels.shape}")
    voxel_mm3 = voxel_volume(spacing)
    out = labels.copy()
    if config.largest_foreground:
        out[~main_component_mask(out, core)] = 0

    largest = {int(v) for v in config.largest_component}
    min_size = {int(k): float(v) for k, v in (config.min_size_mm3 or {}).items()}
    for value in sorted(largest | set(min_size)):
        if value == 0:
            continue  # background is what removal produces, not a structure to clean
        _clean_label(
            out, value, keep_largest=value in largest,
            min_mm3=min_size.get(value, 0.0), voxel_mm3=voxel_mm3,
        )

    for value in sorted({int(v) for v in config.fill_holes} - {0}):
        _fill_label(out, value)
    return out


def label_volumes(
    labels: np.ndarray, spacing: Sequence[float], label_values: Iterable[int]
) -> dict[int, float]:
    """Volume in mm³ of each requested label (0.0 for a label that is absent)."""
    voxel_mm3 = voxel_volume(spacing)
    labels = np.asarray(labels)
    values = [int(v) for v in label_values]
    if np.issubdtype(labels.dtype, np.integer) and labels.size and labels.min() >= 0:
        counts = np.bincount(labels.ravel())  # one pass for all labels
        return {v: (int(counts[v]) if 0 <= v < counts.size else 0) * voxel_mm3 for v in values}
    return {v: int(np.count_nonzero(labels == v)) * voxel_mm3 for v in values}


def _format_volume(value: float) -> str:
    return f"{float(value):.4f}"


def volume_columns(
    label_values: Iterable[int], label_names: Mapping[int, str] | None = None
) -> list[str]:
    """CSV column names ``<name>_mm3`` (``label_<v>_mm3`` when a label has no name)."""
    names = label_names or {}
    columns = []
    for v in label_values:
        name = str(names.get(v, "")).strip() or f"label_{v}"
        columns.append(f"{name}_mm3")
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates or "case" in columns:
        raise ValueError(f"label names give duplicate CSV columns: {', '.join(duplicates or ['case'])}")
    return columns


def write_volumes_csv(
    path: str | os.PathLike,
    volumes: Mapping[str, Mapping[int, float]],
    label_names: Mapping[int, str] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """Write one row per case: ``case,<name or label_v>_mm3,...`` (atomic write).

    ``extra`` adds text columns after the volumes: {column: {case: text}} (an empty
    cell where a case has none).

    ``volumes`` maps case id -> {label: mm³} (as :func:`label_volumes` returns). The
    columns are the union of all cases' labels in ascending order; a label missing
    from a case's dict is an empty cell (unknown), not 0. Rows are in case order as
    given. Volumes are written with 4 decimals (mm³).
    """
    path = Path(path)
    all_labels = sorted({int(v) for vols in volumes.values() for v in vols})
    columns = volume_columns(all_labels, label_names)
    extra = dict(extra or {})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", *columns, *extra])
    for case, vols in volumes.items():
        vols = {int(k): v for k, v in vols.items()}
        cells = [_format_volume(vols[v]) if v in vols else "" for v in all_labels]
        writer.writerow([case, *cells, *(str(col.get(case, "")) for col in extra.values())])
    atomic_write_text(path, buf.getvalue())
    return path
