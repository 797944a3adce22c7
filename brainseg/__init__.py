"""brainseg: 3D brain MRI segmentation with exact geometry.

Stages, one module each, data flowing one way:
``io -> data -> model -> train / infer -> postprocess -> evaluate``, with the CLI on top.
"""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load a trained model from a run folder or checkpoint: ``(torch.nn.Module, card)``."""
    from .model.checkpoint import load_model as _load

    return _load(path, device=device)


__all__ = ["load_model", "__version__"]
