"""The demo brain-tumour data set (BraTS-like), made from the MNI ICBM152 2009a template.

Every case is the template (:mod:`brainseg.demo.template`) warped as the tissue demo warps it
(:func:`brainseg.demo.tissue.template_coordinates`: a smooth displacement and a global size change)
onto the tissue demo's grids (:func:`brainseg.demo.tissue.subject_grid`: case 0 RAS, the others
reoriented through LAS, LPS, PIR, ..., every odd case tilted 2-7 degrees: an oblique affine) of
``spacing`` mm (2 mm isotropic by default), skull-stripped (the background exactly 0), seen in four
co-registered sequences, with a tumour. What the tumour is and how each sequence looks is
:mod:`brainseg.demo.tumour_model`'s (its docstring states the ranges):

* **the tumour**: of one of five kinds (solid; necrotic with a thin or a thick enhancing rim;
  non-enhancing; multifocal), every five consecutive cases holding each kind once; small to large
  lobulated, elongated cores inside oedema, anywhere in grey or white matter deep enough to hold them.
  Labels (BraTS 2021 values; see :data:`LAYOUT_VALUES`): **2 oedema** around the **core**, whose
  rim **enhances on T1ce (4)** around **necrosis (1)**; a non-enhancing core is 1 all through.
* **its intensities** (oedema, necrosis, non-enhancing core, enhancement) drawn per case and per
  sequence from plausible ranges, each with its own texture, edges blurred (partial volume; the
  labels are the hard masks);
* **each sequence its own acquisition**: a smooth bias field (up to 2.2x over the brain), a gamma,
  noise, an intensity scale and an offset, as real sequences are acquired one by one.

Layouts (:data:`LAYOUTS`; the last ``n_test`` cases are held out):

``brats2021``  ``out/train/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``,
    ``out/test/ID/`` (scans only, like BraTS's validation data) and ``out/test_labels/ID.nii.gz``;
    labels 0, 1 necrosis / non-enhancing core, 2 oedema, 4 enhancing.
``brats2023``  ``out/train/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``,
    same folders; enhancing tumour is 3.
``msd``  nnU-Net v2: ``dataset.json``, ``imagesTr/BRATS_000_0000.nii.gz`` ... ``_0003``
    (FLAIR, T1w, t1gd, T2w: the Decathlon's Task01 order), ``labelsTr/``, ``imagesTs/``,
    ``labelsTs/``; Task01's label values (1 edema, 2 non-enhancing tumour, 3 enhancing
    tumour) with nnU-Net v2's region dataset.json (Dataset137's whole tumor [1, 2, 3],
    tumor core [2, 3], enhancing tumor [3], regions_class_order [1, 2, 3]).

``out/brainseg-demo.json`` records the layout, seed and per-case tumour description.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainseg.demo.template import Template, load_template, nifti_geometry, resample, world_box
from brainseg.demo.tissue import (
    _split_sizes,
    msd_case_lists,
    subject_grid,
    template_coordinates,
)
from brainseg.demo.tumour_model import (
    ENHANCING,
    NECROSIS,
    OEDEMA,
    case_kind,
    synthesise_contrasts,
    tumour_labels,
)
from brainseg.errors import BrainsegError
from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import Geometry, write_image
from brainseg.io.naming import NIFTI_GZ, channel_stem
from brainseg.labels.regions import BRATS_2021, BRATS_2023

log = logging.getLogger(__name__)

TUMOUR_NAME = "brainseg-demo-tumour"
MANIFEST = "brainseg-demo.json"
LAYOUTS = ("brats2021", "brats2023", "msd")
DEFAULT_SPACING_MM = 2.0
#: Label value of (necrosis / non-enhancing core, oedema, enhancing) in each layout.
LAYOUT_VALUES = {"brats2021": (1, 2, 4), "brats2023": (1, 2, 3), "msd": (2, 1, 3)}
#: File name part of each contrast (t1, t1ce, t2, flair) and of the segmentation, per BraTS layout.
BRATS_FILES = {
    "brats2021": ("_", ("t1", "t1ce", "t2", "flair"), "seg"),
    "brats2023": ("-", ("t1n", "t1c", "t2w", "t2f"), "seg"),
}
#: The Decathlon Task01 channel order (indices into CONTRASTS) and names.
MSD_ORDER = (3, 0, 1, 2)
MSD_CHANNELS = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
SUBFOLDERS = ("train", "test", "test_labels", "imagesTr", "labelsTr", "imagesTs", "labelsTs")


def case_id(layout: str, index: int) -> str:
    return {
        "brats2021": f"BraTS2021_{index:05d}",
        "brats2023": f"BraTS-GLI-{index:05d}-000",
        "msd": f"BRATS_{index:03d}",
    }[layout]


def make_tumour_case(
    template: Template, brain_map: np.ndarray, seed: int, index: int, spacing_mm=(2.0, 2.0, 2.0)
) -> tuple[list[np.ndarray], np.ndarray, Geometry, dict]:
    """One case: (images in CONTRASTS order, labels in BraTS 2021 values, geometry, description)."""
    rng = np.random.default_rng([seed, index, 15])
    lo, hi = world_box(template.affine, template.t1.shape)
    grid = subject_grid(rng, index, lo, hi, spacing_mm)
    coords = template_coordinates(rng, grid, template.affine, (lo + hi) / 2.0)
    gm = resample(template.gm, coords)
    wm = resample(template.wm, coords)
    brain = resample(brain_map, coords) >= 0.5
    del coords
    gm, wm = np.where(brain, gm, 0).astype(np.float32), np.where(brain, wm, 0).astype(np.float32)
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    kind = case_kind(seed, index)
    labels, info = tumour_labels(rng, kind, brain, csf, gm + wm, grid.affine)
    images, drawn = synthesise_contrasts(rng, brain, {"csf": csf, "gm": gm, "wm": wm}, labels, kind)
    grid_info = {"orientation": grid.orientation, "oblique_degrees": round(grid.oblique_degrees, 2)}
    return images, labels, nifti_geometry(grid), {**info, "grid": grid_info, **drawn}


# ----------------------------------------------------------------------------- writing


def _prepare_folder(out: Path) -> None:
    """Create ``out``; refuse a non-empty folder that is not an earlier tumour demo set, whose
    case files are removed (so no stale case outlives a new run)."""
    if out.exists() and not out.is_dir():
        raise BrainsegError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            previous = json.loads((out / MANIFEST).read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != TUMOUR_NAME:
            raise BrainsegError(
                f"{out}: folder is not empty and is not a brainseg tumour demo data set; choose another"
            )
        for sub in SUBFOLDERS:
            for entry in sorted([*(out / sub).glob("BraTS*"), *(out / sub).glob("BRATS_*")]):
                for f in entry.glob(f"*{NIFTI_GZ}") if entry.is_dir() else [entry]:
                    f.unlink()
                if entry.is_dir() and not any(entry.iterdir()):
                    entry.rmdir()
        (out / "dataset.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_case(out: Path, layout: str, held_out: bool, cid: str, images, labels, geometry: Geometry) -> None:
    values = np.zeros(ENHANCING + 1, dtype=np.uint8)
    values[[NECROSIS, OEDEMA, ENHANCING]] = LAYOUT_VALUES[layout]
    seg = values[labels]
    if layout == "msd":
        split = "Ts" if held_out else "Tr"
        for channel, c in enumerate(MSD_ORDER):
            write_image(
                out / f"images{split}" / f"{channel_stem(cid, channel)}{NIFTI_GZ}", images[c], geometry, np.float32
            )
        write_image(out / f"labels{split}" / f"{cid}{NIFTI_GZ}", seg, geometry, np.uint8)
        return
    sep, names, seg_name = BRATS_FILES[layout]
    folder = out / ("test" if held_out else "train") / cid
    for name, image in zip(names, images):
        write_image(folder / f"{cid}{sep}{name}{NIFTI_GZ}", image, geometry, np.float32)
    target = out / "test_labels" / f"{cid}{NIFTI_GZ}" if held_out else folder / f"{cid}{sep}{seg_name}{NIFTI_GZ}"
    write_image(target, seg, geometry, np.uint8)


def _dataset_json(train_ids: list[str], test_ids: list[str], seed: int) -> dict:
    return {
        "name": TUMOUR_NAME,
        "description": (
            "Synthetic brain tumours (BraTS-like, four contrasts) on the MNI ICBM152 2009a template; label values "
            f"as the Decathlon's Task01 (1 edema, 2 non-enhancing tumor, 3 enhancing tumour), seed {seed}."
        ),
        "reference": "Fonov et al., NeuroImage 2011 (MNI ICBM152 nonlinear symmetric 2009a)",
        "licence": "see the MNI ICBM152 template licence",
        "tensorImageSize": "4D",
        "channel_names": dict(MSD_CHANNELS),
        "labels": dict(MSD_LABELS),
        "regions_class_order": [1, 2, 3],
        **msd_case_lists(train_ids, test_ids, suffixed=False),
    }


def make_tumour_dataset(
    out: Path,
    n: int = 12,
    n_test: int | None = None,
    seed: int = 0,
    layout: str = "brats2021",
    spacing: Sequence[float] | None = None,
    verbose: bool = True,
) -> Path:
    """Write ``n`` synthetic tumour cases at ``out`` in ``layout`` (see the module docstring).

    The last ``n_test`` cases (default: a quarter, at least one) are held out. ``spacing``:
    the voxel size in mm along the left-right, posterior-anterior and inferior-superior axes,
    whatever the case's file axis order (default :data:`DEFAULT_SPACING_MM` isotropic). The same
    seed gives the same files.
    """
    out = Path(out)
    if layout not in LAYOUTS:
        raise BrainsegError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    sizes_mm = (DEFAULT_SPACING_MM,) * 3 if spacing is None else tuple(float(s) for s in spacing)
    if len(sizes_mm) != 3 or min(sizes_mm) < 0.5 or max(sizes_mm) > 4:
        raise BrainsegError(f"--spacing {sizes_mm}: the tumour demo needs three voxel sizes in mm, each in [0.5, 4]")
    n_train, n_test = _split_sizes(n, n_test, seed)
    template = load_template()
    brain_map = (template.t1 > 0).astype(np.float32)
    _prepare_folder(out)
    ids = [case_id(layout, i) for i in range(n)]
    cases = []
    start = time.perf_counter()
    for index, cid in enumerate(ids):
        held_out = index >= n_train
        images, labels, geometry, info = make_tumour_case(template, brain_map, seed, index, sizes_mm)
        _write_case(out, layout, held_out, cid, images, labels, geometry)
        cases.append({"id": cid, "split": "test" if held_out else "train", **info})
        if verbose:
            log.info(
                f"demo-data [{index + 1}/{n}] {cid} ({cases[-1]['split']}): {info['grid']['orientation']} "
                f"{geometry.shape}, {info['kind']} tumour, core radius {info['core_radius_mm']:.0f} mm "
                f"({time.perf_counter() - start:.1f} s)"
            )
    if layout == "msd":
        atomic_write_text(
            out / "dataset.json", json.dumps(_dataset_json(ids[:n_train], ids[n_train:], seed), indent=2) + "\n"
        )
    regions = BRATS_2023 if layout == "brats2023" else BRATS_2021
    values = dict(zip(("necrosis / non-enhancing tumour core", "oedema", "enhancing tumour"), LAYOUT_VALUES[layout]))
    manifest = {
        "name": TUMOUR_NAME,
        "layout": layout,
        "seed": seed,
        "spacing_mm": list(sizes_mm),
        "labels": values,
        "regions": regions.to_dict() if layout != "msd" else {"from": "dataset.json"},
        "train": ids[:n_train],
        "test": ids[n_train:],
        "cases": cases,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out
