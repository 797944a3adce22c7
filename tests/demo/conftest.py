from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainseg.io.images import read_image, read_label

mni = pytest.importorskip("brainseg.demo.template")


@pytest.fixture(scope="module")
def demo_dir(demo_data) -> Path:
    """``brainseg demo-data OUT --n 4`` (shared by the session; read only)."""
    return demo_data


@pytest.fixture(scope="module")
def meta(demo_dir) -> dict:
    return json.loads((demo_dir / "dataset.json").read_text())


@pytest.fixture(scope="module")
def cases(demo_dir, meta) -> list[dict]:
    """Every case listed in dataset.json, read back with brainseg.io.images."""
    loaded = []
    for entry in meta["training"] + meta["test"]:
        image, igeom = read_image(demo_dir / entry["image"])
        labels, lgeom = read_label(demo_dir / entry["label"])
        loaded.append({"entry": entry, "image": image, "igeom": igeom, "labels": labels, "lgeom": lgeom})
    return loaded


@pytest.fixture(scope="module")
def template():
    return mni.load_template()
