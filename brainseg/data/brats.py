"""BraTS file naming: recognising the files of a BraTS case folder and ordering its channels.

One folder per case holds ``ID_t1``, ``ID_t1ce``, ``ID_t2``, ``ID_flair`` and ``ID_seg``
(BraTS up to 2021) or ``ID-t1n``, ``ID-t1c``, ``ID-t2w``, ``ID-t2f`` and ``ID-seg``
(BraTS 2023 on). Used by :mod:`.layouts` (training data) and :mod:`.inputs` (prediction).

For prediction a model's channel names (its card's, from dataset.json or BraTS) choose
and order the modalities: :func:`sequence_of` knows the common names of each MR
sequence (``t1gd``, ``t1ce``, ``t1c``, ``T1-Gd``, ... are one sequence), case-insensitively.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from brainseg.data.cases import Candidate, Show, id_ok
from brainseg.io.naming import strip_suffix

__all__ = ["BRATS_2023", "BRATS_CLASSIC", "SEQUENCE_SYNONYMS", "sequence_of"]

#: BraTS channel names, in channel order (up to BraTS 2021, and from BraTS 2023 on).
BRATS_CLASSIC = ("t1", "t1ce", "t2", "flair")
BRATS_2023 = ("t1n", "t1c", "t2w", "t2f")
BRATS_SEG = "seg"
BRATS_STYLES = {"classic": BRATS_CLASSIC, "2023": BRATS_2023}
#: The names of each MR sequence brainseg understands (compared in lower case with spaces,
#: ``-``, ``_``, ``+`` and ``.`` removed): BraTS 2021 and 2023 names, BIDS suffixes, common synonyms.
SEQUENCE_SYNONYMS = {
    "t1": ("t1", "t1w", "t1n", "mprage", "t1native", "t1pre", "nativet1"),
    "t1c": ("t1c", "t1ce", "t1gd", "t1post", "t1wce", "t1wgd", "t1cgd", "t1gad", "t1contrast", "t1wpost"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2flair", "t2wflair"),
}
_SEQUENCE = {name: seq for seq, names in SEQUENCE_SYNONYMS.items() for name in names}
_SEPARATORS = re.compile(r"[\s_+.-]")


def sequence_of(name: str) -> str | None:
    """The MR sequence (a key of :data:`SEQUENCE_SYNONYMS`) a channel name stands for, else None."""
    return _SEQUENCE.get(_SEPARATORS.sub("", str(name).lower()))


def known_sequences() -> str:
    """The understood names, for messages."""
    return "; ".join("/".join(names[:5]) for names in SEQUENCE_SYNONYMS.values())


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


def _brats_order(style: str, channel_names: Sequence[str] | None, cid: str) -> tuple[tuple[str, ...], str | None]:
    """The BraTS roles of a model's channels, in its order (the BraTS order without names),
    or a problem naming the model channel that is no known sequence."""
    names = BRATS_STYLES[style]
    if not channel_names:
        return names, None
    by_sequence = {sequence_of(r): r for r in names}
    order = []
    for n in channel_names:
        role = by_sequence.get(sequence_of(n))
        if role is None:
            return (), (
                f"the model's channel {n!r} is not an MR sequence brainseg knows ({known_sequences()}), so "
                f"case {cid!r}'s BraTS files cannot be matched to it (give ID_0000, ID_0001, ... files in the "
                "model's channel order instead)"
            )
        if role in order:
            return (), f"the model's channels {list(channel_names)} name {role} twice; case {cid!r} cannot be matched"
        order.append(role)
    return tuple(order), None


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
    order, problem = _brats_order(style, channel_names, cid)
    if problem:
        problems.append(f"{where}: {problem}")
        return None, None
    for role, fs in sorted(case.roles.items()):
        if len(fs) > 1:
            problems.append(f"{where}: case {cid!r} has several {role} files: " + " and ".join(show(f) for f in fs))
            ok = False
    missing = [(r, i) for i, r in enumerate(order) if r not in case.roles]
    if missing:
        roles = ", ".join(r for r, _ in missing)
        model = (
            f" (the model's channel {', '.join(repr(channel_names[i]) for _, i in missing)})" if channel_names else ""
        )
        problems.append(f"{where}: case {cid!r} is missing {roles}{model}; expected {_style_help(style)}")
        ok = False
    if not ok:
        return None, None
    cand = Candidate(cid, where, kind="brats", names=order)
    for i, role in enumerate(order):
        cand.channels[i].append(case.roles[role][0])
    seg = case.roles.get(BRATS_SEG)
    return cand, (seg[0] if seg else None)
