"""The MNI template's labels: the tissue convention, ties and edge cases, and where subjects' labels lie."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from tests.demo.conftest import mni

pytest.importorskip("nilearn")


def _template_labels_at(case: dict, template, labels_map: np.ndarray) -> np.ndarray:
    """The template's labels at the world position of each voxel centre of ``case``."""
    geom = case["lgeom"]
    idx = np.indices(geom.shape, dtype=np.float64).reshape(3, -1)
    world = geom.affine[:3, :3] @ idx + geom.affine[:3, 3:4]
    inv = np.linalg.inv(template.affine)
    vox = inv[:3, :3] @ world + inv[:3, 3:4]
    return map_coordinates(labels_map, vox, order=0, mode="constant", cval=0).reshape(geom.shape)


def test_labels_lie_where_the_template_anatomy_is(cases, template):
    """Through each file's own affine the anatomy lands on the template's (a few mm off)."""
    reference = mni.template_labels(template.t1, template.gm, template.wm)
    template_brain_ml = (reference > 0).sum() * abs(np.linalg.det(template.affine[:3, :3])) / 1000

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())

    for case in cases:
        labels = case["labels"]
        expected = _template_labels_at(case, template, reference)
        assert dice(labels > 0, expected > 0) > 0.85, case["entry"]
        assert dice(labels == 3, expected == 3) > 0.55, case["entry"]
        voxel_ml = np.prod(case["lgeom"].spacing) / 1000
        brain_ml = (labels > 0).sum() * voxel_ml
        assert 0.75 < brain_ml / template_brain_ml < 1.3, (brain_ml, template_brain_ml)


def _by_hand(t1: float, gm: float, wm: float) -> int:
    """The convention, voxel by voxel in plain Python."""
    inside = t1 > 0
    scores = [0.0 if inside else 1.0, min(1.0, max(0.0, 1.0 - gm - wm)) if inside else 0.0, gm, wm]
    return scores.index(max(scores))  # the first maximum, like argmax


def test_template_labels_follow_the_convention_on_the_template(template):
    labels = mni.template_labels(template.t1, template.gm, template.wm)
    assert labels.shape == template.t1.shape == (197, 233, 189)
    assert labels.dtype == np.uint8
    assert float(template.t1.max()) == 1.0 and float(template.t1.min()) == 0.0  # scaled by 1/255

    raw = {k: np.asarray(nib.load(str(mni.template_dir() / f)).dataobj) for k, f in mni.TEMPLATE_FILES.items()}
    rng = np.random.default_rng(1234)
    inside = np.argwhere(raw["t1"] > 0)
    picks = [tuple(v) for v in inside[rng.choice(len(inside), 300, replace=False)]]
    picks += [tuple(np.argwhere(raw["t1"] == 0)[0]), (98, 134, 72)]  # a background voxel, MNI origin
    # Voxels where each tissue map clearly dominates, chosen from the raw maps.
    for cond in (
        (raw["t1"] > 0) & (raw["gm"] < 20) & (raw["wm"] < 20),
        (raw["gm"] > 200),
        (raw["wm"] > 200),
        (raw["t1"] == 0) & (raw["gm"] > 0),
    ):
        found = np.argwhere(cond)
        assert len(found), "template lacks an expected kind of voxel"
        picks.append(tuple(found[len(found) // 2]))
    seen = set()
    for v in picks:
        t1, gm, wm = (int(raw[k][v]) / 255.0 for k in ("t1", "gm", "wm"))
        expected = _by_hand(t1, gm, wm)
        assert labels[v] == expected, (v, t1, gm, wm)
        seen.add(expected)
    assert seen == {0, 1, 2, 3}


def test_template_labels_ties_and_edge_cases():
    # Columns: T1, GM, WM -> label, worked out by hand from the convention.
    rows = [
        (0.0, 1.0, 0.0, 0),  # outside the brain, GM ties background: background wins
        (0.0, 0.0, 0.0, 0),
        (0.5, 0.5, 0.5, 2),  # CSF clipped to 0; GM ties WM: GM wins
        (0.5, 0.25, 0.25, 1),  # CSF 0.5
        (0.5, 0.0, 0.0, 1),  # CSF 1
        (0.5, 0.3, 0.6, 3),
        (0.2, 0.7, 0.2, 2),
        (1.0, 0.4, 0.4, 2),  # CSF 0.2 < GM 0.4 = WM 0.4: GM wins the tie
    ]
    t1, gm, wm, expected = (np.array(col, dtype=np.float32).reshape(-1, 1, 1) for col in zip(*rows))
    np.testing.assert_array_equal(mni.template_labels(t1, gm, wm).ravel(), expected.ravel().astype(np.uint8))


def test_template_labels_refuses_unscaled_maps(template):
    with pytest.raises(ValueError, match="255"):
        mni.template_labels(template.t1 * 255, template.gm * 255, template.wm * 255)
