"""The demo tumour's shape and appearance models; :mod:`brainseg.demo.tumour` puts them on a warped
template and writes the cases.

**Kinds** (:data:`KINDS`): case ``i`` takes the kind at ``i % 5`` of a shuffle of the five that
depends on the seed and on ``i // 5``, so every five consecutive cases hold each kind once:

``solid``          an enhancing core without necrosis (core radius 3.5-14 mm, log-uniform: small ones too);
``thin_rim``       necrosis inside an enhancing rim of 1.5-3 mm (one voxel at 2 mm; radius 8-24 mm);
``thick_rim``      necrosis inside an enhancing rim of 4-7 mm (radius 12-24 mm);
``non_enhancing``  a core without enhancement (label 1 all through; radius 5-22 mm);
``multifocal``     2-3 separate foci of radius 4-14 mm, each solid or with a 1.5-5 mm rim, 15-45 mm apart.

**Shape**: a core is the union of 1-3 randomly rotated, elongated ellipsoids (axes x0.5-1 of the
radius), its surface roughened by a smooth noise field (amplitude 5-25 %); a rim's thickness varies
over the tumour (x0.8-1.25, smooth) and is measured inside the core (Euclidean distance to its
surface, at least one voxel). Each focus has its oedema: the same model with radius x1.1-1.8 the core
plus 2-12 mm (at most 35 mm) and at least a 2-6 mm margin around the core, kept out of the ventricles (CSF fraction < 0.6). A focus lies where
the brain is deep enough to hold its core, in grey or white matter.

**Appearance**, per case and per sequence (t1, t1ce, t2, flair; relative units, normal white matter
0.82 / 0.78 / 0.42 / 0.48):

* normal tissue (:data:`NORMAL`) from the CSF / grey / white-matter fractions (partial volume kept),
  each class x0.85-1.15 per sequence;
* tumour classes drawn uniformly from :data:`TUMOUR_RANGES` per sequence (oedema bright on T2 and
  FLAIR; necrosis dark on T1 / T1ce, bright on T2; enhancing bright on T1ce), the non-enhancing
  core as that case's oedema times :data:`NON_ENHANCING_VS_OEDEMA` (darker on T1, as bright on
  FLAIR); each tumour class with its own smooth texture (3-12 %), edges blurred (partial volume);
* each sequence its own acquisition (:data:`ACQUISITION`): a smooth multiplicative bias field whose
  max / min over the brain is drawn in 1.1-2.2 (log-uniform), a gamma (0.7-1.5, about the
  brain's median), Gaussian noise inside the brain (1-5 % of the median), an intensity scale
  (x10-x3000, log-uniform) and an offset inside the brain (0-20 % of the scale); outside the
  brain exactly 0 (skull-stripped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainseg.demo.template import rotation, smooth_field
from brainseg.errors import BrainsegError

NECROSIS, OEDEMA, ENHANCING = 1, 2, 4  # BraTS 2021 values, used internally
#: The contrasts in their internal order.
CONTRASTS = ("t1", "t1ce", "t2", "flair")
KINDS = ("solid", "thin_rim", "thick_rim", "non_enhancing", "multifocal")
#: Normal tissue's relative intensity in (t1, t1ce, t2, flair).
NORMAL = {
    "csf": (0.22, 0.20, 1.00, 0.10),
    "gm": (0.55, 0.52, 0.62, 0.62),
    "wm": (0.82, 0.78, 0.42, 0.48),
}
#: Each tumour class's intensity range per sequence (t1, t1ce, t2, flair), drawn per case.
TUMOUR_RANGES = {
    "oedema": ((0.36, 0.60), (0.34, 0.58), (0.70, 1.00), (0.72, 1.10)),
    "necrosis": ((0.12, 0.38), (0.10, 0.34), (0.80, 1.10), (0.30, 0.90)),
    "enhancing": ((0.38, 0.65), (0.95, 1.50), (0.50, 0.85), (0.55, 0.95)),
}
#: The non-enhancing core relative to the same case's oedema, per sequence.
NON_ENHANCING_VS_OEDEMA = ((0.60, 0.85), (0.60, 0.85), (0.85, 1.15), (0.85, 1.10))
NORMAL_JITTER = (0.85, 1.15)
TEXTURE = (0.03, 0.12)
MAX_OEDEMA_MM = 35.0
OEDEMA_MARGIN_MM = (2.0, 6.0)  # oedema at least this far around each core (where the lobes leave none)


@dataclass(frozen=True)
class Acquisition:
    """The ranges each sequence's acquisition is drawn from."""

    bias_ratio: tuple[float, float] = (1.1, 2.2)  # max / min of the field over the brain, log-uniform
    gamma: tuple[float, float] = (0.7, 1.5)
    noise: tuple[float, float] = (0.01, 0.05)  # std, of the brain's median
    scale: tuple[float, float] = (10.0, 3000.0)  # log-uniform
    offset: tuple[float, float] = (0.0, 0.2)  # of the scale, inside the brain


ACQUISITION = Acquisition()


@dataclass(frozen=True)
class Focus:
    """One tumour focus: core radius (mm), rim thickness (mm; None: no necrosis) and enhancement."""

    radius: float
    rim_mm: float | None
    enhancing: bool


def case_kind(seed: int, index: int) -> str:
    """Case ``index``'s kind: a seed-dependent shuffle of :data:`KINDS` per block of five cases."""
    order = np.random.default_rng([seed, index // len(KINDS), 16]).permutation(len(KINDS))
    return KINDS[int(order[index % len(KINDS)])]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_foci(rng: np.random.Generator, kind: str) -> list[Focus]:
    """The foci of a tumour of ``kind`` (see the module docstring for the ranges)."""
    if kind == "solid":
        return [Focus(_log_uniform(rng, 3.5, 14.0), None, True)]
    if kind == "thin_rim":
        return [Focus(float(rng.uniform(8.0, 24.0)), float(rng.uniform(1.5, 3.0)), True)]
    if kind == "thick_rim":
        return [Focus(float(rng.uniform(12.0, 24.0)), float(rng.uniform(4.0, 7.0)), True)]
    if kind == "non_enhancing":
        return [Focus(float(rng.uniform(5.0, 22.0)), None, False)]
    if kind == "multifocal":
        foci = []
        for _ in range(int(rng.integers(2, 4))):
            radius = _log_uniform(rng, 4.0, 14.0)
            rim = float(rng.uniform(1.5, 5.0)) if radius > 7.0 and rng.random() < 0.6 else None
            foci.append(Focus(radius, rim, True))
        return foci
    raise BrainsegError(f"unknown tumour kind {kind!r} (expected one of {', '.join(KINDS)})")


# ----------------------------------------------------------------------------- shapes


def _lobes(rng: np.random.Generator, rel_mm: np.ndarray, radius: float, n: int, spread: float) -> np.ndarray:
    """min over ``n`` random elongated ellipsoids of the normalised distance (< 1 inside), at offsets
    ``rel_mm`` (3, ...) from the focus centre; lobe 0 is centred, the others moved by up to ``spread`` x radius."""
    field = np.full(rel_mm.shape[1:], np.inf, dtype=np.float32)
    for k in range(n):
        direction = rng.normal(size=3)
        centre = np.zeros(3) if k == 0 else direction / np.linalg.norm(direction) * rng.uniform(0.3, spread) * radius
        radii = radius * (1.0 if k == 0 else rng.uniform(0.55, 0.9)) * rng.uniform(0.5, 1.0, size=3)
        radii *= radius / max(float(np.prod(radii)) ** (1 / 3), 1e-6) if k == 0 else 1.0  # lobe 0: the radius's volume
        rot = rotation(rng.normal(size=3), float(rng.uniform(0, 180)))
        d = np.tensordot(
            (rot.T / radii[:, None]).astype(np.float32), rel_mm - centre.astype(np.float32)[:, None, None, None], axes=1
        )
        field = np.minimum(field, np.sqrt((d * d).sum(axis=0)))
    return field


def _place(
    rng: np.random.Generator, depth_mm: np.ndarray, tissue: np.ndarray, radius: float, allowed: np.ndarray | None = None
) -> np.ndarray:
    """A voxel index for a focus centre: in grey or white matter, at least radius + 4 mm inside the brain
    (less where nothing is that deep), and inside ``allowed`` when it has room."""
    for where in (allowed, None):  # a satellite with no room at its distance goes anywhere
        for need in (radius + 4.0, radius, 0.6 * radius):
            ok = (depth_mm >= need) & (tissue > 0.6)
            if where is not None:
                ok &= where
            found = np.argwhere(ok)
            if len(found):
                return found[rng.integers(len(found))]
    raise BrainsegError("demo-data: no place in the brain deep enough for a tumour (is the spacing too coarse?)")


def _box(centre: np.ndarray, reach_mm: float, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    reach = np.ceil(reach_mm / spacing).astype(int) + 2
    return tuple(slice(max(0, int(c - r)), min(n, int(c + r + 1))) for c, r, n in zip(centre, reach, shape))


def _offsets_mm(box: tuple[slice, ...], centre: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(3, ...) world offsets (mm) of the box's voxels from ``centre``, through the grid's affine."""
    idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) - c for s, c in zip(box, centre)], indexing="ij"))
    return np.tensordot(affine[:3, :3].astype(np.float32), idx.astype(np.float32), axes=1)


def _focus_masks(
    rng: np.random.Generator, focus: Focus, rel: np.ndarray, depth: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(core, necrosis, oedema-shape, oedema radius) of one focus on its box."""
    shape = rel.shape[1:]
    rough = float(rng.uniform(0.05, 0.25))
    core_f = _lobes(rng, rel, focus.radius, int(rng.integers(1, 4)), 0.6) * (1 + smooth_field(rng, shape, 6, rough))
    core = (core_f < 1.0) & (depth >= 1.5)
    necrosis = np.zeros_like(core)
    if focus.rim_mm is not None and core.any():
        inside = ndimage.distance_transform_edt(np.pad(core, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        rim = np.maximum(focus.rim_mm * np.exp(smooth_field(rng, shape, 4, 0.12)), float(spacing.max()) + 1e-3)
        necrosis = core & (inside > rim)
    grow = min(focus.radius * float(rng.uniform(1.1, 1.8)) + float(rng.uniform(2.0, 12.0)), MAX_OEDEMA_MM)
    oedema_f = _lobes(rng, rel, grow, int(rng.integers(1, 4)), 0.5) * (1 + smooth_field(rng, shape, 6, 0.15))
    margin = ndimage.distance_transform_edt(~core, sampling=spacing) <= float(rng.uniform(*OEDEMA_MARGIN_MM))
    return core, necrosis, (oedema_f < 1.0) | margin, grow


def tumour_labels(
    rng: np.random.Generator, kind: str, brain: np.ndarray, csf: np.ndarray, tissue: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, dict]:
    """uint8 labels (0, 1 necrosis / non-enhancing core, 2 oedema, 4 enhancing) and a description."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    foci = draw_foci(rng, kind)
    labels = np.zeros(brain.shape, dtype=np.uint8)
    cores: list[tuple[tuple[slice, ...], np.ndarray, np.ndarray, bool]] = []
    described = []
    first: np.ndarray | None = None
    for focus in foci:
        allowed = None
        if first is not None:  # a satellite: 15-45 mm from the first focus
            dist = np.sqrt(
                sum(((np.indices(brain.shape, sparse=True)[a] - first[a]) * spacing[a]) ** 2 for a in range(3))
            )
            allowed = (dist >= 15.0 + focus.radius) & (dist <= 45.0)
        centre = _place(rng, depth, tissue, focus.radius, allowed)
        first = centre if first is None else first
        box = _box(centre, 1.6 * min(focus.radius * 1.8 + 12.0, MAX_OEDEMA_MM), spacing, brain.shape)
        core, necrosis, oedema, grow = _focus_masks(rng, focus, _offsets_mm(box, centre, affine), depth[box], spacing)
        sub = labels[box]
        sub[oedema & brain[box] & (csf[box] < 0.6) & (sub == 0)] = OEDEMA
        cores.append((box, core, necrosis, focus.enhancing))
        described.append(
            {
                "centre_voxel": [int(c) for c in centre],
                "core_radius_mm": round(focus.radius, 2),
                "rim_mm": None if focus.rim_mm is None else round(focus.rim_mm, 2),
                "enhancing": focus.enhancing,
                "oedema_radius_mm": round(grow, 1),
            }
        )
    for box, core, necrosis, enhancing in cores:  # cores last: no focus's oedema covers another's core
        sub = labels[box]
        sub[core] = ENHANCING if enhancing else NECROSIS
        sub[necrosis] = NECROSIS
    voxel = float(abs(np.linalg.det(affine[:3, :3])))
    volumes = {
        name: float(np.count_nonzero(labels == v) * voxel)
        for name, v in (("necrosis", NECROSIS), ("oedema", OEDEMA), ("enhancing", ENHANCING))
    }
    info = {
        "kind": kind,
        "foci": described,
        "core_radius_mm": described[0]["core_radius_mm"],
        "necrosis": bool(volumes["necrosis"] > 0 and volumes["enhancing"] > 0),
        "enhancing": bool(volumes["enhancing"] > 0),
        "volume_mm3": volumes,
    }
    return labels, info


# ----------------------------------------------------------------------------- appearance


def draw_intensities(rng: np.random.Generator) -> dict[str, tuple[float, ...]]:
    """Every class's intensity per sequence for one case (:data:`NORMAL` jittered, :data:`TUMOUR_RANGES`)."""
    table = {name: tuple(float(v * rng.uniform(*NORMAL_JITTER)) for v in values) for name, values in NORMAL.items()}
    for name, ranges in TUMOUR_RANGES.items():
        table[name] = tuple(float(rng.uniform(lo, hi)) for lo, hi in ranges)
    table["non_enhancing"] = tuple(
        float(o * rng.uniform(lo, hi)) for o, (lo, hi) in zip(table["oedema"], NON_ENHANCING_VS_OEDEMA)
    )
    return table


def bias_field(rng: np.random.Generator, brain: np.ndarray, ratio: float) -> np.ndarray:
    """A smooth multiplicative field whose max / min over ``brain`` is ``ratio`` (geometric mean 1 there)."""
    field = smooth_field(rng, brain.shape, 4, 1.0)
    inside = field[brain]
    span = max(float(inside.max() - inside.min()), 1e-6)
    return np.exp((field - np.float32(inside.mean())) * np.float32(math.log(ratio) / span))


def acquire(
    rng: np.random.Generator, signal: np.ndarray, brain: np.ndarray, acq: Acquisition = ACQUISITION
) -> tuple[np.ndarray, dict[str, float]]:
    """One sequence's image from its signal: bias field, gamma, noise, scale and offset (brain only)."""
    ratio = _log_uniform(rng, *acq.bias_ratio)
    gamma = float(rng.uniform(*acq.gamma))
    noise = float(rng.uniform(*acq.noise))
    scale = _log_uniform(rng, *acq.scale)
    offset = float(rng.uniform(*acq.offset)) * scale
    biased = signal[brain] * bias_field(rng, brain, ratio)[brain]
    ref = np.float32(np.median(biased))
    inside = np.power(np.maximum(biased / ref, 0.0), np.float32(gamma)) * ref
    inside += rng.normal(0.0, noise * float(ref), size=inside.shape).astype(np.float32)
    out = np.zeros(brain.shape, dtype=np.float32)
    out[brain] = np.maximum(inside, np.float32(0.01) * ref) * np.float32(scale) + np.float32(offset)
    settings = {"bias_ratio": ratio, "gamma": gamma, "noise": noise, "scale": scale, "offset": offset}
    return out, {k: round(v, 4) for k, v in settings.items()}


def synthesise_contrasts(
    rng: np.random.Generator, brain: np.ndarray, fractions: dict[str, np.ndarray], labels: np.ndarray, kind: str
) -> tuple[list[np.ndarray], dict]:
    """The four images (float32, CONTRASTS order) and what was drawn (intensities, each sequence's acquisition)."""
    table = draw_intensities(rng)
    core_name = "non_enhancing" if kind == "non_enhancing" else "necrosis"
    box = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in ndimage.find_objects((labels > 0).astype(np.uint8))[0])
    sub = labels[box]
    weights = {
        name: ndimage.gaussian_filter((sub == v).astype(np.float32), 0.6)
        for name, v in (("oedema", OEDEMA), (core_name, NECROSIS), ("enhancing", ENHANCING))
    }
    tumour_w = sum(weights.values())
    textures = {name: smooth_field(rng, sub.shape, 8, float(rng.uniform(*TEXTURE))) for name in weights}
    images, acquisitions = [], {}
    for c, contrast in enumerate(CONTRASTS):
        signal = sum(fractions[t] * np.float32(table[t][c]) for t in NORMAL)
        tumour = sum(w * np.float32(table[t][c]) * (1 + textures[t]) for t, w in weights.items())
        signal[box] = signal[box] * (1 - tumour_w) + tumour
        image, acquisitions[contrast] = acquire(rng, signal, brain)
        images.append(image)
    drawn = {
        "intensity": {name: [round(v, 3) for v in values] for name, values in table.items()},
        "acquisition": acquisitions,
    }
    return images, drawn
