"""Normalisation that does not need zeros.

Real arrays and real NIfTI files in tmp folders: a CT-like volume (air -1000 HU, soft tissue
about 40 HU, bone 1000 HU and a block of tissue that is exactly 0 HU), skull-stripped-like
volumes and demo subjects with and without background noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.data.layouts import discover_dataset
from brainseg.io.images import Geometry
from brainseg.model.card import ModelCard
from brainseg.preprocessing.cache import intensity_statistics
from brainseg.preprocessing.foreground import far_background, has_zero_background, subject_mask
from brainseg.preprocessing.normalisation import ChannelIntensity, normalise
from brainseg.preprocessing.preprocess import preprocess
from tests.conftest import CT_AFFINE, CT_SHAPE, CT_SPACING, ct_dataset, ct_volume


def test_normalisation_is_the_same_with_and_without_background_noise(subjects):
    """A noisy-background scan normalises its brain like the same brain skull-stripped."""
    image, labels, geometry, _ = subjects[1]
    stripped = np.where(labels > 0, image, 0).astype(np.float32)
    a, lab_a, rec_a = preprocess(image[None], geometry, [1.5] * 3, label=labels)
    b, lab_b, rec_b = preprocess(stripped[None], geometry, [1.5] * 3, label=labels)
    assert (rec_a.zero_background, rec_b.zero_background) == (False, True)
    assert abs(rec_a.norm_mean[0] - rec_b.norm_mean[0]) < 0.1 * rec_b.norm_std[0]
    assert abs(rec_a.norm_std[0] / rec_b.norm_std[0] - 1) < 0.1
    # every voxel is normalised: background of the stripped scan is one constant, recorded
    assert np.all(b[0][lab_b == 0][:100] == np.float32(rec_b.background[0]))
    assert rec_b.background[0] < -1.0  # below the brain's mean, as raw 0 is
    assert rec_a.background[0] < -1.0 and np.std(a[0][lab_a == 0]) > 0.01  # noise stays noise
    # noise farther than the margin from the foreground is one constant (the recorded
    # background), found again by far_background, and never within the brain
    far = far_background(a, rec_a.background, rec_a.far_constant)
    assert 0.05 < far.mean() < 0.9 and not far[lab_a > 0].any()
    assert np.all(a[0][far] == np.float32(rec_a.background[0]))
    assert far_background(b, rec_b.background, rec_b.far_constant) is None
    # the crop keeps the whole brain with a margin on the noisy scan
    for axis, (lo, hi) in enumerate(rec_a.bbox):
        brain_ras = lab_a > 0
        assert brain_ras.any(axis=tuple(i for i in range(3) if i != axis)).sum() <= hi - lo


def test_quantile_normalisation_undoes_monotone_intensity_changes(subjects):
    """The rank-based z-score gives (nearly) the same brain whatever scale, offset and gamma
    the scan has; the plain z-score does not undo a gamma."""
    from brainseg.preprocessing.normalisation import normalise

    image, labels, *_ = subjects[0]
    brain = labels > 0
    changed = (np.power(image / image.max(), 1.5) * 900.0 + 40.0) * brain
    ref, *_ = normalise(image[None], brain, "quantile")
    out, _, _, raw_zero = normalise(changed[None].astype(np.float32), brain, "quantile")
    q_err = np.abs(out[0][brain] - ref[0][brain]).mean()
    z_ref, *_ = normalise(image[None], brain, "zscore")
    z_out, *_ = normalise(changed[None].astype(np.float32), brain, "zscore")
    z_err = np.abs(z_out[0][brain] - z_ref[0][brain]).mean()
    assert q_err < 0.02 and q_err < 0.5 * z_err, (q_err, z_err)
    # a raw 0 becomes exactly the value of the volume's zeros (patch padding, background noise)
    assert np.all(out[0][~brain] == raw_zero[0]) and raw_zero[0] < -2.0
    with pytest.raises(ValueError, match="unknown normalization"):
        normalise(image[None], brain, "minmax")


def ct_geometry(shape=CT_SHAPE) -> Geometry:
    return Geometry(shape=shape, affine=CT_AFFINE.copy())


def test_ct_is_cropped_to_the_body_and_its_zero_hu_tissue_is_tissue():
    hu, body, block = ct_volume()
    assert not has_zero_background(hu[None])  # the zeros are inside the body, not around it
    assert subject_mask(hu[None]).all()
    for scheme, intensity in (("zscore", None), ("ct", [ChannelIntensity(40.0, 300.0, -50.0, 1000.0)])):
        img, _, rec = preprocess(hu[None], ct_geometry(), CT_SPACING, normalization=scheme, intensity=intensity)
        assert not rec.zero_background and rec.far_constant == (scheme == "zscore")  # ct: no far constant
        # the crop box holds the body with its margin and is smaller than the volume
        body_box = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        for (lo, hi), idx, _n in zip(rec.bbox, body_box, CT_SHAPE):
            assert lo <= idx[0] and hi >= idx[-1] + 1
        assert np.prod([hi - lo for lo, hi in rec.bbox]) < 0.6 * np.prod(CT_SHAPE)
        # the exact-0 HU voxels are normalised as tissue: one value, the normalised 0 HU, not the background's
        sl = tuple(slice(lo, hi) for lo, hi in rec.bbox)
        inner = img[0][block[sl]]
        expected = (
            (np.clip(0.0, -50.0, 1000.0) - 40.0) / 300.0
            if scheme == "ct"
            else (0.0 - rec.norm_mean[0]) / rec.norm_std[0]
        )
        np.testing.assert_allclose(inner, expected, rtol=1e-5, atol=1e-6)
        assert abs(float(inner[0]) - rec.background[0]) > 0.05
    # ct: clipped to the data set's percentiles, then z-scored with its statistics
    assert np.isclose(img.max(), (1000.0 - 40.0) / 300.0) and np.isclose(img.min(), (-50.0 - 40.0) / 300.0)


def test_nnunet_rule_statistics_over_everything_when_the_crop_barely_shrinks():
    rng = np.random.default_rng(1)
    full = (200.0 + 30.0 * rng.standard_normal(CT_SHAPE)).astype(np.float32)
    rim = full.copy()
    rim[:4] = 0.0  # a zero slab at one face: a zero background, but the crop keeps 92 % of the volume
    rim[:, :8, :8] = 0.0  # and a zero column along one edge, inside the crop box
    img, _, rec = preprocess(rim[None], ct_geometry(), CT_SPACING, normalization="zscore")
    assert rec.zero_background and rec.norm_region == "all"
    sl = tuple(slice(lo, hi) for lo, hi in rec.bbox)
    assert np.isclose(rec.norm_mean[0], rim[sl].mean(dtype=np.float64), rtol=1e-5)  # the zeros count
    assert rec.norm_mean[0] < 0.99 * rim[sl][rim[sl] != 0].mean()
    # a small subject in a large zero volume: statistics over the subject only (as before)
    small = np.zeros(CT_SHAPE, np.float32)
    small[10:30, 12:32, 8:28] = full[10:30, 12:32, 8:28]
    _, _, rec = preprocess(small[None], ct_geometry(), CT_SPACING, normalization="zscore")
    assert rec.zero_background and rec.norm_region == "foreground"
    assert np.isclose(rec.norm_mean[0], full[10:30, 12:32, 8:28].mean(dtype=np.float64), rtol=1e-5)


def test_normalise_ct_needs_the_statistics():
    data = np.zeros((1, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="ct normalization needs"):
        normalise(data, np.ones((4, 4, 4), bool), "ct")
    data = np.ones((2, 4, 4, 4), np.float32)
    stats = [ChannelIntensity(0.0, 2.0, -1.0, 1.0), ChannelIntensity(1.0, 1.0, 0.0, 3.0)]
    out, means, stds, raw_zero = normalise(data * 5, np.ones((4, 4, 4), bool), "ct", stats)
    assert np.allclose(out[0], 0.5) and np.allclose(out[1], 2.0)
    assert list(raw_zero) == [0.0, -1.0] and means == [0.0, 1.0] and stds == [2.0, 1.0]


@pytest.mark.slow
def test_train_and_predict_with_the_ct_scheme(tmp_path):
    """``data.normalization=ct`` end to end: the trainer puts the data set's intensities in the
    card (the same numbers :func:`intensity_statistics` gives) and predict runs with them."""
    import torch

    from tests.train.test_trainer import TINY, brainseg_cmd, run

    root = ct_dataset(tmp_path / "ct", n=3)
    run_dir = tmp_path / "run"
    args = ("--data", str(root), "--out", str(run_dir), "--epochs", "1", "--no-progress", *TINY)
    res = run(brainseg_cmd("train", *args, "--set", "data.normalization=ct"))
    assert res.returncode == 0, res.stderr
    state = torch.load(run_dir / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    card = ModelCard.from_dict(state["card"])
    assert card.normalization.scheme == "ct"
    assert card.intensity == tuple(intensity_statistics(discover_dataset(root).train))
    out = tmp_path / "pred"
    res = run(
        brainseg_cmd(
            "predict",
            "--model",
            str(run_dir / "checkpoint_final.pt"),
            "--input",
            str(root / "imagesTr"),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        )
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
