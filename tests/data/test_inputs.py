"""Prediction inputs (``discover_inputs``): scans, folders, MSD and BraTS roots grouped into cases, channels ordered by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainseg.data.cases import Case, DiscoveryError
from brainseg.data.inputs import discover_inputs
from tests.conftest import BRATS_2021_SEQUENCES, MSD_CHANNELS, SEQ_AFFINE, save_sequence, sequences
from tests.data.conftest import V2, brats, error_of, msd, scan


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


def test_discovery_orders_by_name_and_keeps_index_order_without_names(tmp_path):
    seq = sequences()
    d = tmp_path / "in"
    for i, s in enumerate(MSD_CHANNELS):
        save_sequence(d / f"a_{i:04d}.nii.gz", seq[s])
    # _000N files: index order whatever the names (nnU-Net's rule)
    (case,) = discover_inputs([d], channel_names=("T2w", "t1gd", "T1w", "FLAIR"))
    assert [p.name for p in case.images] == [f"a_{i:04d}.nii.gz" for i in range(4)]
    (case,) = discover_inputs([d], n_channels=4)
    assert [p.name for p in case.images] == [f"a_{i:04d}.nii.gz" for i in range(4)]
    # a one-channel model takes its sequence out of a BraTS folder
    for name, s in BRATS_2021_SEQUENCES.items():
        save_sequence(tmp_path / "b" / "B1" / f"B1_{name}.nii.gz", seq[s])
    (case,) = discover_inputs([tmp_path / "b"], channel_names=("T1w",))
    assert [p.name for p in case.images] == ["B1_t1.nii.gz"]
    with pytest.raises(DiscoveryError, match="the model's channel 'ADC'"):
        discover_inputs([tmp_path / "b"], channel_names=("ADC",))


def test_inputs_dicom_folders(tmp_path: Path) -> None:
    """A folder of DICOM files is one case per series (found by content, not by suffix): the
    folder's name for one series, description + UID for several; sub-folders each a folder."""
    pytest.importorskip("pydicom")
    from brainseg.io.dicom import DicomSeries
    from tests.conftest import write_dicom_series

    data = sequences()["T1w"][:, :, :6]
    one = tmp_path / "one"
    uid = write_dicom_series(one, data, SEQ_AFFINE)
    assert discover_inputs([one]) == [Case("one", (DicomSeries(one, uid, "T1 MPRAGE"),))]

    study = tmp_path / "root" / "study"
    t1 = write_dicom_series(study, data, SEQ_AFFINE, description="T1 MPRAGE", names=lambda k: f"a{k}")
    t2 = write_dicom_series(study, data, SEQ_AFFINE, description="T2 FLAIR", names=lambda k: f"b{k}")
    single = write_dicom_series(tmp_path / "root" / "sag", data, SEQ_AFFINE, description="x")
    cases = discover_inputs([tmp_path / "root"])
    assert [(c.case_id, c.images) for c in cases] == [
        ("T1_MPRAGE_" + t1, (DicomSeries(study, t1, "T1 MPRAGE"),)),
        ("T2_FLAIR_" + t2, (DicomSeries(study, t2, "T2 FLAIR"),)),
        ("sag", (DicomSeries(tmp_path / "root" / "sag", single, "x"),)),
    ]
    with pytest.raises(DiscoveryError, match=r"case 'one' is a single file but expected 2 channels"):
        discover_inputs([one], n_channels=2)
    with pytest.raises(DiscoveryError, match=r"IM0002: is one DICOM file; give the folder that holds its series"):
        discover_inputs([one / "IM0002"])
