"""Shared test fixtures: tiny real checkpoints (no training, no mocks) and one demo data set.

``tiny_checkpoint`` is a 1-channel, 3-class model card + weights saved exactly the way
a trained run saves them (:func:`brainseg.model.checkpoint.save_checkpoint`), so
inference tests can load it with ``--model PATH``. ``tiny_checkpoint_factory`` builds
variants (other channels, other labels, another seed).

``demo_data`` is the demo data set (``brainseg demo-data OUT --n 4``: 3 training and 1
held-out subject, seed 0), made once per session through the real CLI and shared by
every test that reads it; a test that writes into a data folder takes
``demo_data_copy`` (its own copy) instead.

Helpers that test files of more than one package share live here (import them as
``from tests.conftest import NAME``); a package's own live in its ``conftest.py``.

``slow`` marks the tests that train in a subprocess or under torchrun
(``make test-fast`` = ``pytest -m "not slow"``).

Under ``pytest -n N`` each worker and every process it starts compute on one thread
(``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``): N workers with torch's default of
one thread per core each would oversubscribe the cores.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.config import load_config
from brainseg.evaluate.per_label import METRICS_NAME
from brainseg.io.images import Geometry, write_image
from brainseg.model.card import ModelCard, Network, Normalization, package_versions
from brainseg.model.checkpoint import save_checkpoint
from brainseg.model.unet import UNet3D
from brainseg.preprocessing.preprocess import PREPROCESS_VERSION

REPO = Path(__file__).resolve().parents[1]


if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

TINY_LABELS = {"0": "background", "1": "a", "2": "b"}
TINY_SPACING = [1.5, 1.5, 1.5]
TINY_PATCH = [16, 16, 16]


def make_tiny_checkpoint(
    path: Path,
    channels: Sequence[str] = ("T1",),
    labels: dict[str, str] | None = None,
    seed: int = 5,
    **card_fields: Any,
) -> Path:
    """Save a randomly initialised UNet3D (levels=2, base_features=4) with a model card.

    ``card_fields`` replace the card's fields (``regions``: a region model, one output per
    region; ``normalization``, ``intensity``, ``class_offsets``, ...).

    The 1x1x1 head is scaled up (bias zeroed) so the untrained network's argmax varies
    across the volume instead of picking one class everywhere; tests of geometry
    and orientation then have structure to compare (with the default seed all three
    classes occur inside a small phantom head).
    """
    labels = dict(TINY_LABELS if labels is None else labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        outputs = len(card_fields["regions"]) if card_fields.get("regions") is not None else len(labels)
        model = UNet3D(in_channels=len(channels), num_classes=outputs, levels=2, base_features=4)
    with torch.no_grad():
        model.heads[0].weight.mul_(20.0)
        model.heads[0].bias.zero_()
    fields: dict[str, Any] = dict(
        network=Network.from_kwargs(model.hparams),
        labels={int(k): v for k, v in labels.items()},
        channels=tuple(channels),
        spacing=tuple(TINY_SPACING),
        patch_size=tuple(TINY_PATCH),
        normalization=Normalization(scheme="zscore", mask="foreground", crop_to_nonzero=True),
        preprocess_version=PREPROCESS_VERSION,
        config=load_config().to_dict(),
        versions=package_versions(),
    )
    card = ModelCard(**{**fields, **card_fields}).to_dict()
    return save_checkpoint(path, {"model": model.state_dict(), "card": card})


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``factory(channels=("T1",), labels=None, seed=5, **card_fields) -> Path`` of a saved tiny
    checkpoint (see :func:`make_tiny_checkpoint`)."""

    def factory(
        channels: Sequence[str] = ("T1",), labels: dict[str, str] | None = None, seed: int = 5, **card_fields: Any
    ) -> Path:
        folder = tmp_path_factory.mktemp("tiny_model")
        return make_tiny_checkpoint(folder / "checkpoint_final.pt", channels, labels, seed, **card_fields)

    return factory


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_factory: Callable[..., Path]) -> Path:
    """A 1-channel (T1), 3-class tiny checkpoint file (``checkpoint_final.pt``)."""
    return tiny_checkpoint_factory()


# ----------------------------------------------------------------------------- the shared demo data set

DEMO_N = 4  # subjects of the shared demo data set: 3 in imagesTr, 1 in imagesTs


@pytest.fixture(scope="session")
def demo_data_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """``brainseg demo-data OUT --n 4`` run once as a subprocess: (OUT, the finished process)."""
    pytest.importorskip("nilearn")
    out = tmp_path_factory.mktemp("demo") / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "brainseg", "demo-data", str(out), "--n", str(DEMO_N)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out, proc


@pytest.fixture(scope="session")
def demo_data(demo_data_run: tuple[Path, subprocess.CompletedProcess]) -> Path:
    """The shared demo data set (MSD layout). Read it only: writers take ``demo_data_copy``."""
    out, proc = demo_data_run
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def demo_data_copy(demo_data: Path, tmp_path: Path) -> Path:
    """A private copy of the shared demo data set, for a test that writes into it."""
    return Path(shutil.copytree(demo_data, tmp_path / "demo_data"))


# ----------------------------------------------------------------------------- shared helpers

MSD_CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")  # Task01_BrainTumour's dataset.json order


SEQ_SHAPE = (24, 24, 24)


SEQ_AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])  # the tiny model's spacing: no resampling


def sequences() -> dict[str, np.ndarray]:
    """One subject's four sequences: a head whose inner structures differ per sequence."""
    rng = np.random.default_rng(3)
    grid = np.indices(SEQ_SHAPE, dtype=np.float64)
    r = np.sqrt(sum((g - 11.5) ** 2 for g in grid))
    head = r < 10.0
    blob = np.sqrt((grid[0] - 8) ** 2 + (grid[1] - 14) ** 2 + (grid[2] - 12) ** 2) < 4.0
    base = 100.0 + 10.0 * rng.standard_normal(SEQ_SHAPE)
    out = {
        "FLAIR": base + 80.0 * blob,
        "T1w": base + 40.0 * (r < 6.0),
        "t1gd": base + 120.0 * (blob & (grid[2] > 12)),
        "T2w": 300.0 - base - 60.0 * (r < 6.0),
    }
    return {k: np.where(head, v, 0.0).astype(np.float32) for k, v in out.items()}


def save_sequence(path: Path, data: np.ndarray) -> Path:
    return write_image(path, data, Geometry(shape=data.shape, affine=SEQ_AFFINE))


# which sequence each BraTS name holds
BRATS_2021_SEQUENCES = {"t1": "T1w", "t1ce": "t1gd", "t2": "T2w", "flair": "FLAIR"}


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def brainseg(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainseg", *args], capture_output=True, text=True, timeout=timeout, env=env()
    )


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("brainseg: error:")]


def write_labels(path: Path, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(labels, dtype=np.int16), affine), str(path))
    return path


def read_metrics_csv(out_dir: Path) -> list[dict]:
    with open(out_dir / METRICS_NAME, newline="") as fh:
        return list(csv.DictReader(fh))


def cube_labels(shape=(16, 16, 16)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int16)
    labels[2:8, 2:8, 2:8] = 1
    labels[9:14, 9:14, 9:14] = 2
    return labels


@pytest.fixture(scope="session")
def subjects():
    """Demo subjects 0-2 of seed 11: 0 skull-stripped, 1 and 2 with noise over the field of view."""
    pytest.importorskip("nilearn")
    from brainseg.demo import template as mni
    from brainseg.demo import tissue as demo

    template = mni.load_template()
    brain = (template.t1 > 0).astype(np.float32)
    return [demo.make_subject(template, brain, 11, i) for i in range(3)]


CT_SPACING = [1.5, 1.5, 1.5]


CT_AFFINE = np.diag(CT_SPACING + [1.0])


CT_SHAPE = (48, 48, 40)


def save_ct(path: Path, data: np.ndarray) -> Path:
    return write_image(path, data, Geometry(shape=data.shape, affine=CT_AFFINE))


def ct_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU volume, body mask, the exact-0 HU block) of a CT-like scan: integer HU as CT stores them."""
    rng = np.random.default_rng(seed)
    grid = np.indices(CT_SHAPE, dtype=np.float64)
    centre = [(s - 1) / 2 for s in CT_SHAPE]
    r = np.sqrt(sum(((g - c) / (0.3 * s)) ** 2 for g, c, s in zip(grid, centre, CT_SHAPE)))
    body = r <= 1.0
    hu = np.full(CT_SHAPE, -1000.0) + 5.0 * rng.standard_normal(CT_SHAPE)
    hu[body] = 40.0 + 10.0 * rng.standard_normal(int(body.sum()))
    hu[body & (r > 0.85)] = 1000.0  # a bone shell
    block = np.zeros(CT_SHAPE, bool)
    block[20:28, 20:28, 16:24] = True  # water-like tissue stored as exactly 0 HU
    hu[block] = 0.0
    return np.round(hu).astype(np.float32), body, block


def ct_dataset(root: Path, n: int = 2) -> Path:
    """An MSD folder of ``n`` CT-like cases labelled body (1) and the 0 HU block (2)."""
    for i in range(n):
        hu, body, block = ct_volume(seed=i)
        save_ct(root / "imagesTr" / f"c{i}_0000.nii.gz", hu)
        lab = np.zeros(CT_SHAPE, np.uint8)
        lab[body] = 1
        lab[block] = 2
        save_ct(root / "labelsTr" / f"c{i}.nii.gz", lab)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "body": 1, "water": 2}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


BRATS_VALUES = [0, 1, 2, 4]


TINY_REGION_TRAIN = [
    "--set",
    "train.patch_size=[16,16,16]",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.iters_per_epoch=2",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.val_every=1",
    "--set",
    "train.threads=1",
    "--set",
    "model.levels=2",
    "--set",
    "model.base_features=4",
    "--set",
    "model.deep_supervision=true",
    "--set",
    "data.target_spacing=[3,3,3]",
    "--set",
    "data.val_fraction=0.25",
    "--set",
    "infer.batch_windows=2",
    "--set",
    "postprocess.input_mask=restrict",
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainseg", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def tumour_label(shape, centre, radii) -> np.ndarray:
    """Nested spheres: oedema 2 (radius radii[0]) around necrosis 1 around enhancing tumour 4."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    label = np.zeros(shape, dtype=np.uint8)
    for radius, value in zip(radii, (2, 1, 4)):
        label[r <= radius] = value
    return label


NNUNET_REGIONS = {
    "channel_names": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
    "regions_class_order": [1, 2, 3],
}


MM_AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def save_1mm(path: Path, data: np.ndarray, affine: np.ndarray = MM_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine), str(path))
    return path


def msd_root(root: Path, meta: dict) -> Path:
    """An nnU-Net folder with one four-channel case and ``meta`` as dataset.json."""
    for i in range(4):
        save_1mm(root / "imagesTr" / f"a_000{i}.nii.gz", np.ones((4, 4, 4)))
    save_1mm(root / "labelsTr" / "a.nii.gz", np.zeros((4, 4, 4)))
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# ----------------------------------------------------------------------------- markers

#: The longest tests (whole scripts end to end, minutes each), run first: under ``pytest -n``
#: a long test that starts last keeps one worker busy after the others have finished.
LONGEST_FIRST = (
    "test_synth_contrast.py::test_the_quick_check_runs_end_to_end",
    "test_generalisation.py::test_the_check_runs_end_to_end",
    "test_skip_ablation.py::test_script_runs_end_to_end_on_tiny_settings",
    "test_distributed.py::test_resume_with_max_minutes_continues_the_budget_and_the_lr_schedule",
    "test_trainer.py::test_resume_after_a_kill_gives_the_same_losses_and_weights",
    "test_rules.py::test_train_without_config_plans_first",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.endswith(LONGEST_FIRST))  # stable: the rest keep their order


# ----------------------------------------------------------------------------- DICOM series

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom_series(
    folder: Path,
    data: np.ndarray,
    affine: np.ndarray,
    description: str = "T1 MPRAGE",
    series_uid: str | None = None,
    study_uid: str | None = None,
    skip: Sequence[int] = (),
    drop: Sequence[str] = (),
    names: Callable[[int], str] = lambda k: f"IM{k:04d}",
) -> str:
    """Write ``data`` (x, y, z; whole numbers) as an MR series, one file per slice ``k`` of
    axis 2, at the RAS ``affine`` (any rotation, any spacing; its third column along the
    slices' normal). Files get no suffix (``IM0000``...); slices in ``skip`` are left out and
    the attributes in ``drop`` removed. Returns the SeriesInstanceUID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]

    def ds_text(values) -> list[str]:
        return [f"{float(v):.10g}" for v in values]

    pixels = np.asarray(data).astype(np.int16)
    for k in range(pixels.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "MR"
        ds.SeriesDescription = description
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P001", "20000101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "test"
        ds.ImageOrientationPatient = ds_text([*row_cos, *col_cos])
        ds.ImagePositionPatient = ds_text((lps @ [0.0, 0.0, float(k), 1.0])[:3])
        ds.PixelSpacing = ds_text([spacing[1], spacing[0]])  # between rows, between columns
        ds.SliceThickness = f"{spacing[2]:.10g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # rows x columns
        for name in drop:
            if name in ds:
                delattr(ds, name)
        ds.save_as(folder / names(k), enforce_file_format=True)
    return series_uid


def oblique_affine(spacing=(1.25, 1.5, 2.0), origin=(-20.0, -15.0, -25.0)) -> np.ndarray:
    """A RAS affine rotated about two axes (cosines 0.6/0.8 and 0.8/0.6), anisotropic voxels."""
    a = np.array([[0.6, -0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    b = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])
    out = np.eye(4)
    out[:3, :3] = a @ b @ np.diag(spacing)
    out[:3, 3] = origin
    return out
