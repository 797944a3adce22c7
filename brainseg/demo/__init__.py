"""The demo: synthetic data sets from the MNI template (``template``, ``tissue``, ``tumour``) and
``brainseg demo``, which chains train, predict and evaluate on them (``pipeline``).
"""
