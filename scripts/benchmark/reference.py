"""The MONAI side of the benchmark: the reference inference pipeline and the training
transforms the loader comparison runs (see :mod:`scripts.benchmark`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.model.card import ModelCard

MONAI_SW_BATCH = 4
MONAI_OVERLAP = 0.5
#: The reference runs each window once (``sliding_window_inference``, no test-time flips).
MONAI_MIRROR = False


def foreground_zscore(data: dict, scheme: str = "zscore") -> dict:
    """The MONAI pipeline's normalisation step: brainseg's rule (background kind decided on the
    raw scan, statistics over the foreground, every voxel normalised), in place on the MetaTensor
    so Invertd still sees every spatial transform. Adds ``zero_background`` and ``background``
    (the value of a raw 0 after normalisation, or the noisy background's median)."""
    import torch

    from brainseg.preprocessing.foreground import has_zero_background, threshold_mask
    from brainseg.preprocessing.normalisation import background_values, normalise

    image = data["image"]
    arr = image.detach().cpu().numpy().astype(np.float32, copy=False)
    zero_bg = has_zero_background(data["raw"].detach().cpu().numpy())
    fg = np.any(arr != 0, axis=0) if zero_bg else threshold_mask(arr)
    out, _, _, raw_zero = normalise(arr, fg, scheme)
    image[...] = torch.from_numpy(out)
    data["zero_background"] = zero_bg
    data["background"] = background_values(out, raw_zero, fg, zero_bg)[0]  # sliding_window_inference takes one cval
    return data


@dataclass(frozen=True)
class ReferenceSpec:
    """What the MONAI reference needs to know of a network: its label values, the spacing
    and patch it works at and (for brainseg networks) the normalisation scheme."""

    labels: tuple[int, ...]
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    scheme: str = "zscore"

    @classmethod
    def from_card(cls, card: ModelCard) -> ReferenceSpec:
        return cls(tuple(card.label_values), tuple(card.spacing), tuple(card.patch_size), card.normalization.scheme)


class MonaiReference:
    """The MONAI reference inference pipeline for one network (see the module docstring)."""

    def __init__(
        self,
        model,
        spec: ReferenceSpec,
        input_mask: str,
        out_dir: Path,
        device,
        shift: Sequence[int] = (0, 0, 0),
        normalization: str = "brainseg",
    ):
        import torch
        from monai import transforms as T

        self.model, self.spec, self.device = model, spec, torch.device(device)
        # Windows moved by ``shift`` voxels per axis (the volume is zero-padded in front by
        # that much for the windows, and the padding cut off again): the same pipeline with
        # its window lattice elsewhere, to measure how much placement alone changes the masks.
        self.shift = [int(v) for v in shift]
        self.input_mask = input_mask
        self.values = sorted(spec.labels)
        steps = [T.LoadImaged(keys="image", image_only=True), T.EnsureChannelFirstd(keys="image")]
        steps.append(T.CopyItemsd(keys="image", times=1, names="raw"))
        steps += [
            T.Orientationd(keys="image", axcodes="RAS"),
            T.Spacingd(keys="image", pixdim=list(spec.spacing), mode="bilinear"),
            # "monai": the tutorials' NormalizeIntensityd(nonzero) for a network trained with it
            # (the generalisation experiment's reference); "brainseg": the rule brainseg's networks learnt
            functools.partial(foreground_zscore, scheme=spec.scheme)
            if normalization == "brainseg"
            else T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        ]
        self.pre = T.Compose(steps)
        self.post = T.Compose(
            [
                T.Activationsd(keys="pred", softmax=True),
                T.Invertd(keys="pred", transform=self.pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            ]
        )
        self.argmax = T.AsDiscrete(argmax=True)
        self.out_dir = Path(out_dir)
        self.saver = T.SaveImage(
            output_dir=str(self.out_dir),
            output_postfix="",
            output_ext=".nii.gz",
            separate_folder=False,
            output_dtype=np.uint8 if max(self.values) <= 255 else np.int16,
            resample=False,
            print_log=False,
        )

    def __call__(self, image_path: str, case_id: str) -> Path:
        import torch
        from monai.data import MetaTensor
        from monai.inferers import sliding_window_inference

        data = self.pre({"image": image_path})
        image = data["image"][None].to(self.device)
        if any(self.shift):
            image = torch.nn.functional.pad(image.as_tensor(), [v for k in reversed(self.shift) for v in (k, 0)])
        with torch.no_grad():
            logits = sliding_window_inference(
                image,
                roi_size=list(self.spec.patch_size),
                sw_batch_size=MONAI_SW_BATCH,
                predictor=self.model,
                overlap=MONAI_OVERLAP,
                mode="gaussian",
                cval=data.get("background", 0.0),
            )
        if any(self.shift):
            logits = logits[(Ellipsis,) + tuple(slice(k, None) for k in self.shift)]
        data["pred"] = logits[0].cpu()
        data = self.post(data)
        pred = data["pred"]
        if not data.get("zero_background", True):  # brainseg applies the input-mask rule only there
            cls = self.argmax(pred)
        elif self.input_mask == "fill":  # the same rule as brainseg.postprocess.decision.labels_within_input
            nonzero = (data["raw"] != 0).any(0, keepdim=True)
            cls = torch.where(nonzero, pred[1:].argmax(0, keepdim=True) + 1, 0)
        elif self.input_mask == "restrict":
            nonzero = (data["raw"] != 0).any(0, keepdim=True)
            cls = torch.where(nonzero, pred.argmax(0, keepdim=True), 0)
        else:
            cls = self.argmax(pred)
        if self.values != list(range(len(self.values))):
            cls = torch.as_tensor(self.values)[cls.long()]
        meta = dict(pred.meta)
        meta["filename_or_obj"] = str(self.out_dir / f"{case_id}.nii.gz")
        self.saver(MetaTensor(torch.as_tensor(cls).as_tensor(), meta=meta))
        return self.out_dir / f"{case_id}.nii.gz"


def _load_npy_image(path):
    import torch

    return torch.from_numpy(np.load(path))


def _load_npy_label(path):
    import torch

    return torch.from_numpy(np.load(path).astype(np.float32))[None]


def monai_train_transforms(patch: Sequence[int]):
    """MONAI's (cached, random) transforms at our AugmentConfig's probabilities and ranges."""
    from monai import transforms as T

    from brainseg.config import AugmentConfig

    a = AugmentConfig()
    keys = ["image", "label"]
    rot = math.radians(a.rotate_degrees)
    cached = T.Compose(
        [
            T.Lambdad(keys="image", func=_load_npy_image),
            T.Lambdad(keys="label", func=_load_npy_label),
            T.SpatialPadd(keys=keys, spatial_size=patch),  # our loader zero-pads too
            T.FgBgToIndicesd(keys="label"),
        ]
    )
    rand = T.Compose(
        [
            T.RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=patch,
                pos=1,
                neg=2,
                num_samples=1,
                fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            ),
            T.RandRotated(
                keys=keys,
                range_x=rot,
                range_y=rot,
                range_z=rot,
                prob=a.p_rotate,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            T.RandZoomd(
                keys=keys,
                prob=a.p_scale,
                min_zoom=a.scale_range[0],
                max_zoom=a.scale_range[1],
                mode=("trilinear", "nearest"),
                padding_mode="constant",
            ),
            T.RandFlipd(keys=keys, spatial_axis=0, prob=a.p_flip),
            T.RandFlipd(keys=keys, spatial_axis=1, prob=a.p_flip),
            T.RandFlipd(keys=keys, spatial_axis=2, prob=a.p_flip),
            T.RandGaussianNoised(keys="image", prob=a.p_noise, std=a.noise_std),
            T.RandGaussianSmoothd(
                keys="image",
                sigma_x=tuple(a.blur_sigma),
                sigma_y=tuple(a.blur_sigma),
                sigma_z=tuple(a.blur_sigma),
                prob=a.p_blur,
            ),
            T.RandScaleIntensityd(keys="image", factors=a.brightness_range[1] - 1.0, prob=a.p_brightness),
            T.RandScaleIntensityFixedMeand(
                keys="image", factors=a.contrast_range[1] - 1.0, prob=a.p_contrast, preserve_range=True
            ),
            T.RandAdjustContrastd(keys="image", gamma=tuple(a.gamma_range), prob=a.p_gamma, retain_stats=True),
            T.RandBiasFieldd(keys="image", degree=2, coeff_range=(0.0, a.bias_strength / 3), prob=a.p_bias),
        ]
    )
    return cached, rand
