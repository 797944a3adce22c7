"""Pairing the prediction files of one folder with the reference files of another, by case id.

Used by :func:`brainseg.evaluate.per_label.evaluate_folders`: a case id is a file name without its
image suffix (:func:`~brainseg.io.images.strip_suffix`); see :func:`pair_cases` for the rules.
"""

from __future__ import annotations

from pathlib import Path

from brainseg.errors import BrainsegError
from brainseg.io.naming import (
    CHANNEL_SUFFIX,
    MAP_TAGS,
    is_image_file,
    strip_suffix,
)

# An nnU-Net channel suffix on an image-derived name: ID_0000.


def scan_folder(folder: Path, role: str) -> tuple[dict[str, Path], list[dict]]:
    """Image files of ``folder`` by case id, and one problem per id taken by several files.

    Such a case is not scored at all: which of the files is meant cannot be known.
    """
    if not folder.is_dir():
        raise BrainsegError(f"{folder}: {role} folder not found")
    by_id: dict[str, list[Path]] = {}
    # Entries named like scans that are not regular files (a broken link, a folder
    # called x.nii.gz) are kept: reading them reports the case instead of dropping it.
    for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
        by_id.setdefault(strip_suffix(path), []).append(path)
    files: dict[str, Path] = {}
    clashes: list[dict] = []
    for cid, paths in by_id.items():
        if len(paths) == 1:
            files[cid] = paths[0]
            continue
        others = ", ".join(p.name for p in paths[1:])
        clashes.append(
            {
                "case": cid,
                "file": str(paths[0]),
                "problem": f"same case id as {others}; the case is not scored until all but one are renamed",
            }
        )
    return files, clashes


def drop_probability_maps(preds: dict[str, Path]) -> dict[str, Path]:
    """Leave out ``ID_probabilities`` and ``ID_uncertainty`` files written beside a prediction ``ID``."""
    return {
        cid: path
        for cid, path in preds.items()
        if not any(cid.endswith(tag) and cid[: -len(tag)] in preds for tag in MAP_TAGS)
    }


def _base_id(cid: str) -> str:
    return CHANNEL_SUFFIX.sub("", cid)


def pair_cases(
    preds: dict[str, Path], refs: dict[str, Path]
) -> tuple[list[tuple[str, Path, Path]], dict[str, Path], dict[str, Path]]:
    """Pair predictions and references by case id.

    Exact ids pair first. What is left pairs when the ids agree once an nnU-Net
    channel suffix (``_0000``) is removed from either, e.g. prediction
    ``case7_0000.nii.gz`` with reference ``case7.nii.gz`` (only one-to-one matches).
    Returns (pairs as (case, prediction, reference), references without a
    prediction, predictions without a reference).
    """
    pairs = [(cid, preds[cid], ref) for cid, ref in refs.items() if cid in preds]
    paired = {cid for cid, _, _ in pairs}
    rest_refs = {c: p for c, p in refs.items() if c not in paired}
    rest_preds = {c: p for c, p in preds.items() if c not in paired}

    def by_base(files: dict[str, Path]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for cid in files:
            groups.setdefault(_base_id(cid), []).append(cid)
        return groups

    ref_groups, pred_groups = by_base(rest_refs), by_base(rest_preds)
    for base in sorted(set(ref_groups) & set(pred_groups)):
        if len(ref_groups[base]) == 1 and len(pred_groups[base]) == 1:
            rid, pid = ref_groups[base][0], pred_groups[base][0]
            pairs.append((base, rest_preds.pop(pid), rest_refs.pop(rid)))
    pairs.sort(key=lambda item: item[0])
    return pairs, rest_refs, rest_preds
