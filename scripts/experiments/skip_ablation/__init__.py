"""The skip-connection ablation (``python -m scripts.experiments.skip_ablation``): the same network
trained with its skips as they are, cut, low-passed (or added), then scored on held-out subjects.

:mod:`~scripts.experiments.skip_ablation.run` is the command line, the training and the scoring,
:mod:`~scripts.experiments.skip_ablation.metrics` the boundary metrics (surface Dice, Dice by
distance to a boundary), :mod:`~scripts.experiments.skip_ablation.report` the figures and report.md.
"""
