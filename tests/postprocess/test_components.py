"""Connected components on small hand-built label maps: largest component, hole filling, minimum sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainseg.config import PostprocessConfig
from brainseg.postprocess.components import postprocess_labels


def _ball(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return dist2 <= radius**2


def _two_blobs() -> np.ndarray:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:5, 2:5, 2:5] = 1  # 27 voxels: the big blob
    labels[12:14, 12, 12] = 1  # 2 voxels: a stray fragment
    labels[15:18, 2:4, 2:4] = 2  # another label, 12 voxels
    labels[15, 15, 15] = 2  # and its own 1-voxel fragment
    return labels


def test_largest_component_keeps_big_blob_and_drops_small_one():
    labels = _two_blobs()
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), PostprocessConfig(largest_component=[1]))
    assert np.all(out[2:5, 2:5, 2:5] == 1)
    assert np.all(out[12:14, 12, 12] == 0)  # removed -> background
    assert np.count_nonzero(out == 1) == 27
    # Label 2 was not configured: untouched, fragment included.
    assert np.array_equal(out == 2, labels == 2)


def test_largest_component_uses_26_connectivity():
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels[2:4, 2:4, 2:4] = 3  # 8 voxels
    labels[4, 4, 4] = 3  # touches the cube only by a corner: same component
    labels[8, 8, 8] = 3  # isolated
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), PostprocessConfig(largest_component=[3]))
    assert out[4, 4, 4] == 3
    assert out[8, 8, 8] == 0
    assert np.count_nonzero(out == 3) == 9


def test_fill_holes_fills_hollow_sphere_but_keeps_other_labels():
    shape = (24, 24, 24)
    center = (11.5, 11.5, 11.5)
    inner = _ball(shape, center, 6.0)
    shell = _ball(shape, center, 9.0) & ~inner
    labels = np.zeros(shape, dtype=np.uint8)
    labels[shell] = 1
    labels[11, 11, 11] = 2  # a different structure inside the cavity
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), PostprocessConfig(fill_holes=[1]))

    cavity = inner.copy()
    cavity[11, 11, 11] = False
    assert cavity.sum() > 500  # the test really has a cavity to fill
    assert np.all(out[cavity] == 1)
    assert out[11, 11, 11] == 2
    assert np.all(out[shell] == 1)
    # Nothing outside the sphere changed.
    outside = ~_ball(shape, center, 9.0)
    assert np.all(out[outside] == 0)


def test_fill_holes_leaves_open_cavity_alone():
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[2:9, 2:9, 2:9] = 1
    labels[4:7, 4:7, 4:9] = 0  # a pit open to the outside through the z=8 face
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), PostprocessConfig(fill_holes=[1]))
    assert np.array_equal(out, labels)


@pytest.mark.parametrize(
    "spacing, small_kept",
    [
        ((1.0, 1.0, 1.0), False),  # 8 voxels x 1 mm3 = 8 mm3 < 10 mm3: removed
        ((2.0, 1.0, 1.0), True),  # 8 voxels x 2 mm3 = 16 mm3 >= 10 mm3: kept
        ((1.0, 1.0, 1.25), True),  # 8 x 1.25 = 10 mm3: not smaller than 10, kept
    ],
)
def test_min_size_threshold_is_in_mm3(spacing, small_kept):
    labels = np.zeros((16, 16, 16), dtype=np.int16)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels
    labels[10:12, 10:12, 10:12] = 1  # 8 voxels
    out = postprocess_labels(labels, spacing, PostprocessConfig(min_size_mm3={1: 10.0}))
    assert np.all(out[1:4, 1:4, 1:4] == 1)
    assert np.all(out[10:12, 10:12, 10:12] == (1 if small_kept else 0))


def test_min_size_only_affects_its_label():
    labels = _two_blobs()
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), PostprocessConfig(min_size_mm3={2: 5.0}))
    assert out[15, 15, 15] == 0  # 1 mm3 fragment of label 2 removed
    assert np.count_nonzero(out == 2) == 12
    assert np.array_equal(out == 1, labels == 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_postprocess_does_not_modify_input_and_keeps_dtype(dtype):
    labels = _two_blobs().astype(dtype)
    labels[6:11, 6:11, 6:11] = 3
    labels[8, 8, 8] = 0  # a hole
    before = labels.copy()
    config = PostprocessConfig(largest_component=[1, 2], fill_holes=[3], min_size_mm3={2: 3.0})
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), config)
    assert np.array_equal(labels, before)
    assert out.dtype == labels.dtype
    assert out is not labels and not np.shares_memory(out, labels)
    assert out[8, 8, 8] == 3 and out[12, 12, 12] == 0  # the work did happen on the copy


def test_postprocess_empty_config_is_identity():
    labels = _two_blobs()
    out = postprocess_labels(labels, (1.0, 1.0, 1.0), PostprocessConfig())
    assert np.array_equal(out, labels)


def test_removed_island_takes_the_label_it_sits_in(tmp_path: Path):
    """A small stray component inside another structure becomes that structure, not a
    background hole; one in the open becomes background. Read from a real NIfTI file."""
    import nibabel as nib

    from brainseg.io.images import read_label

    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:16, 2:16, 2:16] = 1  # a structure
    labels[3:6, 3:6, 3:6] = 2  # label 2's big component
    labels[10:12, 10:12, 10] = 2  # label 2's stray island inside label 1: 4 voxels
    labels[18, 18, 18] = 2  # another island, in the open
    labels[15, 8:10, 8] = 3  # label 3 island on the border of label 1 and background: 2 voxels
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    data, geom = read_label(path)
    out = postprocess_labels(data, geom.spacing, PostprocessConfig(min_size_mm3={2: 10.0, 3: 10.0}))
    assert np.all(out[10:12, 10:12, 10] == 1)  # inside label 1: takes label 1
    assert out[18, 18, 18] == 0  # in the open: background
    assert np.all(out[3:6, 3:6, 3:6] == 2)  # the big component stays
    # on the edge of label 1: most of its neighbours are label 1 (it sits in the last layer)
    assert set(np.unique(out[15, 8:10, 8])) <= {0, 1}
    assert np.count_nonzero(out == 0) + np.count_nonzero(out == 1) + 27 == out.size
    # largest_component too: the dropped piece takes its surroundings
    out = postprocess_labels(data, geom.spacing, PostprocessConfig(largest_component=[2]))
    assert np.all(out[10:12, 10:12, 10] == 1) and out[18, 18, 18] == 0


def test_largest_foreground_of_a_region_model_keeps_the_component_with_the_core():
    """BraTS labels (2 oedema, 1 core, 4 enhancing): a core-less oedema blob larger than a
    small tumour is what size alone keeps; ranked by the core labels (1 and 4 together) the
    tumour stays. A speck of enhancing tumour in a false blob does not outrank a
    non-enhancing tumour's larger core; with equal cores the size decides."""
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    blob = _ball(shape, (12, 20, 20), 8)
    labels[blob] = 2  # a FLAIR-bright blob, no core (~2100 voxels)
    tumour = _ball(shape, (31, 20, 20), 5)  # the small tumour (~520 voxels)
    labels[tumour] = 2
    labels[_ball(shape, (31, 20, 20), 3)] = 4
    labels[_ball(shape, (31, 20, 20), 1.5)] = 1
    before = labels.copy()
    cfg = PostprocessConfig(largest_foreground=True)
    by_size = postprocess_labels(labels, (1, 1, 1), cfg)
    assert by_size[12, 20, 20] == 2 and not by_size[tumour].any()
    ranked = postprocess_labels(labels, (1, 1, 1), cfg, core=(1, 4))
    assert np.array_equal(ranked, np.where(tumour, labels, 0))
    assert np.array_equal(labels, before)  # the input is not modified
    non_enhancing = np.where(labels == 4, 1, labels).astype(np.uint8)
    non_enhancing[12, 20, 20] = 4  # an enhancing speck in the false blob
    kept = postprocess_labels(non_enhancing, (1, 1, 1), cfg, core=(1, 4))
    assert kept[31, 20, 20] == 1 and not kept[blob].any()
    equal = np.where(tumour, 2, labels * blob).astype(np.uint8)  # no core anywhere: the size decides
    assert postprocess_labels(equal, (1, 1, 1), cfg, core=(1, 4))[12, 20, 20] == 2


def test_drop_coreless_removes_core_less_blobs_and_keeps_every_lesion_with_a_core():
    """A multifocal tumour (two lesions, each with a core) beside a smaller core-less oedema blob:
    ``drop_coreless`` removes the blob and keeps both lesions (``largest_foreground`` would keep
    one). With no core anywhere the largest component stays; a core-less component larger than every
    cored one stays (a non-enhancing tumour called oedema beside a speck of core); a label model (no
    core labels) loses nothing."""
    shape = (48, 40, 40)
    labels = np.zeros(shape, np.uint8)
    blob = _ball(shape, (10, 20, 20), 3)
    labels[blob] = 2
    lesions = [_ball(shape, (30, 12, 20), 5), _ball(shape, (40, 28, 20), 4)]
    for lesion, (cx, cy) in zip(lesions, ((30, 12), (40, 28))):
        labels[lesion] = 2
        labels[_ball(shape, (cx, cy, 20), 2)] = 4
    labels[_ball(shape, (30, 12, 20), 1)] = 1
    before = labels.copy()
    out = postprocess_labels(labels, (1, 1, 1), PostprocessConfig(drop_coreless=True), core=(1, 4))
    both = lesions[0] | lesions[1]
    assert np.array_equal(out, np.where(both, labels, 0)) and not out[blob].any()
    assert np.array_equal(labels, before)  # the input is not modified
    one = postprocess_labels(labels, (1, 1, 1), PostprocessConfig(largest_foreground=True), core=(1, 4))
    assert one[lesions[0]].all() and not one[lesions[1]].any()  # the rule it does not replace keeps one lesion
    oedema_only = np.where(labels > 0, 2, 0).astype(np.uint8)
    kept = postprocess_labels(oedema_only, (1, 1, 1), PostprocessConfig(drop_coreless=True), core=(1, 4))
    assert np.array_equal(kept, np.where(lesions[0], 2, 0))  # no core anywhere: the largest component
    tumour = _ball(shape, (24, 20, 20), 9)
    speck = np.zeros(shape, np.uint8)
    speck[tumour] = 2  # a non-enhancing tumour called oedema throughout ...
    speck[2, 2, 2] = 1  # ... and one voxel of "core" far from it
    out = postprocess_labels(speck, (1, 1, 1), PostprocessConfig(drop_coreless=True), core=(1, 4))
    assert np.array_equal(out, speck)  # the tumour stays (and the cored speck, which is not core-less)
    assert np.array_equal(postprocess_labels(labels, (1, 1, 1), PostprocessConfig(drop_coreless=True)), labels)
