"""From a scan as read to what the network sees, and back: RAS reorientation, resampling and
cropping (``preprocess``, ``resample``), the foreground (``foreground``), intensity normalisation
(``normalisation``) and the training cache of preprocessed cases (``cache``).
"""
