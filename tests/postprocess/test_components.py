"""Post-processing of label maps and label volumes, on small hand-built arrays."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from brainseg.config import PostprocessConfig
from brainseg.postprocess.components import postprocess_labels
from brainseg.postprocess.decision import probabilities_to_labels
from brainseg.postprocess.volumes import label_volumes, write_volumes_csv


def _ball(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return dist2 <= radius**2


# ----------------------------------------------------------------------------- argmax


def test_probabilities_to_labels_argmax_and_dtype():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 5, 6, 7)).astype(np.float32)
    labels = probabilities_to_labels(probs)
    assert labels.dtype == np.uint8
    assert labels.shape == (5, 6, 7)
    # Every voxel's label is the class with the highest score there.
    picked = np.take_along_axis(probs, labels[None].astype(np.intp), axis=0)[0]
    assert np.array_equal(picked, probs.max(axis=0))
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_probabilities_to_labels_many_classes_use_int16():
    probs = np.zeros((300, 2, 2, 2), dtype=np.float32)
    probs[299, 0, 0, 0] = 1.0
    probs[5, 1, 1, 1] = 1.0
    labels = probabilities_to_labels(probs)
    assert labels.dtype == np.int16
    assert labels[0, 0, 0] == 299 and labels[1, 1, 1] == 5 and labels[0, 1, 0] == 0


def test_probabilities_to_labels_rejects_3d():
    with pytest.raises(ValueError):
        probabilities_to_labels(np.zeros((3, 4, 5)))


# ----------------------------------------------------------------------------- components


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


# ----------------------------------------------------------------------------- volumes


def test_label_volumes_anisotropic_spacing():
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels[0:2, 0:3, 0:4] = 1  # 24 voxels
    labels[5, 5, 5] = 7  # 1 voxel
    spacing = (0.5, 1.0, 2.5)  # 1.25 mm3 per voxel
    vols = label_volumes(labels, spacing, [1, 7, 9])
    assert vols == pytest.approx({1: 24 * 1.25, 7: 1.25, 9: 0.0})
    # Same numbers through the non-integer path.
    assert label_volumes(labels.astype(np.float32), spacing, [1, 7, 9]) == pytest.approx(vols)


def test_write_volumes_csv_names_and_fallback(tmp_path: Path):
    path = tmp_path / "out" / "volumes.csv"
    volumes = {"sub-01": {1: 1000.5, 2: 20.25}, "sub-02": {1: 999.0, 2: 0.0, 3: 7.125}}
    write_volumes_csv(path, volumes, label_names={1: "white_matter", 3: "csf"})
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["case", "white_matter_mm3", "label_2_mm3", "csf_mm3"]
    assert [r["case"] for r in rows] == ["sub-01", "sub-02"]
    assert float(rows[0]["white_matter_mm3"]) == pytest.approx(1000.5)
    assert float(rows[1]["csf_mm3"]) == pytest.approx(7.125)
    assert rows[0]["csf_mm3"] == ""  # not measured for sub-01: unknown, not 0
    assert [p.name for p in path.parent.iterdir()] == ["volumes.csv"]  # no temp file left


def test_write_volumes_csv_rejects_duplicate_columns(tmp_path: Path):
    with pytest.raises(ValueError, match="duplicate"):
        write_volumes_csv(tmp_path / "v.csv", {"a": {1: 1.0, 2: 2.0}}, {1: "x", 2: "x"})
    assert not (tmp_path / "v.csv").exists()


# ----------------------------------------------------------------------------- removed islands take the label around them


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


def test_volumes_use_the_determinant_of_a_sheared_affine(tmp_path: Path):
    """Column norms overstate the voxel volume of a sheared grid; |det| is right."""
    import nibabel as nib

    from brainseg.evaluate.per_label import evaluate_case
    from brainseg.io.images import read_label

    affine = np.eye(4)
    affine[:3, :3] = [[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]  # det 2, column norms 1 x 1.118 x 2
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels
    labels[8:10, 8, 8:10] = 1  # 4 voxels: 8 mm3 truly, 8.94 by column norms
    path = tmp_path / "sheared.nii.gz"
    img = nib.Nifti1Image(labels, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    data, geom = read_label(path)
    assert geom.voxel_volume == pytest.approx(2.0)
    assert np.prod(geom.spacing) == pytest.approx(2.0 * np.sqrt(1.25))  # the sizes themselves are unchanged
    assert label_volumes(data, geom.spacing, [1]) == {1: pytest.approx(31 * 2.0)}
    rows = evaluate_case(path, path)
    assert rows[0]["ref_volume_mm3"] == pytest.approx(31 * 2.0)
    # a component of 8 mm3 is below 8.5 mm3 (by column norms it would be 8.94 and stay)
    out = postprocess_labels(data, geom.spacing, PostprocessConfig(min_size_mm3={1: 8.5}))
    assert np.all(out[8:10, 8, 8:10] == 0) and np.count_nonzero(out == 1) == 27


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
