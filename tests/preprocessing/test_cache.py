"""The training cache: its key covers what changes it (the ``ct`` statistics, the label set), and it is rebuilt when they change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainseg.config import PostprocessConfig, load_config
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.infer.predictor import Predictor
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model
from brainseg.preprocessing.cache import cache_cases, intensity_statistics
from brainseg.preprocessing.normalisation import ChannelIntensity
from brainseg.train.recipe import label_table
from tests.conftest import CT_SHAPE, CT_SPACING, ct_dataset, ct_volume, save_ct


def test_ct_dataset_statistics_go_into_the_cache_key_and_round_trip_in_the_card(tmp_path, tiny_checkpoint):
    ds = discover_dataset(ct_dataset(tmp_path / "ct"))
    stats = intensity_statistics(ds.train, tmp_path / "cache")
    (st,) = stats
    # over the labelled voxels (nnU-Net's foreground): tissue, bone and the 0 HU block, no air
    assert -10.0 < st.percentile_00_5 <= 0.0 and st.percentile_99_5 == 1000.0 and 40.0 < st.mean < 600.0
    assert intensity_statistics(ds.train, tmp_path / "cache") == stats  # read back from intensity.json
    cached = cache_cases(ds.train, tmp_path / "cache", CT_SPACING, [0, 1, 2], "ct", intensity=stats, progress=False)
    image, _ = cached[0].load()
    assert image.max() <= (1000.0 - st.mean) / st.std + 1e-5
    key = json.loads((tmp_path / "cache" / "c0.json").read_text())["key"]
    other = [ChannelIntensity(st.mean + 1.0, st.std, st.percentile_00_5, st.percentile_99_5)]
    cache_cases(ds.train, tmp_path / "cache", CT_SPACING, [0, 1, 2], "ct", intensity=other, progress=False)
    assert json.loads((tmp_path / "cache" / "c0.json").read_text())["key"] != key

    # the card keeps them; predict normalises with them; old cards (no "intensity") still read
    model, card = load_model(tiny_checkpoint, "cpu")
    raw = card.to_dict()
    raw["normalization"]["scheme"] = "ct"
    with pytest.raises(BrainsegError, match="'ct' but intensities for 0 of 1"):
        ModelCard.from_dict(raw, "x.pt")
    raw["intensity"] = [s.to_dict() for s in stats]
    ct_card = ModelCard.from_dict(raw, "x.pt")
    assert ct_card.intensity == tuple(stats) and ModelCard.from_dict(ct_card.to_dict()) == ct_card
    old = card.to_dict()
    del old["intensity"]
    assert ModelCard.from_dict(old).intensity == ()
    predictor = Predictor(model, ct_card, load_config().infer, PostprocessConfig(), "cpu")
    case = predictor.prepare([ds.train[0].images[0]])
    assert case.record.norm_mean == [st.mean] and case.record.norm_std == [st.std]


def test_cache_is_rebuilt_when_the_label_set_changes(tmp_path):
    """A shared cache folder, dataset.json's labels edited: class indices follow the new labels."""
    root = tmp_path / "ds"
    hu, body, block = ct_volume()
    save_ct(root / "imagesTr" / "a_0000.nii.gz", hu)
    lab = np.zeros(CT_SHAPE, np.uint8)
    lab[body] = 2
    lab[block] = 4
    save_ct(root / "labelsTr" / "a.nii.gz", lab)
    shared = tmp_path / "shared_cache"
    seg = {}
    for labels in ({"0": "bg", "2": "body", "4": "water"}, {"0": "bg", "1": "new", "2": "body", "4": "water"}):
        (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels}))
        ds = discover_dataset(root)
        values = list(label_table(ds.labels, ds.train, 1024**3))
        (cached,) = cache_cases(ds.train, shared, CT_SPACING, values, progress=False)
        seg[len(values)] = np.asarray(cached.load(mmap=False)[1])
    assert set(np.unique(seg[3])) == {0, 1, 2}  # 2 -> class 1, 4 -> class 2
    assert set(np.unique(seg[4])) == {0, 2, 3}  # 2 -> class 2, 4 -> class 3: rebuilt, not reused
    assert np.array_equal(seg[4] == 3, seg[3] == 2)
