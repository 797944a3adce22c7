"""Model stage: the 3D U-Net."""

from .unet import UNet3D, build_model, feature_list

__all__ = ["UNet3D", "build_model", "feature_list"]
