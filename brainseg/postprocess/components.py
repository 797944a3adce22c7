"""Connected-component clean-up of a label map (:func:`postprocess_labels`, configured by
:class:`~brainseg.config.PostprocessConfig`) and the main component of a foreground.

Connectivity: a label's voxels form one component when they touch by a face, an edge
or a corner (**26-connectivity**, ``generate_binary_structure(3, 3)``). Holes are the
complement's dual: background that cannot reach the volume border through face
neighbours (6-connectivity), as ``binary_fill_holes`` does by default (:func:`fill_holes`). The
26/6 pair is the standard consistent choice in 3D: a one-voxel-thick diagonal wall
counts as closed for hole filling exactly when it counts as connected for components.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from brainseg.config import PostprocessConfig
from brainseg.io.images import voxel_volume
from brainseg.preprocessing.foreground import bounding_box, fill_holes, largest_component_mask

#: Structuring element for connected components of one label (26-connectivity).
COMPONENT_STRUCTURE = ndimage.generate_binary_structure(3, 3)


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


def _clean_label(out: np.ndarray, value: int, keep_largest: bool, min_mm3: float, voxel_mm3: float) -> None:
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
    holes = fill_holes(mask) & ~mask
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


def cored_components_mask(labels: np.ndarray, core: Sequence[int]) -> np.ndarray:
    """The foreground without its 26-connected components that hold no voxel of the ``core``
    labels (``drop_coreless``): a tumour has a core, a FLAIR-bright blob beside it often has
    none. A core-less component larger than every cored one stays: a non-enhancing tumour called
    oedema throughout is not a blob beside a speck of core (a one-voxel core elsewhere once took
    such a tumour's place: WT 0.73 -> 0.00). When no component holds core the largest stays, as
    :func:`main_component_mask` ranks them; with no ``core`` labels (a label model) the whole foreground."""
    foreground = labels > 0
    if not core:
        return foreground
    components, n = ndimage.label(foreground, structure=COMPONENT_STRUCTURE)
    if n <= 1:
        return foreground
    cored = np.bincount(components[np.isin(labels, core)], minlength=n + 1) > 0
    cored[0] = False
    if not cored.any():
        return largest_component_mask(foreground)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    keep = cored | (sizes > sizes[cored].max())
    keep[0] = False
    return keep[components]


def postprocess_labels(
    labels: np.ndarray, spacing: Sequence[float], config: PostprocessConfig, core: Sequence[int] = ()
) -> np.ndarray:
    """Clean a 3D label map per label; returns a new array of the same dtype.

    With ``config.largest_foreground`` first only one 26-connected component of the whole
    foreground is kept, the largest, or with ``core`` labels the one :func:`main_component_mask`
    ranks first; with ``config.drop_coreless`` (and ``core`` labels) the components without
    core go (:func:`cored_components_mask`). Then two passes over the labels named in ``config`` (labels
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
    if config.drop_coreless and core:
        out[~cored_components_mask(out, core)] = 0

    largest = {int(v) for v in config.largest_component}
    min_size = {int(k): float(v) for k, v in (config.min_size_mm3 or {}).items()}
    for value in sorted(largest | set(min_size)):
        if value == 0:
            continue  # background is what removal produces, not a structure to clean
        _clean_label(
            out,
            value,
            keep_largest=value in largest,
            min_mm3=min_size.get(value, 0.0),
            voxel_mm3=voxel_mm3,
        )

    for value in sorted({int(v) for v in config.fill_holes} - {0}):
        _fill_label(out, value)
    return out
