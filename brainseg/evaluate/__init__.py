"""Scores: Dice, HD95 and region scores (``metrics``, the only copies), pairing predictions with
references (``pairing``), BraTS 2023's lesion-wise scores (``lesions``) and the evaluation tables per
label (``per_label``) or per region (``per_region``).
"""
