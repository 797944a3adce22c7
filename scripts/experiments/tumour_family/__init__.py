"""The tumour-family check (``python -m scripts.experiments.tumour_family``): brainseg trained with no config on
the demo's tumours, scored on the demo's held-out cases and on an independent family's.

:mod:`~scripts.experiments.tumour_family.run` is the command line and its steps,
:mod:`~scripts.experiments.tumour_family.family` makes the independent family (its own generator),
:mod:`~scripts.experiments.tumour_family.report` reads the scores and writes the tables.
"""
