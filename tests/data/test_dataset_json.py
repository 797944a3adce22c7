"""dataset.json: every malformed field named in one message, and region (nnU-Net v2) label tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainseg.data.cases import DiscoveryError
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.evaluate.per_region import regions_from_spec
from tests.conftest import NNUNET_REGIONS, msd_root
from tests.data.conftest import error_of, msd

BAD_JSON = [
    ("{not json", "not valid JSON"),
    ([1, 2], "top level must be a JSON object"),
    ({"labels": {"background": 0}}, '"channel_names" is missing'),
    ({"channel_names": ["T1"]}, '"channel_names" must be a mapping'),
    ({"channel_names": {}}, '"channel_names" is empty'),
    ({"channel_names": {"zero": "T1"}}, "'zero' is not a channel index"),
    ({"channel_names": {"0": "T1", "2": "T2"}}, "without gaps"),
    ({"channel_names": {"0": 7}}, "must have a non-empty name"),
    ({"modality": "FLAIR"}, '"modality" must be a mapping'),
    ({"channel_names": {"0": "T1"}, "labels": ["background", "tumour"]}, '"labels" must be a mapping'),
    ({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": 1.5}}, '"labels" has values of the wrong type'),
    ({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": "1"}}, '"labels" has values of the wrong type'),
    (
        {"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole tumor": [1, 2, 3]}},
        '"regions_class_order" is missing',
    ),
    ({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": 0}}, "value 0 is given to both"),
    ({"channel_names": {"0": "T1"}, "labels": {"background": 0, "x": -1}}, "negative value"),
    ({"channel_names": {"0": "T1"}, "labels": {"0": "background", "one": "x"}}, "'one' is not a label value"),
    ({"channel_names": {"0": "T1"}, "file_ending": ".png"}, '"file_ending" must be one of'),
    ({"channel_names": {"0": "T1"}, "file_ending": 3}, '"file_ending" must be one of'),
]


@pytest.mark.parametrize("content, expected", BAD_JSON, ids=[e for _, e in BAD_JSON])
def test_bad_dataset_json(tmp_path: Path, content: object, expected: str) -> None:
    root = msd(tmp_path / "ds", {"a": 1})
    text = content if isinstance(content, str) else json.dumps(content)
    (root / "dataset.json").write_text(text)
    msg = error_of(discover_dataset, root)
    assert "dataset.json" in msg and expected in msg


def test_region_dataset_json_gives_regions_and_the_label_table(tmp_path):
    ds = discover_dataset(msd_root(tmp_path / "ds", NNUNET_REGIONS))
    assert ds.regions.names == ("whole tumor", "tumor core", "enhancing tumor")
    assert ds.regions.labels == ((1, 2, 3), (2, 3), (3,)) and ds.regions.class_order == (1, 2, 3)
    assert ds.labels == {0: "background", 1: "whole tumor", 2: "tumor core", 3: "enhancing tumor"}
    # a single value is a region of one label; a value no region writes is named label_N
    meta = dict(NNUNET_REGIONS, labels={"bg": 0, "lesion": [1, 2, 5], "active": 2}, regions_class_order=[1, 2])
    ds = discover_dataset(msd_root(tmp_path / "ds2", meta))
    assert ds.regions.names == ("lesion", "active") and ds.regions.labels == ((1, 2, 5), (2,))
    assert ds.labels == {0: "bg", 1: "lesion", 2: "active", 5: "label_5"}
    # the same file through --regions
    assert regions_from_spec(str(tmp_path / "ds" / "dataset.json")) == discover_dataset(tmp_path / "ds").regions
    # plain labels (the Decathlon's Task01 names): no regions
    plain = dict(NNUNET_REGIONS, labels={"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3})
    ds = discover_dataset(msd_root(tmp_path / "plain", plain))  # regions_class_order ignored, as nnU-Net does
    assert ds.regions is None and ds.labels == {
        0: "background",
        1: "edema",
        2: "non-enhancing tumor",
        3: "enhancing tumour",
    }


BAD_REGIONS = [
    (
        {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3]}},
        "\"labels\" defines regions ('whole tumor', 'tumor core') but \"regions_class_order\" is missing",
    ),
    ({"regions_class_order": [1, 2]}, '"regions_class_order" must list one label value per region (3:'),
    ({"regions_class_order": "1,2,3"}, '"regions_class_order" must list one label value per region'),
    ({"regions_class_order": [1, 2, 1]}, "'enhancing tumor' writes label 1, which it does not contain [3]"),
    ({"labels": {"background": 0, "whole tumor": [], "x": [3]}}, "region 'whole tumor' must be a non-empty list"),
    ({"labels": {"background": 0, "whole tumor": [1, -2], "x": [3]}}, "region 'whole tumor' must be a non-empty list"),
    ({"labels": {"background": 0, "whole tumor": ["1"], "x": [3]}}, "region 'whole tumor' must be a non-empty list"),
]


@pytest.mark.parametrize("change, expected", BAD_REGIONS, ids=[e[:40] for _, e in BAD_REGIONS])
def test_malformed_region_dataset_json_is_one_line_naming_the_file(tmp_path, change, expected):
    meta = {**NNUNET_REGIONS, **change}
    if "labels" in change and "regions_class_order" not in change:
        meta.pop("regions_class_order")
    root = msd_root(tmp_path / "ds", meta)
    with pytest.raises(DiscoveryError) as info:
        discover_dataset(root)
    msg = str(info.value)
    assert len(info.value.problems) == 1 and "\n" not in msg
    assert msg.startswith(f"{root}: dataset.json: field") and expected in msg
    with pytest.raises(BrainsegError, match="dataset.json"):
        regions_from_spec(str(root / "dataset.json"))
