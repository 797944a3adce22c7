"""Left/right-aware labels: pairs from names or the config, label swaps in training flips,
side-swapping test-time mirroring, and the CLI end to end on the hemispheres demo data set.

The hemispheres demo data set (``brainseg demo-data OUT --kind hemispheres``) labels grey and
white matter left (2, 4) and right (3, 5) of the template's midline; subject 0 is stored
RAS, subject 1 LAS (its left-right axis reversed in the file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from brainseg.config import AugmentConfig, InferConfig, PostprocessConfig, load_config
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.infer.mirroring import window_predictor
from brainseg.infer.predictor import Predictor
from brainseg.infer.sliding_window import SlidingWindow
from brainseg.labels import laterality as lateral
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model
from brainseg.model.fast_paths import inference_network
from brainseg.model.unet import UNet3D
from brainseg.preprocessing.cache import cache_cases
from brainseg.train.recipe import resolve_laterality
from brainseg.train.sampling import augment
from brainseg.train.sampling.loader import PatchDataset
from brainseg.train.sampling.patches import extract_patch
from tests.conftest import make_tiny_checkpoint
from tests.train.test_trainer import brainseg_cmd, run

HEMI = {
    0: "background",
    1: "CSF",
    2: "left grey matter",
    3: "right grey matter",
    4: "left white matter",
    5: "right white matter",
}
PAIRS = [[2, 3], [4, 5]]
SWAP = [0, 1, 3, 2, 5, 4]  # class index -> class index under a left-right flip (labels 0..5 = classes 0..5)
LEFT, RIGHT = (2, 4), (3, 5)


# ----------------------------------------------------------------------------- name rules and the config


def test_names_pair_by_side_word_in_every_atlas_style():
    labels = {
        0: "background",
        1: "CSF",
        2: "left grey matter",
        3: "right grey matter",  # left X / right X
        4: "Left-Hippocampus",
        5: "Right-Hippocampus",  # FreeSurfer aseg
        6: "ctx-lh-insula",
        7: "ctx-rh-insula",  # FreeSurfer aparc
        8: "Amygdala_L",
        9: "Amygdala_R",  # _L / _R
        10: "LEFT PUTAMEN",
        11: "right putamen",  # any case
        12: "Brain-Stem",
        13: "lesion",  # not lateralised
    }
    found = lateral.from_names(labels)
    assert found.pairs == ((2, 3), (4, 5), (6, 7), (8, 9), (10, 11))
    assert found.unpaired == () and found.may_flip_left_right
    # a lateralised label without a partner (or with two) forbids left-right flips
    odd = lateral.from_names(
        {
            0: "background",
            1: "Left-Thalamus",
            2: "Right-Thalamus",
            3: "Left-Lesion",
            4: "lh.caudate",
            5: "Caudate_L",
            6: "Right-Caudate",
        }
    )
    assert odd.pairs == ((1, 2), (4, 6))  # lh.caudate and Right-Caudate differ only in the side word
    assert odd.unpaired == (3, 5) and not odd.may_flip_left_right  # Left-Lesion; Caudate_L (side word last)
    assert odd.to_config() is None  # a run config then keeps "from the names", which finds them again
    assert "3 (Left-Lesion)" in odd.describe(
        dict(enumerate(["background", "Left-Thalamus", "Right-Thalamus", "Left-Lesion"]))
    )
    assert lateral.from_names({0: "background", 1: "tumour"}).to_config() == []


def test_config_pairs_are_checked_against_the_label_table():
    assert lateral.resolve(PAIRS, HEMI).pairs == ((2, 3), (4, 5))
    assert lateral.resolve([], HEMI).pairs == ()  # [] = no pairs whatever the names say
    assert lateral.resolve(None, HEMI).pairs == ((2, 3), (4, 5))
    for bad, words in (
        ([[2, 2]], "two different"),
        ([[2, 9]], "9 is not a foreground label"),
        ([[0, 1]], "0 is not a foreground label"),
        ([[2, 3], [3, 4]], "in two pairs"),
        ([[1, 2, 3]], "not a pair"),
    ):
        with pytest.raises(BrainsegError) as err:
            lateral.resolve(bad, HEMI)
        assert words in str(err.value) and "labels.mirror_pairs" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BrainsegError, match=r"labels.mirror_pairs\[0\]\[1\]: expected an integer"):
        load_config(None, ['labels.mirror_pairs=[[2, "x"]]'])
    # a stored card's config: its pairs, or the names' when it has none (older cards)
    assert lateral.from_run_config({"labels": {"mirror_pairs": [[4, 5]]}}, HEMI).pairs == ((4, 5),)
    assert lateral.from_run_config({"infer": {}}, HEMI).pairs == ((2, 3), (4, 5))
    with pytest.raises(BrainsegError, match="mirror_pairs"):
        lateral.from_run_config({"labels": {"mirror_pairs": [7]}}, HEMI)


def test_the_trainer_records_the_pairs_and_warns_about_unpaired_labels(caplog):
    config = load_config()
    with caplog.at_level(logging.INFO, logger="brainseg.train.recipe"):
        recorded, found = resolve_laterality(config, HEMI)
    assert recorded.labels.mirror_pairs == PAIRS and found.may_flip_left_right
    assert config.labels.mirror_pairs is None  # the caller's config is not changed
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "2 (left grey matter) <-> 3 (right grey matter)" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="brainseg.train.recipe"):
        recorded, found = resolve_laterality(config, {**HEMI, 6: "left lesion"})
    assert not found.may_flip_left_right and recorded.labels.mirror_pairs is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert (
        caplog.records[0].getMessage() == "lateralised labels without a partner: 6 (left lesion) -> no left-right flips"
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="brainseg.train.recipe"):
        recorded, found = resolve_laterality(config, {0: "background", 1: "tumour"})
    assert recorded.labels.mirror_pairs == [] and not caplog.records  # nothing to say at the default level


# ----------------------------------------------------------------------------- the hemispheres demo data set


@pytest.fixture(scope="module")
def hemi_data(tmp_path_factory) -> Path:
    """``brainseg demo-data OUT --kind hemispheres --n 3 --n-test 1``: demo_000 (RAS) and demo_001 (LAS) to train on."""
    pytest.importorskip("nilearn")
    out = tmp_path_factory.mktemp("hemi") / "data"
    proc = run(brainseg_cmd("demo-data", str(out), "--kind", "hemispheres", "--n", "3", "--n-test", "1"))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def hemi_cache(hemi_data, tmp_path_factory):
    ds = discover_dataset(hemi_data)
    assert ds.labels == HEMI
    return cache_cases(ds.train, tmp_path_factory.mktemp("hemi_cache"), [3.0, 3.0, 3.0], list(HEMI), progress=False)


def mean_x(seg: np.ndarray, classes) -> float:
    return float(np.nonzero(np.isin(seg, classes))[0].mean())


def draws_for(pattern: list[bool], p: float = 0.5) -> np.random.Generator:
    """A generator whose next three draws flip exactly the axes in ``pattern``."""
    for seed in range(1000):
        if [v < p for v in np.random.default_rng(seed).random(3)] == pattern:
            return np.random.default_rng(seed)
    raise AssertionError(pattern)


def test_cached_axis_0_is_the_subjects_left_right_axis(hemi_cache):
    """Both subjects, the RAS one and the LAS one, have their right labels at the high end of axis 0."""
    assert [c.case_id for c in hemi_cache] == ["demo_000", "demo_001"]
    for case in hemi_cache:
        _, seg = case.load(mmap=False)
        assert mean_x(seg, RIGHT) > mean_x(seg, LEFT) + 5, case.case_id


def test_a_left_right_flip_swaps_the_pairs_and_other_flips_do_not(hemi_cache):
    image, seg = hemi_cache[1].load(mmap=False)  # the LAS subject
    centre = np.array(seg.shape) / 2.0
    img, lab = extract_patch(image, seg, centre, [40, 40, 40])
    assert set(np.unique(lab)) == set(HEMI)
    cfg = AugmentConfig()
    swap = np.asarray(lateral.from_names(HEMI).channel_permutation(list(HEMI)))
    assert swap.tolist() == SWAP

    fimg, flab = augment.flip(img, lab, draws_for([True, False, False]), cfg, swap)
    assert np.array_equal(fimg, img[:, ::-1])
    # each voxel holds the swapped label of its mirror voxel ...
    assert np.array_equal(flab, swap[lab[::-1]])
    # ... so the mirrored brain's right hemisphere (high x) is labelled right, as in every RAS volume
    assert mean_x(flab, RIGHT) > mean_x(flab, LEFT) + 5
    assert mean_x(lab[::-1], RIGHT) < mean_x(lab[::-1], LEFT) - 5  # what a flip without the swap would teach

    for pattern, axes in (([False, True, False], (1,)), ([False, False, True], (2,)), ([False, True, True], (1, 2))):
        fimg, flab = augment.flip(img, lab, draws_for(pattern), cfg, swap)
        assert np.array_equal(flab, np.flip(lab, axes)) and np.array_equal(fimg, np.flip(img, [a + 1 for a in axes]))
    # the left-right flip not allowed: the draw is made, the flip is not
    fimg, flab = augment.flip(img, lab, draws_for([True, True, False]), cfg, swap, left_right=False)
    assert np.array_equal(flab, lab[:, ::-1])


def spatial_only(p_flip: float) -> AugmentConfig:
    intensity = {f.name: 0.0 for f in dataclasses.fields(AugmentConfig) if f.name.startswith("p_")}
    return AugmentConfig(**{**intensity, "p_flip": p_flip, "p_rotate": 0.2, "p_scale": 0.2})


def test_patches_of_an_unpaired_data_set_never_flip_left_right(hemi_cache):
    unpaired = lateral.from_names({**HEMI, 3: "right grey matter (cortex)"})  # 2 and 3 no longer pair
    assert unpaired.unpaired == (2, 3) and not unpaired.may_flip_left_right
    paired = lateral.from_names(HEMI)
    make = lambda cfg, lat: PatchDataset(
        hemi_cache, [24, 24, 24], 2, 0.5, cfg, seed=3, laterality=lat, label_values=list(HEMI)
    )
    plain = make(spatial_only(0.5), lateral.Laterality())  # no lateral labels: patches as before
    odd, pairs = make(spatial_only(0.5), unpaired), make(spatial_only(0.5), paired)
    flipped_lr = 0
    for i in range(24):
        lab = plain[i][1].numpy()
        lab_odd, lab_pairs = odd[i][1].numpy(), pairs[i][1].numpy()
        if np.array_equal(lab_odd, lab):  # axis 0 not drawn: all three agree
            assert np.array_equal(lab_pairs, lab)
        else:  # axis 0 drawn: only the unpaired data set did not flip it; the paired one swapped
            flipped_lr += 1
            assert np.array_equal(lab_odd, lab[::-1])
            assert np.array_equal(lab_pairs, np.asarray(SWAP)[lab])
            assert torch.equal(odd[i][0], plain[i][0].flip(1))
    assert 4 <= flipped_lr <= 20  # about half the patches drew a left-right flip
    always = make(spatial_only(1.0), unpaired)
    never = make(spatial_only(0.0), unpaired)
    for i in range(6):  # p_flip 1: axes 1 and 2 flipped, axis 0 never
        assert np.array_equal(always[i][1].numpy(), never[i][1].numpy()[:, ::-1, ::-1])


# ----------------------------------------------------------------------------- test-time mirroring


def random_unet(seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    net = UNet3D(in_channels=1, num_classes=6, levels=2, base_features=4).eval()
    with torch.no_grad():  # an untrained net whose argmax still varies over the volume
        net.heads[0].weight.mul_(20.0)
        net.heads[0].bias.zero_()
    return net


def test_mirroring_with_the_swap_is_left_right_equivariant(hemi_cache):
    image, seg = hemi_cache[0].load(mmap=False)
    x = torch.from_numpy(extract_patch(image, seg, np.array(seg.shape) / 2.0, [24, 24, 24])[0].copy())
    net = random_unet()
    infer = InferConfig(mirror=True, margin=0.0, amp="none", channels_last=False)

    def window(**kw):
        predict = window_predictor(inference_network(net), infer, "cpu", **kw)
        return lambda image: SlidingWindow.from_config([16, 16, 16], 6, infer)(image, predict, infer.batch_windows)

    swapped = window(swap_channels=SWAP)
    a, b = swapped(x), swapped(x.flip(1))
    expected = a.flip(1)[SWAP]
    assert torch.allclose(b, expected, atol=1e-4)
    assert torch.equal(b.argmax(0), expected.argmax(0))
    assert set(a.argmax(0).unique().tolist()) & {2, 3, 4, 5}  # left/right classes are predicted

    plain = window()  # mirroring without the swap: the side-swapped property fails
    a, b = plain(x), plain(x.flip(1))
    assert (b.argmax(0) != a.flip(1)[SWAP].argmax(0)).float().mean() > 0.05
    # (it is equivariant without the swap instead: what a model of unsided labels needs)
    assert torch.allclose(b, a.flip(1), atol=1e-4)

    # left-right flips not allowed: one window (16^3) is the average of the four flips along axes 1 and 2 only
    one = x[:, 4:20, 4:20, 4:20]
    no_lr = window(flip_left_right=False)(one)
    with torch.no_grad():
        manual = sum(net(one[None].flip(d)).flip(d) for d in [(3,), (4,), (3, 4)]) + net(one[None])
    assert torch.allclose(no_lr, manual[0] / 4, atol=1e-4)
    assert not torch.allclose(no_lr, plain(one), atol=1e-3)


def write_asl(path: Path, data: np.ndarray, spacing: float) -> Path:
    """An ASL file (axes: anterior, superior, left): the subject's left-right axis is file axis 2."""
    affine = np.zeros((4, 4))
    affine[1, 0] = affine[2, 1] = spacing
    affine[0, 2] = -spacing
    affine[3, 3] = 1.0
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return path


def test_the_predictor_mirrors_on_the_subjects_left_right_axis(hemi_cache, tmp_path):
    """Through the whole predictor (reorientation to RAS included): a scan stored ASL and its
    left-right mirror (file axis 2) get mirrored, side-swapped masks; mirroring the scan along
    its anterior-posterior axis (file axis 0) mirrors the mask without swapping."""
    path = make_tiny_checkpoint(tmp_path / "old.pt", labels={str(k): v for k, v in HEMI.items()}, seed=1)
    model, card = load_model(path)
    card = dataclasses.replace(
        card, config={k: v for k, v in card.config.items() if k != "labels"}
    )  # a card from before the field
    image, seg = hemi_cache[0].load(mmap=False)  # RAS at 3 mm: a real brain's intensities
    ras = extract_patch(image, seg, np.array(seg.shape) / 2.0, [20, 20, 20])[0][0] + 5.0  # positive everywhere
    asl = np.transpose(ras, (1, 2, 0))[:, :, ::-1]  # file axes (A, S, L)
    infer = InferConfig(mirror=True, amp="none", channels_last=False)
    predictor = Predictor(model, card, infer, PostprocessConfig())  # an older card: pairs from the names
    assert predictor.predict_windows.swap_channels == tuple(SWAP) and predictor.predict_windows.flip_left_right

    def segment(data: np.ndarray, name: str) -> np.ndarray:
        labels, _, geometry = predictor.predict_case([write_asl(tmp_path / f"{name}_0000.nii.gz", data, 1.5)])
        assert geometry.axcodes == ("A", "S", "L") and labels.shape == data.shape
        return labels

    mask = segment(asl, "scan")
    assert set(np.unique(mask)) & {2, 3, 4, 5}
    assert np.array_equal(segment(asl[:, :, ::-1].copy(), "mirrored"), np.asarray(SWAP)[mask[:, :, ::-1]])
    assert np.array_equal(segment(asl[::-1].copy(), "front_back"), mask[::-1])

    # the card's own pairs win; an unpaired lateral label switches left-right test-time flips off
    only_wm = dataclasses.replace(card, config={**card.config, "labels": {"mirror_pairs": [[4, 5]]}})
    assert Predictor(model, only_wm, infer, PostprocessConfig()).predict_windows.swap_channels == (0, 1, 2, 3, 5, 4)
    unpaired = dataclasses.replace(card, labels={**card.labels, 3: "right grey matter (cortex)"})
    mirroring = Predictor(model, unpaired, infer, PostprocessConfig()).predict_windows
    assert mirroring.swap_channels == (0, 1, 2, 3, 5, 4) and not mirroring.flip_left_right


# ----------------------------------------------------------------------------- end to end through the CLI

TINY = [
    "--set",
    "model.levels=2",
    "--set",
    "model.base_features=4",
    "--set",
    "model.max_features=8",
    "--set",
    "train.patch_size=[24,24,24]",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.iters_per_epoch=2",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.val_every=1",
    "--set",
    "train.optimizer=adamw",
    "--set",
    "data.target_spacing=[3.0,3.0,3.0]",
    "--set",
    "infer.batch_windows=8",
]


def train_one_epoch(data: Path, run_dir: Path, *extra: str):
    return run(
        brainseg_cmd(
            "train", "--data", str(data), "--out", str(run_dir), "--epochs", "1", "--no-progress", *TINY, *extra
        )
    )


def test_bad_config_pairs_stop_training_with_one_line(hemi_data, tmp_path):
    res = train_one_epoch(hemi_data, tmp_path / "run", "--set", "labels.mirror_pairs=[[2,9]]")
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert errors == ["brainseg: error: config labels.mirror_pairs: 9 is not a foreground label of the data set"], (
        res.stderr
    )
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_train_records_the_pairs_and_predict_mirrors_with_them(hemi_data, tmp_path):
    run_dir = tmp_path / "run"
    res = train_one_epoch(hemi_data, run_dir)
    assert res.returncode == 0, res.stderr
    assert (
        "left/right label pairs: 2 (left grey matter) <-> 3 (right grey matter), 4 (left white matter) <-> 5 (right white matter)"
        in res.stderr
    )
    card = torch.load(run_dir / "checkpoint_final.pt", map_location="cpu", weights_only=True)["card"]
    assert card["config"]["labels"]["mirror_pairs"] == PAIRS
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["labels"]["mirror_pairs"] == PAIRS
    assert ModelCard.from_dict(card).config["labels"]["mirror_pairs"] == PAIRS

    out = tmp_path / "masks"
    res = run(
        brainseg_cmd(
            "predict",
            "--model",
            str(run_dir),
            "--input",
            str(hemi_data / "imagesTs"),
            "--output",
            str(out),
            "--set",
            "infer.mirror=true",
            "--no-progress",
        )
    )
    assert res.returncode == 0, res.stderr
    scan = nib.load(str(hemi_data / "imagesTs" / "demo_002_0000.nii.gz"))
    mask = nib.load(str(out / "demo_002.nii.gz"))
    assert mask.shape == scan.shape and np.allclose(mask.affine, scan.affine, atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj))) <= set(HEMI)
    assert json.loads((hemi_data / "dataset.json").read_text())["labels"]["left grey matter"] == 2
