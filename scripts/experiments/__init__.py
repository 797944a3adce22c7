"""Experiments on brainseg's own networks, each runnable as ``python -m scripts.experiments.<name>``."""
