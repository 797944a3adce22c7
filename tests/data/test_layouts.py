"""Training-set discovery (``discover_dataset``) on real folders of tiny NIfTI files: MSD, BraTS and plain layouts and their refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainseg.data.cases import Case, DiscoveryError
from brainseg.data.inputs import discover_inputs
from brainseg.data.layouts import discover_dataset
from brainseg.io.images import read_channels, read_label
from tests.data.conftest import V2, brats, error_of, msd, scan, write_json


def test_msd_v2(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"b": 1, "a": 1}, {"c": 1}, meta=V2)
    # Ignored: hidden files (incl. macOS ._ files), non-image files, sub-folders.
    scan(root / "imagesTr" / ".z_0000.nii.gz")
    scan(root / "imagesTr" / "._a_0000.nii.gz")
    scan(root / "labelsTr" / ".a.nii.gz")
    (root / "imagesTr" / "notes.txt").write_text("x")
    (root / "imagesTr" / "sub").mkdir()
    ds = discover_dataset(root)
    assert ds.layout == "msd"
    assert ds.root == root
    assert ds.channels == ("T1",)
    assert ds.labels == {0: "background", 1: "CSF", 2: "GM"}
    assert [c.case_id for c in ds.train] == ["a", "b"]
    assert ds.train[0] == Case("a", (root / "imagesTr" / "a_0000.nii.gz",), root / "labelsTr" / "a.nii.gz")
    assert ds.test == [Case("c", (root / "imagesTs" / "c_0000.nii.gz",), None)]
    # The paths are real, readable scans.
    data, _ = read_channels(ds.train[1].images)
    assert data.shape == (1, 4, 4, 4)
    assert read_label(ds.train[1].label)[0].max() == 2


def test_msd_old_style_two_channels_with_test_labels(tmp_path: Path) -> None:
    meta = {
        "modality": {"1": "T1w", "0": "FLAIR"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
    }
    root = msd(tmp_path / "ds", {"x": 2, "y": 2}, {"t": 2}, meta=meta, labels_ts=True)
    ds = discover_dataset(root)
    assert ds.channels == ("FLAIR", "T1w")
    assert ds.labels == {0: "background", 1: "edema", 2: "tumour"}
    assert ds.train[0].images == (root / "imagesTr/x_0000.nii.gz", root / "imagesTr/x_0001.nii.gz")
    assert ds.test == [
        Case("t", (root / "imagesTs/t_0000.nii.gz", root / "imagesTs/t_0001.nii.gz"), root / "labelsTs/t.nii.gz")
    ]


def test_msd_channel_order_is_numeric_not_creation_order(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_json(root / "dataset.json", {"channel_names": {"0": "a", "1": "b", "2": "c"}})
    for c in (2, 0, 1):
        scan(root / "imagesTr" / f"k_{c:04d}.nii.gz")
    scan(root / "labelsTr" / "k.nii.gz")
    (case,) = discover_dataset(root).train
    assert [p.name for p in case.images] == ["k_0000.nii.gz", "k_0001.nii.gz", "k_0002.nii.gz"]


def test_msd_without_dataset_json(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"s1": 2, "s2": 2})
    ds = discover_dataset(root)
    assert ds.layout == "msd"
    assert ds.channels == ("0000", "0001")
    assert ds.labels == {}
    assert [c.case_id for c in ds.train] == ["s1", "s2"]
    assert ds.test == []


def test_msd_file_ending_nii(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_json(root / "dataset.json", {**V2, "file_ending": ".nii"})
    scan(root / "imagesTr/a_0000.nii")
    scan(root / "labelsTr/a.nii")
    assert discover_dataset(root).train[0].label == root / "labelsTr/a.nii"
    scan(root / "imagesTr/b_0000.nii.gz")
    scan(root / "labelsTr/b.nii.gz")
    msg = error_of(discover_dataset, root)
    assert "imagesTr/b_0000.nii.gz" in msg and "file_ending .nii" in msg


def test_brats_classic(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    brats(root, "BraTS2021_00002")
    brats(root, "BraTS2021_00000")
    brats(root, "BraTS2021_00001", seg=False)
    (root / "name_mapping.csv").write_text("a,b\n")
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("x")
    ds = discover_dataset(root)
    assert ds.layout == "brats"
    assert ds.channels == ("t1", "t1ce", "t2", "flair")
    assert ds.labels == {}
    assert [c.case_id for c in ds.train] == ["BraTS2021_00000", "BraTS2021_00002"]
    case = ds.train[0]
    assert [p.name for p in case.images] == [
        "BraTS2021_00000_t1.nii.gz",
        "BraTS2021_00000_t1ce.nii.gz",
        "BraTS2021_00000_t2.nii.gz",
        "BraTS2021_00000_flair.nii.gz",
    ]
    assert case.label == root / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    assert [(c.case_id, c.label) for c in ds.test] == [("BraTS2021_00001", None)]


def test_brats_2023(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    brats(root, "BraTS-GLI-00001-000", style="2023")
    brats(root, "BraTS-GLI-00000-000", style="2023")
    ds = discover_dataset(root)
    assert ds.channels == ("t1n", "t1c", "t2w", "t2f")
    assert [p.name for p in ds.train[0].images] == [
        "BraTS-GLI-00000-000-t1n.nii.gz",
        "BraTS-GLI-00000-000-t1c.nii.gz",
        "BraTS-GLI-00000-000-t2w.nii.gz",
        "BraTS-GLI-00000-000-t2f.nii.gz",
    ]
    assert ds.train[0].label.name == "BraTS-GLI-00000-000-seg.nii.gz"


def test_plain_same_names(tmp_path: Path) -> None:
    root = tmp_path / "p"
    for cid in ("sub-02", "sub-01"):
        scan(root / "images" / f"{cid}.nii.gz")
        scan(root / "labels" / f"{cid}.nii.gz")
    (root / "images" / "Thumbs.db").write_text("x")
    ds = discover_dataset(root)
    assert ds.layout == "plain"
    assert ds.channels == ("0000",)
    assert ds.test == []
    assert ds.train == [
        Case(c, (root / "images" / f"{c}.nii.gz",), root / "labels" / f"{c}.nii.gz") for c in ("sub-01", "sub-02")
    ]


def test_plain_with_channel_suffixes(tmp_path: Path) -> None:
    root = tmp_path / "p"
    scan(root / "images/x_0000.nii.gz")
    scan(root / "images/x_0001.nii.gz")
    scan(root / "labels/x.nii.gz")
    ds = discover_dataset(root)
    assert ds.channels == ("0000", "0001")
    assert ds.train == [
        Case("x", (root / "images/x_0000.nii.gz", root / "images/x_0001.nii.gz"), root / "labels/x.nii.gz")
    ]


def test_plain_exact_name_wins_over_channel_suffix(tmp_path: Path) -> None:
    root = tmp_path / "p"
    scan(root / "images/scan_0001.nii.gz")
    scan(root / "labels/scan_0001.nii.gz")
    (case,) = discover_dataset(root).train
    assert case.case_id == "scan_0001"


def test_unmatched_image(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"a": 1}, meta=V2)
    scan(root / "imagesTr/orphan_0000.nii.gz")
    msg = error_of(discover_dataset, root)
    assert "imagesTr/orphan_0000.nii.gz" in msg and "no label" in msg and "labelsTr/orphan.nii.gz" in msg


def test_label_without_image(tmp_path: Path) -> None:
    root = tmp_path / "p"
    scan(root / "images/a.nii.gz")
    scan(root / "labels/a.nii.gz")
    scan(root / "labels/ghost.nii.gz")
    msg = error_of(discover_dataset, root)
    assert "labels/ghost.nii.gz" in msg and "label without an image" in msg
    assert "'a'" not in msg


def test_unmatched_test_image_when_labels_ts_exists(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"a": 1}, {"t1": 1, "t2": 1}, meta=V2, labels_ts=True)
    (root / "labelsTs/t2.nii.gz").unlink()
    msg = error_of(discover_dataset, root)
    assert "imagesTs/t2_0000.nii.gz" in msg and "labelsTs/t2.nii.gz" in msg


def test_channel_gap(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"good": 3})
    scan(root / "imagesTr/gap_0000.nii.gz")
    scan(root / "imagesTr/gap_0002.nii.gz")
    scan(root / "labelsTr/gap.nii.gz")
    msg = error_of(discover_dataset, root)
    assert "'gap'" in msg and "gap_0001" in msg
    assert "'good'" not in msg


def test_fewer_channels_than_dataset_json(tmp_path: Path) -> None:
    meta = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "x": 1}}
    root = msd(tmp_path / "ds", {"a": 2, "b": 1}, meta=meta)
    msg = error_of(discover_dataset, root)
    assert "'b'" in msg and "b_0001" in msg and "dataset.json lists 2 channels" in msg


def test_more_channels_than_dataset_json(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"a": 2}, meta=V2)
    msg = error_of(discover_dataset, root)
    assert "imagesTr/a_0001.nii.gz" in msg and "unexpected channel" in msg


def test_brats_missing_flair(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    brats(root, "ok")
    brats(root, "incomplete", skip=("flair",))
    msg = error_of(discover_dataset, root)
    assert "'incomplete'" in msg and "missing flair" in msg and "'ok'" not in msg


def test_brats_unrecognised_file_and_mixed_styles(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    brats(root, "c1")
    brats(root, "c2", style="2023")
    scan(root / "c1" / "W39_1998.09.19_Segm.nii")  # the famous misnamed BraTS 2020 file
    msg = error_of(discover_dataset, root)
    assert "c1/W39_1998.09.19_Segm.nii" in msg and "not a BraTS file name" in msg
    assert "c2" in msg and "mix" in msg


def test_duplicate_ids(tmp_path: Path) -> None:
    root = tmp_path / "p"
    scan(root / "images/a.nii")
    scan(root / "images/a.nii.gz")
    scan(root / "labels/a.nii.gz")
    msg = error_of(discover_dataset, root)
    assert "duplicate case id 'a'" in msg and "images/a.nii " in msg and "images/a.nii.gz" in msg


def test_duplicate_channel_and_label_in_msd(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"a": 1})
    scan(root / "imagesTr/a_0000.nii")
    scan(root / "labelsTr/a.nii")
    msg = error_of(discover_dataset, root)
    assert "duplicate case id 'a' channel _0000" in msg
    assert "duplicate label id 'a'" in msg and "labelsTr/a.nii " in msg


NO_LAYOUT = ": no recognised data set layout (expected dataset.json with imagesTr/ and labelsTr/"


@pytest.mark.parametrize(
    "make, expected",
    [
        ("nothing", NO_LAYOUT),
        ("empty_msd", ": imagesTr/: no images found (expected ID_0000.nii.gz, ...): the data set is empty"),
        ("empty_plain", ": images/: no images found: the data set is empty"),
        ("only_docs", NO_LAYOUT),
    ],
)
def test_empty_data_set(tmp_path: Path, make: str, expected: str) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    if make == "empty_msd":
        msd(root, {}, meta=V2)
    elif make == "empty_plain":
        (root / "images").mkdir()
        (root / "labels").mkdir()
    elif make == "only_docs":
        (root / "README.md").write_text("x")
        (root / "sub").mkdir()
    msg = error_of(discover_dataset, root)
    assert msg.startswith(str(root) + expected), msg


def test_missing_root_and_file_root(tmp_path: Path) -> None:
    assert "not found" in error_of(discover_dataset, tmp_path / "nope")
    f = scan(tmp_path / "x.nii.gz")
    assert "not a folder" in error_of(discover_dataset, f)


def test_brats_without_any_segmentation(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    brats(root, "a", seg=False)
    assert "no case has a segmentation" in error_of(discover_dataset, root)


def test_all_problems_reported_together(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"a": 1}, meta={"channel_names": {"0": "T1"}, "labels": {"x": [1]}})
    scan(root / "imagesTr/lonely_0000.nii.gz")
    scan(root / "labelsTr/ghost.nii.gz")
    with pytest.raises(DiscoveryError) as info:
        discover_dataset(root)
    assert len(info.value.problems) == 3
    msg = str(info.value)
    assert "3 problems" in msg and "regions_class_order" in msg and "lonely" in msg and "ghost" in msg
    assert "\n" not in msg  # the CLI prints errors as one line
    assert all(";" not in p for p in info.value.problems)  # "; " separates problems


def test_unsafe_ids_from_file_names(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"ok": 1})
    scan(root / "imagesTr/_0000.nii.gz")  # empty case id
    scan(root / "imagesTr/a\\b_0000.nii.gz")  # backslash: a path on Windows
    msg = error_of(discover_dataset, root)
    assert "imagesTr/_0000.nii.gz: case id '' is empty" in msg
    assert "contains a path separator" in msg and "a\\\\b" in msg
    with pytest.raises(DiscoveryError, match="is empty"):
        discover_inputs([root / "imagesTr" / "_0000.nii.gz"])
