"""How far a scan is from what the model was trained on: the scan statistics shared with the
fingerprint (``scan_stats``) and the out-of-distribution reasons (``ood``).
"""
