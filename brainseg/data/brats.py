"""BraTS file naming: recognising the files of a BraTS case folder and ordering its channels.

One folder per case holds ``ID_t1``, ``ID_t1ce``, ``ID_t2``, ``ID_flair`` and ``ID_seg``
(BraTS up to 2021) or ``ID-t1n``, ``ID-t1c``, ``ID-t2w``, ``ID-t2f`` and ``ID-seg``
(BraTS 2023 on). Used by :mod:`.layouts` (training data) and :mod:`.inputs` (prediction).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..naming import strip_suffix
from .cases import Candidate, Show, id_ok

__all__ = ["BRATS_2023", "BRATS_CLASSIC"]

#: BraTS channel names, in channel order (up to BraTS 2021, and from BraTS 2023 on).
BRATS_CLASSIC = ("t1", "t1ce", "t2", "flair")
BRATS_2023 = ("t1n", "t1c", "t2w", "t2f")
BRATS_SEG = "seg"
BRATS_STYLES = {"classic": BRATS_CLASSIC, "2023": BRATS_2023}
# The same sequence under either naming, for matching a model's channel names.
_BRATS_ALIAS = {**dict(zip(BRATS_CLASSIC, BRATS_2023)), **dict(zip(BRATS_2023, BRATS_CLASSIC))}


def brats_role(path: Path) -> tuple[str, str, str] | None:
    """(style, role, prefix) of a BraTS-named file, e.g. ('classic', 't1ce', 'X'), else None.

    ``style`` is ``"classic"``, ``"2023"`` or ``""`` (for a segmentation, either style).
    Both ``_`` and ``-`` are accepted as separators; names are matched case-insensitively.
    """
    stem = strip_suffix(path)
    low = stem.lower()
    for style, names in (("", (BRATS_SEG,)), *BRATS_STYLES.items()):
        for role in names:
            for sep in ("_", "-"):
                if low.endswith(sep + role):
                    return style, role, stem[: -len(sep + role)]
    return None


@dataclass
class BratsCase:
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
        return sum(1 for r in self.roles if r != BRATS_SEG)


def scan_brats(folder: Path, files: Iterable[Path]) -> BratsCase:
    case = BratsCase(folder)
    for f in files:
        role = brats_role(f)
        if role is None:
            case.others.append(f)
            continue
        style, name, prefix = role
        case.roles[name].append(f)
        case.prefixes.add(prefix)
        if style:
            case.styles.add(style)
    return case


def is_brats_case_folder(folder: Path, case: BratsCase) -> bool:
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
    names = BRATS_STYLES[style]
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


def brats_candidate(
    case: BratsCase,
    problems: list[str],
    show: Show,
    channel_names: Sequence[str] | None = None,
    strict: bool = True,
) -> tuple[Candidate | None, Path | None]:
    """The channel files and segmentation of one BraTS case; problems recorded.

    ``strict`` makes unrecognised scans in the folder a problem (training data); for
    prediction they are ignored.
    """
    where = show(case.folder)
    cid = case.folder.name
    ok = id_ok(cid, where, problems)
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
    cand = Candidate(cid, where, kind="brats", names=order)
    for i, role in enumerate(order):
        cand.channels[i].append(case.roles[role][0])
    seg = case.roles.get(BRATS_SEG)
    return cand, (seg[0] if seg else None)
