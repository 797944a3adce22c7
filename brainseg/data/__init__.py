"""Finding cases: the training-set layouts (nnU-Net/MSD, BraTS, images/labels; ``layouts``,
``dataset_json``, ``brats``), the scans to predict (``inputs``) and the ``Case``/``Dataset`` types (``cases``).
"""
