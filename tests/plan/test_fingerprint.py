"""The data-set fingerprint: its values on a hand-written data set, and its cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from brainseg.data.layouts import discover_dataset
from brainseg.plan.fingerprint import fingerprint_dataset
from tests.plan.conftest import brain, save, write_case, write_dataset


def test_fingerprint_values_and_its_cache(tmp_path):
    root = write_dataset(tmp_path / "fp")
    write_case(root, "a", affine=np.diag([-2.0, 1.0, 1.5, 1.0]))  # LAS, 2 x 1 x 1.5 mm
    write_case(root, "b")
    ds = discover_dataset(root)
    cache = tmp_path / "run" / "fingerprint.json"
    fp = fingerprint_dataset(ds, cache)
    a = next(c for c in fp.cases if c.case_id == "a")
    assert a.axcodes == "LAS" and a.ras_spacing == [2.0, 1.0, 1.5] and a.zero_background
    _, lab = brain()
    assert a.label_volumes[3] == pytest.approx(float((lab == 3).sum()) * 3.0)
    assert a.label_components == {1: 1, 2: 1, 3: 1}
    assert a.labels_outside_scan == 0.0 and a.scan_unlabelled == 0.0
    assert a.channels[0].depth_correlation > 0.5  # brighter inside
    assert cache.is_file()
    assert fingerprint_dataset(ds, cache).to_dict() == fp.to_dict()
    # a changed file is fingerprinted again, not read from the stale cache
    img, lab = brain()
    save(img[::-1].copy() * 0 + (img.max() - img) * (lab > 0), root / "imagesTr" / "b_0000.nii.gz")
    os.utime(root / "imagesTr" / "b_0000.nii.gz", ns=(1, 1))
    again = fingerprint_dataset(ds, cache)
    b = next(c for c in again.cases if c.case_id == "b")
    assert b.channels[0].depth_correlation < 0
