"""BIDS input (``discover_inputs`` over a BIDS root): the model's contrasts chosen by suffix, cases per
subject/session and entity variant, everything else in the tree ignored. Real NIfTI files in tmp folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from brainseg.data.bids import Contrast, contrast_of, derivative_path, is_bids_root, parse_entities
from brainseg.data.cases import Case
from brainseg.data.inputs import discover_inputs
from tests.data.conftest import error_of, scan


def bids_tree(root: Path, files: list[str], description: bool = True) -> Path:
    """Scans at ``root/<file>`` for each relative path (``.nii.gz``/``.nii``; any other name a text file)."""
    for rel in files:
        path = root / rel
        if rel.endswith((".nii", ".nii.gz")):
            scan(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
    if description:
        (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    return root


JUNK = [
    "participants.tsv",
    "README",
    "sub-01/anat/sub-01_T1w.json",  # a sidecar
    "sub-01/anat/notes.txt",
    "sub-01/anat/.sub-01_FLAIR.nii.gz",  # hidden
    "sub-01/anat/sub-01_T1w_old.nii.gz",  # not a BIDS name
    "sub-01/anat/sub-01_T1w (copy).nii.gz",
    "sub-01/anat/sub-02_T1w.nii.gz",  # another subject's name in sub-01's folder
    "sub-01/anat/sub-01_T2w.nii.gz",  # a contrast the model does not take
    "sub-01/anat/sub-01_ce-gd_T1w.nii.gz",  # contrast-enhanced: not the model's T1
    "sub-01/anat/sub-01_T1w.mha",  # not NIfTI
    "sub-01/func/sub-01_task-rest_bold.nii.gz",
    "sub-01/dwi/sub-01_T1w.nii.gz",  # not in anat/
    "derivatives/other/sub-01/anat/sub-01_desc-x_T1w.nii.gz",
    "sourcedata/sub-01/anat/sub-01_FLAIR.nii.gz",
    "sub-09/func/sub-09_task-rest_bold.nii.gz",  # a subject without anat
]


def test_multichannel_cases_by_subject_session_and_variant(tmp_path: Path) -> None:
    root = bids_tree(
        tmp_path / "bids",
        [
            "sub-01/anat/sub-01_FLAIR.nii.gz",
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-02/ses-01/anat/sub-02_ses-01_acq-mprage_T1w.nii",  # the acq only on T1w: one case
            "sub-02/ses-01/anat/sub-02_ses-01_FLAIR.nii.gz",
            "sub-02/ses-02/anat/sub-02_ses-02_acq-fast_T1w.nii.gz",  # two T1w: two cases sharing the FLAIR
            "sub-02/ses-02/anat/sub-02_ses-02_acq-slow_T1w.nii.gz",
            "sub-02/ses-02/anat/sub-02_ses-02_FLAIR.nii.gz",
            "sub-03/anat/sub-03_run-1_FLAIR.nii.gz",  # runs on both: paired by run
            "sub-03/anat/sub-03_run-1_T1w.nii.gz",
            "sub-03/anat/sub-03_run-2_FLAIR.nii.gz",
            "sub-03/anat/sub-03_run-2_T1w.nii.gz",
            *JUNK,
        ],
    )
    a1, a2 = root / "sub-02/ses-01/anat", root / "sub-02/ses-02/anat"
    cases = discover_inputs([root], channel_names=("T1", "flair"))
    assert cases == [
        Case("sub-01", (root / "sub-01/anat/sub-01_T1w.nii.gz", root / "sub-01/anat/sub-01_FLAIR.nii.gz")),
        Case("sub-02_ses-01", (a1 / "sub-02_ses-01_acq-mprage_T1w.nii", a1 / "sub-02_ses-01_FLAIR.nii.gz")),
        Case("sub-02_ses-02_acq-fast", (a2 / "sub-02_ses-02_acq-fast_T1w.nii.gz", a2 / "sub-02_ses-02_FLAIR.nii.gz")),
        Case("sub-02_ses-02_acq-slow", (a2 / "sub-02_ses-02_acq-slow_T1w.nii.gz", a2 / "sub-02_ses-02_FLAIR.nii.gz")),
        Case("sub-03_run-1", tuple(root / f"sub-03/anat/sub-03_run-1_{s}.nii.gz" for s in ("T1w", "FLAIR"))),
        Case("sub-03_run-2", tuple(root / f"sub-03/anat/sub-03_run-2_{s}.nii.gz" for s in ("T1w", "FLAIR"))),
    ]
    # the model's order, not the files': FLAIR first
    flair_first = discover_inputs([root], channel_names=("FLAIR", "T1w"))
    assert flair_first[0].images == tuple(reversed(cases[0].images))


def test_single_channel_variants_and_contrast_enhanced(tmp_path: Path) -> None:
    root = bids_tree(
        tmp_path / "bids",
        [
            "sub-01/anat/sub-01_acq-a_T1w.nii.gz",
            "sub-01/anat/sub-01_acq-b_run-2_T1w.nii.gz",
            "sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz",
            "sub-02/ses-x/anat/sub-02_ses-x_acq-a_T1w.nii.gz",
        ],
        description=False,  # sub-* folders with anat/ make it a BIDS root too
    )
    assert is_bids_root(root)
    t1 = discover_inputs([root], channel_names=("T1w",))
    assert [c.case_id for c in t1] == ["sub-01_acq-a", "sub-01_acq-b_run-2", "sub-02_ses-x_acq-a"]
    t1ce = discover_inputs([root], channel_names=("t1ce",))
    assert t1ce == [Case("sub-01_ce-gadolinium", (root / "sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz",))]


def test_junk_only_and_logged_mismatch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = bids_tree(tmp_path / "bids", ["sub-01/anat/sub-01_FLAIR.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz", *JUNK])
    with caplog.at_level(logging.WARNING, logger="brainseg.data.bids"):
        assert [c.case_id for c in discover_inputs([root], channel_names=("T1", "FLAIR"))] == ["sub-01"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{root / 'sub-01/anat/sub-02_T1w.nii.gz'}: its sub-/ses- entities do not match its folder, so it is ignored"
    ]


def test_refusals_name_the_root_and_the_contrasts(tmp_path: Path) -> None:
    root = bids_tree(tmp_path / "bids", ["sub-01/anat/sub-01_T2w.nii.gz", "sub-02/anat/sub-02_T2w.nii.gz"])
    assert error_of(discover_inputs, [root], channel_names=("T1", "FLAIR")) == (
        f"{root}: a BIDS folder with no scans for the model's channels ['T1', 'FLAIR'] "
        "(looked for sub-*/[ses-*/]anat/*_T1w.nii[.gz], *_FLAIR.nii[.gz])"
    )
    msg = error_of(discover_inputs, [root], channel_names=("CT",))
    assert msg.startswith(f"{root}: a BIDS folder, but the model's channel(s) 'CT' map to no BIDS anat suffix (known: ")
    assert "\n" not in msg


def test_missing_channel_and_unpaired_variant_are_problems(tmp_path: Path) -> None:
    root = bids_tree(
        tmp_path / "bids",
        [
            "sub-01/anat/sub-01_T1w.nii.gz",  # no FLAIR
            "sub-02/anat/sub-02_run-1_T1w.nii.gz",
            "sub-02/anat/sub-02_run-2_T1w.nii.gz",
            "sub-02/anat/sub-02_run-1_FLAIR.nii.gz",
            "sub-02/anat/sub-02_run-3_FLAIR.nii.gz",
            "sub-03/anat/sub-03_run-1_T1w.nii.gz",  # a lone run-1 T1w is not paired with a run-2 FLAIR
            "sub-03/anat/sub-03_run-2_FLAIR.nii.gz",
            "sub-03/anat/sub-03_run-3_FLAIR.nii.gz",
        ],
    )
    msg = error_of(discover_inputs, [root], channel_names=("T1", "FLAIR"))
    a1, a2, a3 = root / "sub-01/anat", root / "sub-02/anat", root / "sub-03/anat"
    assert msg == (
        "5 problems: "
        f"{a1}: sub-01 has no scan for the model's channel(s) 'FLAIR' (looked for *_T1w.nii[.gz], *_FLAIR.nii[.gz]); "
        f"{a2}: case 'sub-02_run-2' has no 'FLAIR' scan with the entities run-2 "
        "(found sub-02_run-1_FLAIR.nii.gz, sub-02_run-3_FLAIR.nii.gz); "
        f"{a2}: case 'sub-02_run-3' has no 'T1' scan with the entities run-3 "
        "(found sub-02_run-1_T1w.nii.gz, sub-02_run-2_T1w.nii.gz); "
        f"{a3}: case 'sub-03_run-2' has no 'T1' scan with the entities run-2 (found sub-03_run-1_T1w.nii.gz); "
        f"{a3}: case 'sub-03_run-3' has no 'T1' scan with the entities run-3 (found sub-03_run-1_T1w.nii.gz)"
    )


def test_plain_folders_are_not_bids(tmp_path: Path) -> None:
    scan(tmp_path / "plain" / "sub-01_T1w.nii.gz")  # a flat folder of BIDS-named files keeps the flat rules
    (tmp_path / "plain" / "sub-x").mkdir()
    assert not is_bids_root(tmp_path / "plain")
    assert discover_inputs([tmp_path / "plain"]) == [Case("sub-01_T1w", (tmp_path / "plain" / "sub-01_T1w.nii.gz",))]


@pytest.mark.parametrize(
    ("name", "contrast"),
    [
        ("T1", Contrast("T1w")),
        ("t1w", Contrast("T1w")),
        ("MPRAGE", Contrast("T1w")),
        ("T1Gd", Contrast("T1w", enhanced=True)),
        ("t1ce", Contrast("T1w", enhanced=True)),
        ("t1c", Contrast("T1w", enhanced=True)),
        ("T2", Contrast("T2w")),
        ("flair", Contrast("FLAIR")),
        ("T2-FLAIR", Contrast("FLAIR")),
        ("PD", Contrast("PDw")),
        ("PDw", Contrast("PDw")),
        ("T2star", Contrast("T2starw")),
        ("angio", Contrast("angio")),
        ("CT", None),
        ("ADC", None),
    ],
)
def test_contrast_of(name: str, contrast: Contrast | None) -> None:
    assert contrast_of(name) == contrast


def test_names_and_derivative_paths(tmp_path: Path) -> None:
    assert parse_entities("sub-01_ses-2_acq-x_run-1_T1w") == (
        (("sub", "01"), ("ses", "2"), ("acq", "x"), ("run", "1")),
        "T1w",
    )
    for bad in ("sub-01", "ses-1_sub-01_T1w", "sub-01_sub-02_T1w", "sub-01_T1w_old", "sub_01_T1w", "sub-0.1_T1w"):
        assert parse_entities(bad) is None, bad
    out = tmp_path / "out"
    assert derivative_path(out, "sub-01_ses-02_acq-x_run-1", "dseg", ".nii.gz") == (
        out / "sub-01/ses-02/anat/sub-01_ses-02_acq-x_run-1_desc-brainseg_dseg.nii.gz"
    )
    assert (
        derivative_path(out, "sub-01_desc-preproc", "dseg", ".tsv") == out / "sub-01/anat/sub-01_desc-brainseg_dseg.tsv"
    )
    with pytest.raises(ValueError, match="not named by BIDS entities"):
        derivative_path(out, "case7", "dseg", ".nii.gz")
