"""The demo tumour's shape and appearance models (:mod:`brainseg.demo.tumour_model`) on their own:
every kind over a range of seeds and indices, sizes down to small tumours, rims thin and thick,
intensities inside their stated ranges, and each sequence's bias field, gamma and scale its own.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from brainseg.demo import tumour_model as tm


def test_every_five_consecutive_cases_hold_each_kind_once_in_an_order_the_seed_draws():
    orders = set()
    for seed in range(6):
        kinds = [tm.case_kind(seed, i) for i in range(15)]
        for block in range(3):
            assert sorted(kinds[5 * block : 5 * block + 5]) == sorted(tm.KINDS)
        assert kinds == [tm.case_kind(seed, i) for i in range(15)]  # a function of (seed, index)
        orders.add(tuple(kinds[:5]))
    assert len(orders) > 1


def test_foci_sizes_rims_and_counts_per_kind():
    rng = np.random.default_rng(0)
    drawn = {kind: [tm.draw_foci(rng, kind) for _ in range(200)] for kind in tm.KINDS}
    solid = [f[0].radius for f in drawn["solid"]]
    assert min(solid) < 5.0 and max(solid) > 11.0 and all(3.5 <= r <= 14.0 for r in solid)  # small ones too
    assert all(f[0].rim_mm is None and f[0].enhancing for f in drawn["solid"])
    thin = [f[0].rim_mm for f in drawn["thin_rim"]]
    thick = [f[0].rim_mm for f in drawn["thick_rim"]]
    assert all(r is not None and 1.5 <= r <= 3.0 for r in thin) and all(
        r is not None and 4.0 <= r <= 7.0 for r in thick
    )
    assert all(not f[0].enhancing and f[0].rim_mm is None for f in drawn["non_enhancing"])
    counts = Counter(len(f) for f in drawn["multifocal"])
    assert set(counts) == {2, 3} and all(len(f) == 1 for k in tm.KINDS[:4] for f in drawn[k])
    with pytest.raises(Exception, match="unknown tumour kind"):
        tm.draw_foci(rng, "glioma")


def brain_of(shape=(64, 72, 60)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 2 mm ellipsoid brain: white matter inside, grey matter around, ventricles (CSF) in the middle."""
    grid = np.indices(shape, dtype=np.float32)
    r = np.sqrt(sum(((g - s / 2.0) / (0.45 * s)) ** 2 for g, s in zip(grid, shape)))
    brain = r < 1.0
    wm = np.where(r < 0.8, 1.0, 0.0).astype(np.float32)
    csf = np.where(r < 0.12, 1.0, 0.0).astype(np.float32)
    wm = np.where(csf > 0, 0.0, wm).astype(np.float32)
    gm = np.where(brain & (wm == 0) & (csf == 0), 1.0, 0.0).astype(np.float32)
    return brain, csf, gm, wm


@pytest.mark.parametrize("kind", tm.KINDS)
def test_tumour_labels_of_each_kind(kind):
    brain, csf, gm, wm = brain_of()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for seed in range(3):
        labels, info = tm.tumour_labels(np.random.default_rng(seed), kind, brain, csf, gm + wm, affine)
        values = set(np.unique(labels).tolist()) - {0}
        core = np.isin(labels, (1, 4))
        assert not (labels > 0)[~brain].any() and not (labels[csf >= 0.6] == 2).any()  # oedema out of the ventricles
        assert info["kind"] == kind and 2 in values and core.any()
        assert info["volume_mm3"]["oedema"] == pytest.approx(np.count_nonzero(labels == 2) * 8.0)
        if kind == "non_enhancing":
            assert values == {1, 2}
        elif kind == "solid":
            assert values == {2, 4}
        elif kind in ("thin_rim", "thick_rim"):
            assert values == {1, 2, 4}
            ring = ndimage.binary_dilation(labels == 1) & (labels != 1)
            assert np.mean(labels[ring] == 4) > 0.8  # necrosis inside its rim
        else:
            assert len(info["foci"]) >= 2 and 4 in values


def test_intensities_lie_in_their_ranges_and_differ_per_case():
    tables = [tm.draw_intensities(np.random.default_rng(s)) for s in range(50)]
    for table in tables:
        for name, ranges in tm.TUMOUR_RANGES.items():
            assert all(lo <= v <= hi for v, (lo, hi) in zip(table[name], ranges)), name
        ne, oe = table["non_enhancing"], table["oedema"]
        assert ne[0] < oe[0] and ne[1] < oe[1]  # the non-enhancing core darker than the oedema on T1 and T1ce
        assert table["enhancing"][1] > 1.5 * table["oedema"][1] and table["necrosis"][1] < table["enhancing"][1]
        assert all(0.85 * v <= t <= 1.15 * v for n in tm.NORMAL for v, t in zip(tm.NORMAL[n], table[n]))
    assert len({t["oedema"][3] for t in tables}) == 50


def test_a_bias_field_spans_its_ratio_over_the_brain_and_each_draw_is_its_own():
    brain = brain_of()[0]
    a = tm.bias_field(np.random.default_rng(1), brain, 2.0)
    b = tm.bias_field(np.random.default_rng(2), brain, 2.0)
    assert float(a[brain].max() / a[brain].min()) == pytest.approx(2.0, rel=1e-4)
    assert float(np.exp(np.log(a[brain]).mean())) == pytest.approx(1.0, rel=1e-4)
    assert abs(np.corrcoef(np.log(a[brain]), np.log(b[brain]))[0, 1]) < 0.9
    assert float(tm.bias_field(np.random.default_rng(1), brain, 1.1)[brain].max()) < 1.1


def test_each_sequence_is_acquired_with_its_own_field_gamma_scale_and_offset():
    brain = brain_of()[0]
    signal = np.where(brain, 0.5, 0.0).astype(np.float32)
    clean = tm.Acquisition(noise=(0.0, 0.0))
    images, drawn = [], []
    rng = np.random.default_rng(3)
    for _ in range(4):
        image, settings = tm.acquire(rng, signal, brain, clean)
        images.append(image)
        drawn.append(settings)
    for image, s in zip(images, drawn):
        assert np.all(image[~brain] == 0) and np.all(image[brain] > s["offset"])
        # a flat signal shows the field through the gamma: max / min = ratio ** gamma
        inside = (image[brain] - s["offset"]) / s["scale"]
        assert float(inside.max() / inside.min()) == pytest.approx(s["bias_ratio"] ** s["gamma"], rel=1e-3)
    for key in ("bias_ratio", "gamma", "scale", "offset"):
        assert len({s[key] for s in drawn}) == 4
    logs = [np.log(im[brain] - s["offset"]) for im, s in zip(images, drawn)]
    assert min(abs(np.corrcoef(logs[0], other)[0, 1]) for other in logs[1:]) < 0.9  # not one field for all
    noisy, _ = tm.acquire(np.random.default_rng(3), signal, brain)
    assert noisy[brain].std() > 0 and np.all(noisy[~brain] == 0)
