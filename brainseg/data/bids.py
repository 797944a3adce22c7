"""BIDS in and out: the anatomical scans of a BIDS root, and the names of the derivatives written for them.

A BIDS root (a folder with ``dataset_description.json``, or with ``sub-*`` folders holding
``anat/`` or ``ses-*/``) holds ``sub-*/[ses-*/]anat/sub-<l>[_ses-<l>][_<key>-<value>...]_<suffix>.nii[.gz]``.
A model's channel names choose the suffix of each channel (:func:`contrast_of`): T1/T1w -> ``T1w``,
t1ce/T1Gd/T1c -> ``T1w`` with a ``ce-`` entity, T2 -> ``T2w``, FLAIR -> ``FLAIR``, PD -> ``PDw``, ...
Everything else in the tree (sidecars, other suffixes and data types, ``derivatives/``, names that
are not BIDS names) is ignored.

Cases: per subject/session, the entities besides ``sub`` and ``ses`` (``acq-``, ``run-``, ``ce-``,
...) tell a channel's files apart. When each channel has one file, they are one case; when a channel
has several, each of its files is a case, and a channel with a single file is shared by those cases
(unless its entities contradict theirs: a lone ``run-1`` FLAIR is not paired with a ``run-2`` T1w).
The case id is the BIDS entities that tell it apart, ``sub-01_ses-02[_acq-x][_run-1]``, from which
:func:`derivative_path` builds the derivative's name and folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brainseg.data.brats import sequence_of
from brainseg.data.cases import Candidate, list_dirs
from brainseg.io.naming import NIFTI_SUFFIXES, image_suffix, strip_suffix

__all__ = [
    "Contrast",
    "bids_candidates",
    "bids_root_of",
    "contrast_of",
    "derivative_path",
    "is_bids_root",
    "parse_entities",
]

log = logging.getLogger(__name__)

Entities = tuple[tuple[str, str], ...]

#: A BIDS file name: ``key-value`` entities, then the suffix (the extension stripped).
_NAME = re.compile(r"^(?P<entities>(?:[a-zA-Z]+-[a-zA-Z0-9]+_)+)(?P<suffix>[a-zA-Z0-9]+)$")
_ENTITY = re.compile(r"^[a-zA-Z]+-[a-zA-Z0-9]+$")
_SEPARATORS = re.compile(r"[\s_+.-]")

#: BIDS anatomical suffixes a channel may name directly (compared in lower case).
ANAT_SUFFIXES = ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2", "angio", "UNIT1")
#: Channel names (lower case, separators removed) of sequences :func:`sequence_of` does not know.
_MORE_SEQUENCES = {
    "pd": "PDw",
    "pdw": "PDw",
    "protondensity": "PDw",
    "t2star": "T2starw",
    "t2starw": "T2starw",
    "t2*": "T2starw",
    "t2*w": "T2starw",
}
_FROM_SEQUENCE = {"t1": ("T1w", False), "t1c": ("T1w", True), "t2": ("T2w", False), "flair": ("FLAIR", False)}


@dataclass(frozen=True)
class Contrast:
    """The BIDS files a channel takes: ``suffix``, with a ``ce-`` entity when ``enhanced``, else without."""

    suffix: str
    enhanced: bool = False

    def describe(self) -> str:
        return f"{'*_ce-*' if self.enhanced else '*'}_{self.suffix}.nii[.gz]"

    def matches(self, entities: Entities, suffix: str) -> bool:
        return suffix == self.suffix and any(k == "ce" for k, _ in entities) == self.enhanced


def contrast_of(channel: str) -> Contrast | None:
    """The BIDS contrast a model channel name stands for, else None."""
    seq = sequence_of(channel)
    if seq in _FROM_SEQUENCE:
        return Contrast(*_FROM_SEQUENCE[seq])
    key = _SEPARATORS.sub("", str(channel).lower())
    if key in _MORE_SEQUENCES:
        return Contrast(_MORE_SEQUENCES[key])
    for suffix in ANAT_SUFFIXES:
        if key == suffix.lower():
            return Contrast(suffix)
    return None


def parse_entities(stem: str) -> tuple[Entities, str] | None:
    """``((key, value), ...), suffix`` of a BIDS file stem, else None (not a BIDS name)."""
    m = _NAME.match(stem)
    if not m:
        return None
    pairs = tuple(tuple(e.split("-", 1)) for e in m["entities"].rstrip("_").split("_"))
    keys = [k for k, _ in pairs]
    if keys[0] != "sub" or len(set(keys)) != len(keys):
        return None
    return tuple((k, v) for k, v in pairs), m["suffix"]


def is_bids_root(folder: Path) -> bool:
    """A folder with ``dataset_description.json``, or with ``sub-*`` folders holding ``anat/`` or ``ses-*/``."""
    if (folder / "dataset_description.json").is_file():
        return True
    for sub in list_dirs(folder):
        if sub.name.startswith("sub-") and any(d.name == "anat" or d.name.startswith("ses-") for d in list_dirs(sub)):
            return True
    return False


def _anat_folders(root: Path) -> list[tuple[Path, Entities]]:
    """Each ``anat/`` folder of the tree with the ``sub`` (and ``ses``) entities its files must carry."""
    out = []
    for sub in list_dirs(root):
        if not sub.name.startswith("sub-") or not _ENTITY.match(sub.name):
            continue
        entities: Entities = (("sub", sub.name[4:]),)
        if (sub / "anat").is_dir():
            out.append((sub / "anat", entities))
        for ses in list_dirs(sub):
            if ses.name.startswith("ses-") and _ENTITY.match(ses.name) and (ses / "anat").is_dir():
                out.append((ses / "anat", (*entities, ("ses", ses.name[4:]))))
    return out


def _scans(anat: Path, owner: Entities) -> list[tuple[Path, Entities, str]]:
    """The NIfTI files of ``anat`` with BIDS names of this subject/session: (path, entities, suffix)."""
    out = []
    for f in sorted(anat.iterdir(), key=lambda p: p.name):
        if f.name.startswith(".") or image_suffix(f) not in NIFTI_SUFFIXES:
            continue
        parsed = parse_entities(strip_suffix(f))
        if parsed is None:
            log.debug("%s: not a BIDS file name, ignored", f)
            continue
        entities, suffix = parsed
        if entities[: len(owner)] != owner or (len(owner) == 1 and any(k == "ses" for k, _ in entities)):
            log.warning("%s: its sub-/ses- entities do not match its folder, so it is ignored", f)
            continue
        out.append((f, entities, suffix))
    return out


def _case_id(entities: Entities) -> str:
    return "_".join(f"{k}-{v}" for k, v in entities)


def _group_cases(
    owner: Entities, found: list[list[tuple[Path, Entities]]], names: Sequence[str], problems: list[str]
) -> list[Candidate]:
    """The cases of one subject/session from each channel's files (see the module docstring)."""
    n = len(owner)
    variants: list[dict[Entities, Path]] = []
    for files in found:
        by_variant: dict[Entities, Path] = {}
        for path, entities in files:
            variant = entities[n:]
            if variant in by_variant:
                problems.append(f"{by_variant[variant]} and {path}: the same scan twice (.nii and .nii.gz?)")
            by_variant[variant] = path
        variants.append(by_variant)
    where = str(found[0][0][0].parent)
    several = [v for v in variants if len(v) > 1]
    if not several:  # one file per channel: one case, named by the entities all its files share
        paths = [next(iter(v.values())) for v in variants]
        first = next(iter(variants[0]))
        shared = tuple(e for e in first if all(e in next(iter(v)) for v in variants))
        cand = Candidate(_case_id(owner + shared), where, kind="named", names=tuple(names))
        for i, p in enumerate(paths):
            cand.channels[i].append(p)
        return [cand]
    keys = sorted({k for v in several for k in v})
    out = []
    for key in keys:
        cand = Candidate(_case_id(owner + key), where, kind="named", names=tuple(names))
        for i, v in enumerate(variants):
            if len(v) > 1:
                chosen = v.get(key)
            else:  # a single file is shared unless its entities contradict the case's (run-1 vs run-2)
                (variant, chosen), fixed = next(iter(v.items())), dict(key)
                chosen = chosen if all(fixed.get(k, val) == val for k, val in variant) else None
            if chosen is None:
                problems.append(
                    f"{where}: case {cand.case_id!r} has no {names[i]!r} scan with the entities "
                    f"{_case_id(key)} (found {', '.join(p.name for p in v.values())})"
                )
                break
            cand.channels[i].append(chosen)
        else:
            out.append(cand)
    return out


def bids_candidates(root: Path, channel_names: Sequence[str] | None, problems: list[str]) -> list[Candidate]:
    """The cases of a BIDS root for a model with ``channel_names``; problems are appended to ``problems``."""
    if not channel_names:
        problems.append(f"{root}: a BIDS folder: the model's channel names are needed to choose its scans")
        return []
    contrasts = [contrast_of(c) for c in channel_names]
    unknown = [c for c, k in zip(channel_names, contrasts) if k is None]
    if unknown:
        problems.append(
            f"{root}: a BIDS folder, but the model's channel(s) {', '.join(map(repr, unknown))} map to no BIDS "
            f"anat suffix (known: T1/T1w, t1ce/T1Gd/T1c, T2/T2w, FLAIR, PD/PDw, T2star, {', '.join(ANAT_SUFFIXES)})"
        )
        return []
    wanted = [k for k in contrasts if k is not None]
    looked_for = ", ".join(k.describe() for k in wanted)
    out: list[Candidate] = []
    for anat, owner in _anat_folders(root):
        scans = _scans(anat, owner)
        found = [[(p, e) for p, e, s in scans if k.matches(e, s)] for k in wanted]
        if not any(found):
            continue
        missing = [repr(c) for c, files in zip(channel_names, found) if not files]
        if missing:
            problems.append(
                f"{anat}: {_case_id(owner)} has no scan for the model's channel(s) {', '.join(missing)} "
                f"(looked for {looked_for})"
            )
            continue
        out.extend(_group_cases(owner, found, channel_names, problems))
    if not out and not problems:
        problems.append(
            f"{root}: a BIDS folder with no scans for the model's channels {list(channel_names)} "
            f"(looked for sub-*/[ses-*/]anat/{looked_for})"
        )
    return out


def bids_root_of(scan: Path) -> Path | None:
    """The BIDS root of a scan at ``ROOT/sub-*/[ses-*/]anat/``, else None."""
    anat = scan.parent
    if anat.name != "anat":
        return None
    up = anat.parent
    if up.name.startswith("ses-"):
        up = up.parent
    return up.parent if up.name.startswith("sub-") else None


def derivative_path(output: Path, case_id: str, suffix: str, extension: str, desc: str = "brainseg") -> Path:
    """``OUT/sub-*/[ses-*/]anat/<case id>_desc-<desc>_<suffix><extension>`` for a BIDS case id
    (a source ``desc-`` entity is replaced); ValueError when ``case_id`` is no BIDS case id."""
    parsed = parse_entities(f"{case_id}_x")
    if parsed is None:
        raise ValueError(f"case {case_id!r} is not named by BIDS entities (sub-<label>[_ses-<label>]...)")
    entities = dict(parsed[0])
    folder = output / f"sub-{entities['sub']}"
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    entities.pop("desc", None)
    stem = _case_id((*entities.items(), ("desc", desc)))
    return folder / "anat" / f"{stem}_{suffix}{extension}"
