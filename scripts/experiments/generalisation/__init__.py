"""The generalisation check (``python -m scripts.experiments.generalisation``): networks trained on the
demo data, scored on its held-out subjects and on shifted scans, brainseg beside a MONAI reference.

:mod:`~scripts.experiments.generalisation.run` is the command line and its steps,
:mod:`~scripts.experiments.generalisation.shifted` makes the shifted scans,
:mod:`~scripts.experiments.generalisation.monai_reference` trains and runs the MONAI-tutorial
reference (in its own process), :mod:`~scripts.experiments.generalisation.report` reads the scores
back and writes the tables.
"""
