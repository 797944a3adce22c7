"""Pictures: a label map over its scan in three orthogonal slices; a box plot of scores; a risk-coverage curve.

matplotlib's object API only (a :class:`~matplotlib.figure.Figure` per picture, no pyplot):
no global backend or figure state, so drawing is safe in any process or thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from brainseg.io.atomic import atomic_path
from brainseg.io.images import read_image, read_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Colours for the foreground labels in ascending order of value (background is transparent).
LABEL_COLOURS = [
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.74, 0.74, 0.13),
]
OVERLAY_ALPHA = 0.45


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 3D array in RAS voxel order and its voxel sizes (mm) along those axes."""
    ornt = nib.orientations.io_orientation(affine)
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ras = nib.orientations.apply_orientation(np.asarray(data), ornt)
    zooms = [0.0, 0.0, 0.0]
    for file_axis, (ras_axis, _) in enumerate(ornt):
        zooms[int(ras_axis)] = float(sizes[file_axis])
    return ras, (zooms[0], zooms[1], zooms[2])


def _save(fig: Figure, out_path: str | os.PathLike) -> Path:
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return out_path


def overlay_figure(
    scan: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    label_names: Mapping[int, str] | None = None,
    title: str | None = None,
    uncertainty: np.ndarray | None = None,
) -> Figure:
    """The label map over the scan (both in file voxel order on the grid ``affine`` maps):
    axial, coronal and sagittal slices in RAS orientation with the true voxel aspect ratio,
    through the label map's centre of mass (the volume's centre when it is empty), and a
    legend of every labelled value: ``label_names``' foreground labels and any other present.
    With ``uncertainty`` (same grid, in [0, 1]) a second row shows it over the same slices, so a
    reader sees where the model hesitated (a quality-check picture)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image, zooms = to_ras(np.asarray(scan, dtype=np.float32), affine)
    lab, _ = to_ras(np.rint(np.asarray(labels)).astype(np.int32), affine)
    fg = np.argwhere(lab > 0)
    centre = fg.mean(0).round().astype(int) if len(fg) else np.array(lab.shape) // 2
    names = dict(label_names or {})
    values = sorted({int(v) for v in names if int(v) > 0} | {int(v) for v in np.unique(lab) if v > 0})
    # label value -> colour index 1..n (0: transparent background)
    index = np.zeros(lab.shape, dtype=np.int32)
    for i, v in enumerate(values, start=1):
        index[lab == v] = i
    colours = [(0.0, 0.0, 0.0, 0.0)] + [
        LABEL_COLOURS[i % len(LABEL_COLOURS)] + (OVERLAY_ALPHA,) for i in range(len(values))
    ]
    cmap = ListedColormap(colours)
    n = max(len(values), 1)
    lo, hi = np.percentile(image[image != 0], [1, 99]) if np.any(image != 0) else (0.0, 1.0)

    views = [
        ("axial", image[:, :, centre[2]], index[:, :, centre[2]], zooms[1] / zooms[0]),
        ("coronal", image[:, centre[1], :], index[:, centre[1], :], zooms[2] / zooms[0]),
        ("sagittal", image[centre[0], :, :], index[centre[0], :, :], zooms[2] / zooms[1]),
    ]
    rows = 1 if uncertainty is None else 2
    fig = Figure(figsize=(12, 4.6 * rows))
    axes = np.asarray(fig.subplots(rows, 3)).reshape(rows, 3)
    for ax, (name, img2d, lab2d, aspect) in zip(axes[0], views):
        ax.imshow(img2d.T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.imshow(lab2d.T, cmap=cmap, origin="lower", vmin=0, vmax=n, aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if uncertainty is not None:
        unc, _ = to_ras(np.asarray(uncertainty, dtype=np.float32), affine)
        top = max(float(np.percentile(unc[unc > 0], 99.5)) if np.any(unc > 0) else 0.0, 0.05)
        cuts = [unc[:, :, centre[2]], unc[:, centre[1], :], unc[centre[0], :, :]]
        for ax, (name, img2d, _, aspect), u2d in zip(axes[1], views, cuts):
            ax.imshow(img2d.T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            shown = np.ma.masked_less(u2d.T, 0.05 * top)
            ax.imshow(shown, cmap="hot", origin="lower", vmin=0, vmax=top, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{name}: uncertainty (dark red to white: 0 to {top:.2f})", fontsize=9)
            ax.axis("off")
    handles = [Patch(color=colours[i][:3], label=names.get(v, f"label {v}")) for i, v in enumerate(values, start=1)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return fig


def preview_png(
    scan: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    out_path: str | os.PathLike,
    label_names: Mapping[int, str] | None = None,
    title: str | None = None,
    uncertainty: np.ndarray | None = None,
) -> Path:
    """Write :func:`overlay_figure` of arrays in memory as a PNG (atomically)."""
    return _save(overlay_figure(scan, labels, affine, label_names, title, uncertainty), out_path)


def overlay_png(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    out_path: str | os.PathLike,
    label_names: Mapping[int, str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of the label map file over the scan file (:func:`overlay_figure`)."""
    scan, geometry = read_image(image_path)
    labels, _ = read_label(label_path)
    return preview_png(scan, labels, geometry.affine, out_path, label_names, title)


def boxplot_figure(groups: Mapping[str, Sequence[float]], title: str, ylabel: str = "Dice") -> Figure:
    """One box per group (the values of a label or region over the cases), each case's value
    drawn as a point over its box. Each median line carries the gid ``median:<group>``."""
    from matplotlib.figure import Figure

    names = list(groups)
    fig = Figure(figsize=(max(4.0, 1.2 * len(names) + 2.0), 4.5))
    ax = fig.subplots()
    data = [np.asarray(groups[n], dtype=np.float64) for n in names]
    boxes = ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30 if len(names) > 6 else 0)
    for name, median in zip(names, boxes["medians"]):
        median.set_gid(f"median:{name}")
    jitter = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.plot(i + jitter.uniform(-0.12, 0.12, len(values)), values, "o", ms=3, alpha=0.6, color="tab:blue")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def boxplot_png(
    out_path: str | os.PathLike, groups: Mapping[str, Sequence[float]], title: str, ylabel: str = "Dice"
) -> Path:
    """Write :func:`boxplot_figure` as a PNG (atomically)."""
    return _save(boxplot_figure(groups, title, ylabel), out_path)


def risk_coverage_figure(
    coverage: Sequence[float], curves: Mapping[str, Sequence[float]], random_level: float, title: str
) -> Figure:
    """Risk (mean of 1 - Dice over the cases kept) against coverage (the fraction of cases kept,
    most trusted first): one line per curve, a dashed line at ``random_level`` (a random order's
    expected risk). Each curve's line carries the gid ``curve:<name>``, the random line ``random``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.subplots()
    x = np.asarray(coverage, dtype=np.float64)
    for name, risk in curves.items():
        (line,) = ax.plot(x, np.asarray(risk, dtype=np.float64), "-o", ms=3, label=name)
        line.set_gid(f"curve:{name}")
    ax.axhline(
        float(random_level), ls="--", color="grey", label=f"random order (AURC {float(random_level):.3f})", gid="random"
    )
    top = max([float(random_level)] + [float(np.max(r)) for r in curves.values() if len(r)])
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, max(top, 0.01) * 1.4)  # room for the legend above the curves
    ax.set_xlabel("coverage (fraction of cases kept, most trusted first)")
    ax.set_ylabel("risk (mean of 1 - Dice)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


def risk_coverage_png(
    out_path: str | os.PathLike,
    coverage: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    random_level: float,
    title: str,
) -> Path:
    """Write :func:`risk_coverage_figure` as a PNG (atomically)."""
    return _save(risk_coverage_figure(coverage, curves, random_level, title), out_path)
