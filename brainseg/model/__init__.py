"""The network: the 3D U-Net (``unet``), its inference-time rewrites (``fast_paths``), the model
card (``card``: what a checkpoint says about its model), checkpoints (``checkpoint``), the card with
its provenance (``info``: ``brainseg info``) and the network as TorchScript or ONNX (``export``)."""

from brainseg.model.unet import UNet3D, build_model, feature_list

__all__ = ["UNet3D", "build_model", "feature_list"]
