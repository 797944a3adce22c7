"""nnU-Net v2 side by side (``python -m scripts.experiments.peers``): brainseg, the MONAI reference and nnU-Net
v2's default 3d_fullres, same demo data, same wall-clock budget, same machine, one run.

:mod:`~scripts.experiments.peers.run` is the command line and its steps,
:mod:`~scripts.experiments.peers.raw_layout` writes nnU-Net's raw layout,
:mod:`~scripts.experiments.peers.report` writes the table. ``nnunet_ext/`` is what nnU-Net itself
imports inside ``.venv-peers`` (``make peers-env``) through ``nnUNet_extTrainer``: the budget trainer
``nnUNetTrainerBudget`` and its budget rules (``peers_budget``, standard library only); nothing
there imports brainseg, and nothing here imports nnU-Net.
"""
