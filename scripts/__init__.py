"""Experiments beside the library, each run from the repository root with ``python -m``.

* ``scripts.benchmark``: brainseg against a MONAI reference pipeline, side by side;
* ``scripts.experiments.generalisation``: demo-trained networks on held-out and shifted scans;
* ``scripts.experiments.skip_ablation``: what a U-Net's skip connections carry;
* ``scripts.experiments.hemisphere_confusion``: left/right confusion of predicted masks;
* ``scripts/examples/``: shell examples of the command line (train, predict, evaluate, the GPU check).

Shared helpers (logging, git state, subprocesses, case ids) are in :mod:`scripts.common`.
"""
