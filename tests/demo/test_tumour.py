"""The tumour demo data sets: BraTS 2021 / 2023 and nnU-Net (msd) folders on real files,
read back by the discovery that training and prediction use; five cases (one of each kind) on the
tissue demo's reoriented and oblique grids, each sequence with its own acquisition.
(:mod:`tests.demo.test_tumour_model` tests the shape and appearance models themselves.)
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brainseg.data.inputs import discover_inputs
from brainseg.data.layouts import discover_dataset
from brainseg.demo.tumour import make_tumour_dataset
from brainseg.demo.tumour_model import KINDS
from brainseg.errors import BrainsegError
from brainseg.labels.regions import BRATS_2021, BRATS_2023

SEED = 3


CONTRASTS_2021 = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tumour")
    return {
        "brats2021": make_tumour_dataset(root / "b21", n=5, n_test=1, seed=SEED, layout="brats2021", verbose=False),
        "brats2023": make_tumour_dataset(
            root / "b23", n=2, n_test=1, seed=SEED, layout="brats2023", verbose=False, spacing=(3, 3, 3)
        ),
        "msd": make_tumour_dataset(root / "msd", n=2, n_test=1, seed=SEED, layout="msd", verbose=False),
    }


def load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


def brats2021_case(root: Path, cid: str, split: str = "train") -> tuple[list[np.ndarray], np.ndarray, list]:
    """The four images, the labels and every file's image object of a BraTS 2021 case."""
    folder = root / split / cid
    loaded = [load(folder / f"{cid}_{c}.nii.gz") for c in CONTRASTS_2021]
    seg_path = folder / f"{cid}_seg.nii.gz" if split == "train" else root / "test_labels" / f"{cid}.nii.gz"
    seg, seg_img = load(seg_path)
    return [a for a, _ in loaded], seg, [img for _, img in loaded] + [seg_img]


def test_brats2021_folders_are_discovered_with_channels_regions_and_held_out_cases(sets):
    root = sets["brats2021"]
    ds = discover_dataset(root / "train")
    assert ds.layout == "brats" and ds.channels == CONTRASTS_2021
    assert ds.regions == BRATS_2021 and ds.labels == {}  # labels come from the data, as for real BraTS
    assert [c.case_id for c in ds.train] == [f"BraTS2021_{i:05d}" for i in range(4)] and ds.test == []
    assert [p.name for p in ds.train[0].images] == [f"BraTS2021_00000_{c}.nii.gz" for c in CONTRASTS_2021]
    assert ds.train[0].label.name == "BraTS2021_00000_seg.nii.gz"
    held_out = discover_inputs([root / "test"])  # scans only, as BraTS's validation data
    assert [c.case_id for c in held_out] == ["BraTS2021_00004"] and len(held_out[0].images) == 4
    assert sorted(p.name for p in (root / "test_labels").iterdir()) == ["BraTS2021_00004.nii.gz"]
    assert not list((root / "test").rglob("*seg*"))
    meta = json.loads((root / "brainseg-demo.json").read_text())
    assert meta["layout"] == "brats2021" and meta["train"] == [c.case_id for c in ds.train]
    assert meta["regions"] == BRATS_2021.to_dict()


def test_brats2023_names_labels_and_regions(sets):
    root = sets["brats2023"]
    ds = discover_dataset(root / "train")
    assert ds.channels == ("t1n", "t1c", "t2w", "t2f") and ds.regions == BRATS_2023
    case = ds.train[0]
    assert case.case_id == "BraTS-GLI-00000-000" and case.label.name == "BraTS-GLI-00000-000-seg.nii.gz"
    described = manifest_of(root)["cases"]
    refs = [load(case.label)[0], load(root / "test_labels" / "BraTS-GLI-00001-000.nii.gz")[0]]
    for ref, info in zip(refs, described):  # enhancing tumour written as 3, never 4
        values = set(np.unique(ref).tolist())
        assert values <= {0, 1, 2, 3} and 2 in values and (3 in values) == info["enhancing"]
    assert any(info["enhancing"] for info in described)


def test_msd_is_task01_channels_and_labels_with_nnunet_regions(sets):
    root, b21 = sets["msd"], sets["brats2021"]
    ds = discover_dataset(root)
    assert ds.layout == "msd" and ds.channels == ("FLAIR", "T1w", "t1gd", "T2w")
    assert ds.regions.names == ("whole tumor", "tumor core", "enhancing tumor")
    assert ds.regions.labels == ((1, 2, 3), (2, 3), (3,)) and ds.regions.class_order == (1, 2, 3)
    assert ds.labels == {0: "background", 1: "whole tumor", 2: "tumor core", 3: "enhancing tumor"}
    assert [c.case_id for c in ds.train] == ["BRATS_000"] and [c.case_id for c in ds.test] == ["BRATS_001"]
    assert ds.test[0].label is not None
    # the same seed draws the same case: Task01 values (1 edema, 2 non-enhancing, 3 enhancing) and channel order
    seg, _ = load(ds.train[0].label)
    images, seg21, _ = brats2021_case(b21, "BraTS2021_00000")
    np.testing.assert_array_equal(seg, np.select([seg21 == 2, seg21 == 1, seg21 == 4], [1, 2, 3], 0))
    for channel, contrast in enumerate(("flair", "t1", "t1ce", "t2")):
        np.testing.assert_array_equal(load(ds.train[0].images[channel])[0], images[CONTRASTS_2021.index(contrast)])
    # the regions give back BraTS's nested regions of the same case
    np.testing.assert_array_equal(ds.regions.masks(seg), BRATS_2021.masks(seg21))


def manifest_of(root: Path) -> dict:
    return json.loads((root / "brainseg-demo.json").read_text())


@pytest.mark.parametrize("index", range(5))
def test_grids_brain_and_nested_tumour_labels(sets, index):
    root = sets["brats2021"]
    cid = f"BraTS2021_{index:05d}"
    case = manifest_of(root)["cases"][index]
    images, seg, imgs = brats2021_case(root, cid, "test" if index == 4 else "train")
    for img in imgs:  # every file (labels too) on one grid, 2 mm
        assert img.shape == imgs[0].shape and np.allclose(img.affine, imgs[0].affine, atol=1e-6)
        assert np.allclose(img.header.get_zooms(), (2.0, 2.0, 2.0))
    # the tissue demo's grids: case 0 RAS, the others reoriented, the odd ones oblique
    affine = imgs[0].affine
    assert "".join(nib.aff2axcodes(affine)) == case["grid"]["orientation"]
    assert (case["grid"]["orientation"] == "RAS") == (index == 0)
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    off_axis = float(np.sort(np.abs(directions), axis=0)[:2].max())  # largest component off each axis's main one
    if index % 2:
        assert 2.0 <= case["grid"]["oblique_degrees"] <= 7.0 and off_axis > np.sin(np.radians(1.0))
    else:
        assert case["grid"]["oblique_degrees"] == 0.0 and off_axis < 1e-6
    assert all(a.dtype == np.float32 for a in images) and seg.dtype == np.uint8
    brain = images[0] > 0
    for a in images:  # skull-stripped: every channel is > 0 exactly in the brain, 0 elsewhere
        np.testing.assert_array_equal(a > 0, brain)
    assert 0.1 < brain.mean() < 0.5  # an oblique grid holds more background
    assert set(np.unique(seg)) <= {0, 1, 2, 4}
    tumour = seg > 0
    assert tumour.any() and not (tumour & ~brain).any()  # the tumour lies inside the brain
    core = np.isin(seg, (1, 4))
    assert core.sum() > 5 and (seg == 2).sum() > core.sum() * 0.3
    shell = ndimage.binary_dilation(core) & ~core
    assert np.mean(seg[shell] == 2) > 0.8  # oedema around the core
    necrosis = seg == 1
    if necrosis.any() and (seg == 4).any():  # necrosis inside an enhancing rim
        ring = ndimage.binary_dilation(necrosis) & ~necrosis
        assert np.mean(seg[ring] == 4) > 0.85
    # contrasts, against the tumour's own surroundings (each sequence has its own bias field and gamma)
    t1, t1ce, t2, flair = images
    around = brain & ndimage.binary_dilation(tumour, iterations=4) & ~ndimage.binary_dilation(tumour, iterations=1)
    oedema = ndimage.binary_erosion(seg == 2)
    assert flair[oedema].mean() > 1.1 * flair[around].mean()
    if (seg == 4).any():
        assert t1ce[seg == 4].mean() > 1.25 * t1ce[oedema].mean()
    if necrosis.any() and (seg == 4).any():  # necrosis: dark inside the bright rim on T1ce
        assert t1ce[necrosis].mean() < 0.8 * t1ce[seg == 4].mean()
    elif necrosis.any():  # a core without enhancement: darker than the oedema on T1, bright on FLAIR
        assert t1[necrosis].mean() < t1[oedema].mean() and flair[necrosis].mean() > flair[around].mean()


def test_five_cases_hold_every_kind_with_its_labels(sets):
    root = sets["brats2021"]
    meta = manifest_of(root)
    segs = [brats2021_case(root, f"BraTS2021_{i:05d}", "test" if i == 4 else "train")[1] for i in range(5)]
    assert sorted(c["kind"] for c in meta["cases"]) == sorted(KINDS)
    for case, seg in zip(meta["cases"], segs):
        values = set(np.unique(seg).tolist()) - {0}
        kind = case["kind"]
        if kind == "solid":
            assert values == {2, 4}
        elif kind == "non_enhancing":
            assert values == {1, 2} and not case["enhancing"]
        elif kind in ("thin_rim", "thick_rim"):
            assert values == {1, 2, 4} and case["necrosis"]
            # the rim's thickness: enhancing voxels per voxel of the core's surface (about 1 voxel when thin)
            core = np.isin(seg, (1, 4))
            surface = np.count_nonzero(core & ~ndimage.binary_erosion(core))
            thickness = np.count_nonzero(seg == 4) / surface
            assert thickness < 1.3 if kind == "thin_rim" else thickness > 1.5
        else:  # multifocal: separate cores
            assert len(case["foci"]) >= 2 and ndimage.label(np.isin(seg, (1, 4)), np.ones((3, 3, 3)))[1] >= 2
        assert case["volume_mm3"]["enhancing"] == pytest.approx((seg == 4).sum() * 8.0)
    centres = [np.argwhere(s > 0).mean(axis=0) for s in segs]
    sizes = [int(np.isin(s, (1, 4)).sum()) for s in segs]
    assert max(sizes) > 3 * min(sizes)
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]) > 3  # voxels


def test_each_sequence_has_its_own_acquisition_and_each_case_its_own_intensities(sets):
    cases = manifest_of(sets["brats2021"])["cases"]
    for case in cases:
        acq = case["acquisition"]
        assert list(acq) == ["t1", "t1ce", "t2", "flair"]
        for key in ("bias_ratio", "gamma", "scale", "offset"):
            assert len({a[key] for a in acq.values()}) == 4, key  # four sequences, four draws
    ratios = [a["bias_ratio"] for c in cases for a in c["acquisition"].values()]
    assert max(ratios) > 1.8 and min(ratios) < 1.5
    oedema_flair = [c["intensity"]["oedema"][3] for c in cases]
    assert len(set(oedema_flair)) == len(cases)
    # on the files: the brain's median differs by the drawn scale and offset, sequence by sequence
    images, seg, _ = brats2021_case(sets["brats2021"], "BraTS2021_00000")
    brain = images[0] > 0
    minima = [float(a[brain].min()) for a in images]
    for low, acq in zip(minima, cases[0]["acquisition"].values()):
        assert low >= acq["offset"]


def test_same_seed_same_files_and_rerun_replaces_the_set(tmp_path):
    a = make_tumour_dataset(tmp_path / "a", n=2, n_test=1, seed=9, spacing=(3, 3, 3), verbose=False)
    b = make_tumour_dataset(tmp_path / "b", n=2, n_test=1, seed=9, spacing=(3, 3, 3), verbose=False)
    c = make_tumour_dataset(tmp_path / "c", n=2, n_test=1, seed=10, spacing=(3, 3, 3), verbose=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    assert len(files) == 4 * 2 + 2 and files == sorted(p.relative_to(b) for p in b.rglob("*.nii.gz"))
    for f in files:
        np.testing.assert_array_equal(load(a / f)[0], load(b / f)[0])
    assert not np.array_equal(load(a / files[0])[0], load(c / files[0])[0])
    assert np.allclose(nib.load(str(a / files[0])).header.get_zooms(), (3, 3, 3))
    # writing again into a tumour demo folder replaces it (no stale case left); a foreign folder is refused
    make_tumour_dataset(a, n=3, n_test=1, seed=9, spacing=(3, 3, 3), verbose=False, layout="brats2023")
    assert not list(a.rglob("BraTS2021*")) and len(list((a / "train").iterdir())) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(BrainsegError, match="not a brainseg tumour demo"):
        make_tumour_dataset(tmp_path / "mine", n=2)
