"""Ensembles and uncertainty maps on real files: tiny real checkpoints (different seeds), real NIfTI scans.

An ensemble of one model is that model bit for bit; an ensemble of two averages the members'
probabilities; a cross-validation run folder (``fold_*``) is an ensemble of its folds; models that
cannot be ensembled give one error line; each case is read once; the uncertainty map has the scan's
geometry, is 0 where the members are certain and agree and high where they disagree.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.config import PostprocessConfig, load_config
from brainseg.errors import BrainsegError
from brainseg.infer import predictor as predictor_module
from brainseg.infer.batch import predict
from brainseg.infer.ensemble import EnsembleWindows, check_compatible, expand_models, fold_folders
from brainseg.infer.mirroring import Mirroring
from brainseg.infer.predictor import Predictor
from brainseg.infer.sliding_window import SlidingWindow
from brainseg.model.checkpoint import load_card, load_checkpoint, load_model, save_checkpoint
from tests.conftest import brainseg, error_lines, save_sequence, sequences

CLASSES = 3


@pytest.fixture(scope="module")
def models(tiny_checkpoint_factory) -> tuple[Path, Path]:
    return tiny_checkpoint_factory(seed=5), tiny_checkpoint_factory(seed=9)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Two one-channel cases (the T1w and T2w sequences of the phantom head, 24^3 at 1.5 mm)."""
    folder = tmp_path_factory.mktemp("scans")
    seq = sequences()
    save_sequence(folder / "A_0000.nii.gz", seq["T1w"])
    save_sequence(folder / "B_0000.nii.gz", seq["T2w"])
    return folder


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory) -> Path:
    """A case whose non-zero box (10^3) fits one window: no window overlaps another, so the
    Gaussian aggregation is the identity and averaging before or after it is the same."""
    folder = tmp_path_factory.mktemp("small")
    data = np.zeros((16, 16, 16), np.float32)
    data[3:13, 3:13, 3:13] = sequences()["T1w"][7:17, 7:17, 7:17]
    save_sequence(folder / "S_0000.nii.gz", data)
    return folder


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _predict(model, inputs: Path, out: Path, **kwargs) -> Path:
    result = predict(model, [inputs], out, device="cpu", **kwargs)
    assert not result.summary.failed and result.summary.written, result.summary
    return out


def _run_folder(root: Path, *checkpoints: Path) -> Path:
    for k, ckpt in enumerate(checkpoints):
        (root / f"fold_{k}").mkdir(parents=True)
        (root / f"fold_{k}" / "checkpoint_final.pt").write_bytes(ckpt.read_bytes())
    (root / "splits.json").write_text("[]")
    return root


def test_an_ensemble_of_one_model_is_that_model_bit_for_bit(models, scans, tmp_path):
    single = _predict(models[0], scans, tmp_path / "single", save_probabilities=True)
    listed = _predict([models[0]], scans, tmp_path / "listed", save_probabilities=True)
    run = _run_folder(tmp_path / "run", models[0])
    folded = _predict(run, scans, tmp_path / "folded", save_probabilities=True)
    for case in ("A", "B"):
        mask = _read(single / f"{case}.nii.gz")[0]
        assert len(np.unique(mask)) > 1
        probs = _read(single / f"{case}_probabilities.nii.gz")[0]
        for other in (listed, folded):
            assert np.array_equal(_read(other / f"{case}.nii.gz")[0], mask)
            assert np.array_equal(_read(other / f"{case}_probabilities.nii.gz")[0], probs)


def test_an_ensemble_of_two_is_the_mean_of_their_probabilities(models, small_scan, tmp_path):
    a = _read(_predict(models[0], small_scan, tmp_path / "a", save_probabilities=True) / "S_probabilities.nii.gz")[0]
    b = _read(_predict(models[1], small_scan, tmp_path / "b", save_probabilities=True) / "S_probabilities.nii.gz")[0]
    ens = _predict(list(models), small_scan, tmp_path / "ab", save_probabilities=True)
    mean = _read(ens / "S_probabilities.nii.gz")[0]
    assert np.abs(a - b).max() > 0.1  # the two models do differ
    np.testing.assert_allclose(mean, (a + b) / 2, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mean.sum(-1), 1.0, atol=1e-5)
    # the mask is the argmax of the mean inside the head (the card's input-mask rule outside it)
    mask = _read(ens / "S.nii.gz")[0]
    head = _read(small_scan / "S_0000.nii.gz")[0] != 0
    assert np.array_equal(mask[head], np.argmax(mean, axis=-1)[head])


def test_region_models_average_their_sigmoids(tiny_checkpoint_factory, small_scan, tmp_path):
    from brainseg.labels.regions import Regions

    regions = Regions(names=("ab", "a"), labels=((1, 2), (1,)), class_order=(2, 1))
    models = [tiny_checkpoint_factory(seed=s, regions=regions) for s in (5, 9)]
    probs = [
        _read(_predict(m, small_scan, tmp_path / f"m{i}", save_probabilities=True) / "S_probabilities.nii.gz")[0]
        for i, m in enumerate(models)
    ]
    ens = _predict(models, small_scan, tmp_path / "ab", save_probabilities=True, save_uncertainty=True)
    mean = _read(ens / "S_probabilities.nii.gz")[0]
    assert np.abs(probs[0] - probs[1]).max() > 0.1
    np.testing.assert_allclose(mean, (probs[0] + probs[1]) / 2, atol=1e-5, rtol=0)
    unc = _read(ens / "S_uncertainty.nii.gz")[0]
    assert unc.shape == mean.shape[:3] and unc.max() > 0.01
    gap = np.abs(probs[0] - probs[1]).max(axis=-1)  # where the two members disagree most
    assert unc[gap > 0.2].mean() > 2 * unc[gap < 0.02].mean()


def test_a_cross_validation_run_folder_is_an_ensemble_of_its_folds(models, scans, tmp_path):
    run = _run_folder(tmp_path / "run", *models)
    (run / "fold_10").mkdir()  # folds sort by number, not by name
    (run / "fold_2").mkdir()
    (run / "fold_x").mkdir()  # not a fold
    assert fold_folders(run) == [run / f"fold_{k}" for k in (0, 1, 2, 10)]
    (run / "fold_10").rmdir()
    (run / "fold_2").rmdir()
    assert expand_models([run, models[0]]) == [run / "fold_0", run / "fold_1", models[0]]
    assert expand_models([run / "fold_0"]) == [run / "fold_0"]  # a fold is a plain run folder
    folds = _predict(run, scans, tmp_path / "folds")
    listed = _predict(list(models), scans, tmp_path / "listed")
    single = _predict(models[0], scans, tmp_path / "single")
    for case in ("A", "B"):
        assert np.array_equal(_read(folds / f"{case}.nii.gz")[0], _read(listed / f"{case}.nii.gz")[0])
    assert any(
        not np.array_equal(_read(folds / f"{c}.nii.gz")[0], _read(single / f"{c}.nii.gz")[0]) for c in ("A", "B")
    )


@pytest.mark.parametrize(
    ("fields", "differs"),
    [
        ({"channels": ("T2",)}, "channels"),
        ({"labels": {"0": "background", "1": "a", "2": "c"}}, "labels"),
        ({"spacing": (2.0, 2.0, 2.0)}, "spacing"),
        ({"patch_size": (8, 8, 8)}, "patch size"),
    ],
)
def test_incompatible_models_are_refused_with_one_line(models, tiny_checkpoint_factory, fields, differs):
    kwargs = dict(fields)
    channels, labels = kwargs.pop("channels", ("T1",)), kwargs.pop("labels", None)
    other = tiny_checkpoint_factory(channels=channels, labels=labels, seed=9, **kwargs)
    with pytest.raises(BrainsegError) as info:
        check_compatible([load_card(models[0]), load_card(other)], [models[0], other])
    text = str(info.value)
    assert "\n" not in text and f"their {differs} differ" in text
    assert str(models[0]) in text and str(other) in text


def test_a_region_and_a_label_model_are_refused_in_the_cli(models, tiny_checkpoint_factory, scans, tmp_path):
    from brainseg.labels.regions import Regions

    regions = Regions(names=("ab", "a"), labels=((1, 2), (1,)), class_order=(2, 1))
    other = tiny_checkpoint_factory(seed=9, regions=regions)
    proc = brainseg("predict", "--model", str(models[0]), str(other), "--input", str(scans), "--output", str(tmp_path))
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "their outputs differ (classes vs regions)" in lines[0], proc.stderr
    assert str(models[0]) in lines[0] and str(other) in lines[0]
    assert not list(tmp_path.glob("*.nii.gz"))


def test_each_case_is_read_and_slid_over_once(models, scans, tmp_path, monkeypatch):
    """Two members, two cases: two reads and two sliding-window passes, each batch through both members."""
    reads, passes = [], []
    read, call = predictor_module.read_channels, SlidingWindow.__call__

    def counted_read(*args, **kwargs):
        reads.append(args[0])
        return read(*args, **kwargs)

    def counted_pass(self, *args, **kwargs):
        passes.append(self)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(predictor_module, "read_channels", counted_read)
    monkeypatch.setattr(SlidingWindow, "__call__", counted_pass)
    _predict(list(models), scans, tmp_path / "out", save_uncertainty=True)
    assert len(reads) == 2 and len(passes) == 2


def _constant_model(source: Path, target: Path, logits: list[float]) -> Path:
    """``source``'s checkpoint with a head that outputs ``logits`` at every voxel (weights 0, bias set)."""
    state = load_checkpoint(source)
    weights = dict(state["model"])
    weights["heads.0.weight"] = torch.zeros_like(weights["heads.0.weight"])
    weights["heads.0.bias"] = torch.tensor(logits, dtype=weights["heads.0.bias"].dtype)
    return save_checkpoint(target, {"model": weights, "card": state["card"]})


def test_uncertainty_is_zero_where_members_agree_and_high_where_they_disagree(models, scans, tmp_path):
    one = _constant_model(models[0], tmp_path / "one.pt", [-30.0, 30.0, -30.0])  # class 1, certain
    also_one = _constant_model(models[1], tmp_path / "also_one.pt", [-30.0, 30.0, -30.0])
    two = _constant_model(models[1], tmp_path / "two.pt", [-30.0, -30.0, 30.0])  # class 2, certain
    agree = _predict([one, also_one], scans, tmp_path / "agree", save_uncertainty=True)
    disagree = _predict([one, two], scans, tmp_path / "disagree", save_uncertainty=True)
    scan, affine = _read(scans / "A_0000.nii.gz")
    head = scan != 0
    assert not head[0, 0, 0]
    for out in (agree, disagree):
        img = nib.load(str(out / "A_uncertainty.nii.gz"))
        assert img.shape == scan.shape and np.array_equal(img.affine, affine)
        assert img.get_data_dtype() == np.float32
    calm, torn = _read(agree / "A_uncertainty.nii.gz")[0], _read(disagree / "A_uncertainty.nii.gz")[0]
    assert calm.max() < 1e-6
    # two certain members, one vote each for two of three classes: log 2 / log 3 of the scale
    np.testing.assert_allclose(torn[head], math.log(2) / math.log(CLASSES), atol=1e-4)
    assert torn[0, 0, 0] < 1e-6  # outside the head's box both give the background


def test_disagreement_follows_the_planted_voxels():
    """Members that agree on one half of the volume and contradict each other on the other half."""

    def member(sign: float):
        def predict(batch: torch.Tensor) -> torch.Tensor:
            x = batch[:, :1]
            agree = 30.0 * torch.ones_like(x)
            side = torch.where(x > 0, agree, sign * agree)
            return torch.cat([-agree, side, -side], dim=1)

        return predict

    image = torch.ones((1, 20, 20, 20))
    image[:, 10:] = -1.0
    window = SlidingWindow((8, 8, 8), CLASSES + 1)
    out = window(image, EnsembleWindows((member(1.0), member(-1.0)), uncertainty=True), 2)
    info = out[CLASSES]
    assert info[:10].max() < 1e-6  # both members: class 1, certain
    assert info[12:].min() > 0.6  # class 1 against class 2, certain (log 2 / log 3 = 0.63)
    np.testing.assert_allclose(out[:CLASSES].sum(0).numpy(), 1.0, atol=1e-5)


def test_one_model_with_mirroring_measures_its_passes_and_keeps_its_mask(models, scans, tmp_path):
    model, card = load_model(models[0])
    mirror = load_config(overrides=["infer.mirror=true"])
    assert mirror.infer.mirror
    predictor = Predictor(model, card, mirror.infer, PostprocessConfig())
    assert isinstance(predictor.predict_windows, Mirroring) and predictor.uncertainty_windows is not None
    case = predictor.prepare([scans / "A_0000.nii.gz"])
    plain = predictor.segment_maps(case)
    mapped = predictor.segment_maps(case, probabilities=True, uncertainty=True)
    assert np.array_equal(plain.labels, mapped.labels)
    assert mapped.uncertainty is not None and mapped.uncertainty.shape == case.geometry.shape
    assert mapped.uncertainty.max() > 0.01  # the mirrored passes of an untrained network disagree somewhere
    assert mapped.probabilities is not None  # where the scan holds no subject the passes cannot disagree
    certain = mapped.probabilities[0] == 1.0
    assert certain.any() and not mapped.uncertainty[certain].any()
    # without mirroring: the entropy of the probabilities
    flat = Predictor(model, card, load_config().infer, PostprocessConfig())
    assert flat.uncertainty_windows is None
    entropy = flat.segment_maps(case, probabilities=True, uncertainty=True)
    assert entropy.probabilities is not None and entropy.uncertainty is not None
    p = entropy.probabilities
    expected = -(p * np.log(np.clip(p, 1e-30, None))).sum(0) / math.log(CLASSES)
    np.testing.assert_allclose(entropy.uncertainty, expected, atol=1e-5)


def test_the_cli_ensembles_models_and_writes_uncertainty(models, scans, tmp_path):
    out = tmp_path / "out"
    proc = brainseg(
        "predict",
        "--model",
        *map(str, models),
        "--input",
        str(scans),
        "--output",
        str(out),
        "--save-uncertainty",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "ensemble of 2 models" in proc.stderr and "first member's" in proc.stderr
    library = _predict(list(models), scans, tmp_path / "library")
    for case in ("A", "B"):
        scan, affine = _read(scans / f"{case}_0000.nii.gz")
        unc, unc_affine = _read(out / f"{case}_uncertainty.nii.gz")
        assert unc.shape == scan.shape and np.array_equal(unc_affine, affine)
        assert unc.dtype == np.float32 and unc.max() > 0.01
        assert np.all(unc[scan == 0] < 1e-6) or unc[scan != 0].mean() > unc[scan == 0].mean()
        assert np.array_equal(_read(out / f"{case}.nii.gz")[0], _read(library / f"{case}.nii.gz")[0])
    assert "A_uncertainty" not in (out / "volumes.csv").read_text()
