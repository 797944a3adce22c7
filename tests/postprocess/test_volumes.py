"""Label volumes in mm³ (any spacing, sheared affines) and the volumes.csv they are written to."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from brainseg.config import PostprocessConfig
from brainseg.postprocess.components import postprocess_labels
from brainseg.postprocess.volumes import label_volumes, write_volumes_csv


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
