"""Preview pictures: real PNG files of a scan with its mask over it, read back as pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from brainseg.io.pictures import overlay_figure, preview_png

SHAPE = (20, 24, 18)
AFFINE = np.diag([1.2, 1.0, 2.0, 1.0])
NAMES = {0: "background", 1: "grey matter", 2: "white matter"}


def scan() -> np.ndarray:
    grid = np.indices(SHAPE, dtype=np.float32)
    r = np.sqrt(sum((g - (s - 1) / 2) ** 2 for g, s in zip(grid, SHAPE)))
    return np.where(r < 8, 100 + 5 * grid[0], 0).astype(np.float32)


def mask() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:9, 6:12, 3:8] = 1
    labels[9:14, 6:12, 3:8] = 2
    return labels


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_preview_of_an_empty_and_a_labelled_mask(tmp_path: Path):
    full = preview_png(scan(), mask(), AFFINE, tmp_path / "full.png", NAMES, title="S1")
    empty = preview_png(scan(), np.zeros(SHAPE, np.uint8), AFFINE, tmp_path / "empty.png", NAMES, title="S1")

    assert png_size(full) == png_size(empty) == (1200, 460)  # 12 x 4.6 inches at 100 dpi
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    a, b = imread(full)[..., :3], imread(empty)[..., :3]
    changed = np.any(np.abs(a - b) > 0.05, axis=-1)
    assert changed.mean() > 0.005  # the label colours cover part of the picture
    # an empty mask leaves the scan in grey: every pixel with colour in it is the legend's
    rows_with_colour = np.flatnonzero(np.any(np.ptp(b, axis=-1) > 0.1, axis=1))
    assert rows_with_colour.min() > 0.85 * b.shape[0]


def test_slices_go_through_the_masks_centre_of_mass_with_the_cards_names():
    labels = mask()
    fig = overlay_figure(scan(), labels, AFFINE, NAMES)
    axial, coronal, sagittal = fig.axes[:3]
    centre = np.argwhere(labels > 0).mean(0).round().astype(int)  # RAS already: a diagonal affine
    overlay = {ax.get_title(): ax.get_images()[1].get_array() for ax in (axial, coronal, sagittal)}
    index = np.select([labels == 1, labels == 2], [1, 2], 0)
    assert np.array_equal(overlay["axial"], index[:, :, centre[2]].T)
    assert np.array_equal(overlay["coronal"], index[:, centre[1], :].T)
    assert np.array_equal(overlay["sagittal"], index[centre[0], :, :].T)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["grey matter", "white matter"]
    # empty: through the volume's centre, and the legend still names the card's labels
    fig = overlay_figure(scan(), np.zeros(SHAPE, np.uint8), AFFINE, NAMES)
    assert fig.axes[0].get_images()[0].get_array().shape == (SHAPE[1], SHAPE[0])
    assert np.array_equal(fig.axes[0].get_images()[0].get_array(), scan()[:, :, SHAPE[2] // 2].T)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["grey matter", "white matter"]


def test_a_quality_check_picture_adds_the_uncertainty_on_the_same_slices(tmp_path: Path):
    labels = mask()
    unc = np.zeros(SHAPE, np.float32)
    unc[labels == 2] = 0.6  # unsure of white matter only
    fig = overlay_figure(scan(), labels, AFFINE, NAMES, uncertainty=unc)
    assert len(fig.axes) == 6
    centre = np.argwhere(labels > 0).mean(0).round().astype(int)
    axial_unc = fig.axes[3].get_images()[1].get_array()
    assert fig.axes[3].get_title().startswith("axial: uncertainty")
    shown = ~np.ma.getmaskarray(axial_unc)
    assert np.array_equal(shown, (labels == 2)[:, :, centre[2]].T)  # drawn where it is, nowhere else
    out = preview_png(scan(), labels, AFFINE, tmp_path / "qc.png", NAMES, "S1", unc)
    assert png_size(out) == (1200, 920)  # a second row
