"""brainseg: 3D brain MRI segmentation with exact geometry.

Stages, one package each, data flowing one way (``docs/architecture.md`` draws the tree):
``io -> data -> preprocessing -> model -> train / infer -> postprocess -> evaluate``, with
``plan``, ``quality`` and ``demo`` beside them and the CLI on top.
"""

from brainseg._version import __version__


def load_model(path, device="cpu"):
    """Load a trained model from a run folder or checkpoint: ``(UNet3D in eval mode, ModelCard)``."""
    from brainseg.model.checkpoint import load_model as _load

    return _load(path, device=device)


__all__ = ["load_model", "__version__"]
