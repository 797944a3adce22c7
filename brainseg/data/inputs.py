"""The cases to predict on: :func:`discover_inputs` over folders and single scan files.

Channel files of a case (``ID_0000``, ``ID_0001``, ...) are grouped into one case, any
other scan is a single-channel case; BraTS case folders and roots, MSD / nnU-Net roots,
BIDS roots (:mod:`.bids`) and plain scan folders are recognised. Labels are not looked for.

Given a model's channel names (its card's), each case's channels are put in the model's
order by name: BraTS modalities (2021 and 2023 names), the channels an MSD root's
dataset.json lists for its ``_000N`` files, and files named ``ID_<channel>`` (``ID_FLAIR``,
``sub-01_T1w``, ``ID-t1c``: the model's names or a synonym, see
:func:`~brainseg.data.brats.sequence_of`). ``_000N`` files without names are taken in
index order, as nnU-Net does.

A folder of DICOM files (found by content, see :mod:`brainseg.io.dicom`) is one case per
series: named after the folder when it holds one series, else after each series'
description and UID; sub-folders of DICOM files are one such folder each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from brainseg.data.bids import bids_candidates, is_bids_root
from brainseg.data.brats import (
    brats_candidate,
    is_brats_case_folder,
    scan_brats,
    sequence_of,
)
from brainseg.data.cases import (
    Candidate,
    Case,
    DiscoveryError,
    assemble,
    expected_channels,
    group_channels,
    list_dirs,
    list_images,
    plural,
    shower,
)
from brainseg.data.dataset_json import read_dataset_json
from brainseg.errors import InputError
from brainseg.io.dicom import dicom_files, find_series, is_dicom_file, series_case_id
from brainseg.io.naming import (
    IMAGE_SUFFIXES,
    channel_stem,
    image_suffix,
    split_channel,
    strip_suffix,
)

__all__ = ["discover_inputs"]

log = logging.getLogger(__name__)


def match_channel(name: str, channel_names: Sequence[str]) -> int | None:
    """The index of ``name`` among ``channel_names``: the same name (any case), else the one
    channel of the same MR sequence; None when there is none or several."""
    exact = [i for i, n in enumerate(channel_names) if n.lower() == name.lower()]
    if len(exact) == 1:
        return exact[0]
    seq = sequence_of(name)
    hits = [i for i, n in enumerate(channel_names) if seq is not None and sequence_of(n) == seq]
    return hits[0] if len(hits) == 1 else None


def _named_channel(path: Path, channel_names: Sequence[str]) -> tuple[str, int] | None:
    """``(case id, model channel)`` of a file named ``ID_<channel>`` / ``ID-<channel>``, else None."""
    stem = strip_suffix(path)
    if split_channel(stem):
        return None
    for i, ch in enumerate(stem):  # the longest tail first: "sub-01_t2-flair" is sub-01's flair
        if ch in "_-" and 0 < i < len(stem) - 1:
            index = match_channel(stem[i + 1 :], channel_names)
            if index is not None:
                return stem[:i], index
    return None


def _group(files: Sequence[Path], where: str, channel_names: Sequence[str] | None) -> list[Candidate]:
    """:func:`group_channels`; with a multi-channel model's names, files named ``ID_<channel>``
    are first grouped as the channels of case ``ID``."""
    if not channel_names or len(channel_names) < 2:
        return list(group_channels(files, where).values())
    named: dict[str, Candidate] = {}
    rest = []
    for f in files:
        hit = _named_channel(f, channel_names)
        if hit is None:
            rest.append(f)
            continue
        cand = named.setdefault(hit[0], Candidate(hit[0], where, kind="named", names=tuple(channel_names)))
        cand.channels[hit[1]].append(f)
    return list(named.values()) + list(group_channels(rest, where).values())


def _msd_candidates(
    folder: Path, files: Sequence[Path], where: str, channel_names: Sequence[str] | None, problems: list[str]
) -> list[Candidate]:
    """The ``_000N`` cases of an MSD folder, their channels put in the model's order when the
    folder's dataset.json names them (index order when it does not, or no name matches)."""
    cands = list(group_channels(files, where).values())
    listed = read_dataset_json(folder / "dataset.json", []).channels if (folder / "dataset.json").is_file() else None
    if not channel_names or not listed:
        return cands
    order = [match_channel(n, listed) for n in channel_names]
    if order == list(range(len(channel_names))):
        return cands
    if all(o is None for o in order):
        log.warning(
            "%s: dataset.json names the channels %s, the model %s: none match, so the _000N files are "
            "taken in index order",
            folder,
            list(listed),
            list(channel_names),
        )
        return cands
    if None in order or len(set(order)) < len(order):
        bad = [n for n, o in zip(channel_names, order) if o is None or order.count(o) > 1]
        problems.append(
            f"{folder / 'dataset.json'}: the model's channel(s) {', '.join(map(repr, bad))} cannot be matched "
            f"to one of its channels {list(listed)} (the model's channels: {list(channel_names)})"
        )
        return []
    picks = [o for o in order if o is not None]  # all of order: None was ruled out above
    out = []
    for c in cands:
        missing = [j for j in picks if j not in c.channels]
        if c.kind == "single" or missing:
            if missing:
                names = ", ".join(f"{channel_stem(c.case_id, j)} ({listed[j]})" for j in missing)
                problems.append(f"{where}: case {c.case_id!r} is missing channel file(s) {names}")
            else:
                out.append(c)  # assemble names it
            continue
        moved = Candidate(c.case_id, where)
        for i, j in enumerate(picks):
            moved.channels[i] = c.channels[j]
        out.append(moved)
    return out


def _dicom_candidates(folder: Path, problems: list[str]) -> list[Candidate]:
    """One single-channel case per DICOM series in ``folder``: the folder's name for its only
    series, else each series' description and UID."""
    try:
        series = find_series(folder)
    except InputError as exc:
        problems.append(str(exc))
        return []
    if not series:
        problems.append(f"{folder}: holds DICOM files but no DICOM image series")
        return []
    ids = [folder.resolve().name] if len(series) == 1 else [series_case_id(s) for s in series]
    out = []
    for cid, s in zip(ids, series):
        cand = Candidate(cid, str(folder), kind="single")
        cand.channels[0].append(s)
        out.append(cand)
    return out


def _inputs_from_folder(folder: Path, channel_names: Sequence[str] | None, problems: list[str]) -> list[Candidate]:
    """Candidate cases of one input folder (MSD root, BIDS root, BraTS root or case, scans folder)."""
    show = shower(None)
    if (folder / "dataset.json").is_file() or (folder / "imagesTs").is_dir() or (folder / "imagesTr").is_dir():
        sub = folder / "imagesTs" if (folder / "imagesTs").is_dir() else folder / "imagesTr"
        if not sub.is_dir():
            problems.append(f"{folder}: has dataset.json but neither imagesTs/ nor imagesTr/")
            return []
        files = list_images(sub, problems, show)
        if not files:
            problems.append(f"{sub}: no scans found")
        return _msd_candidates(folder, files, str(sub), channel_names, problems)
    if is_bids_root(folder):
        return bids_candidates(folder, channel_names, problems)
    files = list_images(folder, problems, show)
    if files:
        # resolve() so that "." given for a case folder still yields the folder's name
        case = scan_brats(folder.resolve(), files)
        if is_brats_case_folder(case.folder, case):
            cand, _ = brats_candidate(case, problems, show, channel_names, strict=False)
            return [cand] if cand else []
        return _group(files, str(folder), channel_names)
    if dicom_files(folder):
        return _dicom_candidates(folder, problems)
    brats_cases = [scan_brats(d, list_images(d, problems, show)) for d in list_dirs(folder)]
    brats_cases = [c for c in brats_cases if c.n_modalities]
    if brats_cases:  # a BraTS root: one case per sub-folder with BraTS-named scans
        cands = [brats_candidate(c, problems, show, channel_names, strict=False)[0] for c in brats_cases]
        return [c for c in cands if c is not None]
    if (folder / "images").is_dir():
        files = list_images(folder / "images", problems, show)
        if files:
            return _group(files, str(folder / "images"), channel_names)
    dicom_dirs = [d for d in list_dirs(folder) if dicom_files(d)]
    if dicom_dirs:  # one folder per series (or per study, with several series each)
        return [c for d in dicom_dirs for c in _dicom_candidates(d, problems)]
    problems.append(f"{folder}: no scans found (expected scan files, DICOM files, an MSD folder or BraTS case folders)")
    return []


def discover_inputs(
    paths: Sequence[Path],
    n_channels: int | None = None,
    channel_names: Sequence[str] | None = None,
) -> list[Case]:
    """The cases to predict on, from folders and/or single scan files.

    Each folder may be an MSD / nnU-Net root (its ``imagesTs/``, else ``imagesTr/``), a BIDS
    root (its ``sub-*/[ses-*/]anat/`` scans of the model's contrasts, see :mod:`.bids`), a
    folder of ``ID_NNNN`` files or plain scans, a BraTS root or a single BraTS case
    folder, a folder of DICOM files or of such folders (one case per series). Files named ``ID_0000``, ``ID_0001``, ... (in one folder, or among the files
    given directly) are one multi-channel case ``ID``; any other scan is a single-channel
    case named after its file. ``channel_names`` (a model's channels, see the module
    docstring) orders the channels of named inputs by name and sets ``n_channels`` if that
    is not given; with ``n_channels`` every case must have exactly that many channels. A
    channel the model needs that a case lacks, or a model channel that no name can be
    matched to, is a problem naming it and the case.
    Labels are not looked for (``label`` is None). Cases are sorted by id; ids must be
    unique over all inputs, since each names an output file.
    """
    if channel_names is not None:
        channel_names = tuple(channel_names)
        if n_channels is None:
            n_channels = len(channel_names)
        elif n_channels != len(channel_names):
            raise ValueError(f"n_channels={n_channels} but {len(channel_names)} channel names were given")
    if n_channels is not None and n_channels < 1:
        raise ValueError(f"n_channels must be >= 1, got {n_channels}")
    if not paths:
        raise DiscoveryError("no input paths given")
    problems: list[str] = []
    cands: list[Candidate] = []
    loose: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        key = p.resolve() if p.exists() else p
        if key in seen:
            continue
        seen.add(key)
        if not p.exists():
            problems.append(f"{p}: not found")
        elif p.is_dir():
            cands.extend(_inputs_from_folder(p, channel_names, problems))
        elif is_dicom_file(p):
            problems.append(f"{p}: is one DICOM file; give the folder that holds its series")
        elif image_suffix(p) is None:
            problems.append(f"{p}: not a recognised scan file (expected {', '.join(IMAGE_SUFFIXES)})")
        else:
            loose.append(p)
    cands.extend(_group(loose, "the given files", channel_names))

    unique: dict[str, Candidate] = {}
    clashes: set[str] = set()
    for c in cands:
        if c.case_id in unique:
            other = unique[c.case_id]
            problems.append(
                f"case id {c.case_id!r} is found twice, in {other.where} ({other.first_file()}) and "
                f"in {c.where} ({c.first_file()}), so their output files would collide"
            )
            clashes.add(c.case_id)
        else:
            unique[c.case_id] = c
    if n_channels is not None:
        n, why = n_channels, f"expected {plural(n_channels, 'channel')}"
    else:
        n = expected_channels(unique.values())
        why = f"other cases have {plural(n, 'channel')}"
    images = assemble(unique.values(), n, why, problems, shower(None))
    if not problems and not images:
        problems.append("no scans found in the inputs")
    if problems:
        raise DiscoveryError(problems)
    return [Case(cid, imgs) for cid, imgs in sorted(images.items()) if cid not in clashes]
