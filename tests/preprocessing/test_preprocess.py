"""The resampled grid: where its voxels lie in the world, and that going back lands on the scan's voxels."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.io.images import read_channels
from brainseg.preprocessing.preprocess import PreprocessRecord, invert_to_original, preprocess, ras_orientation


def _affine(rng: np.random.Generator, spacing, oblique: bool) -> np.ndarray:
    """A random signed axis permutation with the given voxel sizes, optionally tilted by a few degrees."""
    perm, flips = rng.permutation(3), rng.choice([-1.0, 1.0], 3)
    a = np.eye(4)
    a[:3, :3] = 0.0
    for i in range(3):
        a[perm[i], i] = flips[i] * spacing[i]
    if oblique:
        from scipy.spatial.transform import Rotation

        a[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-7, 7, 3), degrees=True).as_matrix() @ a[:3, :3]
    a[:3, 3] = rng.uniform(-60, 60, 3)
    return a


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return index @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("oblique", [False, True])
def test_resampled_voxels_lie_at_the_first_voxel_plus_exact_target_steps(tmp_path: Path, oblique: bool):
    """A scan whose intensity is a linear function of world position: after reorientation and
    resampling, each new voxel holds the value at its world position, with the new voxels at
    the first RAS voxel's centre + multiples of exactly the target spacing along the scan's
    own (RAS-ordered) axes. Linear interpolation of a linear function is exact, so any grid
    offset shows."""
    rng = np.random.default_rng(11 + oblique)
    for trial in range(4):
        shape = [int(v) for v in rng.integers(14, 30, 3)]
        spacing = rng.uniform(0.8, 2.4, 3)
        affine = _affine(rng, spacing, oblique)
        coef = rng.normal(size=3)
        index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
        values = (_world(affine, index) @ coef + 500.0).reshape(shape).astype(np.float32)
        path = tmp_path / f"ramp{trial}.nii.gz"
        nib.save(nib.Nifti1Image(values, affine), path)

        data, geometry = read_channels([path])
        target = [float(v) for v in rng.uniform(0.9, 2.2, 3)]
        image, _, record = preprocess(data, geometry, target, normalization="none", crop_to_nonzero=False)
        assert record.resampled_shape == list(image.shape[1:])

        # The RAS-ordered grid: file axis i becomes RAS axis ornt[i, 0], flipped if ornt[i, 1] == -1.
        ornt = ras_orientation(geometry)
        ras_affine = geometry.affine @ nib.orientations.inv_ornt_aff(ornt, shape)
        steps = np.asarray(target) / np.asarray(record.ras_spacing)
        new_index = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape[1:]], indexing="ij"), -1).reshape(-1, 3)
        old_coord = new_index * steps  # in RAS-ordered old voxels
        inside = np.all(old_coord <= np.asarray(record.ras_shape) - 1 + 1e-9, axis=1)
        expected = _world(ras_affine, old_coord) @ coef + 500.0
        got = image[0].reshape(-1)
        assert inside.mean() > 0.8
        np.testing.assert_allclose(got[inside], expected[inside], atol=2e-3)
        # The new grid spans the old voxel centres: its last centre is within half a new voxel of the old last one.
        last = (np.asarray(image.shape[1:]) - 1) * steps
        assert np.all(np.abs(last - (np.asarray(record.ras_shape) - 1)) <= steps / 2 + 1e-9)


def test_axis_aligned_grid_is_monais_spacing_grid(tmp_path: Path):
    """For scans without tilt the preprocessed grid and values are MONAI's
    Orientation("RAS") + Spacing(bilinear) ones (the reference pipeline of the benchmark)."""
    from monai import transforms as T

    rng = np.random.default_rng(5)
    for trial in range(5):
        shape = [int(v) for v in rng.integers(16, 40, 3)]
        affine = _affine(rng, rng.uniform(0.7, 2.5, 3), oblique=False)
        path = tmp_path / f"scan{trial}.nii.gz"
        nib.save(nib.Nifti1Image((rng.random(shape) + 1.0).astype(np.float32), affine), path)
        target = [float(v) for v in rng.uniform(0.9, 2.0, 3)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = T.Compose(
                [
                    T.LoadImage(image_only=True),
                    T.EnsureChannelFirst(),
                    T.Orientation(axcodes="RAS"),
                    T.Spacing(pixdim=target, mode="bilinear"),
                ]
            )(str(path))
        data, geometry = read_channels([path])
        image, _, _ = preprocess(data, geometry, target, normalization="none", crop_to_nonzero=False)
        assert image.shape[1:] == tuple(ref.shape[1:])
        np.testing.assert_allclose(image[0], ref[0].numpy(), atol=1e-5)


def test_inversion_samples_the_resampled_grid_at_the_scans_voxels():
    """invert_to_original reads the resampled grid at each original voxel's position: a
    linear ramp over the (cropped) resampled grid comes back as the same ramp in the
    scan's voxels, inside the crop box; outside it all probability is background."""
    rng = np.random.default_rng(2)
    for _trial in range(6):
        ras = [int(v) for v in rng.integers(12, 30, 3)]
        ras_spacing = [float(v) for v in rng.uniform(0.8, 2.4, 3)]
        target = [float(v) for v in rng.uniform(0.9, 2.0, 3)]
        res = [int(np.round((n - 1) * s / t)) + 1 for n, s, t in zip(ras, ras_spacing, target)]
        bbox = [[int(n) // 5, int(n) - int(n) // 6] for n in res]
        record = PreprocessRecord(
            original_shape=ras,
            ornt=[[0, 1], [1, 1], [2, 1]],
            ras_shape=ras,
            ras_spacing=ras_spacing,
            target_spacing=target,
            resampled_shape=res,
            bbox=bbox,
            norm_mean=[0.0],
            norm_std=[1.0],
        )
        coef = rng.normal(size=3)
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in bbox], indexing="ij"), -1)
        ramp = torch.from_numpy((grid * np.asarray(target)) @ coef).float()  # mm from the first resampled voxel
        scores = torch.stack([torch.zeros_like(ramp), ramp])
        back = invert_to_original(scores, record).numpy()
        old = np.stack(np.meshgrid(*[np.arange(n) for n in ras], indexing="ij"), -1)
        pos = old * np.asarray(ras_spacing) / np.asarray(target)  # in resampled voxels
        lo, hi = np.asarray([a for a, _ in bbox]), np.asarray([b - 1 for _, b in bbox])
        inner = np.all((pos >= lo) & (pos <= hi), axis=-1)
        outer = np.any((pos < lo - 1) | (pos > hi + 1), axis=-1)
        assert inner.any() and outer.any()
        np.testing.assert_allclose(back[1][inner], ((old * np.asarray(ras_spacing)) @ coef)[inner], atol=1e-3)
        assert np.all(back[1][outer] == 0.0) and np.all(back[0][outer] == 1.0)
