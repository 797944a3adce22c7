"""Inference: the sliding window (``sliding_window``), one case through a trained model
(``predictor``) and many cases to files (``batch``).
"""
