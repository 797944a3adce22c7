"""A second, independent tumour family that training never uses: our own held-out BraTS-style cases.

Only the MNI template (the one brain we have) and its generic helpers (loading, trilinear sampling,
rotations) are shared with the demo (:mod:`brainseg.demo.tumour`, :mod:`brainseg.demo.tumour_model`);
every model is this module's own:

=====================  ===========================================  ===========================================
                       the demo                                     this family
=====================  ===========================================  ===========================================
grid                   the tissue demo's: RAS, then LAS, LPS, PIR,  its own orientations (:data:`ORIENTATIONS`,
                       ...; odd cases tilted 2-7 degrees            LPS first, as BraTS's files), every case
                                                                    tilted 0-12 degrees
warp                   spline displacement, global size change      a random rotation (up to 6 degrees) and size,
                                                                    a zoomed-noise displacement, and a **mass
                                                                    effect**: tissue pushed away from the tumour
tumour shape           unions of rotated ellipsoids roughened by    a **level set of smoothed Gaussian noise**
                       a noise field                                under an ellipsoidal envelope
necrosis / rim         Euclidean depth inside the core > rim        the core's **blurred indicator** above 0.9
                       thickness                                    (rim about 1.3 sigma: thin 1 voxel, thick 2-3)
oedema                 lobes of ellipsoids, out of the ventricles   **grown along white matter**: dilated step
                                                                    by step into white matter, into grey matter
                                                                    only every third step, gated by a smooth field
kinds                  a shuffled cycle of five                     drawn per training case (:data:`KINDS`, their
                                                                    weights); held-out cases cycle through the four
normal T1 / T1ce       CSF / GM / WM fractions times a table        **the template's own T1** (its texture)
normal T2 / FLAIR      fractions times a table                      fractions times its own table
                                                                    (:data:`SIGNAL`), each tissue its own texture
                                                                    (5 %)
tumour intensities     uniform ranges per sequence                  :data:`SIGNAL` x0.85-1.15 per entry, textures
                                                                    3-15 %, speckled necrosis
bias field             cubic-spline noise, max/min 1.1-2.2          **a quadratic polynomial** per sequence,
                                                                    max/min over the brain 1.05-2.0
gamma, noise           gamma 0.7-1.5; Gaussian noise                gamma 0.75-1.35 (of the 99th percentile);
                                                                    **Rician** noise, 1-6 %
scale                  x10-x3000 and an offset, float values        x100-x4000, **integer** values, no offset
=====================  ===========================================  ===========================================

Written in the BraTS 2021 layout, so ``brainseg train --data OUT/train`` takes it as it is::

    OUT/train/BraTS2021_50000/BraTS2021_50000_{t1,t1ce,t2,flair,seg}.nii.gz   (labels 1, 2, 4)
    OUT/test/BraTS2021_51000/BraTS2021_51000_{t1,t1ce,t2,flair}.nii.gz
    OUT/test_labels/BraTS2021_51000.nii.gz
    OUT/manifest.json

Held-out case ``j`` depends only on (seed, j), never on how many training cases there are.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from brainseg.demo.template import Template, load_template, orientation_matrix, resample, rotation, world_box
from brainseg.io.atomic import atomic_write_text
from scripts.experiments.synth_contrast.family import save, smooth_noise

GENERATOR = "scripts.experiments.tumour_family.family v1"
DEFAULT_SEED = 20261207
SPACING_MM = 2.0
ORIENTATIONS = ("LPS", "RAS", "LAS", "RPI", "LPI", "ASR", "PSL")
TILT_DEGREES = 12.0
SEQUENCES = ("t1", "t1ce", "t2", "flair")
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4
#: Kinds and their probabilities.
KINDS = {"ring": 0.45, "solid": 0.2, "non_enhancing": 0.15, "multifocal": 0.2}
#: Signal per tissue in (t1, t1ce, t2, flair), white matter's T1 = 1; normal T1 and T1ce come from the
#: template's T1 instead (scaled so its white matter is the table's).
SIGNAL = {
    "csf": (0.28, 0.26, 2.30, 0.15),
    "gm": (0.68, 0.66, 1.50, 1.30),
    "wm": (1.00, 0.95, 1.00, 1.00),
    "oedema": (0.60, 0.58, 1.95, 1.85),
    "necrosis": (0.32, 0.28, 2.10, 1.00),
    "non_enhancing": (0.48, 0.48, 1.75, 1.70),
    "enhancing": (0.72, 1.75, 1.35, 1.45),
}
JITTER = 0.15
BIAS_RATIO = (1.05, 2.0)
GAMMA = (0.75, 1.35)
NOISE = (0.01, 0.06)
SCALE = (100.0, 4000.0)
TRAIN_BASE, TEST_BASE = 50000, 51000


def case_id(split: str, j: int) -> str:
    return f"BraTS2021_{(TRAIN_BASE if split == 'train' else TEST_BASE) + j:05d}"


def field(rng: np.random.Generator, shape: tuple[int, ...], nodes: int) -> np.ndarray:
    """:func:`~scripts.experiments.synth_contrast.family.smooth_noise` (unit std) made on a grid 4x coarser and
    zoomed up linearly: the same smooth field at a tenth of the time."""
    coarse = smooth_noise(rng, tuple(max(nodes, math.ceil(n / 4)) for n in shape), nodes)
    up = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1, mode="nearest")
    return np.pad(up, [(0, max(0, n - u)) for n, u in zip(shape, up.shape)], mode="edge")[
        tuple(slice(0, n) for n in shape)
    ]


# --------------------------------------------------------------------------- the scan's geometry


def grid_affine(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, spacing: float):
    """(shape, affine, orientation, tilt) of a grid covering the world box [lo, hi]."""
    orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    tilt = float(rng.uniform(0.0, TILT_DEGREES))
    direction = rotation(rng.normal(size=3), tilt) @ orientation_matrix(orientation)
    shape = tuple(int(math.ceil(e / spacing)) + 1 for e in np.abs(direction.T) @ (hi - lo))
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = (lo + hi) / 2.0 - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine.astype(np.float32).astype(np.float64), orientation, tilt


def warp_coordinates(rng: np.random.Generator, shape, affine: np.ndarray, template: Template, centre: np.ndarray):
    """Template voxel coordinates (3, X, Y, Z) of every voxel: a rotation, a size change and a displacement."""
    rot = rotation(rng.normal(size=3), float(rng.uniform(0.0, 6.0))) * rng.uniform(0.9, 1.1, size=3)[None, :]
    amplitude = float(rng.uniform(1.0, 3.0))
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = (affine[:3, :3] @ idx + affine[:3, 3:4] - centre[:, None]).astype(np.float32)
    moved = (rot @ world + centre[:, None]).astype(np.float32).reshape((3, *shape))
    for k in range(3):
        moved[k] += amplitude * field(rng, shape, 4)
    inv = np.linalg.inv(template.affine)
    return (
        np.tensordot(inv[:3, :3].astype(np.float32), moved, axes=1) + inv[:3, 3].astype(np.float32)[:, None, None, None]
    )


def mass_effect(coords: np.ndarray, centre: np.ndarray, spacing: float, strength: float, reach_mm: float) -> None:
    """Push the tissue away from ``centre`` (voxel): each voxel near it shows the anatomy of a point closer
    to it, ``r' = r (1 - strength exp(-(r / reach)^2))`` (monotone for strength < 1); in place."""
    half = int(math.ceil(2.5 * reach_mm / spacing))
    box = tuple(slice(max(0, int(c) - half), min(n, int(c) + half + 1)) for c, n in zip(centre, coords.shape[1:]))
    idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box], indexing="ij"))
    rel = idx - centre.astype(np.float32)[:, None, None, None]
    r = np.sqrt((rel * rel).sum(0)) * spacing
    source = centre.astype(np.float32)[:, None, None, None] + rel * (1.0 - strength * np.exp(-((r / reach_mm) ** 2)))
    moved = [ndimage.map_coordinates(coords[k], source, order=1, mode="nearest") for k in range(3)]
    for k in range(3):
        coords[k][box] = moved[k]


# --------------------------------------------------------------------------- the tumour


def level_set_core(rng: np.random.Generator, shape, centre_local: np.ndarray, radius_mm: float, spacing: float):
    """A lumpy core: ``1 - q^2 + beta * n > 0`` with q the ellipsoidal distance (1 on the envelope) and n
    smoothed Gaussian noise of unit std; the component holding the centre."""
    axes = radius_mm * rng.uniform(0.65, 1.35, size=3)
    rot = rotation(rng.normal(size=3), float(rng.uniform(0, 180)))
    rel = (np.indices(shape, dtype=np.float32) - centre_local.astype(np.float32)[:, None, None, None]) * spacing
    d = np.tensordot((rot.T / axes[:, None]).astype(np.float32), rel, axes=1)
    q2 = (d * d).sum(0)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), float(rng.uniform(2.0, 4.0)))
    noise /= max(float(noise.std()), 1e-6)
    mask = (1.0 - q2 + float(rng.uniform(0.2, 0.6)) * noise > 0) | (q2 < 0.1)
    parts, _ = ndimage.label(mask)
    return parts == parts[tuple(int(c) for c in centre_local)]


def blurred_necrosis(rng: np.random.Generator, core: np.ndarray, thick: bool) -> tuple[np.ndarray, float]:
    """Necrosis: the core where its blurred indicator (sigma voxels) passes 0.9, a little noise on it."""
    sigma = float(rng.uniform(1.2, 2.0) if thick else rng.uniform(0.6, 0.9))
    level = ndimage.gaussian_filter(core.astype(np.float32), sigma)
    level += 0.03 * ndimage.gaussian_filter(rng.standard_normal(core.shape).astype(np.float32), 1.0) * 3.0
    return core & (level > 0.9), sigma


def grow_oedema(rng, core: np.ndarray, wm: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """Oedema grown from the core along white matter: each step into white matter (fraction > 0.5), every
    third step into any allowed tissue, only where a smooth gate lets it (fingers, not a ball)."""
    gate = field(rng, core.shape, 5) > float(rng.uniform(-1.2, -0.3))
    grown = core.copy()
    for step in range(steps):
        front = ndimage.binary_dilation(grown) & allowed & ~grown & gate
        grown |= front if step % 3 == 0 else front & (wm > 0.5)
    return grown & ~core


def draw_kind(rng: np.random.Generator) -> str:
    return str(rng.choice(list(KINDS), p=list(KINDS.values())))


def held_out_kind(seed: int, j: int) -> str:
    """Held-out case ``j``'s kind: a seed-shuffled order of :data:`KINDS` at ``j % 4``, so any four consecutive
    held-out cases hold every kind (a few drawn ones could all be solid, and a score without necrosis
    would say nothing of it)."""
    order = np.random.default_rng([seed, 4242]).permutation(len(KINDS))
    return list(KINDS)[int(order[j % len(KINDS)])]


#: Core radius (mm) per kind; a multifocal tumour's foci take the last.
RADIUS_MM = {"ring": (9.0, 24.0), "solid": (3.0, 12.0), "non_enhancing": (6.0, 22.0), "multifocal": (4.0, 12.0)}


def tumour(
    rng, kind: str, first: np.ndarray, first_radius: float, brain, wm, csf, spacing: float
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Labels (BraTS 2021 values) and each focus's description; the first focus at voxel ``first``."""
    depth = ndimage.distance_transform_edt(brain) * spacing
    labels = np.zeros(brain.shape, np.uint8)
    n_foci = int(rng.integers(2, 4)) if kind == "multifocal" else 1
    foci: list[dict[str, Any]] = []
    for f in range(n_foci):
        centre, r_mm = first, first_radius
        if f:  # a satellite 18-50 mm from the first focus, in white matter
            r_mm = float(rng.uniform(*RADIUS_MM[kind]))
            dist = np.sqrt(((np.indices(brain.shape) - first[:, None, None, None]) ** 2).sum(0)) * spacing
            ok = (wm > 0.5) & (depth >= r_mm + 3.0) & (dist > 18.0 + r_mm) & (dist < 50.0)
            found = np.argwhere(ok if ok.any() else (wm > 0.5) & (depth >= 3.0))
            centre = found[rng.integers(len(found))]
        reach = float(rng.uniform(4.0, 30.0))
        half = int(math.ceil((1.5 * r_mm + reach + 6.0) / spacing))
        box = tuple(slice(max(0, int(c) - half), min(n, int(c) + half + 1)) for c, n in zip(centre, brain.shape))
        local = centre - np.array([s.start for s in box])
        core = level_set_core(rng, labels[box].shape, local, r_mm, spacing) & brain[box] & (csf[box] < 0.5)
        core[tuple(int(c) for c in local)] = True  # never empty (the centre is white matter)
        oedema = grow_oedema(rng, core, wm[box], brain[box] & (csf[box] < 0.5), int(round(reach / spacing)))
        focus_kind = kind if kind != "multifocal" else ("ring" if r_mm > 7.0 and rng.random() < 0.5 else "solid")
        necrosis, sigma = (
            blurred_necrosis(rng, core, thick=bool(rng.random() < 0.5)) if focus_kind == "ring" else (core & False, 0.0)
        )
        sub = labels[box]
        sub[oedema & (sub == 0)] = OEDEMA
        sub[core] = NECROSIS if focus_kind == "non_enhancing" else ENHANCING
        sub[necrosis] = NECROSIS
        foci.append(
            {
                "kind": focus_kind,
                "radius_mm": round(r_mm, 1),
                "oedema_reach_mm": round(reach, 1),
                "rim_sigma": round(sigma, 2),
            }
        )
    return labels, foci


# --------------------------------------------------------------------------- the sequences


def polynomial_bias(rng: np.random.Generator, brain: np.ndarray, ratio: float) -> np.ndarray:
    """exp of a random quadratic polynomial of the voxel position, its max / min over the brain ``ratio``."""
    u = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in brain.shape]
    x, y, z = np.meshgrid(*u, indexing="ij", sparse=True)
    terms = [x, y, z, x * x, y * y, z * z, x * y, y * z, x * z]
    log_field = sum(np.float32(c) * t for c, t in zip(rng.normal(0.0, 1.0, len(terms)), terms))
    log_field = np.broadcast_to(log_field, brain.shape)
    inside = log_field[brain]
    span = max(float(inside.max() - inside.min()), 1e-6)
    return np.exp((log_field - float(inside.mean())) * (math.log(ratio) / span)).astype(np.float32)


def sequences(rng, labels, t1_template, fractions: dict[str, np.ndarray], brain) -> tuple[list[np.ndarray], dict]:
    """The four images (integer-valued float32) and what was drawn."""
    table = {name: [v * float(rng.uniform(1 - JITTER, 1 + JITTER)) for v in values] for name, values in SIGNAL.items()}
    white = t1_template[(fractions["wm"] > 0.9) & brain]
    t1_norm = t1_template / max(float(np.median(white)), 1e-6)
    tissue_texture = {t: np.exp(0.05 * field(rng, labels.shape, 6)) for t in ("csf", "gm", "wm")}
    box = tuple(slice(max(0, s.start - 4), s.stop + 4) for s in ndimage.find_objects((labels > 0).astype(np.uint8))[0])
    sub = labels[box]
    pv = {
        name: ndimage.gaussian_filter((sub == v).astype(np.float32), 0.8)
        for name, v in (("oedema", OEDEMA), ("necrosis", NECROSIS), ("enhancing", ENHANCING))
    }
    if not (sub == ENHANCING).any():  # a core without enhancement: label 1 is non-enhancing tumour
        pv["non_enhancing"] = pv.pop("necrosis")
    tumour_w = sum(pv.values())
    textures = {n: np.exp(float(rng.uniform(0.03, 0.15)) * field(rng, sub.shape, 7)) for n in pv}
    if "necrosis" in textures:
        speckle = ndimage.gaussian_filter(rng.standard_normal(sub.shape).astype(np.float32), 1.0)
        textures["necrosis"] *= np.exp(0.25 * speckle)
    images, acquisition = [], {}
    for c, name in enumerate(SEQUENCES):
        if c < 2:  # T1 and T1ce: the template's own T1 texture
            normal = t1_norm * np.float32(table["wm"][c])
        else:
            normal = sum(fractions[t] * np.float32(table[t][c]) * tissue_texture[t] for t in ("csf", "gm", "wm"))
        tum = sum(w * np.float32(table[t][c]) * textures[t] for t, w in pv.items())
        signal = np.array(normal, dtype=np.float32)
        signal[box] = signal[box] * (1.0 - tumour_w) + tum
        ratio, gamma = float(rng.uniform(*BIAS_RATIO)), float(rng.uniform(*GAMMA))
        sigma, scale = float(rng.uniform(*NOISE)), float(math.exp(rng.uniform(*np.log(SCALE))))
        s = signal[brain] * polynomial_bias(rng, brain, ratio)[brain]
        top = np.float32(np.percentile(s, 99))
        s = np.power(np.maximum(s / top, 0.0), np.float32(gamma))
        noise = sigma * float(np.median(s))
        s = np.sqrt((s + rng.normal(0.0, noise, s.shape)) ** 2 + rng.normal(0.0, noise, s.shape) ** 2)
        image = np.zeros(brain.shape, np.float32)
        image[brain] = np.maximum(np.round(s * scale), 1.0)
        images.append(image)
        acquisition[name] = {
            "bias_ratio": round(ratio, 3),
            "gamma": round(gamma, 3),
            "noise": round(sigma, 3),
            "scale": round(scale, 1),
        }
    return images, {"signal": {k: [round(v, 3) for v in t] for k, t in table.items()}, "acquisition": acquisition}


# --------------------------------------------------------------------------- cases and the folder


def make_case(template: Template, seed: int, split: str, j: int, spacing: float = SPACING_MM):
    """One case: (images in SEQUENCES order, labels, affine, description)."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, j, 2026])
    lo, hi = world_box(template.affine, template.t1.shape)
    shape, affine, orientation, tilt = grid_affine(rng, lo, hi, spacing)
    coords = warp_coordinates(rng, shape, affine, template, (lo + hi) / 2.0)
    brain_map = (template.t1 > 0).astype(np.float32)
    brain = resample(brain_map, coords) >= 0.5
    wm = np.where(brain, resample(template.wm, coords), 0.0)
    kind = draw_kind(rng) if split == "train" else held_out_kind(seed, j)
    # the tumour is placed on the unpushed anatomy (white matter deep enough for its core), then the
    # anatomy is pushed away from it
    radius = float(rng.uniform(*RADIUS_MM[kind]))
    depth = ndimage.distance_transform_edt(brain) * spacing
    spot = np.argwhere((wm > 0.5) & (depth >= radius + 3.0))
    if not len(spot):
        spot, radius = np.argwhere((wm > 0.5) & (depth >= depth.max() / 2)), float(depth.max() / 2 - 3.0)
    centre = spot[rng.integers(len(spot))]
    mass_effect(coords, centre, spacing, float(rng.uniform(0.1, 0.35)), 1.2 * radius + 5.0)
    brain = resample(brain_map, coords) >= 0.5
    gm, wm = (np.where(brain, resample(m, coords), 0.0).astype(np.float32) for m in (template.gm, template.wm))
    t1 = np.where(brain, resample(template.t1, coords), 0.0).astype(np.float32)
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    labels, foci = tumour(rng, kind, centre, radius, brain, wm, csf, spacing)
    images, drawn = sequences(rng, labels, t1, {"csf": csf, "gm": gm, "wm": wm}, brain)
    voxel = spacing**3
    info = {
        "id": case_id(split, j),
        "split": split,
        "kind": kind,
        "foci": foci,
        "grid": {"shape": list(shape), "orientation": orientation, "tilt_degrees": round(tilt, 2)},
        "volume_mm3": {
            n: float(np.count_nonzero(labels == v) * voxel)
            for n, v in (("necrosis", 1), ("oedema", 2), ("enhancing", 4))
        },
        **drawn,
    }
    return images, labels, affine, info


def write_case(out: Path, images, labels, affine, info: dict[str, Any]) -> None:
    cid = info["id"]
    folder = out / info["split"] / cid
    for name, image in zip(SEQUENCES, images):
        save(folder / f"{cid}_{name}.nii.gz", image, affine)
    target = folder / f"{cid}_seg.nii.gz" if info["split"] == "train" else out / "test_labels" / f"{cid}.nii.gz"
    save(target, labels, affine)


def make_family(
    out: Path,
    n_train: int = 0,
    n_test: int = 4,
    seed: int = DEFAULT_SEED,
    spacing: float = SPACING_MM,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write ``n_train`` training and ``n_test`` held-out cases at ``out`` (emptied first when it is an earlier
    family or empty); returns the manifest (also OUT/manifest.json)."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        try:
            ours = json.loads((out / "manifest.json").read_text())["generator"].startswith(GENERATOR.split(" v")[0])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ours = False
        if not ours:
            raise SystemExit(f"tumour_family: {out}: not empty and not a tumour family; choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    template = load_template()
    manifest: dict[str, Any] = {"generator": GENERATOR, "seed": seed, "spacing_mm": spacing, "cases": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for j in range(n):
            start = time.perf_counter()
            images, labels, affine, info = make_case(template, seed, split, j, spacing)
            write_case(out, images, labels, affine, info)
            manifest["cases"].append(info)
            log(f"tumour family: {info['id']} ({split}) {info['kind']}, {time.perf_counter() - start:.1f} s")
    manifest["train"] = [c["id"] for c in manifest["cases"] if c["split"] == "train"]
    manifest["test"] = [c["id"] for c in manifest["cases"] if c["split"] == "test"]
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest
