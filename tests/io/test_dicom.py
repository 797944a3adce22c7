"""DICOM series read with their full geometry: real multi-file series written slice by slice
(pydicom), read back through :mod:`brainseg.io.images` and compared with the same volume
written as NIfTI; broken series refused with a message naming the folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainseg.errors import InputError
from brainseg.io.dicom import DicomSeries, dicom_files, find_series, is_dicom_file, series_case_id
from brainseg.io.images import Geometry, read_channels, read_geometry, read_image, write_image
from tests.conftest import oblique_affine, sequences, write_dicom_series

pytest.importorskip("pydicom")


def scan() -> np.ndarray:
    return np.round(sequences()["T1w"]).astype(np.float32)


def test_oblique_anisotropic_series_matches_the_nifti_of_the_same_volume(tmp_path: Path):
    data, affine = scan(), oblique_affine(spacing=(1.25, 1.5, 2.0))
    write_dicom_series(tmp_path / "dicom", data, affine)
    nifti = write_image(tmp_path / "same.nii.gz", data, Geometry(shape=data.shape, affine=affine))

    from_dicom, geom = read_image(tmp_path / "dicom")  # the folder stands for its one series
    from_nifti, ngeom = read_image(nifti)
    assert geom.shape == ngeom.shape == data.shape
    # Both the float32 affine a NIfTI stores (the mask's too), to the last digit.
    np.testing.assert_array_equal(geom.affine, ngeom.affine)
    np.testing.assert_allclose(geom.affine, affine, atol=1e-5)
    np.testing.assert_allclose(geom.spacing, (1.25, 1.5, 2.0), atol=1e-6)
    assert geom.header is None and geom.path is not None and "dicom" in geom.path
    np.testing.assert_array_equal(from_dicom, from_nifti)
    np.testing.assert_array_equal(from_dicom, data)
    assert read_geometry(tmp_path / "dicom").same_grid(geom)
    (series,) = find_series(tmp_path / "dicom")
    assert series.description == "T1 MPRAGE"
    channels, cgeom = read_channels([series])
    assert channels.shape == (1, *data.shape) and cgeom.same_grid(geom)


def test_slices_against_the_normal_are_stacked_along_it(tmp_path: Path):
    """A series whose files run against the slice normal is read in normal order, so the same
    voxel values sit at the same world points as in the volume written."""
    data = scan()
    affine = oblique_affine(spacing=(1.0, 1.0, 3.0)) @ np.diag([1.0, 1.0, -1.0, 1.0])  # slices go down the normal
    write_dicom_series(tmp_path / "dicom", data, affine)
    read, geom = read_image(tmp_path / "dicom")
    np.testing.assert_array_equal(read, data[:, :, ::-1])
    last = data.shape[2] - 1
    np.testing.assert_allclose(geom.affine[:, 3], affine @ [0, 0, last, 1], atol=1e-5)
    np.testing.assert_allclose(geom.affine[:3, 2], -affine[:3, 2], atol=1e-6)
    np.testing.assert_allclose(geom.affine[:3, :2], affine[:3, :2], atol=1e-6)


def test_dicom_found_by_content_not_by_suffix(tmp_path: Path):
    data = scan()
    write_dicom_series(tmp_path / "d", data[:, :, :4], np.eye(4), names=lambda k: f"slice{k}.bin")
    (tmp_path / "d" / "notes.dcm").write_text("not a DICOM file, whatever its name")
    (tmp_path / "d" / ".hidden").write_bytes((tmp_path / "d" / "slice0.bin").read_bytes())
    assert [p.name for p in dicom_files(tmp_path / "d")] == [f"slice{k}.bin" for k in range(4)]
    assert not is_dicom_file(tmp_path / "d" / "notes.dcm")
    assert read_image(tmp_path / "d")[0].shape == (24, 24, 4)


def test_two_series_in_one_folder(tmp_path: Path):
    data = scan()
    t1 = write_dicom_series(tmp_path / "d", data, np.eye(4), description="T1 MPRAGE", names=lambda k: f"a{k}")
    t2 = write_dicom_series(
        tmp_path / "d", data[:, :, :10], np.eye(4), description="T2/FLAIR (ax)", names=lambda k: f"b{k}"
    )
    series = find_series(tmp_path / "d")
    assert [(s.description, s.uid) for s in series] == [("T1 MPRAGE", t1), ("T2/FLAIR (ax)", t2)]
    assert [series_case_id(s) for s in series] == [f"T1_MPRAGE_{t1}", f"T2_FLAIR_ax_{t2}"]
    assert series_case_id(DicomSeries(tmp_path, "1.2.3")) == "1.2.3"
    assert read_image(series[1])[0].shape == (24, 24, 10)
    with pytest.raises(InputError, match=r"holds 2 DICOM series") as err:
        read_image(tmp_path / "d")
    assert str(tmp_path / "d") in str(err.value)


def test_a_missing_slice_is_refused_naming_the_folder(tmp_path: Path):
    write_dicom_series(tmp_path / "gap", scan(), oblique_affine(), skip=[12])
    with pytest.raises(InputError) as err:
        read_geometry(tmp_path / "gap")
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'gap'} (series ")
    assert "not evenly spaced: IM0011 and IM0013 are 4 mm apart, the other slices 2 mm (a missing slice?)" in text


def test_mixed_orientations_are_refused(tmp_path: Path):
    data = scan()
    uid = write_dicom_series(tmp_path / "mixed", data, np.eye(4), skip=range(12, 24))
    write_dicom_series(
        tmp_path / "mixed", data, oblique_affine(), series_uid=uid, skip=range(12), names=lambda k: f"X{k}"
    )
    with pytest.raises(InputError, match=r"mixes slice orientations: ImageOrientationPatient of X\d+ differs"):
        read_image(tmp_path / "mixed")


def test_series_without_positions_or_single_slice(tmp_path: Path):
    write_dicom_series(tmp_path / "nopos", scan()[:, :, :3], np.eye(4), drop=["ImagePositionPatient"])
    with pytest.raises(InputError, match="slice IM0000 has no ImagePositionPatient"):
        read_image(tmp_path / "nopos")
    write_dicom_series(tmp_path / "one", scan()[:, :, :1], np.eye(4))
    with pytest.raises(InputError, match="a single 2D slice; a 3D series is required"):
        read_image(tmp_path / "one")
