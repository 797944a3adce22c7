"""Reading scans whose header stores no orientation: a warning naming the file and what is assumed."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from brainseg.io.images import read_image


def _write(path: Path, code: int) -> Path:
    affine = np.diag([1.2, 1.2, 2.0, 1.0])
    img = nib.Nifti1Image(np.ones((6, 7, 8), np.float32), affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    nib.save(img, str(path))
    return path


def test_qform_and_sform_codes_both_zero_warn_with_the_assumed_orientation(tmp_path, caplog):
    path = _write(tmp_path / "no_orientation.nii.gz", code=0)
    with caplog.at_level(logging.WARNING, logger="brainseg.io.images"):
        _, geom = read_image(path)
        read_image(path)  # once per file
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    (msg,) = warnings
    axcodes = "".join(nib.aff2axcodes(geom.affine))
    assert str(path) in msg and "qform_code and sform_code are both 0" in msg and f"assuming {axcodes}" in msg
    assert "1.2x1.2x2 mm" in msg and "\n" not in msg


def test_a_file_with_an_orientation_reads_silently(tmp_path, caplog):
    path = _write(tmp_path / "scanner.nii.gz", code=1)
    with caplog.at_level(logging.WARNING, logger="brainseg.io.images"):
        read_image(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
