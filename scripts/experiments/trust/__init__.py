"""The trust experiment (``python -m scripts.experiments.trust``): a cross-validation run's predicted
Dice and flag against the true Dice on held-out scans, clean and damaged in ways its calibration never saw.

:mod:`~scripts.experiments.trust.run` is the command line and its steps,
:mod:`~scripts.experiments.trust.degrade` makes the damaged test set,
:mod:`~scripts.experiments.trust.report` reads the scores back, judges the targets and writes the tables.
"""
