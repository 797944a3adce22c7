"""Scores: Dice, HD95 and region scores (``metrics``, the only copies), pairing predictions with
references (``pairing``) and the evaluation tables per label (``per_label``) or per region (``per_region``).
"""
