"""The tumour demo data sets: BraTS 2021 / 2023 and nnU-Net (msd) folders on real files,
read back by the discovery that training and prediction use.
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
from brainseg.errors import BrainsegError
from brainseg.labels.regions import BRATS_2021, BRATS_2023

SEED = 3


CONTRASTS_2021 = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tumour")
    return {
        "brats2021": make_tumour_dataset(root / "b21", n=4, n_test=1, seed=SEED, layout="brats2021", verbose=False),
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
    assert [c.case_id for c in ds.train] == [f"BraTS2021_{i:05d}" for i in range(3)] and ds.test == []
    assert [p.name for p in ds.train[0].images] == [f"BraTS2021_00000_{c}.nii.gz" for c in CONTRASTS_2021]
    assert ds.train[0].label.name == "BraTS2021_00000_seg.nii.gz"
    held_out = discover_inputs([root / "test"])  # scans only, as BraTS's validation data
    assert [c.case_id for c in held_out] == ["BraTS2021_00003"] and len(held_out[0].images) == 4
    assert sorted(p.name for p in (root / "test_labels").iterdir()) == ["BraTS2021_00003.nii.gz"]
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
    seg, _ = load(case.label)
    assert set(np.unique(seg)) == {0, 1, 2, 3}  # enhancing tumour written as 3
    ref, _ = load(root / "test_labels" / "BraTS-GLI-00001-000.nii.gz")
    assert 4 not in np.unique(ref) and 3 in np.unique(ref)


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


@pytest.mark.parametrize("index", range(4))
def test_grids_brain_and_nested_tumour_labels(sets, index):
    root = sets["brats2021"]
    cid = f"BraTS2021_{index:05d}"
    images, seg, imgs = brats2021_case(root, cid, "test" if index == 3 else "train")
    for img in imgs:  # every file on one grid, 2 mm, RAS
        assert img.shape == imgs[0].shape and np.allclose(img.affine, imgs[0].affine, atol=1e-6)
        assert np.allclose(img.header.get_zooms(), (2.0, 2.0, 2.0))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert all(a.dtype == np.float32 for a in images) and seg.dtype == np.uint8
    brain = images[0] > 0
    for a in images:  # skull-stripped: every channel is > 0 exactly in the brain, 0 elsewhere
        np.testing.assert_array_equal(a > 0, brain)
    assert 0.15 < brain.mean() < 0.5
    assert set(np.unique(seg)) <= {0, 1, 2, 4}
    tumour = seg > 0
    assert tumour.any() and not (tumour & ~brain).any()  # the tumour lies inside the brain
    core = np.isin(seg, (1, 4))
    assert core.sum() > 20 and (seg == 2).sum() > core.sum() * 0.3
    shell = ndimage.binary_dilation(core) & ~core
    assert np.mean(seg[shell] == 2) > 0.85  # oedema around the core
    necrosis = seg == 1
    if necrosis.any() and (seg == 4).any():  # necrosis inside an enhancing rim
        ring = ndimage.binary_dilation(necrosis) & ~necrosis
        assert np.mean(seg[ring] == 4) > 0.9
        assert ndimage.label(necrosis)[1] <= 3
    # contrasts: the intensities relative to each channel's median in the brain
    t1, t1ce, t2, flair = (a / np.median(a[brain]) for a in images)
    normal = brain & ~ndimage.binary_dilation(tumour, iterations=2)
    oedema = ndimage.binary_erosion(seg == 2)
    assert flair[oedema].mean() > 1.3 * flair[normal].mean() and t2[oedema].mean() > 1.15 * t2[normal].mean()
    if (seg == 4).any():
        assert t1ce[seg == 4].mean() > 1.4 * t1ce[normal].mean() and t1ce[seg == 4].mean() > 1.5 * t1ce[oedema].mean()
    if necrosis.any() and (seg == 4).any():  # necrosis: dark inside the bright rim on T1ce, bright on T2
        assert t1ce[necrosis].mean() < 0.75 * t1ce[seg == 4].mean() and t2[necrosis].mean() > t2[normal].mean()
    elif necrosis.any():  # a core without enhancement: not bright on T1ce, bright on FLAIR
        assert t1ce[necrosis].mean() < t1ce[normal].mean() and flair[necrosis].mean() > 1.3 * flair[normal].mean()


def test_cases_vary_in_kind_size_and_place(sets):
    root = sets["brats2021"]
    segs = [brats2021_case(root, f"BraTS2021_{i:05d}", "test" if i == 3 else "train")[1] for i in range(4)]
    kinds = [tuple(sorted(set(np.unique(s)) - {0})) for s in segs]
    assert kinds[0] == (1, 2, 4) and kinds[1] == (2, 4) and kinds[2] == (1, 2)  # no necrosis; no enhancement
    sizes = [int((s > 0).sum()) for s in segs]
    centres = [np.argwhere(s > 0).mean(axis=0) for s in segs]
    assert max(sizes) > 1.5 * min(sizes)
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]) > 3  # voxels
    meta = json.loads((root / "brainseg-demo.json").read_text())
    assert [(c["necrosis"], c["enhancing"]) for c in meta["cases"]] == [
        (True, True),
        (False, True),
        (False, False),
        (True, True),
    ]
    for case, seg in zip(meta["cases"], segs):
        assert case["volume_mm3"]["enhancing"] == pytest.approx((seg == 4).sum() * 8.0)


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
