"""brainseg.io.atomic: a write either replaces its target whole or leaves it as it was, with normal permissions."""

from __future__ import annotations

import os
import stat

import nibabel as nib
import numpy as np
import pytest

from brainseg.io.atomic import atomic_path, atomic_write_text
from brainseg.io.images import Geometry, write_image


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")
        assert not target.samefile(tmp)
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


def test_atomic_path_failure_keeps_target_and_leaves_nothing(tmp_path):
    target = tmp_path / "mask.nii.gz"
    write_image(target, np.ones((3, 4, 5), np.uint8), Geometry((3, 4, 5), np.eye(4)))
    before = target.read_bytes()

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            # A real, half-finished save: a full file written, then the job dies.
            nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.uint8), np.eye(4)), str(tmp))
            assert tmp.exists()
            raise Boom("interrupted")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_normal_permissions(tmp_path, umask):
    # Atomically written files must be as readable as any file the user creates
    # (a mask others cannot open on a shared cluster is a bug), not mkstemp's 0600.
    old = os.umask(umask)
    try:
        image = write_image(tmp_path / "mask.nii.gz", np.ones((3, 4, 5), np.uint8), Geometry((3, 4, 5), np.eye(4)))
        atomic_write_text(tmp_path / "summary.json", "{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == expected
    for path in (image, tmp_path / "summary.json"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, oct(path.stat().st_mode)
