"""Case discovery on real folders of tiny NIfTI files (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.data.brats import BRATS_2023, BRATS_CLASSIC
from brainseg.data.cases import Case, DiscoveryError, safe_case_id
from brainseg.data.inputs import discover_inputs
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.io.images import read_channels, read_label

_TEMPLATE: dict[str, bytes] = {}


def scan(path: Path) -> Path:
    """Write a valid 4x4x4 scan at ``path`` (.nii or .nii.gz), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    if ext not in _TEMPLATE:
        tmp = path.parent / f"template{ext}"
        nib.save(nib.Nifti1Image(np.arange(64, dtype=np.uint8).reshape(4, 4, 4) % 3, np.eye(4)), str(tmp))
        _TEMPLATE[ext] = tmp.read_bytes()
        tmp.unlink()
    path.write_bytes(_TEMPLATE[ext])
    return path


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def msd(
    root: Path,
    train: dict[str, int],
    test: dict[str, int] | None = None,
    meta: object | None = None,
    labels_ts: bool = False,
) -> Path:
    """An MSD / nnU-Net folder: case id -> number of channels."""
    if meta is not None:
        write_json(root / "dataset.json", meta)
    for cid, n in train.items():
        for c in range(n):
            scan(root / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
        scan(root / "labelsTr" / f"{cid}.nii.gz")
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for cid, n in (test or {}).items():
        for c in range(n):
            scan(root / "imagesTs" / f"{cid}_{c:04d}.nii.gz")
        if labels_ts:
            scan(root / "labelsTs" / f"{cid}.nii.gz")
    return root


V2 = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "CSF": 1, "GM": 2}, "file_ending": ".nii.gz"}


def brats(root: Path, cid: str, style: str = "classic", seg: bool = True, skip: tuple[str, ...] = ()) -> Path:
    names, sep = (BRATS_CLASSIC, "_") if style == "classic" else (BRATS_2023, "-")
    for name in names + (("seg",) if seg else ()):
        if name not in skip:
            scan(root / cid / f"{cid}{sep}{name}.nii.gz")
    return root / cid


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DiscoveryError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, BrainsegError)
    return str(info.value)


# ----------------------------------------------------------------------------- layouts


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


# ----------------------------------------------------------------------------- errors


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


@pytest.mark.parametrize("make", ["nothing", "empty_msd", "empty_plain", "only_docs"])
def test_empty_data_set(tmp_path: Path, make: str) -> None:
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
    assert str(root) in msg
    assert ("empty" in msg) or ("no recognised data set layout" in msg)


def test_missing_root_and_file_root(tmp_path: Path) -> None:
    assert "not found" in error_of(discover_dataset, tmp_path / "nope")
    f = scan(tmp_path / "x.nii.gz")
    assert "not a folder" in error_of(discover_dataset, f)


def test_brats_without_any_segmentation(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    brats(root, "a", seg=False)
    assert "no case has a segmentation" in error_of(discover_dataset, root)


BAD_JSON = [
    ("{not json", "not valid JSON"),
    ([1, 2], "top level must be a JSON object"),
    ({"labels": {"background": 0}}, '"channel_names" is missing'),
    ({"channel_names": ["T1"]}, '"channel_names" must be a mapping'),
    ({"channel_names": {}}, '"channel_names" is empty'),
    ({"channel_names": {"zero": "T1"}}, "'zero' is not a channel index"),
    ({"channel_names": {"0": "T1", "2": "T2"}}, "without gaps"),
    ({"channel_names": {"0": 7}}, "must have a non-empty name"),
    ({"modality": "FLAIR"}, '"modality" must be a mapping'),
    ({"channel_names": {"0": "T1"}, "labels": ["background", "tumour"]}, '"labels" must be a mapping'),
    ({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": 1.5}}, '"labels" has values of the wrong type'),
    ({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": "1"}}, '"labels" has values of the wrong type'),
    (
        {"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole tumor": [1, 2, 3]}},
        '"regions_class_order" is missing',
    ),
    ({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": 0}}, "value 0 is given to both"),
    ({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": -1}}, "negative value"),
    ({"channel_names": {"0": "T1"}, "labels": {"0": "background", "one": "x"}}, "'one' is not a label value"),
    ({"channel_names": {"0": "T1"}, "file_ending": ".png"}, '"file_ending" must be one of'),
    ({"channel_names": {"0": "T1"}, "file_ending": 3}, '"file_ending" must be one of'),
]


@pytest.mark.parametrize("content, expected", BAD_JSON, ids=[e for _, e in BAD_JSON])
def test_bad_dataset_json(tmp_path: Path, content: object, expected: str) -> None:
    root = msd(tmp_path / "ds", {"a": 1})
    text = content if isinstance(content, str) else json.dumps(content)
    (root / "dataset.json").write_text(text)
    msg = error_of(discover_dataset, root)
    assert "dataset.json" in msg and expected in msg


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


# ----------------------------------------------------------------------------- safe ids


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "a/b", "../x", "a\\b", "a\x00b", ".hidden", "/etc/passwd", "C:\\x", "C:x", "a\nb"]
)
def test_safe_case_id_rejects(bad: str) -> None:
    msg = error_of(safe_case_id, bad, "dataset.json training[3]")
    assert msg.startswith("dataset.json training[3]: case id")


@pytest.mark.parametrize("good", ["a", "sub-01", "BraTS2021_00000", "case.v2", "héllo", "x..y"])
def test_safe_case_id_accepts(good: str) -> None:
    assert safe_case_id(good, "src") == good


def test_unsafe_ids_from_file_names(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"ok": 1})
    scan(root / "imagesTr/_0000.nii.gz")  # empty case id
    scan(root / "imagesTr/a\\b_0000.nii.gz")  # backslash: a path on Windows
    msg = error_of(discover_dataset, root)
    assert "imagesTr/_0000.nii.gz: case id '' is empty" in msg
    assert "contains a path separator" in msg and "a\\\\b" in msg
    with pytest.raises(DiscoveryError, match="is empty"):
        discover_inputs([root / "imagesTr" / "_0000.nii.gz"])


# ----------------------------------------------------------------------------- discover_inputs


def test_inputs_folder_of_single_scans(tmp_path: Path) -> None:
    d = tmp_path / "in"
    for name in ("zeta.nii.gz", "alpha.nii", "sub-01_T1w.nii.gz"):
        scan(d / name)
    (d / "notes.txt").write_text("x")
    scan(d / ".hidden.nii.gz")
    cases = discover_inputs([d])
    assert [(c.case_id, c.images, c.label) for c in cases] == [
        ("alpha", (d / "alpha.nii",), None),
        ("sub-01_T1w", (d / "sub-01_T1w.nii.gz",), None),
        ("zeta", (d / "zeta.nii.gz",), None),
    ]


def test_inputs_single_files_grouped_by_channel_suffix(tmp_path: Path) -> None:
    a1 = scan(tmp_path / "x" / "a_0001.nii.gz")
    a0 = scan(tmp_path / "y" / "a_0000.nii.gz")
    cases = discover_inputs([a1, a0], n_channels=2)
    assert cases == [Case("a", (a0, a1))]
    b = scan(tmp_path / "b.nii.gz")
    assert discover_inputs([b, b]) == [Case("b", (b,))]  # the same file twice is one case


def test_inputs_folder_grouping(tmp_path: Path) -> None:
    d = tmp_path / "ts"
    for cid in ("p2", "p1"):
        for c in (1, 0):
            scan(d / f"{cid}_{c:04d}.nii.gz")
    cases = discover_inputs([d], channel_names=["FLAIR", "T1"])
    assert [c.case_id for c in cases] == ["p1", "p2"]
    assert cases[0].images == (d / "p1_0000.nii.gz", d / "p1_0001.nii.gz")


def test_inputs_msd_root(tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", {"tr1": 1}, {"ts1": 1, "ts2": 1}, meta=V2)
    assert [c.case_id for c in discover_inputs([root])] == ["ts1", "ts2"]
    root2 = msd(tmp_path / "ds2", {"tr1": 1, "tr2": 1}, meta=V2)
    cases = discover_inputs([root2])
    assert [c.case_id for c in cases] == ["tr1", "tr2"]
    assert all(c.label is None for c in cases)


def test_inputs_msd_root_with_region_based_json_still_predicts(tmp_path: Path) -> None:
    meta = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2]}}
    root = msd(tmp_path / "ds", {"a": 1}, {"t": 1}, meta=meta)
    assert [c.case_id for c in discover_inputs([root])] == ["t"]


def test_inputs_n_channels_mismatch(tmp_path: Path) -> None:
    d = tmp_path / "in"
    scan(d / "two_0000.nii.gz")
    scan(d / "two_0001.nii.gz")
    scan(d / "one.nii.gz")
    msg = error_of(discover_inputs, [d], n_channels=2)
    assert "one.nii.gz: case 'one' is a single file but expected 2 channels" in msg and "'two'" not in msg
    msg = error_of(discover_inputs, [d], n_channels=1)
    assert "two_0001.nii.gz" in msg and "'two'" in msg and "'one'" not in msg
    # Without n_channels the cases must still agree with each other.
    msg = error_of(discover_inputs, [d])
    assert "'one'" in msg and "other cases have 2 channels" in msg
    with pytest.raises(ValueError):
        discover_inputs([d], n_channels=3, channel_names=["a", "b"])


def test_inputs_missing_channel(tmp_path: Path) -> None:
    d = tmp_path / "in"
    scan(d / "c_0000.nii.gz")
    scan(d / "c_0002.nii.gz")
    msg = error_of(discover_inputs, [d], n_channels=3)
    assert "'c'" in msg and "c_0001" in msg


def test_inputs_brats_root_and_case_folder(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    brats(root, "B", seg=False)
    case_a = brats(root, "A")
    cases = discover_inputs([root], n_channels=4)
    assert [c.case_id for c in cases] == ["A", "B"]
    assert [p.name for p in cases[1].images] == ["B_t1.nii.gz", "B_t1ce.nii.gz", "B_t2.nii.gz", "B_flair.nii.gz"]
    assert cases[0].label is None
    # A single case folder; a model's channel names choose and order the modalities,
    # under either BraTS naming.
    (case,) = discover_inputs([case_a], channel_names=["flair", "t1"])
    assert case.case_id == "A"
    assert [p.name for p in case.images] == ["A_flair.nii.gz", "A_t1.nii.gz"]
    case23 = brats(tmp_path / "b23", "C", style="2023")
    (case,) = discover_inputs([case23], channel_names=["t1", "t1ce", "t2", "flair"])
    assert [p.name for p in case.images] == ["C-t1n.nii.gz", "C-t1c.nii.gz", "C-t2w.nii.gz", "C-t2f.nii.gz"]
    # A case missing a modality is named.
    brats(tmp_path / "b3", "D", skip=("t2",))
    msg = error_of(discover_inputs, [tmp_path / "b3"])
    assert "'D'" in msg and "missing t2" in msg


def test_inputs_flat_folder_with_modality_like_names_is_not_a_brats_case(tmp_path: Path) -> None:
    d = tmp_path / "in"
    scan(d / "sub01_t1.nii.gz")
    scan(d / "sub02_t1.nii.gz")
    assert [c.case_id for c in discover_inputs([d], n_channels=1)] == ["sub01_t1", "sub02_t1"]


def test_inputs_duplicate_ids_across_inputs(tmp_path: Path) -> None:
    a = scan(tmp_path / "one" / "scan.nii.gz")
    b = scan(tmp_path / "two" / "scan.nii")
    msg = error_of(discover_inputs, [tmp_path / "one", b])
    assert "'scan'" in msg and str(a) in msg and str(b) in msg and "collide" in msg


def test_inputs_bad_paths(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    (tmp_path / "empty").mkdir()
    msg = error_of(discover_inputs, [tmp_path / "missing.nii.gz", txt, tmp_path / "empty"])
    assert "missing.nii.gz: not found" in msg
    assert "notes.txt: not a recognised scan file" in msg
    assert "empty: no scans found" in msg
    assert "no input paths" in error_of(discover_inputs, [])
