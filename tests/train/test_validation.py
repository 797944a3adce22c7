"""Validation's decision search: class offsets, the largest-foreground rule, the enhancing-tumour volume.

The offset search is tested on a real (tiny, untrained) network and a real NIfTI case whose
reference is what the same network labels under a planted offset: the search must
find that offset again and reach a Dice of 1.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brainseg.config import load_config
from brainseg.data.cases import Case
from brainseg.infer.predictor import Predictor
from brainseg.labels.regions import BRATS_2021
from brainseg.model.checkpoint import load_model
from brainseg.runtime import DistInfo
from brainseg.train.decisions import innermost_scores, smallest_best
from brainseg.train.validation import Validation
from tests.conftest import tumour_label


def _phantom(path: Path, island: bool = False) -> Path:
    """A small head-like scan: a noisy ellipsoid of three intensities on an exact-zero
    background (with ``island``, and a bright cube apart from it in a corner)."""
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 44, 36)], indexing="ij")
    r = np.sqrt(x**2 + (y / 0.9) ** 2 + (z / 0.8) ** 2)
    image = np.where(r < 0.85, 300.0 + 200.0 * (r < 0.6) + 150.0 * (r < 0.3), 0.0)
    if island:
        image[1:7, 1:7, 1:7] = 600.0
    image = np.where(image > 0, image + rng.normal(0, 40.0, image.shape), 0.0).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([1.5, 1.5, 1.5, 1.0])), str(path))
    return path


def _label_under(predictor: Predictor, scan: Path, offsets, out: Path) -> Path:
    planted = Predictor(
        predictor.network, replace(predictor.card, class_offsets=tuple(offsets)), predictor.infer, predictor.postprocess
    )
    labels, _, geometry = planted.predict_case([scan])
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), geometry.affine), str(out))
    return out


def test_the_search_finds_a_planted_offset(tiny_checkpoint: Path, tmp_path: Path):
    model, card = load_model(tiny_checkpoint)
    cfg = load_config()
    scan = _phantom(tmp_path / "case_0000.nii.gz")
    plain = Predictor(model, card, cfg.infer, cfg.postprocess)
    label = _label_under(plain, scan, [0.0, 0.6, 0.0], tmp_path / "case.nii.gz")
    ref = np.asarray(nib.load(str(label)).dataobj)
    argmax, _, _ = plain.predict_case([scan])
    assert (argmax == 1).sum() < (ref == 1).sum()  # the planted offset grows class 1
    validation = Validation([Case("case", (scan,), label)], card.label_values, DistInfo())
    before = validation.dice(model, card, cfg, torch.device("cpu"))
    offsets = validation.choose_decision(model, card, cfg, torch.device("cpu"))["class_offsets"]
    assert len(offsets) == card.num_classes and offsets[0] == 0.0
    tuned = replace(card, class_offsets=offsets)
    after = validation.dice(model, tuned, cfg, torch.device("cpu"))
    assert np.mean(list(after.values())) > np.mean(list(before.values()))
    assert np.mean(list(after.values())) > 0.99, (offsets, after)
    # the config fixes the offsets: none are chosen; [] gives the plain argmax back
    fixed = replace(cfg, postprocess=replace(cfg.postprocess, class_offsets=[]))
    assert validation.choose_decision(model, card, fixed, torch.device("cpu")) == {}
    off = Predictor(model, tuned, fixed.infer, fixed.postprocess)
    assert np.array_equal(off.predict_case([scan])[0], argmax)


def test_largest_foreground_is_kept_only_where_validation_says_it_helps(tiny_checkpoint: Path, tmp_path: Path):
    """nnU-Net keeps a postprocessing step only where validation says it helps: against a
    reference with several foreground pieces the largest-foreground rule (which keeps one)
    is switched off; against the rule's own output it stays."""
    model, card = load_model(tiny_checkpoint)
    cfg = load_config(overrides=["postprocess.largest_foreground=true", "postprocess.input_mask=restrict"])
    off = replace(cfg, postprocess=replace(cfg.postprocess, largest_foreground=False))
    scan = _phantom(tmp_path / "case_0000.nii.gz", island=True)
    for kind, run_cfg, expect_on in (("pieces", off, False), ("one", cfg, True)):
        labels, _, geometry = Predictor(model, card, run_cfg.infer, run_cfg.postprocess).predict_case([scan])
        ref = tmp_path / f"{kind}.nii.gz"
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), geometry.affine), str(ref))
        validation = Validation([Case(kind, (scan,), ref)], card.label_values, DistInfo())
        checked = validation.checked_postprocess(model, card, cfg, torch.device("cpu"))
        assert checked.postprocess.largest_foreground is expect_on, kind
    from scipy import ndimage

    pieces = np.asarray(nib.load(str(tmp_path / "pieces.nii.gz")).dataobj) > 0
    assert ndimage.label(pieces, structure=np.ones((3, 3, 3)))[1] > 1  # really several


def test_the_et_volume_chosen_on_validation_is_the_smallest_best():
    spacing = (1.0, 1.0, 1.0)
    # case A: no enhancing tumour in the reference, a 19-voxel (19 mm^3) false-positive ET speck predicted
    ref_a = tumour_label((24, 24, 24), (12, 12, 12), (8, 5, -1))
    pred_a = tumour_label((24, 24, 24), (12, 12, 12), (8, 5, 1.5))
    # case B: a real 257-voxel ET, predicted exactly
    ref_b = pred_b = tumour_label((24, 24, 24), (12, 12, 12), (9, 7, 4))
    candidates = (0.0, 10.0, 50.0, 100.0, 500.0)
    a = innermost_scores(pred_a, ref_a, spacing, BRATS_2021, candidates)
    b = innermost_scores(pred_b, ref_b, spacing, BRATS_2021, candidates)
    assert a[0] < 1.0 and a[2:] == [1.0, 1.0, 1.0]  # the speck gone from 50 mm^3 on: a perfect case
    assert b[:4] == [1.0] * 4 and b[4] < 1.0  # 500 mm^3 removes the real ET
    means = [(x + y) / 2 for x, y in zip(a, b)]
    assert smallest_best(candidates, means) == 50.0  # 50 and 100 tie: the smaller
    assert smallest_best(candidates, [0.5] * 5) == 0.0  # nothing helps: off
