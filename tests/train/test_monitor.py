"""curves.png shows the validation Dice of every label (region) by name, beside the mean.

The history is built with the trainer's own helpers (``validation_fields`` for each epoch's
validation columns, ``curve_names`` for what to plot); the figure's lines are read back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainseg.labels.regions import BRATS_2021
from brainseg.train.monitor import curve_names, curves_figure, plot_curves, validation_fields


def history(keys: list) -> list[dict]:
    rows = []
    for epoch in range(1, 5):
        row = {"epoch": epoch, "train_loss": 1.0 / epoch}
        if epoch % 2 == 0:  # validation every second epoch
            row |= validation_fields({k: 0.1 * i + 0.01 * epoch for i, k in enumerate(keys, start=1)})
        rows.append(row)
    return rows


@pytest.mark.parametrize("regions", [None, BRATS_2021], ids=["labels", "regions"])
def test_validation_dice_is_plotted_for_each_label_by_name(regions, tmp_path: Path):
    labels = {0: "background", 1: "grey matter", 2: "white matter", 3: "csf"}
    names = curve_names(labels, regions)
    keys = list(names)
    rows = history(keys)

    fig = curves_figure(rows, names)

    _, dice_ax = fig.axes
    lines = {line.get_label(): line for line in dice_ax.get_lines()}
    expected = list(regions.names) if regions is not None else ["grey matter", "white matter", "csf"]
    assert list(lines) == ["mean", *expected]
    for i, name in enumerate(names.values(), start=1):
        assert list(lines[name].get_xdata()) == [2, 4]
        np.testing.assert_allclose(lines[name].get_ydata(), [0.1 * i + 0.02, 0.1 * i + 0.04])
    np.testing.assert_allclose(lines["mean"].get_ydata(), [r["val_dice_mean"] for r in rows if "val_dice_mean" in r])
    assert [t.get_text() for t in dice_ax.get_legend().get_texts()] == ["mean", *expected]

    plot_curves(tmp_path / "curves.png", rows, names)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
