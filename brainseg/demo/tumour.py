"""The demo brain-tumour data set (BraTS-like), made from the MNI ICBM152 2009a template.

Every case is the template (:mod:`brainseg.demo.template`) warped as the tissue demo warps it
(:func:`brainseg.demo.tissue.template_coordinates`: a smooth displacement and a global size change) on
one axis-aligned RAS grid of ``spacing`` mm (2 mm by default), skull-stripped (the
background exactly 0), seen in four co-registered contrasts, with a tumour:

* **tissue contrast** per sequence from the CSF / grey / white-matter fractions (partial
  volume kept): T1 and T1ce white matter brightest and CSF dark; T2 CSF brightest and
  white matter darkest; FLAIR like T2 with the CSF suppressed (dark). Each case scales
  every class intensity by its own factor (x0.9-1.1).
* **the tumour**: a lobulated core (the union of 1-3 randomly rotated ellipsoids, its
  surface roughened by a smooth noise field; radius 7-20 mm), inside a larger lobulated
  region of oedema (x1.3-2.0 the core, kept out of the ventricles), placed where the brain
  is deep enough to hold the core. Labels (BraTS 2021 values; see :data:`LAYOUT_VALUES`):
  **2 oedema** (bright on T2 and FLAIR, a little dark on T1) around the **core**, whose
  rim **enhances on T1ce (4)** around **necrosis (1)** (dark on T1 and T1ce, bright on
  T2). Case ``i`` with ``i % 4 == 1`` has no necrosis (a solid enhancing core), ``i % 4 == 2``
  no enhancement (the whole core is non-enhancing tumour, label 1), so every set of four
  cases holds all three kinds.
* **per-case and per-channel appearance**: a smooth multiplicative bias field, Gaussian
  noise inside the brain (1-4 % of the white-matter level), texture inside the tumour
  and an intensity scale (x100-x3000), each drawn per channel; tumour edges are blurred
  (partial volume), the labels are the hard masks.

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
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainseg.demo.template import (
    Template,
    load_template,
    nifti_geometry,
    resample,
    rotation,
    smooth_field,
    world_box,
)
from brainseg.demo.tissue import (
    _split_sizes,
    msd_case_lists,
    subject_grid,
    template_coordinates,
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
#: The contrasts in their internal order.
CONTRASTS = ("t1", "t1ce", "t2", "flair")
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4  # BraTS 2021 values, used internally
#: Relative intensity of each class in (t1, t1ce, t2, flair).
INTENSITY = {
    "csf": (0.22, 0.20, 1.00, 0.10),
    "gm": (0.55, 0.52, 0.62, 0.62),
    "wm": (0.82, 0.78, 0.42, 0.48),
    "oedema": (0.46, 0.44, 0.88, 0.95),
    "necrosis": (0.26, 0.20, 0.96, 0.55),  # inside an enhancing rim
    "non-enhancing": (0.40, 0.40, 0.80, 0.84),  # a core without enhancement
    "enhancing": (0.46, 1.25, 0.62, 0.74),
}
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


# ----------------------------------------------------------------------------- the tumour


def _lobes(rng: np.random.Generator, rel_mm: np.ndarray, radius: float, n: int, spread: float) -> np.ndarray:
    """min over ``n`` random ellipsoids of the normalised distance (< 1 inside), at offsets ``rel_mm``
    (3, ...) from the tumour centre; lobe 0 is centred, the others moved by up to ``spread`` x radius."""
    field = np.full(rel_mm.shape[1:], np.inf, dtype=np.float32)
    for k in range(n):
        direction = rng.normal(size=3)
        centre = np.zeros(3) if k == 0 else direction / np.linalg.norm(direction) * rng.uniform(0.3, spread) * radius
        radii = radius * (1.0 if k == 0 else rng.uniform(0.55, 0.9)) * rng.uniform(0.7, 1.0, size=3)
        rot = rotation(rng.normal(size=3), float(rng.uniform(0, 180)))
        d = np.tensordot(
            (rot.T / radii[:, None]).astype(np.float32), rel_mm - centre.astype(np.float32)[:, None, None, None], axes=1
        )
        field = np.minimum(field, np.sqrt((d * d).sum(axis=0)))
    return field


def _place(rng: np.random.Generator, depth_mm: np.ndarray, tissue: np.ndarray, radius: float) -> np.ndarray:
    """A voxel index for the tumour centre: in grey or white matter, at least radius + 4 mm inside the brain."""
    for need in (radius + 4.0, radius, 0.6 * radius):
        ok = np.argwhere((depth_mm >= need) & (tissue > 0.6))
        if len(ok):
            return ok[rng.integers(len(ok))]
    raise BrainsegError("demo-data: no place in the brain deep enough for a tumour (is the spacing too coarse?)")


def tumour_labels(
    rng: np.random.Generator, index: int, brain: np.ndarray, csf: np.ndarray, tissue: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, dict]:
    """uint8 labels (0, 1 necrosis / non-enhancing core, 2 oedema, 4 enhancing) and a description."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    radius = float(rng.uniform(7.0, 20.0))
    grow = float(rng.uniform(1.3, 2.0))
    centre = _place(rng, depth, tissue, radius)
    reach = np.ceil(radius * grow * 1.5 / spacing).astype(int) + 2
    box = tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, r, n in zip(centre, reach, brain.shape))
    idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) - c for s, c in zip(box, centre)], indexing="ij"))
    rel = np.tensordot(affine[:3, :3].astype(np.float32), idx.astype(np.float32), axes=1)
    shape = rel.shape[1:]
    core_f = _lobes(rng, rel, radius, int(rng.integers(1, 4)), 0.6) * (1 + smooth_field(rng, shape, 6, 0.12))
    oedema_f = _lobes(rng, rel, radius * grow, int(rng.integers(1, 4)), 0.5) * (1 + smooth_field(rng, shape, 6, 0.15))
    enhancing = index % 4 != 2
    necrosis = enhancing and index % 4 != 1
    inner = float(rng.uniform(0.5, 0.8))
    b_brain, b_depth = brain[box], depth[box]
    core = (core_f < 1.0) & (b_depth >= 2.0)
    oedema = ((oedema_f < 1.0) & b_brain & (csf[box] < 0.6)) | core
    sub = np.where(oedema, OEDEMA, 0).astype(np.uint8)
    if not enhancing:
        sub[core] = NECROSIS
    else:
        sub[core] = ENHANCING
        if necrosis:
            sub[core & (core_f < inner)] = NECROSIS
    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[box] = sub
    voxel = float(abs(np.linalg.det(affine[:3, :3])))
    info = {
        "centre_voxel": [int(c) for c in centre],
        "core_radius_mm": round(radius, 2),
        "oedema_factor": round(grow, 2),
        "necrosis": bool(necrosis),
        "enhancing": bool(enhancing),
        "volume_mm3": {
            name: float(np.count_nonzero(labels == v) * voxel)
            for name, v in (("necrosis", NECROSIS), ("oedema", OEDEMA), ("enhancing", ENHANCING))
        },
    }
    return labels, info


# ----------------------------------------------------------------------------- the contrasts


def synthesise_contrasts(
    rng: np.random.Generator, brain: np.ndarray, fractions: dict[str, np.ndarray], labels: np.ndarray, enhancing: bool
) -> list[np.ndarray]:
    """The four images (float32, CONTRASTS order): tissue mix, tumour (blurred edges), bias, noise, scale."""
    jitter = {name: rng.uniform(0.9, 1.1, size=4) for name in INTENSITY}
    core_name = "necrosis" if enhancing else "non-enhancing"
    box = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in ndimage.find_objects((labels > 0).astype(np.uint8))[0])
    sub = labels[box]
    weights = {
        name: ndimage.gaussian_filter((sub == v).astype(np.float32), 0.6)
        for name, v in (("oedema", OEDEMA), (core_name, NECROSIS), ("enhancing", ENHANCING))
    }
    tumour_w = sum(weights.values())
    texture = smooth_field(rng, sub.shape, 8, 0.08)
    images = []
    for c in range(len(CONTRASTS)):
        signal = sum(fractions[t] * np.float32(INTENSITY[t][c] * jitter[t][c]) for t in ("csf", "gm", "wm"))
        tumour = sum(w * np.float32(INTENSITY[t][c] * jitter[t][c]) for t, w in weights.items())
        signal[box] = signal[box] * (1 - tumour_w) + tumour * (1 + texture)
        bias = np.exp(smooth_field(rng, brain.shape, 4, float(rng.uniform(0.05, 0.2))))
        noise_std = np.float32(rng.uniform(0.01, 0.04) * INTENSITY["wm"][0])
        scale = np.float32(math.exp(rng.uniform(math.log(100.0), math.log(3000.0))))
        inside = signal[brain] * bias[brain] + rng.normal(0.0, noise_std, size=int(brain.sum())).astype(np.float32)
        out = np.zeros(brain.shape, dtype=np.float32)
        out[brain] = np.maximum(inside, 0.01) * scale  # skull-stripped: the brain > 0, the rest exactly 0
        images.append(out)
    return images


def make_tumour_case(
    template: Template, brain_map: np.ndarray, seed: int, index: int, spacing_mm=(2.0, 2.0, 2.0)
) -> tuple[list[np.ndarray], np.ndarray, Geometry, dict]:
    """One case: (images in CONTRASTS order, labels in BraTS 2021 values, geometry, description)."""
    rng = np.random.default_rng([seed, index, 15])
    lo, hi = world_box(template.affine, template.t1.shape)
    grid = subject_grid(rng, 0, lo, hi, spacing_mm)  # index 0: RAS, not tilted
    coords = template_coordinates(rng, grid, template.affine, (lo + hi) / 2.0)
    gm = resample(template.gm, coords)
    wm = resample(template.wm, coords)
    brain = resample(brain_map, coords) >= 0.5
    del coords
    gm, wm = np.where(brain, gm, 0).astype(np.float32), np.where(brain, wm, 0).astype(np.float32)
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    labels, info = tumour_labels(rng, index, brain, csf, gm + wm, grid.affine)
    images = synthesise_contrasts(rng, brain, {"csf": csf, "gm": gm, "wm": wm}, labels, info["enhancing"])
    return images, labels, nifti_geometry(grid), info


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
    the voxel size per axis in mm (default :data:`DEFAULT_SPACING_MM` isotropic). The same
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
            kind = (
                "necrosis and enhancing rim"
                if info["necrosis"]
                else "enhancing core"
                if info["enhancing"]
                else "no enhancement"
            )
            log.info(
                f"demo-data [{index + 1}/{n}] {cid} ({cases[-1]['split']}): {geometry.shape}, core radius "
                f"{info['core_radius_mm']:.0f} mm, {kind} ({time.perf_counter() - start:.1f} s)"
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
