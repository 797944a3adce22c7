"""Normalisation that does not need zeros, and a cache key that covers what changes the cache.

Real arrays and real NIfTI files in tmp folders: a CT-like volume (air -1000 HU, soft tissue
about 40 HU, bone 1000 HU and a block of tissue that is exactly 0 HU), skull-stripped-like
volumes, the ``ct`` scheme's data-set statistics through the cache and the model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brainseg.config import PostprocessConfig, load_config
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.infer.predictor import Predictor
from brainseg.io.images import Geometry, read_channels, write_image
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model
from brainseg.preprocessing.cache import cache_cases, intensity_statistics
from brainseg.preprocessing.foreground import has_zero_background, subject_mask
from brainseg.preprocessing.normalisation import ChannelIntensity, normalise
from brainseg.preprocessing.preprocess import preprocess
from brainseg.train.recipe import label_table

SPACING = [1.5, 1.5, 1.5]
AFFINE = np.diag(SPACING + [1.0])
SHAPE = (48, 48, 40)


def _geometry(shape=SHAPE) -> Geometry:
    return Geometry(shape=shape, affine=AFFINE.copy())


def _save(path: Path, data: np.ndarray) -> Path:
    return write_image(path, data, Geometry(shape=data.shape, affine=AFFINE))


def ct_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU volume, body mask, the exact-0 HU block) of a CT-like scan: integer HU as CT stores them."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE, dtype=np.float64)
    centre = [(s - 1) / 2 for s in SHAPE]
    r = np.sqrt(sum(((g - c) / (0.3 * s)) ** 2 for g, c, s in zip(grid, centre, SHAPE)))
    body = r <= 1.0
    hu = np.full(SHAPE, -1000.0) + 5.0 * rng.standard_normal(SHAPE)
    hu[body] = 40.0 + 10.0 * rng.standard_normal(int(body.sum()))
    hu[body & (r > 0.85)] = 1000.0  # a bone shell
    block = np.zeros(SHAPE, bool)
    block[20:28, 20:28, 16:24] = True  # water-like tissue stored as exactly 0 HU
    hu[block] = 0.0
    return np.round(hu).astype(np.float32), body, block


def test_ct_is_cropped_to_the_body_and_its_zero_hu_tissue_is_tissue():
    hu, body, block = ct_volume()
    assert not has_zero_background(hu[None])  # the zeros are inside the body, not around it
    assert subject_mask(hu[None]).all()
    for scheme, intensity in (("zscore", None), ("ct", [ChannelIntensity(40.0, 300.0, -50.0, 1000.0)])):
        img, _, rec = preprocess(hu[None], _geometry(), SPACING, normalization=scheme, intensity=intensity)
        assert not rec.zero_background and rec.far_constant == (scheme == "zscore")  # ct: no far constant
        # the crop box holds the body with its margin and is smaller than the volume
        body_box = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        for (lo, hi), idx, _n in zip(rec.bbox, body_box, SHAPE):
            assert lo <= idx[0] and hi >= idx[-1] + 1
        assert np.prod([hi - lo for lo, hi in rec.bbox]) < 0.6 * np.prod(SHAPE)
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


def test_input_mask_rule_leaves_zero_tissue_alone(tiny_checkpoint, tmp_path):
    """Exact-0 voxels inside the subject are never forced to background: not on CT (no zero
    background, so no rule), not inside a skull-stripped scan (the rule's mask has its holes filled)."""
    model, card = load_model(tiny_checkpoint, "cpu")
    hu, _, block = ct_volume()
    stripped = np.where(subject_mask((hu > -500)[None].astype(np.float32)), hu + 1000.0, 0.0).astype(np.float32)
    stripped[block] = 0.0  # a hole of exact zeros inside the "brain"
    cfg = load_config()
    masks = {}
    for rule in ("none", "restrict", "fill"):
        predictor = Predictor(model, card, cfg.infer, PostprocessConfig(input_mask=rule), "cpu")
        for name, volume in (("ct", hu), ("stripped", stripped)):
            path = _save(tmp_path / f"{name}_0000.nii.gz", volume)
            case = predictor.prepare([path])
            assert case.record.zero_background == (name == "stripped")
            assert case.nonzero[block].all()  # the hole counts as subject
            masks[rule, name], _ = predictor.segment(case)
    assert np.array_equal(masks["restrict", "ct"], masks["none", "ct"])
    assert np.array_equal(masks["fill", "ct"], masks["none", "ct"])
    assert np.array_equal(masks["restrict", "stripped"][block], masks["none", "stripped"][block])
    assert np.all(masks["fill", "stripped"][block] != 0)  # fill: the hole gets a tissue class
    outside = ~subject_mask(stripped[None])
    assert np.all(masks["restrict", "stripped"][outside] == 0)


def test_nnunet_rule_statistics_over_everything_when_the_crop_barely_shrinks():
    rng = np.random.default_rng(1)
    full = (200.0 + 30.0 * rng.standard_normal(SHAPE)).astype(np.float32)
    rim = full.copy()
    rim[:4] = 0.0  # a zero slab at one face: a zero background, but the crop keeps 92 % of the volume
    rim[:, :8, :8] = 0.0  # and a zero column along one edge, inside the crop box
    img, _, rec = preprocess(rim[None], _geometry(), SPACING, normalization="zscore")
    assert rec.zero_background and rec.norm_region == "all"
    sl = tuple(slice(lo, hi) for lo, hi in rec.bbox)
    assert np.isclose(rec.norm_mean[0], rim[sl].mean(dtype=np.float64), rtol=1e-5)  # the zeros count
    assert rec.norm_mean[0] < 0.99 * rim[sl][rim[sl] != 0].mean()
    # a small subject in a large zero volume: statistics over the subject only (as before)
    small = np.zeros(SHAPE, np.float32)
    small[10:30, 12:32, 8:28] = full[10:30, 12:32, 8:28]
    _, _, rec = preprocess(small[None], _geometry(), SPACING, normalization="zscore")
    assert rec.zero_background and rec.norm_region == "foreground"
    assert np.isclose(rec.norm_mean[0], full[10:30, 12:32, 8:28].mean(dtype=np.float64), rtol=1e-5)


def ct_dataset(root: Path, n: int = 2) -> Path:
    """An MSD folder of ``n`` CT-like cases labelled body (1) and the 0 HU block (2)."""
    for i in range(n):
        hu, body, block = ct_volume(seed=i)
        _save(root / "imagesTr" / f"c{i}_0000.nii.gz", hu)
        lab = np.zeros(SHAPE, np.uint8)
        lab[body] = 1
        lab[block] = 2
        _save(root / "labelsTr" / f"c{i}.nii.gz", lab)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "body": 1, "water": 2}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_ct_dataset_statistics_go_into_the_cache_key_and_round_trip_in_the_card(tmp_path, tiny_checkpoint):
    ds = discover_dataset(ct_dataset(tmp_path / "ct"))
    stats = intensity_statistics(ds.train, tmp_path / "cache")
    (st,) = stats
    # over the labelled voxels (nnU-Net's foreground): tissue, bone and the 0 HU block, no air
    assert -10.0 < st.percentile_00_5 <= 0.0 and st.percentile_99_5 == 1000.0 and 40.0 < st.mean < 600.0
    assert intensity_statistics(ds.train, tmp_path / "cache") == stats  # read back from intensity.json
    cached = cache_cases(ds.train, tmp_path / "cache", SPACING, [0, 1, 2], "ct", intensity=stats, progress=False)
    image, _ = cached[0].load()
    assert image.max() <= (1000.0 - st.mean) / st.std + 1e-5
    key = json.loads((tmp_path / "cache" / "c0.json").read_text())["key"]
    other = [ChannelIntensity(st.mean + 1.0, st.std, st.percentile_00_5, st.percentile_99_5)]
    cache_cases(ds.train, tmp_path / "cache", SPACING, [0, 1, 2], "ct", intensity=other, progress=False)
    assert json.loads((tmp_path / "cache" / "c0.json").read_text())["key"] != key

    # the card keeps them; predict normalises with them; old cards (no "intensity") still read
    model, card = load_model(tiny_checkpoint, "cpu")
    raw = card.to_dict()
    raw["normalization"]["scheme"] = "ct"
    with pytest.raises(BrainsegError, match="'ct' but intensities for 0 of 1"):
        ModelCard.from_dict(raw, "x.pt")
    raw["intensity"] = [s.to_dict() for s in stats]
    ct_card = ModelCard.from_dict(raw, "x.pt")
    assert ct_card.intensity == tuple(stats) and ModelCard.from_dict(ct_card.to_dict()) == ct_card
    old = card.to_dict()
    del old["intensity"]
    assert ModelCard.from_dict(old).intensity == ()
    predictor = Predictor(model, ct_card, load_config().infer, PostprocessConfig(), "cpu")
    case = predictor.prepare([ds.train[0].images[0]])
    assert case.record.norm_mean == [st.mean] and case.record.norm_std == [st.std]


def test_cache_is_rebuilt_when_the_label_set_changes(tmp_path):
    """A shared cache folder, dataset.json's labels edited: class indices follow the new labels."""
    root = tmp_path / "ds"
    hu, body, block = ct_volume()
    _save(root / "imagesTr" / "a_0000.nii.gz", hu)
    lab = np.zeros(SHAPE, np.uint8)
    lab[body] = 2
    lab[block] = 4
    _save(root / "labelsTr" / "a.nii.gz", lab)
    shared = tmp_path / "shared_cache"
    seg = {}
    for labels in ({"0": "bg", "2": "body", "4": "water"}, {"0": "bg", "1": "new", "2": "body", "4": "water"}):
        (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels}))
        ds = discover_dataset(root)
        values = list(label_table(ds.labels, ds.train, 1024**3))
        (cached,) = cache_cases(ds.train, shared, SPACING, values, progress=False)
        seg[len(values)] = np.asarray(cached.load(mmap=False)[1])
    assert set(np.unique(seg[3])) == {0, 1, 2}  # 2 -> class 1, 4 -> class 2
    assert set(np.unique(seg[4])) == {0, 2, 3}  # 2 -> class 2, 4 -> class 3: rebuilt, not reused
    assert np.array_equal(seg[4] == 3, seg[3] == 2)


def test_normalise_ct_needs_the_statistics():
    data = np.zeros((1, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="ct normalization needs"):
        normalise(data, np.ones((4, 4, 4), bool), "ct")
    data = np.ones((2, 4, 4, 4), np.float32)
    stats = [ChannelIntensity(0.0, 2.0, -1.0, 1.0), ChannelIntensity(1.0, 1.0, 0.0, 3.0)]
    out, means, stds, raw_zero = normalise(data * 5, np.ones((4, 4, 4), bool), "ct", stats)
    assert np.allclose(out[0], 0.5) and np.allclose(out[1], 2.0)
    assert list(raw_zero) == [0.0, -1.0] and means == [0.0, 1.0] and stds == [2.0, 1.0]


def test_read_channels_real_ct_file(tmp_path):
    hu, *_ = ct_volume()
    data, geom = read_channels([_save(tmp_path / "ct.nii.gz", hu)])
    assert data.shape == (1, *SHAPE) and geom.voxel_volume == pytest.approx(1.5**3)


@pytest.mark.slow
def test_train_and_predict_with_the_ct_scheme(tmp_path):
    """``data.normalization=ct`` end to end: the trainer puts the data set's intensities in the
    card (the same numbers :func:`intensity_statistics` gives) and predict runs with them."""
    import torch
    from test_train import TINY, brainseg_cmd, run

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
