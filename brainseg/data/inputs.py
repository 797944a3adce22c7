"""The cases to predict on: :func:`discover_inputs` over folders and single scan files.

Channel files of a case (``ID_0000``, ``ID_0001``, ...) are grouped into one case, any
other scan is a single-channel case; BraTS case folders and roots, MSD / nnU-Net roots
and plain scan folders are recognised. Labels are not looked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..naming import IMAGE_SUFFIXES, image_suffix
from .brats import brats_candidate, is_brats_case_folder, scan_brats
from .cases import Candidate, Case, DiscoveryError, assemble, expected_channels, group_channels, list_dirs, list_images, plural, shower

__all__ = ["discover_inputs"]


def _inputs_from_folder(
    folder: Path, channel_names: Sequence[str] | None, problems: list[str]
) -> list[Candidate]:
    """Candidate cases of one input folder (MSD root, BraTS root or case, scans folder)."""
    show = shower(None)
    if (folder / "dataset.json").is_file() or (folder / "imagesTs").is_dir() or (folder / "imagesTr").is_dir():
        sub = folder / "imagesTs" if (folder / "imagesTs").is_dir() else folder / "imagesTr"
        if not sub.is_dir():
            problems.append(f"{folder}: has dataset.json but neither imagesTs/ nor imagesTr/")
            return []
        files = list_images(sub, problems, show)
        if not files:
            problems.append(f"{sub}: no scans found")
        return list(group_channels(files, str(sub)).values())
    files = list_images(folder, problems, show)
    if files:
        # resolve() so that "." given for a case folder still yields the folder's name
        case = scan_brats(folder.resolve(), files)
        if is_brats_case_folder(case.folder, case):
            cand, _ = brats_candidate(case, problems, show, channel_names, strict=False)
            return [cand] if cand else []
        return list(group_channels(files, str(folder)).values())
    brats_cases = [scan_brats(d, list_images(d, problems, show)) for d in list_dirs(folder)]
    brats_cases = [c for c in brats_cases if c.n_modalities]
    if brats_cases:  # a BraTS root: one case per sub-folder with BraTS-named scans
        cands = [brats_candidate(c, problems, show, channel_names, strict=False)[0] for c in brats_cases]
        return [c for c in cands if c is not None]
    if (folder / "images").is_dir():
        files = list_images(folder / "images", problems, show)
        if files:
            return list(group_channels(files, str(folder / "images")).values())
    problems.append(f"{folder}: no scans found (expected scan files, an MSD folder or BraTS case folders)")
    return []


def discover_inputs(
    paths: Sequence[Path],
    n_channels: int | None = None,
    channel_names: Sequence[str] | None = None,
) -> list[Case]:
    """The cases to predict on, from folders and/or single scan files.

    Each folder may be an MSD / nnU-Net root (its ``imagesTs/``, else ``imagesTr/``), a
    folder of ``ID_NNNN`` files or plain scans, a BraTS root or a single BraTS case
    folder. Files named ``ID_0000``, ``ID_0001``, ... (in one folder, or among the files
    given directly) are one multi-channel case ``ID``; any other scan is a single-channel
    case named after its file. ``channel_names`` (a model's channels) orders the
    modalities of BraTS cases when they are BraTS names and sets ``n_channels`` if that
    is not given; with ``n_channels`` every case must have exactly that many channels.
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
        elif image_suffix(p) is None:
            problems.append(f"{p}: not a recognised scan file (expected {', '.join(IMAGE_SUFFIXES)})")
        else:
            loose.append(p)
    cands.extend(group_channels(loose, "the given files").values())

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
