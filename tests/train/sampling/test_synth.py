"""Synthetic contrasts from the label maps (``train.synth``): a draw is a function of its seed, the
classes' intensity order changes between draws, a synthetic patch is normalised as its synthetic
subject would be, thick slices smooth along one axis, channels are drawn on their own, the share
decides how many patches are redrawn (0: none, exactly as without), the config checks the field,
and a tiny model trains with it on the command line.

The cases are small layered spheres ("heads": CSF, grey and white matter) written as real NIfTI
files and preprocessed into a real cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.config import AugmentConfig, NormalizationScheme, load_config
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.preprocessing.cache import CachedCase, cache_cases
from brainseg.preprocessing.preprocess import PreprocessRecord
from brainseg.train.sampling import synth
from brainseg.train.sampling.loader import PatchDataset
from tests.cli.conftest import TINY_TRAIN, cli, in_process
from tests.conftest import error_lines

SHAPE = (28, 30, 26)
SPACING = 1.5
PATCH = [16, 16, 16]
#: T1-like tissue intensities: CSF dark, grey matter between, white matter bright.
T1 = {1: 30.0, 2: 70.0, 3: 100.0}


def head(seed: int, noisy_background: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(T1-like image, labels 0-3) of a layered sphere with a dark blob (unlabelled structure) in its white matter."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE, dtype=np.float64)
    r = np.sqrt(sum(((g - s / 2.0) / (0.45 * s)) ** 2 for g, s in zip(grid, SHAPE)))
    labels = np.zeros(SHAPE, np.uint8)
    labels[r < 1.0] = 1
    labels[r < 0.85] = 2
    labels[r < 0.6] = 3
    image = np.zeros(SHAPE, np.float32)
    for k, v in T1.items():
        image[labels == k] = v
    image[(labels == 3) & (r < 0.25)] = 85.0  # "deep grey matter" inside the white matter label
    image = np.where(labels > 0, image + 3.0 * rng.standard_normal(SHAPE), 0.0)
    if noisy_background:
        image = np.abs(image + 4.0 * rng.standard_normal(SHAPE) + 1j * 4.0 * rng.standard_normal(SHAPE))
    return image.astype(np.float32), labels


def save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def make_data(root: Path, n: int = 3, channels: int = 1, noisy_background: bool = False) -> Path:
    """An MSD data set of ``n`` heads (channel c: the T1-like image times c + 1, plus c * 20 * labels)."""
    meta = {"channel_names": {str(c): f"ch{c}" for c in range(channels)}, "labels": {"bg": 0, "a": 1, "b": 2, "c": 3}}
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for i in range(n):
        image, labels = head(i, noisy_background)
        for c in range(channels):
            save(root / "imagesTr" / f"h{i}_{c:04d}.nii.gz", image * (c + 1) + c * 20.0 * (labels > 0))
        save(root / "labelsTr" / f"h{i}.nii.gz", labels)
    return root


def cached(tmp_path: Path, **kwargs) -> list[CachedCase]:
    ds = discover_dataset(make_data(tmp_path / "data", **kwargs))
    return cache_cases(ds.train, tmp_path / "cache", [SPACING] * 3, [0, 1, 2, 3], progress=False)


def dataset(cases, share: float = 0.0, **kwargs) -> PatchDataset:
    return PatchDataset(cases, PATCH, 2, 0.5, kwargs.pop("aug", AugmentConfig()), seed=3, synth_share=share, **kwargs)


def record(zero_background: bool = True, channels: int = 1) -> PreprocessRecord:
    return PreprocessRecord(
        original_shape=list(SHAPE),
        ornt=[[0, 1], [1, 1], [2, 1]],
        ras_shape=list(SHAPE),
        ras_spacing=[SPACING] * 3,
        target_spacing=[SPACING] * 3,
        resampled_shape=list(SHAPE),
        bbox=[[0, s] for s in SHAPE],
        norm_mean=[0.0] * channels,
        norm_std=[1.0] * channels,
        zero_background=zero_background,
        background=[-2.0] * channels,
    )


def whole_case(channels: int = 1) -> tuple[np.ndarray, np.ndarray, PreprocessRecord, synth.SubjectMix]:
    """A z-scored head as a (C, X, Y, Z) patch: the whole case, so its statistics are the subject's."""
    image, labels = head(0)
    inside = labels > 0
    z = np.where(inside, (image - image[inside].mean()) / image[inside].std(), -2.0).astype(np.float32)
    real = np.stack([z] * channels)
    rec = record(channels=channels)
    return real, labels, rec, synth.subject_mix(real, labels, rec, 4)


def synthetic(
    seed: int,
    real: np.ndarray,
    labels: np.ndarray,
    rec: PreprocessRecord,
    mix: synth.SubjectMix,
    scheme: NormalizationScheme,
    ranges: synth.SynthRanges = synth.SynthRanges(),  # noqa: B008 (frozen)
) -> tuple[np.ndarray, np.ndarray]:
    """A patch redrawn for sure (share 1) from the generator seeded with ``seed``."""
    out = synth.redraw(np.random.default_rng(seed), 1.0, real, labels, rec, mix, scheme, ranges)
    assert out is not None
    return out


def class_means(image: np.ndarray, labels: np.ndarray) -> list[float]:
    return [float(image[labels == k].mean()) for k in (1, 2, 3)]


def flat(**changes) -> synth.SynthRanges:
    """Ranges without blur, bias, noise and gamma (the mixture alone) unless ``changes`` says otherwise."""
    base = dict(resolution_mm=(1.0, 1.0), p_thick=0.0, bias=0.0, gamma=(1.0, 1.0), noise=0.0)
    return synth.SynthRanges(**{**base, **changes})


# ----------------------------------------------------------------------------- the draw and its application


def test_a_draw_is_a_function_of_its_seed_and_gives_float32_patches_of_the_real_shape():
    real, labels, rec, mix = whole_case()
    a = synthetic(7, real, labels, rec, mix, "zscore")
    b = synthetic(7, real, labels, rec, mix, "zscore")
    c = synthetic(8, real, labels, rec, mix, "zscore")
    assert a[0].shape == real.shape and a[0].dtype == np.float32 and np.isfinite(a[0]).all()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])
    params = synth.draw(np.random.default_rng(7), 1, 4, rec.target_spacing)
    assert params.means.shape == (1, 4, 3) and params.window.shape == (1, 3) and np.all(params.window >= 1.0)


def test_the_classes_intensity_order_changes_between_draws():
    real, labels, rec, mix = whole_case()
    orders = set()
    for seed in range(30):
        image, _ = synthetic(seed, real, labels, rec, mix, "zscore", flat())
        orders.add(tuple(np.argsort(class_means(image[0], labels))))
    assert (0, 1, 2) in orders  # the real (T1) order: CSF < grey < white matter
    assert len(orders) >= 4, orders  # and others: inverted (T2-like), grey brightest (FLAIR-like), ...


def test_a_synthetic_patch_is_normalised_as_its_synthetic_subject_and_keeps_the_exact_zero_background():
    real, labels, rec, mix = whole_case()
    assert mix.outside == 0.0 and mix.classes[0] == 0.0 and abs(mix.classes[1:].sum() - 1.0) < 1e-6
    for seed in range(5):
        image, zero = synthetic(seed, real, labels, rec, mix, "zscore", flat())
        fg = image[0][labels > 0]
        # the patch is the whole case: its foreground is z-scored (to the reference sample's accuracy)
        assert abs(fg.mean()) < 0.05 and abs(fg.std() - 1.0) < 0.05, (fg.mean(), fg.std())
        assert np.all(image[0][labels == 0] == zero[0]) and zero[0] < fg.min() + 1e-3  # raw 0, below any tissue
        q, qzero = synthetic(seed, real, labels, rec, mix, "quantile", flat())
        assert abs(float(np.median(q[0][labels > 0]))) < 0.1 and np.all(q[0][labels == 0] == qzero[0])


def test_each_label_gets_texture_from_quantile_bins_of_its_real_intensities():
    real, labels, _, _ = whole_case()
    bins = synth.quantile_bins(labels, real[0], labels > 0, 3)
    for k in (1, 2, 3):
        counts = np.bincount(bins[labels == k], minlength=3)
        assert counts.min() > 0.25 * counts.sum(), (k, counts)
    # the dark blob inside the white matter label falls in its lowest bin
    image, _ = head(0)
    blob = (labels == 3) & (image < 92.0) & (image > 78.0)
    assert np.mean(bins[blob] == 0) > 0.9
    # equal values share a bin: a constant region is never split by position
    assert (
        np.unique(
            synth.quantile_bins(np.ones((4, 4, 4), np.int64), np.zeros((4, 4, 4)), np.ones((4, 4, 4), bool), 3)
        ).size
        == 1
    )


def test_thick_slices_smooth_along_their_axis_only():
    """Thick slices along axis 2: stripes across axis 2 are averaged away, stripes along it stay sharp."""
    grid = np.indices(SHAPE)
    across, along = ((grid[axis] // 3) % 4 for axis in (2, 0))  # labels that change along axis 2, along axis 0
    mix = synth.SubjectMix(np.full(4, 0.25))
    base = synth.draw(np.random.default_rng(1), 1, 4, [SPACING] * 3, flat(texture=0.0))
    no_noise = np.zeros_like(base.stds)  # piecewise constant: only the labels' edges make steps
    sharp = synth.SynthParams(base.means, no_noise, base.window, base.bias, base.gamma, base.noise, base.seed)
    thick = synth.SynthParams(
        base.means, no_noise, np.array([[1.0, 1.0, 5.0]]), base.bias, base.gamma, base.noise, base.seed
    )
    nowhere = np.zeros(SHAPE, bool)

    def image(params: synth.SynthParams, labels: np.ndarray) -> np.ndarray:
        return synth.apply(params, labels, labels[None].astype(np.float32), nowhere, mix, "zscore")[0][0]

    def step(x: np.ndarray, axis: int) -> float:  # mean absolute difference between neighbours
        return float(np.abs(np.diff(x, axis=axis)).mean())

    assert step(image(thick, across), 2) < 0.5 * step(image(sharp, across), 2)
    assert np.allclose(image(thick, along), image(sharp, along), atol=1e-4)  # nothing changes along axis 2
    assert step(image(sharp, along), 0) > 0.1


def test_channels_are_drawn_independently():
    real, labels, rec, mix = whole_case(channels=2)
    differ = 0
    for seed in range(10):
        image, zero = synthetic(seed, real, labels, rec, mix, "zscore", flat())
        assert image.shape == (2, *SHAPE) and zero.shape == (2,)
        a, b = (np.argsort(class_means(image[c], labels)) for c in range(2))
        differ += not np.array_equal(a, b)
    assert differ >= 3  # the two channels' contrasts are not one contrast twice


def test_ct_and_none_cannot_be_drawn_into():
    real, labels, rec, mix = whole_case()
    params = synth.draw(np.random.default_rng(0), 1, 4, rec.target_spacing)
    with pytest.raises(ValueError, match="cannot be normalised by 'ct'"):
        synth.apply(params, labels, real, labels == 0, mix, "ct")


# ----------------------------------------------------------------------------- in the loader


@pytest.mark.parametrize("noisy", [False, True])
def test_share_0_leaves_every_patch_as_it_was_and_share_1_redraws_every_one(tmp_path, noisy):
    cases = cached(tmp_path, noisy_background=noisy)
    plain, off, on, half = dataset(cases), dataset(cases, 0.0), dataset(cases, 1.0), dataset(cases, 0.5)
    redrawn = 0
    for i in range(16):
        x, y = plain[i]
        x0, y0 = off[i]
        x1, y1 = on[i]
        xh, yh = half[i]
        assert torch.equal(x, x0) and torch.equal(y, y0)
        # the same patch (centre, spatial augmentation, flips) with another image
        assert torch.equal(y, y1) and torch.equal(y, yh)
        assert x1.shape == x.shape and x1.dtype == torch.float32 and not torch.allclose(x1, x)
        redrawn += not torch.equal(xh, x)
    assert 3 <= redrawn <= 13, redrawn  # about half


def test_the_case_mix_is_the_normalisation_region(tmp_path):
    zero, noisy = cached(tmp_path / "z"), cached(tmp_path / "n", noisy_background=True)
    for case in zero + noisy:
        image, seg = case.load()
        mix = synth.subject_mix(image, seg, case.record, 4)
        truth = np.bincount(np.asarray(seg).ravel(), minlength=4)[1:] / np.count_nonzero(seg)
        # the foreground is the head (the threshold foreground of a noisy case: about the head)
        assert np.allclose(mix.classes[1:] / mix.classes[1:].sum(), truth, atol=0.05), (mix.classes, truth)
        assert mix.classes[0] < 0.1 and mix.outside == 0.0


def test_multichannel_patches_are_redrawn_channel_by_channel(tmp_path):
    cases = cached(tmp_path, channels=2)
    on = dataset(cases, 1.0, aug=AugmentConfig(enabled=False))
    x, y = on[1]
    assert x.shape == (2, *PATCH)
    assert not torch.allclose(x[0], x[1])


# ----------------------------------------------------------------------------- the config and the command line


def test_the_config_field_is_checked():
    assert load_config().train.synth == 0.0
    assert load_config(None, ["train.synth=0.5"]).train.synth == 0.5
    with pytest.raises(BrainsegError, match=r"^config train.synth: must be in \[0, 1\] .*got 1.5$"):
        load_config(None, ["train.synth=1.5"])
    with pytest.raises(BrainsegError, match="^config train.synth: expected a number, got 'lots'$"):
        load_config(None, ["train.synth=lots"])
    with pytest.raises(
        BrainsegError, match="^config train.synth: needs data.normalization zscore or quantile, not ct$"
    ):
        load_config(None, ["train.synth=0.5", "data.normalization=ct"])
    assert load_config(None, ["train.synth=0", "data.normalization=ct"]).data.normalization == "ct"


def test_a_bad_share_is_one_error_line_naming_the_config(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  synth: -0.1\n")
    rc, err = in_process(capsys, "train", "--data", tmp_path / "nowhere", "--out", tmp_path / "run", "--config", config)
    assert rc != 0
    assert error_lines(err) == [
        f"brainseg: error: {config}: config train.synth: must be in [0, 1] (a share of the patches), got -0.1"
    ], err
    assert not (tmp_path / "run").exists()


def test_a_tiny_model_trains_with_synthetic_contrasts(tmp_path):
    data = make_data(tmp_path / "data", n=3)
    run = tmp_path / "run"
    res = cli(
        "train", "--data", data, "--out", run, "--epochs", "1", "--no-progress", *TINY_TRAIN, "--set", "train.synth=0.5"
    )
    assert res.returncode == 0, res.stderr
    state = torch.load(run / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert state["card"]["config"]["train"]["synth"] == 0.5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
