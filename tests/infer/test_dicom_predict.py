"""`brainseg predict` on DICOM series (the CLI in a subprocess, the tiny real model): the mask
of a series is the mask of the same volume given as NIfTI, voxel for voxel and affine for
affine; a folder of several series gives several cases; a broken series fails alone with
one line naming its folder; ``--dicom-seg`` writes a SEG that pydicom reads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.io.images import Geometry, write_image
from tests.conftest import brainseg, error_lines, oblique_affine, sequences, write_dicom_series

pydicom = pytest.importorskip("pydicom")


def scan() -> np.ndarray:
    return np.round(sequences()["T1w"]).astype(np.float32)


def test_predict_dicom_series_equals_predict_nifti(tmp_path: Path, tiny_checkpoint: Path):
    data, affine = scan(), oblique_affine(spacing=(1.25, 1.5, 2.0))
    write_dicom_series(tmp_path / "in_dicom" / "case", data, affine)
    write_image(tmp_path / "in_nifti" / "case.nii.gz", data, Geometry(shape=data.shape, affine=affine))
    for kind in ("dicom", "nifti"):
        src = tmp_path / f"in_{kind}" / ("case" if kind == "dicom" else "case.nii.gz")
        proc = brainseg(
            "predict", "--model", str(tiny_checkpoint), "--input", str(src), "--output", str(tmp_path / kind)
        )
        assert proc.returncode == 0, proc.stderr
        assert "1 written, 0 skipped, 0 failed" in proc.stdout
    from_dicom, from_nifti = (nib.load(tmp_path / kind / "case.nii.gz") for kind in ("dicom", "nifti"))
    assert from_dicom.shape == from_nifti.shape == data.shape
    np.testing.assert_array_equal(from_dicom.affine, from_nifti.affine)
    np.testing.assert_allclose(from_dicom.affine, affine, atol=1e-5)  # the scan's own oblique grid
    masks = [np.asarray(img.dataobj) for img in (from_dicom, from_nifti)]
    np.testing.assert_array_equal(masks[0], masks[1])
    assert set(np.unique(masks[0])) == {0, 1, 2}  # the tiny model's three classes inside the head


def test_predict_series_folders_broken_series_and_dicom_seg(tmp_path: Path, tiny_checkpoint: Path):
    data = scan()
    root = tmp_path / "dicom"
    t1 = write_dicom_series(root / "study", data, oblique_affine(), description="T1 MPRAGE", names=lambda k: f"a{k}")
    t2 = write_dicom_series(
        root / "study", data, np.diag([1.5, 1.5, 2.0, 1]), description="T2w", names=lambda k: f"b{k}"
    )
    write_dicom_series(root / "gap", data, oblique_affine(), skip=[9])
    uid = write_dicom_series(root / "mixed", data, np.eye(4), skip=range(12, 24))
    write_dicom_series(root / "mixed", data, oblique_affine(), series_uid=uid, skip=range(12), names=lambda k: f"X{k}")
    write_dicom_series(root / "no_frame_of_reference", data, oblique_affine(), drop=["FrameOfReferenceUID"])

    out = tmp_path / "out"
    proc = brainseg(
        "predict", "--model", str(tiny_checkpoint), "--input", str(root), "--output", str(out), "--dicom-seg"
    )
    assert proc.returncode == 1, proc.stderr
    assert "3 written, 0 skipped, 2 failed" in proc.stdout
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 2, proc.stderr
    assert errors[0].startswith(f"brainseg: error: {root / 'gap'} (series ")
    assert "not evenly spaced" in errors[0] and "(a missing slice?)" in errors[0]
    assert errors[1].startswith(f"brainseg: error: {root / 'mixed'} (series {uid}): mixes slice orientations")
    warnings = [line for line in proc.stderr.splitlines() if "no DICOM SEG written" in line]
    assert len(warnings) == 1 and str(root / "no_frame_of_reference") in warnings[0]
    assert "Frame Of Reference UID" in warnings[0]
    assert (out / "no_frame_of_reference.nii.gz").is_file()  # the NIfTI mask stands
    assert not (out / "no_frame_of_reference_seg.dcm").exists()

    for cid, series_uid in ((f"T1_MPRAGE_{t1}", t1), (f"T2w_{t2}", t2)):
        mask = np.asarray(nib.load(out / f"{cid}.nii.gz").dataobj)
        assert mask.shape == data.shape
        seg = pydicom.dcmread(out / f"{cid}_seg.dcm")
        assert seg.Modality == "SEG"
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["a", "b"]  # the card's labels
        frames = sum(int((mask[:, :, k] == v).any()) for v in (1, 2) for k in range(mask.shape[2]))
        assert int(seg.NumberOfFrames) == frames > 0
        pixels = seg.pixel_array.reshape(frames, *mask.shape[1::-1])
        assert int(pixels.sum()) == int(np.count_nonzero(mask))  # each labelled voxel once, in one segment
    assert sorted(p.name for p in out.glob("*_seg.dcm")) == [f"T1_MPRAGE_{t1}_seg.dcm", f"T2w_{t2}_seg.dcm"]
