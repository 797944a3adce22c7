"""Degraded calibration copies: deterministic, the input untouched, each kind doing what it says."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.quality.degrade import DEGRADATIONS, Degradation, case_seed, degradation_plan, degrade, degrade_case


def two_tissue_scan() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1, 24, 24, 24): a bright core (about 100) in a darker shell (about 50), each with a gradient,
    zero outside; its subject and core masks."""
    grid = np.indices((24, 24, 24)) - 11.5
    r = np.sqrt((grid**2).sum(0))
    data = np.where(r < 6, 100.0 - 2 * r, np.where(r < 10, 40.0 + 2 * r, 0.0)).astype(np.float32)[None]
    return data, r < 10, r < 6


@pytest.mark.parametrize("kind", [k for k in DEGRADATIONS if k != "slices"])
def test_each_degradation_changes_the_scan_deterministically_and_leaves_the_input_alone(kind: str):
    data, subject, _ = two_tissue_scan()
    before = data.copy()
    a = degrade(data, subject, Degradation(kind, 0.7), seed=3)
    b = degrade(data, subject, Degradation(kind, 0.7), seed=3)
    assert np.array_equal(data, before) and a.dtype == np.float32 and a.shape == data.shape
    assert np.array_equal(a, b) and not np.allclose(a, data)


def test_inverted_contrast_reverses_the_tissues_order_and_stronger_noise_is_noisier():
    data, subject, core = two_tissue_scan()
    shell = subject & ~core
    inverted = degrade(data, subject, Degradation("invert", 1.0), seed=0)[0]
    assert inverted[core].mean() < inverted[shell].mean()
    mild = degrade(data, subject, Degradation("noise", 0.0), seed=0)[0] - data[0]
    strong = degrade(data, subject, Degradation("noise", 1.0), seed=0)[0] - data[0]
    assert strong.std() > 3 * mild.std() > 0


def test_a_case_gets_distinct_kinds_the_same_on_every_run():
    plan = degradation_plan("case_007", 4)
    assert plan == degradation_plan("case_007", 4) and len({d.kind for d in plan}) == 4
    assert plan != degradation_plan("case_008", 4)
    many = [d for i in range(40) for d in degradation_plan(f"case_{i:03d}", 4)]
    severities = sorted(d.severity for d in many)  # drawn over the whole range: mild and heavy copies
    assert severities[0] < 0.1 and severities[-1] > 0.9 and 0.35 < float(np.median(severities)) < 0.65
    assert {d.kind for d in many} == set(DEGRADATIONS)
    assert case_seed("a") == case_seed("a") != case_seed("a", 1)
    assert Degradation("noise", 0.456).name == "noise46"


def test_thick_slices_put_the_scan_and_its_label_on_one_new_grid():
    data, subject, core = two_tissue_scan()
    labels = np.where(core, 2, np.where(subject, 1, 0)).astype(np.int16)
    affine = np.diag([1.0, 1.2, 1.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 2.0]
    image, label, new = degrade_case(data, labels, subject, affine, Degradation("slices", 0.5), seed=4)
    assert image.shape[1:] == label.shape and image.dtype == np.float32
    spacing = np.linalg.norm(new[:3, :3], axis=0)
    thick = int(np.argmax(spacing / np.diag(affine)[:3]))
    assert spacing[thick] == pytest.approx(5.0, rel=0.05) and label.shape[thick] < labels.shape[thick]
    assert np.array_equal(new[:3, 3], affine[:3, 3])  # the first voxel centre stays where it was
    assert set(np.unique(label)) == {0, 1, 2} and np.array_equal(labels, labels.astype(np.int16))
    same = degrade_case(data, labels, subject, affine, Degradation("noise", 0.5), seed=4)
    assert same[1] is not None and np.array_equal(same[1], labels) and np.array_equal(same[2], affine)
    with pytest.raises(ValueError, match="degrade_case"):
        degrade(data, subject, Degradation("slices", 0.5), seed=4)
