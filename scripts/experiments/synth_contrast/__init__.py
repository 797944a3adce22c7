"""The synthetic-contrast check (``python -m scripts.experiments.synth_contrast``): the default demo model
and one trained with ``train.synth``, scored on the demo's held-out subjects in other contrasts and
slice thicknesses.

:mod:`~scripts.experiments.synth_contrast.run` is the command line and its steps,
:mod:`~scripts.experiments.synth_contrast.family` makes the test family (its own generator),
:mod:`~scripts.experiments.synth_contrast.report` writes the tables.
"""
