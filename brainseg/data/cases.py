"""Cases and the checks shared by data set and input discovery.

:class:`Case` is one subject (:mod:`.layouts` finds those of a training data set,
:mod:`.inputs` those to predict on); :class:`Dataset` a discovered training data set.
Candidates are grouped from file names only (no image is opened): ``ID_0000``,
``ID_0001``, ... are the channels of case ``ID`` (the rule of :mod:`brainseg.io.naming`).

Everything wrong with a folder is collected and raised at once as one
:class:`DiscoveryError` that names each offending file or case. Hidden files (names
starting with ``.``) and files that are not scans are ignored.

Case ids end up in output file names, so each one passes :func:`safe_case_id`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from brainseg.errors import BrainsegError
from brainseg.io.dicom import DicomSeries
from brainseg.io.naming import (
    channel_stem,
    channel_tag,
    is_image_file,
    split_channel,
    strip_suffix,
)
from brainseg.labels.regions import Regions

__all__ = ["Case", "Dataset", "DiscoveryError", "safe_case_id"]


#: A channel's scan: a file, or a DICOM series (its folder and SeriesInstanceUID).
Scan = Path | DicomSeries


@dataclass(frozen=True)
class Case:
    """One subject: one image file (or DICOM series) per channel, in channel order, and maybe a label map."""

    case_id: str
    images: tuple[Scan, ...]
    label: Path | None = None


@dataclass
class Dataset:
    """A discovered data set: its cases, channel names and label names."""

    root: Path
    layout: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    train: list[Case]
    test: list[Case] = field(default_factory=list)
    #: The regions the data set defines (nnU-Net v2 dataset.json, BraTS layouts), or None.
    regions: Regions | None = None


class DiscoveryError(BrainsegError):
    """A data set or input folder cannot be used; the message lists every problem found.

    ``problems`` holds the individual problems (each naming its file or case) and
    ``where`` the folder they were found in, if any.
    """

    def __init__(self, problems: str | Sequence[str], where: str | os.PathLike | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.where = None if where is None else str(where)
        if len(self.problems) == 1:
            body = self.problems[0]
        else:
            body = f"{len(self.problems)} problems: " + "; ".join(self.problems)
        super().__init__(f"{self.where}: {body}" if self.where else body)


# ----------------------------------------------------------------------------- case ids


def unsafe_reason(case_id: object) -> str | None:
    """Why ``case_id`` cannot be used as an output file name, or None if it can."""
    if not isinstance(case_id, str):
        return f"is a {type(case_id).__name__}, not a string"
    if case_id == "":
        return "is empty"
    if case_id in (".", ".."):
        return f"is {case_id!r}"
    if "\x00" in case_id:
        return "contains a NUL character"
    if os.path.isabs(case_id) or PureWindowsPath(case_id).is_absolute() or PureWindowsPath(case_id).drive:
        return "is an absolute path"
    if "/" in case_id or "\\" in case_id:
        return "contains a path separator"
    if case_id.startswith("."):
        return "starts with '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in case_id):
        return "contains a control character"
    return None


def safe_case_id(case_id: str, source: str) -> str:
    """Return ``case_id`` if it is safe as a file name inside an output folder.

    Refused (:class:`DiscoveryError` naming ``source``, the file or entry the id came
    from): empty ids, ``.`` and ``..``, ids starting with ``.``, absolute paths and
    ids containing ``/``, ``\\``, NUL or another control character.
    """
    reason = unsafe_reason(case_id)
    if reason is not None:
        raise DiscoveryError(
            f"{source}: case id {case_id!r} {reason} (case ids name output files, so they must be plain file names)"
        )
    return case_id


def id_ok(case_id: str, source: str, problems: list[str]) -> bool:
    """Record a problem if ``case_id`` is unsafe; True when it is fine."""
    try:
        safe_case_id(case_id, source)
    except DiscoveryError as exc:
        problems.extend(exc.problems)
        return False
    return True


# ----------------------------------------------------------------------------- folder helpers

Show = Callable[[Scan], str]


def shower(root: Path | None) -> Show:
    """A function printing paths relative to ``root`` (or in full) for messages."""

    def show(path: Scan) -> str:
        if root is not None and isinstance(path, Path):
            try:
                return path.relative_to(root).as_posix()
            except ValueError:
                pass
        return str(path)

    return show


def list_images(folder: Path, problems: list[str], show: Show) -> list[Path]:
    """The scan files directly in ``folder`` (hidden and non-image files skipped), by name.

    An entry named like a scan that is not a readable regular file (a broken symbolic
    link, a folder called ``x.nii.gz``) is kept, so that reading it later reports it by
    name instead of the case silently going missing.
    """
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        problems.append(f"{show(folder)}: cannot be listed ({exc.strerror or exc})")
        return []
    return [p for p in entries if is_image_file(p)]


def list_dirs(folder: Path) -> list[Path]:
    """The non-hidden sub-folders of ``folder``, by name (empty if unreadable)."""
    try:
        return sorted(
            (p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()),
            key=lambda p: p.name,
        )
    except OSError:
        return []


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------- channel grouping


@dataclass
class Candidate:
    """A candidate case before checking: files per channel index, where they came from."""

    case_id: str
    where: str  # folder (or source) shown in messages
    channels: dict[int, list[Scan]] = field(default_factory=lambda: defaultdict(list))
    kind: str = "suffixed"  # "suffixed" (ID_NNNN files), "single" (one plain file), "brats", "named" (ID_<channel>)
    names: tuple[str, ...] = ()  # BraTS channel names / the model's channel names, in order

    def first_file(self) -> Scan:
        return min((f for fs in self.channels.values() for f in fs), key=lambda p: p.name)


def group_channels(files: Iterable[Path], where: str, exact: frozenset[str] = frozenset()) -> dict[str, Candidate]:
    """Group scan files into cases: ``ID_NNNN`` files by ID, any other file on its own.

    A file whose stem is in ``exact`` is a single-channel case under its full stem even
    if it ends in ``_NNNN`` (plain layout: image and label with the same name).
    """
    cands: dict[str, Candidate] = {}
    for f in files:
        stem = strip_suffix(f)
        split = None if stem in exact else split_channel(stem)
        cid, ch, kind = (*split, "suffixed") if split else (stem, 0, "single")
        cand = cands.setdefault(cid, Candidate(cid, where, kind=kind))
        if kind == "suffixed":
            cand.kind = "suffixed"
        cand.channels[ch].append(f)
    return cands


def expected_channels(cands: Iterable[Candidate]) -> int:
    """The channel count implied by the cases themselves: the largest one."""
    n = 0
    for c in cands:
        n = max(n, len(c.names) if c.kind in ("brats", "named") else max(c.channels, default=-1) + 1)
    return n


def assemble(
    cands: Iterable[Candidate], n: int, why: str, problems: list[str], show: Show
) -> dict[str, tuple[Scan, ...]]:
    """Check each candidate (safe id, no duplicates, exactly channels 0..n-1).

    Returns the image tuples of the candidates without problems, by case id; every
    problem found is appended to ``problems``. ``why`` says where ``n`` comes from.
    """
    out: dict[str, tuple[Scan, ...]] = {}
    for c in sorted(cands, key=lambda c: c.case_id):
        cid = c.case_id
        if not id_ok(cid, show(c.first_file()) if c.kind != "brats" else c.where, problems):
            continue  # further checks of an unusable id would only add noise
        ok = True
        for ch, fs in sorted(c.channels.items()):
            if len(fs) > 1:
                what = f" channel _{channel_tag(ch)}" if c.kind == "suffixed" else ""
                problems.append(f"duplicate case id {cid!r}{what}: " + " and ".join(show(f) for f in fs))
                ok = False
        if c.kind == "brats":
            if len(c.names) != n:
                problems.append(
                    f"{c.where}: BraTS case {cid!r} has {plural(len(c.names), 'channel')} "
                    f"({', '.join(c.names)}) but {why}"
                )
                ok = False
        elif c.kind == "named" and any(i not in c.channels for i in range(n)):
            missing = ", ".join(repr(c.names[i]) for i in range(n) if i not in c.channels)
            problems.append(
                f"{c.where}: case {cid!r} has no file for the model's channel(s) {missing} "
                f"(found {', '.join(show(c.channels[i][0]) for i in sorted(c.channels))})"
            )
            ok = False
        elif c.kind == "single" and n != 1:
            problems.append(
                f"{show(c.first_file())}: case {cid!r} is a single file but {why} (give one "
                f"file per channel, named {cid}_0000, {cid}_0001, ...)"
            )
            ok = False
        else:
            absent = [i for i in range(n) if i not in c.channels]
            extra = sorted(i for i in c.channels if i >= n)
            if absent:
                names = ", ".join(channel_stem(cid, i) for i in absent)
                problems.append(f"{c.where}: case {cid!r} is missing channel file(s) {names} ({why})")
                ok = False
            if extra:
                names = ", ".join(show(c.channels[i][0]) for i in extra)
                problems.append(f"{names}: unexpected channel file(s) for case {cid!r} ({why})")
                ok = False
        if ok and n > 0:
            out[cid] = tuple(c.channels[i][0] for i in range(n))
    return out
