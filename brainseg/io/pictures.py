"""Pictures: a label map over its scan in three orthogonal slices."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainseg.io.atomic import atomic_path

#: Colours for labels 1.. (background is transparent).
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


def _canonical(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return np.asarray(data, dtype=np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])


def overlay_png(
    image_path: Path,
    label_path: Path,
    out_path: Path,
    label_names: dict[int, str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of the label map over the scan: axial, coronal, sagittal slices.

    Both files are shown in RAS orientation with their true voxel aspect ratio, cut
    through the centre of the labelled region.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from matplotlib.patches import Patch

    image, zooms = _canonical(Path(image_path))
    labels, _ = _canonical(Path(label_path))
    labels = np.rint(labels).astype(np.int32)
    fg = np.argwhere(labels > 0)
    centre = fg.mean(0).round().astype(int) if len(fg) else np.array(labels.shape) // 2
    values = [int(v) for v in np.unique(labels) if v > 0]
    n = max(values + [1])
    colours = [(0, 0, 0, 0)] + [LABEL_COLOURS[(i - 1) % len(LABEL_COLOURS)] + (0.45,) for i in range(1, n + 1)]
    cmap = ListedColormap(colours)
    lo, hi = np.percentile(image[image != 0], [1, 99]) if np.any(image != 0) else (0.0, 1.0)

    views = [
        ("axial", image[:, :, centre[2]], labels[:, :, centre[2]], zooms[1] / zooms[0]),
        ("coronal", image[:, centre[1], :], labels[:, centre[1], :], zooms[2] / zooms[0]),
        ("sagittal", image[centre[0], :, :], labels[centre[0], :, :], zooms[2] / zooms[1]),
    ]
    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(1, 3)
    for ax, (name, img2d, lab2d, aspect) in zip(axes, views):
        ax.imshow(img2d.T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.imshow(lab2d.T, cmap=cmap, origin="lower", vmin=0, vmax=n, aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    names = label_names or {}
    handles = [Patch(color=colours[v][:3], label=names.get(v, f"label {v}")) for v in values]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return out_path
