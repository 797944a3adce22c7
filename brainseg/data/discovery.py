"""Finding the cases in a data set folder, or among the inputs of a batch prediction.

Three on-disk layouts are read by :func:`discover_dataset`:

``msd``
    nnU-Net v2 / Medical Segmentation Decathlon: ``dataset.json``, ``imagesTr/ID_0000.nii.gz``
    (one file per channel, ``_0001``, ... for further channels), ``labelsTr/ID.nii.gz``,
    optionally ``imagesTs/`` and ``labelsTs/``. ``dataset.json`` gives the channel names
    (v2 ``channel_names`` or MSD ``modality``), the labels (v2 ``{name: value}`` or MSD
    ``{"value": name}``) and optionally ``file_ending``. Without ``dataset.json`` the
    channels are named after their file suffixes (``"0000"``, ``"0001"``, ...) and the
    labels are left to be inferred from the data. The ``training`` list of ``dataset.json``
    is not used: cases come from the folders, as in nnU-Net v2.
``brats``
    One folder per case holding ``ID_t1``, ``ID_t1ce``, ``ID_t2``, ``ID_flair`` and
    ``ID_seg`` (BraTS up to 2021) or ``ID-t1n``, ``ID-t1c``, ``ID-t2w``, ``ID-t2f`` and
    ``ID-seg`` (BraTS 2023 on). Cases without a segmentation go to the test split.
``plain``
    ``images/`` and ``labels/``, matched by file name (``X.nii.gz`` with ``X.nii.gz``, or
    ``X_0000.nii.gz`` [``X_0001``, ...] with ``X.nii.gz``).

``"files"`` is the layout name for a :class:`Dataset` that a caller assembles from
loose files (for example from :func:`discover_inputs`); discovery never returns it.

Everything wrong with a folder is collected and raised at once as one
:class:`DiscoveryError` that names each offending file or case. Hidden files (names
starting with ``.``) and files that are not scans are ignored. Only file names are
looked at; no image is opened here.

Case ids end up in output file names, so each one passes :func:`safe_case_id`.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Callable, Iterable, Sequence

from ..errors import BrainsegError
from ..naming import IMAGE_SUFFIXES, image_suffix, is_image_file, strip_suffix

__all__ = [
    "BRATS_2023",
    "BRATS_CLASSIC",
    "Case",
    "Dataset",
    "DiscoveryError",
    "LAYOUTS",
    "discover_dataset",
    "discover_inputs",
    "safe_case_id",
]

LAYOUTS = ("msd", "brats", "plain", "files")

#: BraTS channel names, in channel order (up to BraTS 2021, and from BraTS 2023 on).
BRATS_CLASSIC = ("t1", "t1ce", "t2", "flair")
BRATS_2023 = ("t1n", "t1c", "t2w", "t2f")
_BRATS_SEG = "seg"
_BRATS_STYLES = {"classic": BRATS_CLASSIC, "2023": BRATS_2023}
# The same sequence under either naming, for matching a model's channel names.
_BRATS_ALIAS = {**dict(zip(BRATS_CLASSIC, BRATS_2023)), **dict(zip(BRATS_2023, BRATS_CLASSIC))}

# nnU-Net channel suffix: ID_0000, ID_0001, ... (exactly four digits).
_CHANNEL_RE = re.compile(r"^(?P<id>.*)_(?P<ch>[0-9]{4})$", re.DOTALL)
_INT_KEY_RE = re.compile(r"^[0-9]+$")

_LAYOUT_HELP = (
    "expected dataset.json with imagesTr/ and labelsTr/ (nnU-Net / MSD), one folder per "
    "case with ID_t1, ID_t1ce, ID_t2, ID_flair, ID_seg or ID-t1n, ID-t1c, ID-t2w, ID-t2f, "
    "ID-seg (BraTS), or images/ and labels/"
)


# ----------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Case:
    """One subject: one image file per channel (in channel order) and maybe a label map."""

    case_id: str
    images: tuple[Path, ...]
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


def _unsafe_reason(case_id: object) -> str | None:
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
    reason = _unsafe_reason(case_id)
    if reason is not None:
        raise DiscoveryError(
            f"{source}: case id {case_id!r} {reason} (case ids name output files, "
            "so they must be plain file names)"
        )
    return case_id


def _id_ok(case_id: str, source: str, problems: list[str]) -> bool:
    """Record a problem if ``case_id`` is unsafe; True when it is fine."""
    try:
        safe_case_id(case_id, source)
    except DiscoveryError as exc:
        problems.extend(exc.problems)
        return False
    return True


# ----------------------------------------------------------------------------- folder helpers

Show = Callable[[Path], str]


def _shower(root: Path | None) -> Show:
    """A function printing paths relative to ``root`` (or in full) for messages."""

    def show(path: Path) -> str:
        if root is not None:
            try:
                return path.relative_to(root).as_posix()
            except ValueError:
                pass
        return str(path)

    return show


def _list_images(folder: Path, problems: list[str], show: Show) -> list[Path]:
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


def _list_dirs(folder: Path) -> list[Path]:
    """The non-hidden sub-folders of ``folder``, by name (empty if unreadable)."""
    try:
        return sorted(
            (p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()),
            key=lambda p: p.name,
        )
    except OSError:
        return []


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------- channel grouping


@dataclass
class _Cand:
    """A candidate case before checking: files per channel index, where they came from."""

    case_id: str
    where: str  # folder (or source) shown in messages
    channels: dict[int, list[Path]] = field(default_factory=lambda: defaultdict(list))
    kind: str = "suffixed"  # "suffixed" (ID_NNNN files), "single" (one plain file), "brats"
    names: tuple[str, ...] = ()  # BraTS channel names, in order

    def first_file(self) -> Path:
        return min((f for fs in self.channels.values() for f in fs), key=lambda p: p.name)


def _group(
    files: Iterable[Path], where: str, exact: frozenset[str] = frozenset()
) -> dict[str, _Cand]:
    """Group scan files into cases: ``ID_NNNN`` files by ID, any other file on its own.

    A file whose stem is in ``exact`` is a single-channel case under its full stem even
    if it ends in ``_NNNN`` (plain layout: image and label with the same name).
    """
    cands: dict[str, _Cand] = {}
    for f in files:
        stem = strip_suffix(f)
        m = None if stem in exact else _CHANNEL_RE.match(stem)
        cid, ch, kind = (m["id"], int(m["ch"]), "suffixed") if m else (stem, 0, "single")
        cand = cands.setdefault(cid, _Cand(cid, where, kind=kind))
        if kind == "suffixed":
            cand.kind = "suffixed"
        cand.channels[ch].append(f)
    return cands


def _expected_channels(cands: Iterable[_Cand]) -> int:
    """The channel count implied by the cases themselves: the largest one."""
    n = 0
    for c in cands:
        n = max(n, len(c.names) if c.kind == "brats" else max(c.channels, default=-1) + 1)
    return n


def _assemble(
    cands: Iterable[_Cand], n: int, why: str, problems: list[str], show: Show
) -> dict[str, tuple[Path, ...]]:
    """Check each candidate (safe id, no duplicates, exactly channels 0..n-1).

    Returns the image tuples of the candidates without problems, by case id; every
    problem found is appended to ``problems``. ``why`` says where ``n`` comes from.
    """
    out: dict[str, tuple[Path, ...]] = {}
    for c in sorted(cands, key=lambda c: c.case_id):
        cid = c.case_id
        if not _id_ok(cid, show(c.first_file()) if c.kind != "brats" else c.where, problems):
            continue  # further checks of an unusable id would only add noise
        ok = True
        for ch, fs in sorted(c.channels.items()):
            if len(fs) > 1:
                what = f" channel _{ch:04d}" if c.kind == "suffixed" else ""
                problems.append(
                    f"duplicate case id {cid!r}{what}: " + " and ".join(show(f) for f in fs)
                )
                ok = False
        if c.kind == "brats":
            if len(c.names) != n:
                problems.append(
                    f"{c.where}: BraTS case {cid!r} has {_plural(len(c.names), 'channel')} "
                    f"({', '.join(c.names)}) but {why}"
                )
                ok = False
        elif c.kind == "single" and n != 1:
            problems.append(
                f"{show(c.first_file())}: case {cid!r} is a single file but {why} (give one "
                f"file per channel, named {cid}_0000, {cid}_0001, ...)"
            )
            ok = False
        else:
            missing = [i for i in range(n) if i not in c.channels]
            extra = sorted(i for i in c.channels if i >= n)
            if missing:
                names = ", ".join(f"{cid}_{i:04d}" for i in missing)
                problems.append(f"{c.where}: case {cid!r} is missing channel file(s) {names} ({why})")
                ok = False
            if extra:
                names = ", ".join(show(c.channels[i][0]) for i in extra)
                problems.append(f"{names}: unexpected channel file(s) for case {cid!r} ({why})")
                ok = False
        if ok and n > 0:
            out[cid] = tuple(c.channels[i][0] for i in range(n))
    return out


def _index_labels(files: Iterable[Path], problems: list[str], show: Show) -> dict[str, Path]:
    """Label files by case id (the file stem); duplicates and unsafe ids are problems."""
    by_id: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        by_id[strip_suffix(f)].append(f)
    out: dict[str, Path] = {}
    for lid, fs in sorted(by_id.items()):
        ok = _id_ok(lid, show(fs[0]), problems)
        if len(fs) > 1:
            problems.append(f"duplicate label id {lid!r}: " + " and ".join(show(f) for f in fs))
            ok = False
        if ok:
            out[lid] = fs[0]
    return out


def _pair(
    cands: dict[str, _Cand],
    images: dict[str, tuple[Path, ...]],
    labels: dict[str, Path],
    label_files: Iterable[Path],
    image_dir: str,
    label_dir: str,
    problems: list[str],
    show: Show,
) -> list[Case]:
    """Match images with labels by case id; unmatched files on either side are problems."""
    for cid, c in sorted(cands.items()):
        if _unsafe_reason(cid) is not None:  # already reported
            continue
        if cid not in labels and not any(strip_suffix(f) == cid for f in label_files):
            suffix = image_suffix(c.first_file()) or ".nii.gz"
            problems.append(
                f"{show(c.first_file())}: case {cid!r} has no label (expected {label_dir}/{cid}{suffix})"
            )
    seen_labels: set[str] = set()
    for f in label_files:
        lid = strip_suffix(f)
        if lid not in cands and lid not in seen_labels and _unsafe_reason(lid) is None:
            problems.append(f"{show(f)}: label without an image (no case {lid!r} in {image_dir})")
        seen_labels.add(lid)
    return [
        Case(cid, imgs, labels[cid]) for cid, imgs in sorted(images.items()) if cid in labels
    ]


# ----------------------------------------------------------------------------- dataset.json


@dataclass
class _JsonInfo:
    channels: tuple[str, ...] | None = None
    labels: dict[int, str] = field(default_factory=dict)
    file_ending: str | None = None


def _jtype(value: object) -> str:
    """A JSON-ish name for the type of ``value`` for messages."""
    return {
        dict: "an object", list: "a list", str: "a string", bool: "a boolean",
        int: "an integer", float: "a number", type(None): "null",
    }.get(type(value), type(value).__name__)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_dataset_json(path: Path, problems: list[str]) -> _JsonInfo:
    """Read and validate ``dataset.json``; every problem names the file and the field."""
    info = _JsonInfo()
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
        info.labels = _parse_labels(name, data["labels"], problems)
    if "file_ending" in data:
        ending = data["file_ending"]
        if isinstance(ending, str) and ending.lower() in IMAGE_SUFFIXES:
            info.file_ending = ending.lower()
        else:
            problems.append(
                f'{name}: field "file_ending" must be one of {", ".join(IMAGE_SUFFIXES)}, got {ending!r}'
            )
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


def _parse_labels(name: str, value: object, problems: list[str]) -> dict[int, str]:
    """Labels as value -> name from v2 ``{name: value}`` or MSD ``{"value": name}``."""
    help_ = '{"background": 0, "tumour": 1} (nnU-Net v2) or {"0": "background", "1": "tumour"} (MSD)'
    if not isinstance(value, dict):
        problems.append(f'{name}: field "labels" must be a mapping like {help_}, got {_jtype(value)}')
        return {}
    if not value:
        return {}
    regions = [k for k, v in value.items() if isinstance(v, (list, tuple))]
    if regions:
        problems.append(
            f'{name}: field "labels": region-based labels are not supported '
            f"({', '.join(repr(r) for r in regions)} map to lists of values): give each label "
            "one integer value"
        )
        return {}
    out: dict[int, str] = {}
    if all(_is_int(v) for v in value.values()):  # nnU-Net v2: name -> value
        for label_name, v in value.items():
            if v < 0:
                problems.append(f'{name}: field "labels": {label_name!r} has negative value {v}')
            elif v in out:
                problems.append(
                    f'{name}: field "labels": value {v} is given to both {out[v]!r} and {label_name!r}'
                )
            elif not label_name.strip():
                problems.append(f'{name}: field "labels": value {v} has an empty name')
            else:
                out[v] = label_name
    elif all(isinstance(v, str) for v in value.values()):  # MSD: "value" -> name
        for k, label_name in value.items():
            if not _INT_KEY_RE.match(k):
                problems.append(
                    f'{name}: field "labels": key {k!r} is not a label value (expected {help_})'
                )
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


def _check_endings(files: Iterable[Path], ending: str | None, problems: list[str], show: Show) -> None:
    """Files whose suffix differs from dataset.json's ``file_ending`` are problems."""
    if ending is None:
        return
    for f in files:
        if image_suffix(f) != ending:
            problems.append(f"{show(f)}: file ending {image_suffix(f)} differs from dataset.json file_ending {ending}")


# ----------------------------------------------------------------------------- BraTS


def _brats_role(path: Path) -> tuple[str, str, str] | None:
    """(style, role, prefix) of a BraTS-named file, e.g. ('classic', 't1ce', 'X'), else None.

    ``style`` is ``"classic"``, ``"2023"`` or ``""`` (for a segmentation, either style).
    Both ``_`` and ``-`` are accepted as separators; names are matched case-insensitively.
    """
    stem = strip_suffix(path)
    low = stem.lower()
    for style, names in (("", (_BRATS_SEG,)), *_BRATS_STYLES.items()):
        for role in names:
            for sep in ("_", "-"):
                if low.endswith(sep + role):
                    return style, role, stem[: -len(sep + role)]
    return None


@dataclass
class _BratsCase:
    """The files of one BraTS case folder, sorted by role."""

    folder: Path
    roles: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    styles: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    others: list[Path] = field(default_factory=list)

    @property
    def style(self) -> str | None:
        return next(iter(self.styles)) if len(self.styles) == 1 else None

    @property
    def n_modalities(self) -> int:
        return sum(1 for r in self.roles if r != _BRATS_SEG)


def _scan_brats(folder: Path, files: Iterable[Path]) -> _BratsCase:
    case = _BratsCase(folder)
    for f in files:
        role = _brats_role(f)
        if role is None:
            case.others.append(f)
            continue
        style, name, prefix = role
        case.roles[name].append(f)
        case.prefixes.add(prefix)
        if style:
            case.styles.add(style)
    return case


def _is_brats_case_folder(folder: Path, case: _BratsCase) -> bool:
    """Whether a folder of scans is one BraTS case (and not a flat folder of scans).

    Every scan must be BraTS-named with one common prefix, and that prefix must be the
    folder's name or the folder must hold at least two modalities.
    """
    return (
        bool(case.roles)
        and not case.others
        and len(case.prefixes) == 1
        and case.n_modalities >= 1
        and (next(iter(case.prefixes)) == folder.name or case.n_modalities >= 2)
    )


def _brats_order(style: str, channel_names: Sequence[str] | None) -> tuple[str, ...]:
    """BraTS channel order: ``channel_names`` if they are BraTS names (either naming), else the default."""
    names = _BRATS_STYLES[style]
    if channel_names:
        wanted = []
        for n in channel_names:
            n = n.lower()
            n = n if n in names else _BRATS_ALIAS.get(n, "")
            if n not in names:
                return names
            wanted.append(n)
        return tuple(wanted)
    return names


def _style_help(style: str | None) -> str:
    if style == "2023":
        return "ID-t1n, ID-t1c, ID-t2w, ID-t2f, ID-seg"
    if style == "classic":
        return "ID_t1, ID_t1ce, ID_t2, ID_flair, ID_seg"
    return "ID_t1, ID_t1ce, ID_t2, ID_flair, ID_seg (or ID-t1n, ID-t1c, ID-t2w, ID-t2f, ID-seg)"


def _brats_cand(
    case: _BratsCase,
    problems: list[str],
    show: Show,
    channel_names: Sequence[str] | None = None,
    strict: bool = True,
) -> tuple[_Cand | None, Path | None]:
    """The channel files and segmentation of one BraTS case; problems recorded.

    ``strict`` makes unrecognised scans in the folder a problem (training data); for
    prediction they are ignored.
    """
    where = show(case.folder)
    cid = case.folder.name
    ok = _id_ok(cid, where, problems)
    if strict:
        for f in case.others:
            problems.append(f"{show(f)}: not a BraTS file name (expected {_style_help(case.style)})")
            ok = False
    if len(case.styles) > 1:
        problems.append(
            f"{where}: case {cid!r} mixes classic BraTS names (_t1, _t1ce, _t2, _flair) and "
            "BraTS 2023 names (-t1n, -t1c, -t2w, -t2f)"
        )
        return None, None
    style = case.style
    if style is None:
        problems.append(f"{where}: case {cid!r} has no image channels (expected {_style_help(None)})")
        return None, None
    order = _brats_order(style, channel_names)
    for role, fs in sorted(case.roles.items()):
        if len(fs) > 1:
            problems.append(f"{where}: case {cid!r} has several {role} files: " + " and ".join(show(f) for f in fs))
            ok = False
    missing = [r for r in order if r not in case.roles]
    if missing:
        problems.append(f"{where}: case {cid!r} is missing {', '.join(missing)} (expected {_style_help(style)})")
        ok = False
    if not ok:
        return None, None
    cand = _Cand(cid, where, kind="brats", names=order)
    for i, role in enumerate(order):
        cand.channels[i].append(case.roles[role][0])
    seg = case.roles.get(_BRATS_SEG)
    return cand, (seg[0] if seg else None)


# ----------------------------------------------------------------------------- discover_dataset


def _detect_layout(root: Path) -> str | None:
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir() or (root / "labelsTr").is_dir():
        return "msd"
    if (root / "images").is_dir() or (root / "labels").is_dir():
        return "plain"
    for d in _list_dirs(root):
        try:
            roles = [_brats_role(f) for f in d.iterdir() if is_image_file(f)]
        except OSError:
            continue
        if any(r is not None and r[1] != _BRATS_SEG for r in roles):
            return "brats"
    return None


def _read_msd(root: Path, problems: list[str]) -> Dataset:
    show = _shower(root)
    info = _JsonInfo()
    has_json = (root / "dataset.json").is_file()
    if has_json:
        info = _read_dataset_json(root / "dataset.json", problems)

    def folder(name: str, required: bool) -> list[Path] | None:
        d = root / name
        if not d.is_dir():
            if required:
                problems.append(f"{name}/: folder missing")
            return None
        files = _list_images(d, problems, show)
        _check_endings(files, info.file_ending, problems, show)
        return files

    tr_files = folder("imagesTr", True)
    tr_labels = folder("labelsTr", True)
    ts_files = folder("imagesTs", False)
    ts_labels = folder("labelsTs", False)
    if tr_files is not None and not tr_files:
        problems.append("imagesTr/: no images found (expected ID_0000.nii.gz, ...): the data set is empty")

    tr = _group(tr_files or [], "imagesTr")
    ts = _group(ts_files or [], "imagesTs")
    if info.channels is not None:
        n = len(info.channels)
        why = f"dataset.json lists {_plural(n, 'channel')}"
    else:
        n = _expected_channels([*tr.values(), *ts.values()])
        why = f"other cases have {_plural(n, 'channel')}"
    for cid in sorted(set(tr) & set(ts)):
        problems.append(f"case {cid!r} is in both imagesTr and imagesTs")

    tr_images = _assemble(tr.values(), n, why, problems, show)
    train = _pair(
        tr, tr_images, _index_labels(tr_labels or [], problems, show), tr_labels or [],
        "imagesTr", "labelsTr", problems, show,
    ) if tr_labels is not None else []
    ts_images = _assemble(ts.values(), n, why, problems, show)
    if ts_labels is not None:
        test = _pair(
            ts, ts_images, _index_labels(ts_labels, problems, show), ts_labels,
            "imagesTs", "labelsTs", problems, show,
        )
    else:
        test = [Case(cid, imgs) for cid, imgs in sorted(ts_images.items())]
    channels = info.channels if info.channels is not None else tuple(f"{i:04d}" for i in range(n))
    return Dataset(root, "msd", channels, dict(info.labels), train, test)


def _read_plain(root: Path, problems: list[str]) -> Dataset:
    show = _shower(root)
    for name in ("images", "labels"):
        if not (root / name).is_dir():
            problems.append(f"{name}/: folder missing (the plain layout needs images/ and labels/)")
    img_files = _list_images(root / "images", problems, show) if (root / "images").is_dir() else []
    lbl_files = _list_images(root / "labels", problems, show) if (root / "labels").is_dir() else []
    if (root / "images").is_dir() and not img_files:
        problems.append("images/: no images found: the data set is empty")
    label_ids = frozenset(strip_suffix(f) for f in lbl_files)
    cands = _group(img_files, "images", exact=label_ids)
    n = _expected_channels(cands.values())
    images = _assemble(cands.values(), n, f"other cases have {_plural(n, 'channel')}", problems, show)
    labels = _index_labels(lbl_files, problems, show)
    train = _pair(cands, images, labels, lbl_files, "images", "labels", problems, show)
    return Dataset(root, "plain", tuple(f"{i:04d}" for i in range(n)), {}, train, [])


def _read_brats(root: Path, problems: list[str]) -> Dataset:
    show = _shower(root)
    for f in _list_images(root, problems, show):
        problems.append(f"{show(f)}: scan at the top level of a BraTS data set (each case needs its own folder)")
    cases: list[_BratsCase] = []
    for d in _list_dirs(root):
        files = _list_images(d, problems, show)
        if files:  # folders without scans (docs, ...) are not cases
            cases.append(_scan_brats(d, files))
    by_style: dict[str, list[str]] = defaultdict(list)
    for c in cases:
        if c.style:
            by_style[c.style].append(c.folder.name)
    if len(by_style) > 1:
        problems.append(
            "cases mix classic BraTS names (_t1, _t1ce, _t2, _flair: "
            + ", ".join(by_style["classic"])
            + ") and BraTS 2023 names (-t1n, -t1c, -t2w, -t2f: "
            + ", ".join(by_style["2023"])
            + ")"
        )
    style = max(by_style, key=lambda s: len(by_style[s])) if by_style else "classic"
    channels = _BRATS_STYLES[style]
    train: list[Case] = []
    test: list[Case] = []
    for c in cases:
        cand, seg = _brats_cand(c, problems, show)
        if cand is None:
            continue
        case = Case(cand.case_id, tuple(cand.channels[i][0] for i in range(len(cand.names))), seg)
        (train if seg is not None else test).append(case)
    if not cases:
        problems.append("no case folders with scans found: the data set is empty")
    elif not train and not problems:
        problems.append(f"no case has a segmentation (ID{'-' if style == '2023' else '_'}seg): nothing to train on")
    return Dataset(root, "brats", channels, {}, sorted(train, key=lambda c: c.case_id),
                   sorted(test, key=lambda c: c.case_id))


def discover_dataset(root: Path) -> Dataset:
    """Find the cases of a training data set (MSD / nnU-Net, BraTS or plain layout).

    Raises :class:`DiscoveryError` listing every problem (unmatched images or labels,
    missing channels, duplicate or unsafe ids, a bad ``dataset.json``, no training
    cases), each naming its file or case relative to ``root``.
    """
    root = Path(root)
    if not root.exists():
        raise DiscoveryError("data set folder not found", root)
    if not root.is_dir():
        raise DiscoveryError("is not a folder (give the data set's root folder)", root)
    layout = _detect_layout(root)
    if layout is None:
        raise DiscoveryError(f"no recognised data set layout ({_LAYOUT_HELP})", root)
    problems: list[str] = []
    reader = {"msd": _read_msd, "plain": _read_plain, "brats": _read_brats}[layout]
    dataset = reader(root, problems)
    if not problems and not dataset.train:
        problems.append("no labelled training cases found: the data set is empty")
    if problems:
        raise DiscoveryError(problems, root)
    return dataset


# ----------------------------------------------------------------------------- discover_inputs


def _inputs_from_folder(
    folder: Path, channel_names: Sequence[str] | None, problems: list[str]
) -> list[_Cand]:
    """Candidate cases of one input folder (MSD root, BraTS root or case, scans folder)."""
    show = _shower(None)
    if (folder / "dataset.json").is_file() or (folder / "imagesTs").is_dir() or (folder / "imagesTr").is_dir():
        sub = folder / "imagesTs" if (folder / "imagesTs").is_dir() else folder / "imagesTr"
        if not sub.is_dir():
            problems.append(f"{folder}: has dataset.json but neither imagesTs/ nor imagesTr/")
            return []
        files = _list_images(sub, problems, show)
        if not files:
            problems.append(f"{sub}: no scans found")
        return list(_group(files, str(sub)).values())
    files = _list_images(folder, problems, show)
    if files:
        # resolve() so that "." given for a case folder still yields the folder's name
        case = _scan_brats(folder.resolve(), files)
        if _is_brats_case_folder(case.folder, case):
            cand, _ = _brats_cand(case, problems, show, channel_names, strict=False)
            return [cand] if cand else []
        return list(_group(files, str(folder)).values())
    brats_cases = [_scan_brats(d, _list_images(d, problems, show)) for d in _list_dirs(folder)]
    brats_cases = [c for c in brats_cases if c.n_modalities]
    if brats_cases:  # a BraTS root: one case per sub-folder with BraTS-named scans
        cands = [_brats_cand(c, problems, show, channel_names, strict=False)[0] for c in brats_cases]
        return [c for c in cands if c is not None]
    if (folder / "images").is_dir():
        files = _list_images(folder / "images", problems, show)
        if files:
            return list(_group(files, str(folder / "images")).values())
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
    cands: list[_Cand] = []
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
    cands.extend(_group(loose, "the given files").values())

    unique: dict[str, _Cand] = {}
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
        n, why = n_channels, f"expected {_plural(n_channels, 'channel')}"
    else:
        n = _expected_channels(unique.values())
        why = f"other cases have {_plural(n, 'channel')}"
    images = _assemble(unique.values(), n, why, problems, _shower(None))
    if not problems and not images:
        problems.append("no scans found in the inputs")
    if problems:
        raise DiscoveryError(problems)
    return [Case(cid, imgs) for cid, imgs in sorted(images.items()) if cid not in clashes]
