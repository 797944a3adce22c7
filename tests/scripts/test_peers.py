"""nnU-Net v2 side by side (``python -m scripts.experiments.peers``): the raw layout nnU-Net reads is the
demo data's training cases byte for byte with the dataset.json nnU-Net wants, the budget stops a run
where it says and anneals its learning rate over it, the nnU-Net side imports neither brainseg nor
anything outside the standard library and nnU-Net, the table reads the scores of real masks right, and
(``slow``, only where ``make peers-env`` has built ``.venv-peers``) the whole comparison runs.

The data are the session's shared demo data set (conftest.py: ``brainseg demo-data --n 4``, 3 training
subjects and 1 held out) and small NIfTI files written here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.evaluate.metrics import dice
from scripts.experiments.peers import report as report_mod
from scripts.experiments.peers import run as run_mod
from scripts.experiments.peers.nnunet_ext import peers_budget
from scripts.experiments.peers.raw_layout import dataset_folder_name, nnunet_env, to_nnunet_raw

REPO = Path(__file__).resolve().parents[2]
PEERS_VENV = REPO / ".venv-peers"
EXT = REPO / "scripts" / "experiments" / "peers" / "nnunet_ext"
DEMO_LABELS = {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}


# --------------------------------------------------------------------------- the raw layout


def test_raw_layout_holds_the_training_cases_unchanged_with_nnunets_dataset_json(demo_data: Path, tmp_path: Path):
    raw = tmp_path / "nnUNet_raw"
    meta = to_nnunet_raw(demo_data, raw, 961, "BrainsegDemo")
    folder = raw / "Dataset961_BrainsegDemo"
    assert json.loads((folder / "dataset.json").read_text()) == meta
    assert meta["channel_names"] == {"0": "T1"} and meta["labels"] == DEMO_LABELS
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    source = json.loads((demo_data / "dataset.json").read_text())
    ids = sorted(Path(t["label"]).name.removesuffix(".nii.gz") for t in source["training"])
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{i}_0000.nii.gz" for i in ids]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{i}.nii.gz" for i in ids]
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]  # no test cases
    for cid in ids:
        pairs = [
            (demo_data / "imagesTr" / f"{cid}_0000.nii.gz", folder / "imagesTr" / f"{cid}_0000.nii.gz"),
            (demo_data / "labelsTr" / f"{cid}.nii.gz", folder / "labelsTr" / f"{cid}.nii.gz"),
        ]
        for src, dst in pairs:
            assert dst.read_bytes() == src.read_bytes()  # header, affine, codes and voxels as they were
            a, b = nib.load(str(src)), nib.load(str(dst))
            assert b.shape == a.shape and np.array_equal(b.affine, a.affine)
            assert int(b.header["sform_code"]) == int(a.header["sform_code"])
            assert int(b.header["qform_code"]) == int(a.header["qform_code"])
        image = nib.load(str(folder / "imagesTr" / f"{cid}_0000.nii.gz"))
        label = nib.load(str(folder / "labelsTr" / f"{cid}.nii.gz"))
        assert image.shape == label.shape and np.array_equal(image.affine, label.affine)  # what nnU-Net verifies
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= set(DEMO_LABELS.values())


def test_a_second_conversion_starts_afresh(demo_data: Path, tmp_path: Path):
    raw = tmp_path / "nnUNet_raw"
    to_nnunet_raw(demo_data, raw, 7, "Demo")
    stale = raw / "Dataset007_Demo" / "imagesTr" / "old_0000.nii.gz"
    stale.write_bytes(b"left over")
    to_nnunet_raw(demo_data, raw, 7, "Demo")
    assert not stale.exists() and len(list((raw / "Dataset007_Demo" / "imagesTr").iterdir())) == 3


def _msd(root: Path, labels: dict[str, int], suffix: str = ".nii.gz") -> Path:
    """A one-case MSD data set of small real NIfTI files."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[2:6, 2:6, 2:6] = max(labels.values())
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), affine), str(root / "imagesTr" / f"a_0000{suffix}"))
    nib.save(nib.Nifti1Image(seg, affine), str(root / "labelsTr" / f"a{suffix}"))
    meta = {"channel_names": {"0": "T1"}, "labels": labels, "numTraining": 1, "file_ending": suffix}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_what_nnunet_cannot_read_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="consecutive"):
        to_nnunet_raw(_msd(tmp_path / "gap", {"background": 0, "a": 1, "c": 3}), tmp_path / "raw")
    with pytest.raises(ValueError, match="nii.gz"):
        to_nnunet_raw(_msd(tmp_path / "plain", {"background": 0, "a": 1}, ".nii"), tmp_path / "raw")
    meta = to_nnunet_raw(_msd(tmp_path / "ok", {"background": 0, "a": 1}), tmp_path / "raw", 5, "Ok")
    assert meta["labels"] == {"background": 0, "a": 1} and meta["numTraining"] == 1
    assert dataset_folder_name(5, "Ok") == "Dataset005_Ok" and dataset_folder_name(961, "A-b_1") == "Dataset961_A-b_1"
    for bad in [(0, "A"), (1000, "A"), (5, "has space"), (5, "")]:
        with pytest.raises(ValueError):
            dataset_folder_name(*bad)


def test_nnunets_folders_and_workers_stay_under_out_and_within_the_cores(tmp_path: Path):
    assert nnunet_env(tmp_path) == {
        "nnUNet_raw": str(tmp_path / "nnUNet_raw"),
        "nnUNet_preprocessed": str(tmp_path / "nnUNet_preprocessed"),
        "nnUNet_results": str(tmp_path / "nnUNet_results"),
    }
    assert run_mod.worker_limits(2) == {
        "nnUNet_n_proc_DA": 1,
        "nnUNet_def_n_proc": 2,
        "torch_threads": 2,
        "predict_npp": 1,
        "predict_nps": 1,
    }
    assert run_mod.worker_limits(1)["nnUNet_n_proc_DA"] == 1 and run_mod.worker_limits(8)["nnUNet_n_proc_DA"] == 7
    env = run_mod.nnunet_environment(tmp_path, run_mod.worker_limits(2), 1.5)
    assert env[peers_budget.BUDGET_ENV] == "1.5" and env[peers_budget.THREADS_ENV] == "2"
    assert env["nnUNet_n_proc_DA"] == "1" and env["nnUNet_def_n_proc"] == "2"
    assert (Path(env["nnUNet_extTrainer"]) / f"{run_mod.TRAINER}.py").is_file()
    settings = peers_budget.settings_from_env(env)  # what the trainer reads back from that environment
    assert settings == {"seconds": 90.0, "iterations_per_epoch": 10, "threads": 2, "final_validation": False}


# --------------------------------------------------------------------------- the budget


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def iterations_until_stop(budget_s: float, iteration_s: float, cap: int = 10**6) -> tuple[int, float]:
    clock = Clock()
    budget = peers_budget.Budget(budget_s, cap, clock=clock)
    budget.start()
    while True:
        clock.now += iteration_s
        if budget.step_done():
            return budget.iterations, budget.elapsed()


def test_a_run_stops_as_near_its_budget_as_whole_iterations_allow():
    assert iterations_until_stop(60.0, 10.0) == (6, 60.0)
    # 25-s iterations and 60 s: stopping at 50 s is 10 s short, a third would end 15 s over.
    assert iterations_until_stop(60.0, 25.0) == (2, 50.0)
    # 35-s iterations: a second would end 10 s over, stopping at 35 s would leave it 25 s short.
    assert iterations_until_stop(60.0, 35.0) == (2, 70.0)
    assert iterations_until_stop(60.0, 500.0) == (1, 500.0)  # at least one iteration
    assert iterations_until_stop(0.0, 1.0) == (1, 1.0)
    assert iterations_until_stop(3600.0, 1.0, cap=7) == (7, 7.0)  # nnU-Net's iteration total caps it


def test_the_learning_rate_anneals_over_the_budget_as_nnunets_poly_does_over_its_epochs():
    assert peers_budget.poly_lr(0.01, 0.0) == 0.01
    assert peers_budget.poly_lr(0.01, 1.0) == 0.0 == peers_budget.poly_lr(0.01, 1.5)
    assert peers_budget.poly_lr(0.01, 0.5) == pytest.approx(0.01 * 0.5**0.9)
    assert peers_budget.poly_lr(0.01, -1.0) == 0.01
    clock = Clock()
    budget = peers_budget.Budget(60.0, 1000, clock=clock)
    budget.start()
    assert budget.progress() == 0.0
    clock.now += 15.0
    assert budget.progress() == pytest.approx(0.25)  # by the clock: 0 of 1000 iterations done
    for _ in range(500):
        budget.iterations += 1
    assert budget.progress() == pytest.approx(0.5)  # by the iterations when they run ahead of the clock
    clock.now += 60.0
    assert budget.progress() == 1.0
    with pytest.raises(RuntimeError):
        peers_budget.Budget(1.0).elapsed()  # not started
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            peers_budget.Budget(bad)


def test_epochs_and_the_trainers_settings():
    assert peers_budget.NNUNET_TOTAL_ITERATIONS == 250_000
    assert peers_budget.epochs_for(250_000, 10) == 25_000 and peers_budget.epochs_for(25, 10) == 3
    with pytest.raises(ValueError):
        peers_budget.epochs_for(10, 0)
    env = {peers_budget.BUDGET_ENV: "0.5", peers_budget.ITERATIONS_ENV: "3", peers_budget.FINAL_VALIDATION_ENV: "1"}
    assert peers_budget.settings_from_env(env) == {
        "seconds": 30.0,
        "iterations_per_epoch": 3,
        "threads": None,
        "final_validation": True,
    }
    for bad in ({}, {peers_budget.BUDGET_ENV: "ten"}, {peers_budget.BUDGET_ENV: "-1"}):
        with pytest.raises(ValueError, match=peers_budget.BUDGET_ENV):
            peers_budget.settings_from_env(bad)
    with pytest.raises(ValueError):
        peers_budget.settings_from_env({peers_budget.BUDGET_ENV: "1", peers_budget.ITERATIONS_ENV: "0"})


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return names


def test_the_nnunet_side_imports_neither_brainseg_nor_this_repository():
    """nnU-Net imports these files inside .venv-peers, where brainseg is not installed."""
    budget = _imports(EXT / "peers_budget.py")
    assert budget - {"__future__"} <= set(sys.stdlib_module_names), budget
    trainer = _imports(EXT / "nnUNetTrainerBudget.py")
    assert {"nnunetv2", "torch", "peers_budget"} <= trainer
    assert not trainer & {"brainseg", "scripts", "monai", "tests"}
    assert trainer - {"__future__", "nnunetv2", "torch", "peers_budget"} <= set(sys.stdlib_module_names)
    assert sorted(p.name for p in EXT.glob("*.py")) == ["__init__.py", "nnUNetTrainerBudget.py", "peers_budget.py"]


# --------------------------------------------------------------------------- scores and the table


def _write_like(label_file: Path, data: np.ndarray, out: Path) -> None:
    ref = nib.load(str(label_file))
    nib.save(nib.Nifti1Image(data.astype(np.uint8), ref.affine, ref.header), str(out))


def test_the_table_reads_the_scores_of_real_masks(demo_data: Path, tmp_path: Path):
    """Planted masks scored by ``brainseg evaluate`` (run for real): the labels themselves (Dice 1) as
    nnU-Net's, white matter relabelled grey as brainseg's; the table's cells are those scores."""
    images, labels = demo_data / "imagesTs", demo_data / "labelsTs"
    sets = {"demo_heldout": (images, labels), "shifted": (images, labels)}  # the same scans twice, for the test
    (cid,) = [p.name.removesuffix(".nii.gz") for p in labels.glob("*.nii.gz")]
    truth = np.asarray(nib.load(str(labels / f"{cid}.nii.gz")).dataobj)
    for pipeline, data in (("nnunet", truth), ("brainseg", np.where(truth == 3, 2, truth))):
        for key in sets:
            folder = tmp_path / "masks" / pipeline / key
            folder.mkdir(parents=True)
            _write_like(labels / f"{cid}.nii.gz", data, folder / f"{cid}.nii.gz")
    results = {k: run_mod.score(k, sets, tmp_path) for k in ("nnunet", "brainseg")}
    n_grey, n_white = int((truth == 2).sum()), int((truth == 3).sum())
    grey = 2 * n_grey / (2 * n_grey + n_white)
    assert results["nnunet"]["demo_heldout"]["dice"] == {"CSF": 1.0, "grey matter": 1.0, "white matter": 1.0}
    assert results["brainseg"]["shifted"]["dice"] == pytest.approx(
        {"CSF": 1.0, "grey matter": grey, "white matter": 0.0}, abs=1e-6
    )
    assert all(r[s]["geometry"]["ok"] for r in results.values() for s in sets)

    report = {
        "settings": {"minutes": 1.0, "cases": {"demo_heldout": 1, "shifted": 1}, "brainseg_mirror": False},
        "results": results,
        "training": {
            "brainseg": {"steps": 120, "minutes": 1.0, "note": "configs/demo.yaml, 120 steps in 1.0 min"},
            "nnunet": {
                **{"steps": 3, "minutes": 1.1, "iterations": 3, "epochs": 1, "iterations_per_epoch": 10},
                **{"seconds": 66.0, "budget_seconds": 60.0, "final_lr": 1e-4, "threads": 2, "n_proc_DA": 1},
                **{"configuration": "3d_fullres", "fold": "all", "trainer": "nnUNetTrainerBudget", "batch_size": 2},
                "plan": {"network": "PlainConvUNet", "patch_size": [112, 112, 160], "spacing": [1.76, 1.72, 1.48]},
            },
        },
        "seconds_per_case": {"nnunet": {"demo_heldout": 30.04, "shifted": 41.0}, "brainseg": {"demo_heldout": 2.5}},
        "cpu_seconds_per_case": {"nnunet": {"demo_heldout": 52.4, "shifted": 70.6}},
    }
    header = report_mod.header_cells(report)
    rows = report_mod.rows(report)
    assert [r[0] for r in rows] == [
        "brainseg",
        "nnU-Net v2 3d_fullres `--disable_tta`",
    ]  # table order, scored rows only
    assert all(len(r) == len(header) for r in rows)
    brainseg, nnunet = (dict(zip(header, r)) for r in rows)
    assert brainseg["held-out (1) grey"] == f"{grey:.3f}" and brainseg["held-out (1) white"] == "0.000"
    assert brainseg["shifted mean"] == f"**{(1 + grey) / 3:.3f}**"
    assert nnunet["held-out mean"] == "**1.000**" and nnunet["shifted (1) CSF"] == "1.000"
    assert (
        nnunet["s/case held-out (wall / CPU)"] == "30.0 / 52" and nnunet["s/case shifted (wall / CPU)"] == "41.0 / 71"
    )
    assert brainseg["s/case held-out (wall / CPU)"] == "2.5" and brainseg["s/case shifted (wall / CPU)"] == "-"
    assert brainseg["training"] == "120 steps, 1.0 min"
    assert nnunet["training"] == "3 iterations, 1.1 min" and nnunet["mirroring"] == "no"
    assert brainseg["masks on the scans' grids"] == "yes"
    assert report_mod.best(report) == [
        "held-out: best mean Dice nnU-Net v2 3d_fullres `--disable_tta` (1.000), fastest brainseg (2.5 s/case)",
        "shifted: best mean Dice nnU-Net v2 3d_fullres `--disable_tta` (1.000), fastest nnU-Net v2 3d_fullres "
        "`--disable_tta` (41.0 s/case)",
    ]
    table, *notes = report_mod.tables(report).split("\n\n")
    assert table.startswith("| pipeline | mirroring | training | held-out (1) CSF |")
    assert len(table.splitlines()) == 4  # header, separator, two rows: ONE table
    assert any("3 iterations (1 epochs of <= 10) in 1.1 min of the 1-min budget" in n for n in notes)
    assert not any("mirrored predictions" in n for n in notes)  # not said when the run does not say it skipped them
    report["settings"]["nnunet_tta"] = False
    assert any("mirrored predictions (its default, 8 passes) were not run" in n for n in report_mod.notes(report))
    results["nnunet"]["shifted"]["geometry"]["ok"] = False
    assert dict(zip(header, report_mod.rows(report)[1]))["masks on the scans' grids"] == "**NO**"


def test_plan_summary_reads_nnunets_plans():
    plans = {
        "transpose_forward": [2, 0, 1],
        "configurations": {
            "3d_fullres": {
                "batch_size": 2,
                "patch_size": [112, 112, 160],
                "spacing": [1.76435399, 1.72154701, 1.48292530],
                "normalization_schemes": ["ZScoreNormalization"],
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 5,
                        "features_per_stage": [32, 64, 128, 256, 320],
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    },
                },
            }
        },
    }
    assert report_mod.plan_summary(plans, "3d_fullres") == {
        "network": "PlainConvUNet",
        "features_per_stage": [32, 64, 128, 256, 320],
        "n_stages": 5,
        "norm": "InstanceNorm3d",
        "patch_size": [112, 112, 160],
        "batch_size": 2,
        "spacing": [1.7644, 1.7215, 1.4829],
        "normalization": ["ZScoreNormalization"],
        "transpose_forward": [2, 0, 1],
    }


def test_without_the_peers_environment_the_run_says_how_to_build_it(tmp_path: Path):
    res = subprocess.run(
        [sys.executable, "-m", "scripts.experiments.peers", "--out", str(tmp_path / "o"), "--quick"]
        + ["--peers-venv", str(tmp_path / "no_venv")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert res.returncode != 0 and "make peers-env" in res.stderr
    assert not (tmp_path / "o").exists()  # nothing trained or written before the check


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.skipif(
    not (PEERS_VENV / "bin" / "nnUNetv2_train").exists(),
    reason=".venv-peers not built (make peers-env: several GB; CI does not build it)",
)
def test_the_comparison_runs_end_to_end(tmp_path: Path, demo_data_copy: Path):
    """--quick with 3-second budgets and one shifted scan: every pipeline's report cell is what its masks
    give, every nnU-Net mask lies on its scan's grid, and nnU-Net's training says what it reached."""
    out, extra_json = tmp_path / "run", tmp_path / "extra.json"
    cmd = [sys.executable, "-m", "scripts.experiments.peers", "--quick", "--out", str(out)]
    cmd += ["--data", str(demo_data_copy), "--minutes", "0.05", "--n-shifted", "1", "--json", str(extra_json)]
    res = subprocess.run([*cmd, "--nnunet-tta"], capture_output=True, text=True, timeout=3000, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert json.loads(extra_json.read_text()) == report
    assert report["command"].startswith("python -m scripts.experiments.peers --quick --out")
    assert set(report["results"]) == {"brainseg", "brainseg_tta", "monai", "nnunet_tta", "nnunet"}
    assert report["peers_env"]["nnunetv2"] and report["workers"]["nnUNet_n_proc_DA"] >= 1
    nn = report["training"]["nnunet"]
    assert nn["iterations"] >= 1 and nn["trainer"] == "nnUNetTrainerBudget" and nn["fold"] == "all"
    assert Path(nn["checkpoint"]).is_file() and nn["plan"]["network"]
    md = (out / "report.md").read_text()
    assert "| nnU-Net v2 3d_fullres |" in md and "| MONAI reference |" in md and "nnUNet_n_proc_DA" in md
    sets = {
        "demo_heldout": (demo_data_copy / "imagesTs", demo_data_copy / "labelsTs"),
        "shifted": (out / "shifted" / "images", out / "shifted" / "labels"),
    }
    names = {1: "CSF", 2: "grey matter", 3: "white matter"}
    for pipeline, results in report["results"].items():
        assert report["training"][pipeline]["steps"] >= 1
        for key, (images, labels) in sets.items():
            r = results[key]
            assert r["n_cases"] == 1 and not r["failed"] and r["geometry"]["ok"], (pipeline, key, r["geometry"])
            assert report["seconds_per_case"][pipeline][key] > 0 and report["cpu_seconds_per_case"][pipeline][key] > 0
            for scan in images.glob("*_0000.nii.gz"):
                cid = scan.name.removesuffix("_0000.nii.gz")
                src, mask_img = nib.load(str(scan)), nib.load(str(out / "masks" / pipeline / key / f"{cid}.nii.gz"))
                assert mask_img.shape == src.shape and np.allclose(mask_img.affine, src.affine, atol=1e-5)
                mask = np.asarray(mask_img.dataobj)
                ref = np.asarray(nib.load(str(labels / f"{cid}.nii.gz")).dataobj)
                expected = {n: dice(mask == v, ref == v) for v, n in names.items()}
                assert r["per_case"][cid] == pytest.approx({**expected, "mean": np.mean(list(expected.values()))})
