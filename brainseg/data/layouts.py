"""Recognising a training data set's layout and listing its cases.

Three on-disk layouts are read by :func:`discover_dataset`:

``msd``
    nnU-Net v2 / Medical Segmentation Decathlon: ``dataset.json``, ``imagesTr/ID_0000.nii.gz``
    (one file per channel, ``_0001``, ... for further channels), ``labelsTr/ID.nii.gz``,
    optionally ``imagesTs/`` and ``labelsTs/``. ``dataset.json`` gives the channel names
    (v2 ``channel_names`` or MSD ``modality``), the labels (v2 ``{name: value}`` or MSD
    ``{"value": name}``) and optionally ``file_ending``. Without ``dataset.json`` the
    channels are named after their file suffixes (``"0000"``, ``"0001"``, ...) and the
    labels are left to be inferred from the data. The ``training`` list of ``dataset.json``
    is not used: cases come from the folders, as in nnU-Net v2. A region-based
    ``dataset.json`` (nnU-Net v2's ``"whole tumor": [1, 2, 3]``, ... with
    ``regions_class_order``) sets :attr:`~.cases.Dataset.regions`.
``brats``
    One folder per case holding ``ID_t1``, ``ID_t1ce``, ``ID_t2``, ``ID_flair`` and
    ``ID_seg`` (BraTS up to 2021) or ``ID-t1n``, ``ID-t1c``, ``ID-t2w``, ``ID-t2f`` and
    ``ID-seg`` (BraTS 2023 on). Cases without a segmentation go to the test split. The
    regions are BraTS's WT/TC/ET (:data:`~brainseg.labels.regions.BRATS_2021`, or ``BRATS_2023``
    for the 2023 names); the labels are left to be inferred from the data.
``plain``
    ``images/`` and ``labels/``, matched by file name (``X.nii.gz`` with ``X.nii.gz``, or
    ``X_0000.nii.gz`` [``X_0001``, ...] with ``X.nii.gz``).

``"files"`` is the layout name for a :class:`~.cases.Dataset` that a caller assembles
from loose files; discovery never returns it. Only file names are looked at; no image
is opened here. Every problem is collected and raised at once
(:class:`~.cases.DiscoveryError`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from brainseg.data.brats import (
    BRATS_SEG,
    BRATS_STYLES,
    BratsCase,
    brats_candidate,
    brats_role,
    scan_brats,
)
from brainseg.data.cases import (
    Candidate,
    Case,
    Dataset,
    DiscoveryError,
    Scan,
    Show,
    assemble,
    expected_channels,
    group_channels,
    id_ok,
    list_dirs,
    list_images,
    plural,
    shower,
    unsafe_reason,
)
from brainseg.data.dataset_json import JsonInfo, check_endings, read_dataset_json
from brainseg.io.naming import (
    NIFTI_GZ,
    channel_tag,
    image_suffix,
    is_image_file,
    strip_suffix,
)
from brainseg.labels.regions import brats_regions

__all__ = ["discover_dataset"]

_LAYOUT_HELP = (
    "expected dataset.json with imagesTr/ and labelsTr/ (nnU-Net / MSD), one folder per "
    "case with ID_t1, ID_t1ce, ID_t2, ID_flair, ID_seg or ID-t1n, ID-t1c, ID-t2w, ID-t2f, "
    "ID-seg (BraTS), or images/ and labels/"
)


def _index_labels(files: Iterable[Path], problems: list[str], show: Show) -> dict[str, Path]:
    """Label files by case id (the file stem); duplicates and unsafe ids are problems."""
    by_id: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        by_id[strip_suffix(f)].append(f)
    out: dict[str, Path] = {}
    for lid, fs in sorted(by_id.items()):
        ok = id_ok(lid, show(fs[0]), problems)
        if len(fs) > 1:
            problems.append(f"duplicate label id {lid!r}: " + " and ".join(show(f) for f in fs))
            ok = False
        if ok:
            out[lid] = fs[0]
    return out


def _pair(
    cands: dict[str, Candidate],
    images: dict[str, tuple[Scan, ...]],
    labels: dict[str, Path],
    label_files: Iterable[Path],
    image_dir: str,
    label_dir: str,
    problems: list[str],
    show: Show,
) -> list[Case]:
    """Match images with labels by case id; unmatched files on either side are problems."""
    for cid, c in sorted(cands.items()):
        if unsafe_reason(cid) is not None:  # already reported
            continue
        if cid not in labels and not any(strip_suffix(f) == cid for f in label_files):
            suffix = image_suffix(c.first_file()) or NIFTI_GZ
            problems.append(f"{show(c.first_file())}: case {cid!r} has no label (expected {label_dir}/{cid}{suffix})")
    seen_labels: set[str] = set()
    for f in label_files:
        lid = strip_suffix(f)
        if lid not in cands and lid not in seen_labels and unsafe_reason(lid) is None:
            problems.append(f"{show(f)}: label without an image (no case {lid!r} in {image_dir})")
        seen_labels.add(lid)
    return [Case(cid, imgs, labels[cid]) for cid, imgs in sorted(images.items()) if cid in labels]


def _detect_layout(root: Path) -> str | None:
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir() or (root / "labelsTr").is_dir():
        return "msd"
    if (root / "images").is_dir() or (root / "labels").is_dir():
        return "plain"
    for d in list_dirs(root):
        try:
            roles = [brats_role(f) for f in d.iterdir() if is_image_file(f)]
        except OSError:
            continue
        if any(r is not None and r[1] != BRATS_SEG for r in roles):
            return "brats"
    return None


def _read_msd(root: Path, problems: list[str]) -> Dataset:
    show = shower(root)
    info = JsonInfo()
    has_json = (root / "dataset.json").is_file()
    if has_json:
        info = read_dataset_json(root / "dataset.json", problems)

    def folder(name: str, required: bool) -> list[Path] | None:
        d = root / name
        if not d.is_dir():
            if required:
                problems.append(f"{name}/: folder missing")
            return None
        files = list_images(d, problems, show)
        check_endings(files, info.file_ending, problems, show)
        return files

    tr_files = folder("imagesTr", True)
    tr_labels = folder("labelsTr", True)
    ts_files = folder("imagesTs", False)
    ts_labels = folder("labelsTs", False)
    if tr_files is not None and not tr_files:
        problems.append("imagesTr/: no images found (expected ID_0000.nii.gz, ...): the data set is empty")

    tr = group_channels(tr_files or [], "imagesTr")
    ts = group_channels(ts_files or [], "imagesTs")
    if info.channels is not None:
        n = len(info.channels)
        why = f"dataset.json lists {plural(n, 'channel')}"
    else:
        n = expected_channels([*tr.values(), *ts.values()])
        why = f"other cases have {plural(n, 'channel')}"
    for cid in sorted(set(tr) & set(ts)):
        problems.append(f"case {cid!r} is in both imagesTr and imagesTs")

    tr_images = assemble(tr.values(), n, why, problems, show)
    train = (
        _pair(
            tr,
            tr_images,
            _index_labels(tr_labels or [], problems, show),
            tr_labels or [],
            "imagesTr",
            "labelsTr",
            problems,
            show,
        )
        if tr_labels is not None
        else []
    )
    ts_images = assemble(ts.values(), n, why, problems, show)
    if ts_labels is not None:
        test = _pair(
            ts,
            ts_images,
            _index_labels(ts_labels, problems, show),
            ts_labels,
            "imagesTs",
            "labelsTs",
            problems,
            show,
        )
    else:
        test = [Case(cid, imgs) for cid, imgs in sorted(ts_images.items())]
    channels = info.channels if info.channels is not None else tuple(channel_tag(i) for i in range(n))
    return Dataset(root, "msd", channels, dict(info.labels), train, test, regions=info.regions)


def _read_plain(root: Path, problems: list[str]) -> Dataset:
    show = shower(root)
    for name in ("images", "labels"):
        if not (root / name).is_dir():
            problems.append(f"{name}/: folder missing (the plain layout needs images/ and labels/)")
    img_files = list_images(root / "images", problems, show) if (root / "images").is_dir() else []
    lbl_files = list_images(root / "labels", problems, show) if (root / "labels").is_dir() else []
    if (root / "images").is_dir() and not img_files:
        problems.append("images/: no images found: the data set is empty")
    label_ids = frozenset(strip_suffix(f) for f in lbl_files)
    cands = group_channels(img_files, "images", exact=label_ids)
    n = expected_channels(cands.values())
    images = assemble(cands.values(), n, f"other cases have {plural(n, 'channel')}", problems, show)
    labels = _index_labels(lbl_files, problems, show)
    train = _pair(cands, images, labels, lbl_files, "images", "labels", problems, show)
    return Dataset(root, "plain", tuple(channel_tag(i) for i in range(n)), {}, train, [])


def _read_brats(root: Path, problems: list[str]) -> Dataset:
    show = shower(root)
    for f in list_images(root, problems, show):
        problems.append(f"{show(f)}: scan at the top level of a BraTS data set (each case needs its own folder)")
    cases: list[BratsCase] = []
    for d in list_dirs(root):
        files = list_images(d, problems, show)
        if files:  # folders without scans (docs, ...) are not cases
            cases.append(scan_brats(d, files))
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
    channels = BRATS_STYLES[style]
    train: list[Case] = []
    test: list[Case] = []
    for c in cases:
        cand, seg = brats_candidate(c, problems, show)
        if cand is None:
            continue
        case = Case(cand.case_id, tuple(cand.channels[i][0] for i in range(len(cand.names))), seg)
        (train if seg is not None else test).append(case)
    if not cases:
        problems.append("no case folders with scans found: the data set is empty")
    elif not train and not problems:
        problems.append(f"no case has a segmentation (ID{'-' if style == '2023' else '_'}seg): nothing to train on")
    regions = brats_regions((3,) if style == "2023" else (4,))  # enhancing tumour is 3 from BraTS 2023 on
    return Dataset(
        root,
        "brats",
        channels,
        {},
        sorted(train, key=lambda c: c.case_id),
        sorted(test, key=lambda c: c.case_id),
        regions=regions,
    )


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
