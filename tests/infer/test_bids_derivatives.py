"""``brainseg predict --bids-derivatives``: a real BIDS tree in, BIDS derivatives out.

The tree has two subjects (sessions for one), a T1w + FLAIR model (conftest's tiny two-channel
checkpoint), an ``acq-`` variant and junk that must be ignored; ``predict`` runs once through the
CLI into the tree's own ``derivatives/brainseg``. The masks lie in their source scans' grids, the
sidecars say what the card and the files say, and the BIDS validator (``bids-validator-deno``, when
installed) finds no error in what was written. Real NIfTI files in tmp folders, no mocks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.errors import BrainsegError
from brainseg.infer.batch import predict
from tests.conftest import SEQ_AFFINE, brainseg, error_lines, sequences

CHANNELS = ("T1", "FLAIR")
DERIV = "derivatives/brainseg"
#: case id -> the folder (under the root) of its scans
CASES = {
    "sub-01_ses-pre": "sub-01/ses-pre/anat",
    "sub-01_ses-post_acq-fast": "sub-01/ses-post/anat",
    "sub-01_ses-post_acq-slow": "sub-01/ses-post/anat",
    "sub-02": "sub-02/anat",
}
OBLIQUE = np.array(
    [[1.4, -0.3, 0.0, -20.0], [0.3, 1.4, 0.0, 12.5], [0.0, 0.0, 1.6, -7.0], [0.0, 0.0, 0.0, 1.0]],
)


def save_scan(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI scan with millimetre units (as scanners write them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def write_bids(root: Path) -> dict[str, tuple[Path, ...]]:
    """The test tree; returns each expected case's source scans (T1w, FLAIR)."""
    seq = sequences()
    t1, flair = seq["T1w"], seq["FLAIR"]
    small = (slice(None), slice(2, None), slice(1, -1))  # another shape for sub-02
    grids = {
        "sub-01/ses-pre/anat": (SEQ_AFFINE, ()),
        "sub-01/ses-post/anat": (SEQ_AFFINE, ()),
        "sub-02/anat": (OBLIQUE, small),
    }
    names = {
        "sub-01/ses-pre/anat": ["sub-01_ses-pre_T1w", "sub-01_ses-pre_FLAIR"],
        "sub-01/ses-post/anat": [
            "sub-01_ses-post_acq-fast_T1w",
            "sub-01_ses-post_acq-slow_T1w",
            "sub-01_ses-post_FLAIR",
        ],
        "sub-02/anat": ["sub-02_T1w", "sub-02_FLAIR"],
    }
    for folder, stems in names.items():
        affine, crop = grids[folder]
        for stem in stems:
            data = (flair if stem.endswith("FLAIR") else t1)[crop or (slice(None),)]
            save_scan(root / folder / f"{stem}.nii.gz", data, affine)
    # junk: sidecars, text, a hidden scan, a non-BIDS name, an unused contrast, other data types, derivatives
    (root / "sub-02/anat/sub-02_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3}))
    (root / "sub-02/anat/notes.txt").write_text("scanner hiccup")
    save_scan(root / "sub-02/anat/.sub-02_T2w.nii.gz", t1, SEQ_AFFINE)
    save_scan(root / "sub-02/anat/sub-02_T1w_backup.nii.gz", t1, SEQ_AFFINE)
    save_scan(root / "sub-02/anat/sub-02_T2w.nii.gz", t1, SEQ_AFFINE)
    save_scan(root / "sub-02/func/sub-02_task-rest_bold.nii.gz", t1, SEQ_AFFINE)
    save_scan(root / "derivatives/other/sub-02/anat/sub-02_desc-x_T1w.nii.gz", t1, SEQ_AFFINE)
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.10.0"}))
    t1_of = {
        "sub-01_ses-pre": "sub-01_ses-pre_T1w",
        "sub-01_ses-post_acq-fast": "sub-01_ses-post_acq-fast_T1w",
        "sub-01_ses-post_acq-slow": "sub-01_ses-post_acq-slow_T1w",
        "sub-02": "sub-02_T1w",
    }
    flair_of = {cid: cid.split("_acq-")[0] + "_FLAIR" for cid in CASES}  # the post session's FLAIR is shared
    return {
        cid: (root / CASES[cid] / f"{t1_of[cid]}.nii.gz", root / CASES[cid] / f"{flair_of[cid]}.nii.gz")
        for cid in CASES
    }


@pytest.fixture(scope="module")
def model(tiny_checkpoint_factory: Callable[..., Path]) -> Path:
    return tiny_checkpoint_factory(channels=CHANNELS, seed=7)


@pytest.fixture(scope="module")
def run(model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tree, its sources per case, and one ``brainseg predict --bids-derivatives`` through the CLI."""
    root = tmp_path_factory.mktemp("bids") / "ds"
    sources = write_bids(root)
    out = root / DERIV  # inside the raw data set, where BIDS puts derivatives
    proc = brainseg(
        "predict", "--model", str(model), "--input", str(root), "--output", str(out), "--bids-derivatives",
        "--device", "cpu", "--save-probabilities",
    )  # fmt: skip
    return root, sources, out, proc


def stem(cid: str) -> str:
    return f"{cid}_desc-brainseg"


def test_derivative_files_geometry_and_sidecars(run, model: Path) -> None:
    root, sources, out, proc = run
    assert proc.returncode == 0, proc.stderr
    assert "4 written, 0 skipped, 0 failed" in proc.stdout
    expected = {"dataset_description.json", "README", ".bidsignore", "brainseg_run.json"}
    for cid, folder in CASES.items():
        expected |= {
            f"{folder}/{stem(cid)}_{s}"
            for s in ("dseg.nii.gz", "dseg.tsv", "dseg.json", "volumes.tsv", "probseg.nii.gz", "probseg.json")
        }
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == expected  # nothing else: no flat masks, no volumes.csv, no temporary files
    assert sorted(p.name for p in (root / "derivatives").iterdir()) == ["brainseg", "other"]

    labels = {0: "background", 1: "a", 2: "b"}
    for cid, folder in CASES.items():
        base = out / folder / stem(cid)
        mask_img = nib.load(str(base.with_name(base.name + "_dseg.nii.gz")))
        src = nib.load(str(sources[cid][0]))
        assert mask_img.shape == src.shape
        np.testing.assert_allclose(mask_img.affine, src.affine, atol=1e-5)
        mask = np.asarray(mask_img.dataobj)
        assert set(np.unique(mask)) <= set(labels) and len(np.unique(mask)) > 1
        probs = nib.load(str(base.with_name(base.name + "_probseg.nii.gz")))
        assert probs.shape == (*src.shape, 3)
        np.testing.assert_allclose(probs.affine, src.affine, atol=1e-5)
        probseg = json.loads(base.with_name(base.name + "_probseg.json").read_text())
        assert probseg["Channels"] == {"kind": "classes", "channels": list(labels.values())}

        with open(base.with_name(base.name + "_dseg.tsv"), newline="") as fh:
            assert list(csv.reader(fh, delimiter="\t")) == [
                ["index", "name"],
                *([str(k), v] for k, v in labels.items()),
            ]
        voxel = abs(np.linalg.det(src.affine[:3, :3]))
        with open(base.with_name(base.name + "_volumes.tsv"), newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        assert [(r["index"], r["name"]) for r in rows] == [("1", "a"), ("2", "b")]
        for r in rows:
            assert float(r["volume_mm3"]) == pytest.approx(np.count_nonzero(mask == int(r["index"])) * voxel, abs=1e-3)

        side = json.loads(base.with_name(base.name + "_dseg.json").read_text())
        uris = [f"bids:raw:{p.relative_to(root).as_posix()}" for p in sources[cid]]
        assert side["Sources"] == uris and side["SpatialReference"] == uris[0]
        assert side["Background"] in ("zero", "noise") and side["OutOfDistribution"] == []

    desc = json.loads((out / "dataset_description.json").read_text())
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"] == "1.10.0" and desc["Name"]
    assert desc["GeneratedBy"] == [
        {"Name": "brainseg", "Version": "0.1.0", "Description": f"model checkpoint {model.name}, SHA-256 {sha}"}
    ]
    assert desc["BrainsegModel"] == {"Checkpoint": model.name, "SHA256": sha}
    assert desc["DatasetLinks"] == {"raw": root.resolve().as_uri()}
    assert (
        out / ".bidsignore"
    ).read_text() == "*_desc-brainseg_volumes.tsv\n*_preview.png\n*_seg.dcm\nbrainseg_run.json\n"


def validator() -> str | None:
    beside = Path(sys.executable).with_name("bids-validator-deno")
    return str(beside) if beside.is_file() else shutil.which("bids-validator-deno")


def test_the_bids_validator_finds_no_error(run) -> None:
    exe = validator()
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    _, _, out, proc = run
    assert proc.returncode == 0, proc.stderr
    done = subprocess.run([exe, str(out), "--format", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [], errors
    assert done.returncode == 0, done.stderr


def test_a_failed_case_leaves_no_files_and_the_others_finish(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_bids(root)
    out = tmp_path / "out"
    blocked = out / "sub-02/anat" / f"{stem('sub-02')}_dseg.nii.gz"
    blocked.mkdir(parents=True)  # the mask cannot be renamed over a folder: the last write of the case fails
    result = predict(model, [root], out, device="cpu", bids_derivatives=True)
    assert result.summary.written == ["sub-01_ses-post_acq-fast", "sub-01_ses-post_acq-slow", "sub-01_ses-pre"]
    assert [c for c, _ in result.summary.failed] == ["sub-02"]
    assert sorted(p.name for p in (out / "sub-02/anat").iterdir()) == [blocked.name]  # no sidecars, no temp files
    assert result.volumes_csv is None and not (out / "volumes.csv").exists()

    blocked.rmdir()
    again = predict(model, [root], out, device="cpu", bids_derivatives=True)
    assert again.summary.written == ["sub-02"] and len(again.summary.skipped) == 3


def test_refusals(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    save_scan(root / "sub-01/anat/sub-01_T2w.nii.gz", np.ones((8, 8, 8)), SEQ_AFFINE)
    proc = brainseg("predict", "--model", str(model), "--input", str(root), "--output", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        f"brainseg: error: {root}: a BIDS folder with no scans for the model's channels ['T1', 'FLAIR'] "
        "(looked for sub-*/[ses-*/]anat/*_T1w.nii[.gz], *_FLAIR.nii[.gz])"
    ]
    flat = tmp_path / "flat"
    for i in range(2):
        save_scan(flat / f"c_{i:04d}.nii.gz", np.ones((8, 8, 8)), SEQ_AFFINE)
    with pytest.raises(BrainsegError, match=r"c_0000.nii.gz: --bids-derivatives needs BIDS input"):
        predict(model, [flat], tmp_path / "o2", device="cpu", bids_derivatives=True)
