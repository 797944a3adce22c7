"""brainseg: 3D brain MRI segmentation with exact geometry.

Stages, one module each, data flowing one way:
``io -> data -> model -> train / infer -> postprocess -> evaluate``, with the CLI on top.
"""

from ._version import __version__


def load_model(path, device="cpu"):
    """Load a trained model from a run folder or checkpoint: ``(UNet3D in eval mode, ModelCard)``."""
    from .model.checkpoint import load_model as _load

    return _load(path, device=device)


__all__ = ["load_model", "__version__"]
