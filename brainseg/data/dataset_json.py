"""Reading and validating an nnU-Net v2 / MSD ``dataset.json``.

It gives the channel names (v2 ``channel_names`` or MSD ``modality``), the labels (v2
``{name: value}`` or MSD ``{"value": name}``), optionally ``file_ending``, and the regions
of nnU-Net v2's region-based form (``"labels": {"background": 0, "whole tumor": [1, 2, 3],
"tumor core": [2, 3], "enhancing tumor": [3]}, "regions_class_order": [1, 2, 3]``; see
:func:`_parse_regions`). Every problem is collected, naming the file and the field. The ``training`` list is not used:
cases come from the folders, as in nnU-Net v2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from brainseg.data.cases import Show
from brainseg.errors import BrainsegError
from brainseg.io.naming import IMAGE_SUFFIXES, image_suffix
from brainseg.labels.regions import Regions

_INT_KEY_RE = re.compile(r"^[0-9]+$")


@dataclass
class JsonInfo:
    channels: tuple[str, ...] | None = None
    labels: dict[int, str] = field(default_factory=dict)
    file_ending: str | None = None
    #: The regions of a region-based dataset.json, else None.
    regions: Regions | None = None


def _jtype(value: object) -> str:
    """A JSON-ish name for the type of ``value`` for messages."""
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_dataset_json(path: Path, problems: list[str]) -> JsonInfo:
    """Read and validate ``dataset.json``; every problem names the file and the field."""
    info = JsonInfo()
    name = path.name
    try:
        text = path.read_bytes().decode("utf-8-sig")
        data = json.loads(text)
    except OSError as exc:
        problems.append(f"{name}: cannot be read ({exc.strerror or exc})")
        return info
    except UnicodeDecodeError:
        problems.append(f"{name}: not valid JSON (not UTF-8 text)")
        return info
    except (ValueError, RecursionError) as exc:
        problems.append(f"{name}: not valid JSON ({str(exc)[:200]})")
        return info
    if not isinstance(data, dict):
        problems.append(f"{name}: the top level must be a JSON object, got {_jtype(data)}")
        return info
    info.channels = _parse_channels(name, data, problems)
    if "labels" in data:
        info.labels, info.regions = _parse_labels(name, data["labels"], data.get("regions_class_order"), problems)
    if "file_ending" in data:
        ending = data["file_ending"]
        if isinstance(ending, str) and ending.lower() in IMAGE_SUFFIXES:
            info.file_ending = ending.lower()
        else:
            problems.append(f'{name}: field "file_ending" must be one of {", ".join(IMAGE_SUFFIXES)}, got {ending!r}')
    return info


def _parse_channels(name: str, data: dict, problems: list[str]) -> tuple[str, ...] | None:
    """Channel names from ``channel_names`` (nnU-Net v2) or ``modality`` (MSD)."""
    key = "channel_names" if "channel_names" in data else "modality" if "modality" in data else None
    if key is None:
        problems.append(
            f'{name}: field "channel_names" is missing (nnU-Net v2: "channel_names": '
            '{"0": "T1"}, or MSD: "modality": {"0": "FLAIR"})'
        )
        return None
    value = data[key]
    if not isinstance(value, dict):
        problems.append(f'{name}: field "{key}" must be a mapping like {{"0": "T1"}}, got {_jtype(value)}')
        return None
    if not value:
        problems.append(f'{name}: field "{key}" is empty (it must name at least one channel)')
        return None
    by_index: dict[int, str] = {}
    bad = False
    for k, v in value.items():
        if not _INT_KEY_RE.match(k):
            problems.append(f'{name}: field "{key}": key {k!r} is not a channel index ("0", "1", ...)')
            bad = True
            continue
        if not isinstance(v, str) or not v.strip():
            problems.append(f'{name}: field "{key}": channel {k} must have a non-empty name, got {v!r}')
            bad = True
            continue
        if int(k) in by_index:
            problems.append(f'{name}: field "{key}": channel index {int(k)} is given twice')
            bad = True
            continue
        by_index[int(k)] = v
    if bad:
        return None
    if sorted(by_index) != list(range(len(by_index))):
        problems.append(
            f'{name}: field "{key}": channel indices must be 0..{len(by_index) - 1} without gaps, '
            f"got {sorted(by_index)}"
        )
        return None
    return tuple(by_index[i] for i in range(len(by_index)))


def _parse_labels(
    name: str, value: object, class_order: object, problems: list[str]
) -> tuple[dict[int, str], Regions | None]:
    """Labels as value -> name from v2 ``{name: value}`` or MSD ``{"value": name}``, and the
    regions when some label maps to a list of values (:func:`_parse_regions`)."""
    help_ = '{"background": 0, "tumour": 1} (nnU-Net v2) or {"0": "background", "1": "tumour"} (MSD)'
    if not isinstance(value, dict):
        problems.append(f'{name}: field "labels" must be a mapping like {help_}, got {_jtype(value)}')
        return {}, None
    if not value:
        return {}, None
    if any(isinstance(v, (list, tuple)) for v in value.values()):
        return _parse_regions(name, value, class_order, problems)
    return _parse_plain_labels(name, value, help_, problems), None


def _parse_regions(
    name: str, value: dict, class_order: object, problems: list[str]
) -> tuple[dict[int, str], Regions | None]:
    """nnU-Net v2 region-based labels: every entry but the background (value 0) is a region (a
    list of label values, or one value); ``regions_class_order`` gives, per region in the order
    of the entries, the label value it writes. The label table is the background plus every
    value some region holds, named after the region that writes it (else ``label_N``).

    With plain labels (no list) a ``regions_class_order`` is ignored, as nnU-Net ignores it."""
    where = f'{name}: field "labels"'
    background = "background"
    names: list[str] = []
    values: list[tuple[int, ...]] = []
    for key, v in value.items():
        if _is_int(v) and v == 0:
            background = key
            continue
        items = [v] if _is_int(v) else v if isinstance(v, list) else None
        if not items or not all(_is_int(x) and x > 0 for x in items):
            problems.append(f"{where}: region {key!r} must be a non-empty list of positive label values, got {v!r}")
            return {}, None
        names.append(key)
        values.append(tuple(sorted(set(items))))
    if class_order is None:
        problems.append(
            f'{where} defines regions ({", ".join(map(repr, names))}) but "regions_class_order" is missing '
            f"(nnU-Net v2: the label value each region writes, e.g. {[v[-1] for v in values]})"
        )
        return {}, None
    if not isinstance(class_order, list) or not all(_is_int(x) for x in class_order) or len(class_order) != len(names):
        problems.append(
            f'{name}: field "regions_class_order" must list one label value per region ({len(names)}: '
            f"{', '.join(map(repr, names))}), got {class_order!r}"
        )
        return {}, None
    try:
        regions = Regions(tuple(names), tuple(values), tuple(class_order))
    except BrainsegError as exc:
        problems.append(f'{name}: field "regions_class_order": {exc}')
        return {}, None
    writer = {v: n for n, v in zip(regions.names, regions.class_order)}
    labels = {0: background, **{v: writer.get(v, f"label_{v}") for v in regions.label_values}}
    return labels, regions


def _parse_plain_labels(name: str, value: dict, help_: str, problems: list[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    if all(_is_int(v) for v in value.values()):  # nnU-Net v2: name -> value
        for label_name, v in value.items():
            if v < 0:
                problems.append(f'{name}: field "labels": {label_name!r} has negative value {v}')
            elif v in out:
                problems.append(f'{name}: field "labels": value {v} is given to both {out[v]!r} and {label_name!r}')
            elif not label_name.strip():
                problems.append(f'{name}: field "labels": value {v} has an empty name')
            else:
                out[v] = label_name
    elif all(isinstance(v, str) for v in value.values()):  # MSD: "value" -> name
        for k, label_name in value.items():
            if not _INT_KEY_RE.match(k):
                problems.append(f'{name}: field "labels": key {k!r} is not a label value (expected {help_})')
            elif int(k) in out:
                problems.append(f'{name}: field "labels": value {int(k)} is given twice')
            elif not label_name.strip():
                problems.append(f'{name}: field "labels": value {k} has an empty name')
            else:
                out[int(k)] = label_name
    else:
        bad = [f"{k!r}: {_jtype(v)}" for k, v in value.items() if not (_is_int(v) or isinstance(v, str))]
        detail = ", ".join(bad) if bad else "integer values and names are mixed"
        problems.append(f'{name}: field "labels" has values of the wrong type ({detail}), expected {help_}')
        return {}
    return dict(sorted(out.items()))


def check_endings(files: Iterable[Path], ending: str | None, problems: list[str], show: Show) -> None:
    """Files whose suffix differs from dataset.json's ``file_ending`` are problems."""
    if ending is None:
        return
    for f in files:
        if image_suffix(f) != ending:
            problems.append(f"{show(f)}: file ending {image_suffix(f)} differs from dataset.json file_ending {ending}")
